"""A run's timeline in the Chrome/Perfetto trace-event format, and as a picture.

Open the JSON in https://ui.perfetto.dev or chrome://tracing: one process per program, one
thread ("lane") per set of calls that ran one after another, a complete event ("ph": "X") per
call (its kind, state, attempts, dependencies and token usage in `args`), a flow arrow from each
dependency's end to the call it fed, and the critical path marked (`args.critical`, category
`critical`, a red colour). Calls that never ran (skipped, cancelled) are instant events at their end.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.ir import NodeState

if TYPE_CHECKING:
    from ._trace import NodeRecord, Trace

__all__ = ["assign_lanes", "chrome_trace", "draw_timeline"]

_PID = 1
_US = 1_000_000.0


def assign_lanes(records: tuple[NodeRecord, ...]) -> dict[str, int]:
    """Node id -> lane: calls that ran are packed into the fewest lanes in which none overlap."""
    lanes: list[float] = []  # lane -> when its last call ended
    assignment: dict[str, int] = {}
    ran = sorted((r for r in records if r.start_s is not None and r.end_s is not None), key=lambda r: r.start_s or 0.0)
    for record in ran:
        assert record.start_s is not None and record.end_s is not None
        lane = next((i for i, free_s in enumerate(lanes) if free_s <= record.start_s), len(lanes))
        if lane == len(lanes):
            lanes.append(record.end_s)
        else:
            lanes[lane] = record.end_s
        assignment[record.node_id] = lane
    return assignment


def chrome_trace(trace: Trace) -> dict[str, Any]:
    """The trace-event JSON object of one run."""
    lanes = assign_lanes(trace.records)
    critical = set(trace.critical_path)
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": _PID, "tid": 0, "args": {"name": f"program {trace.program_id}"}}
    ]
    events += [
        {"name": "thread_name", "ph": "M", "pid": _PID, "tid": lane, "args": {"name": f"lane {lane}"}}
        for lane in sorted(set(lanes.values()))
    ]
    for record in trace.records:
        events.append(_call_event(record, lanes, record.node_id in critical, trace.wall_s))
    events += _flow_events(trace, lanes)
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "program_id": trace.program_id,
            "wall_s": trace.wall_s,
            "critical_path": list(trace.critical_path),
            "critical_path_s": trace.critical_path_s,
            "parallel_efficiency": trace.parallel_efficiency,
        },
    }


def _call_event(record: NodeRecord, lanes: dict[str, int], critical: bool, wall_s: float) -> dict[str, Any]:
    args: dict[str, Any] = {
        "node_id": record.node_id,
        "target": record.target,
        "kind": record.kind.value,
        "state": record.state.value,
        "attempts": record.attempts,
        "deps": list(record.deps),
        "critical": critical,
    }
    if record.error:
        args["error"] = record.error
    if record.usage:
        args["usage"] = dict(record.usage)
    if record.serving:
        args["serving"] = dict(record.serving)
    event: dict[str, Any] = {
        "name": f"[{record.node_id}] {record.target}",
        "cat": ",".join([record.kind.value, *(["critical"] if critical else [])]),
        "pid": _PID,
        "args": args,
    }
    if record.start_s is None or record.end_s is None:  # never ran: skipped or cancelled
        return {**event, "ph": "i", "s": "p", "tid": 0, "ts": _us(wall_s)}
    event.update(ph="X", tid=lanes[record.node_id], ts=_us(record.start_s), dur=_us(record.duration_s))
    if critical:
        event["cname"] = "terrible"  # trace viewers' reserved red
    elif record.state is not NodeState.DONE:
        event["cname"] = "bad"
    return event


def _flow_events(trace: Trace, lanes: dict[str, int]) -> list[dict[str, Any]]:
    """An arrow from each dependency's end to the start of the call it fed (both must have run)."""
    by_id = {r.node_id: r for r in trace.records}
    ids = itertools.count(1)
    events: list[dict[str, Any]] = []
    for record in trace.records:
        if record.node_id not in lanes or record.start_s is None:
            continue
        for dep in record.deps:
            source = by_id.get(dep)
            if source is None or dep not in lanes or source.end_s is None:
                continue
            flow_id = next(ids)
            common = {"name": "dependency", "cat": "dag", "pid": _PID, "id": flow_id}
            events.append({**common, "ph": "s", "tid": lanes[dep], "ts": _us(source.end_s)})
            events.append({**common, "ph": "f", "bp": "e", "tid": lanes[record.node_id], "ts": _us(record.start_s)})
    return events


def _us(seconds: float) -> float:
    return round(seconds * _US, 3)


def draw_timeline(trace: Trace, path: str | Path) -> Path:
    """A PNG of the timeline: one row per lane, the critical path in red, failures hatched."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    lanes = assign_lanes(trace.records)
    critical = set(trace.critical_path)
    num_lanes = max(lanes.values(), default=0) + 1
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * num_lanes))
    for record in trace.records:
        if record.node_id not in lanes or record.start_s is None:
            continue
        lane = lanes[record.node_id]
        on_path = record.node_id in critical
        color = "#d62728" if on_path else ("#1f77b4" if record.kind.value == "tool" else "#2ca02c")
        hatch = "//" if record.state is not NodeState.DONE else None
        ax.broken_barh([(record.start_s, max(record.duration_s, 1e-6))], (lane - 0.4, 0.8), color=color, hatch=hatch)
        if record.duration_s > 0.04 * max(trace.wall_s, 1e-9):
            ax.text(record.start_s, lane, f" {record.target}", va="center", fontsize=7, clip_on=True)
    ax.set_yticks(range(num_lanes), [f"lane {i}" for i in range(num_lanes)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the program started")
    ax.set_title(
        f"{trace.program_id}: wall {trace.wall_s:.2f} s, critical path {trace.critical_path_s:.2f} s (red); "
        "tools blue, LLM calls green",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
