"""The trace of a run: start and end of every call, the critical path, a text timeline.

`Trace.to_chrome_trace()` / `write_chrome_trace(path)` give the Chrome/Perfetto trace-event
format (`executor._chrome`); `write_timeline_png(path)` draws the same timeline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflow.ir import CallGraph, CallKind, NodeState

from ._state import RunState

__all__ = ["NodeRecord", "Trace"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """One call as it ran. Times are seconds since the program started."""

    node_id: str
    target: str
    kind: CallKind
    state: NodeState
    start_s: float | None
    end_s: float | None
    attempts: int
    error: str | None
    deps: tuple[str, ...]
    usage: dict[str, int] | None = None  # LLM calls: prompt_tokens, completion_tokens, cached_tokens
    serving: dict[str, Any] | None = None  # LLM calls: queue_delay_s, cached_tokens, pin_hit (program-aware engine)

    @property
    def duration_s(self) -> float:
        if self.start_s is None or self.end_s is None:
            return 0.0
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A snapshot of a run."""

    program_id: str
    wall_s: float
    records: tuple[NodeRecord, ...]
    critical_path: tuple[str, ...]
    critical_path_s: float  # sum of call durations along the longest dependency chain

    @classmethod
    def build(cls, program_id: str, graph: CallGraph, state: RunState, wall_s: float) -> Trace:
        records = tuple(_record(state, node_id) for node_id in state.runs)
        path, length = graph.critical_path(state.durations_s()) if len(graph) else ([], 0.0)
        return cls(
            program_id=program_id,
            wall_s=wall_s,
            records=records,
            critical_path=tuple(path),
            critical_path_s=length,
        )

    @property
    def parallel_efficiency(self) -> float:
        """Critical-path time / wall time: 1.0 means no time lost to dispatch or limits."""
        return self.critical_path_s / self.wall_s if self.wall_s > 0 else 1.0

    def max_concurrency(self) -> int:
        """The most calls that were running at the same instant."""
        events = sorted(
            [(r.start_s, 1) for r in self.records if r.start_s is not None and r.end_s is not None]
            + [(r.end_s, -1) for r in self.records if r.start_s is not None and r.end_s is not None]
        )
        best = running = 0
        for _, delta in events:
            running += delta
            best = max(best, running)
        return best

    def to_dict(self) -> dict[str, Any]:
        return {
            "program_id": self.program_id,
            "wall_s": self.wall_s,
            "critical_path": list(self.critical_path),
            "critical_path_s": self.critical_path_s,
            "parallel_efficiency": self.parallel_efficiency,
            "records": [asdict(r) for r in self.records],
        }

    def to_chrome_trace(self) -> dict[str, Any]:
        """The run in the trace-event format Chrome's and Perfetto's trace viewers open."""
        from ._chrome import chrome_trace

        return chrome_trace(self)

    def write_chrome_trace(self, path: str | Path) -> Path:
        """Write `to_chrome_trace()` as JSON to `path`; the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_chrome_trace(), default=str))
        return out

    def write_timeline_png(self, path: str | Path) -> Path:
        """Draw the timeline (one row per lane, the critical path in red) as a PNG at `path`; the path."""
        from ._chrome import draw_timeline

        return draw_timeline(self, path)

    def render_timeline(self, width: int = 48) -> str:
        """A Gantt chart in text: one row per call, `#` while it ran, `*` on the critical path."""
        span = max((r.end_s or 0.0 for r in self.records), default=0.0) or 1e-9
        on_path = set(self.critical_path)
        name_w = min(28, max((len(_label(r)) for r in self.records), default=4))
        lines = [f"{'call':<{name_w}}  {'state':9} {'start':>7} {'end':>7}  |{'timeline':^{width}}|"]
        for r in self.records:
            lines.append(_timeline_row(r, span, width, name_w, r.node_id in on_path))
        lines.append(
            f"wall {self.wall_s:.3f}s  critical path {self.critical_path_s:.3f}s "
            f"({' -> '.join(self.critical_path)})  max parallel {self.max_concurrency()}"
        )
        return "\n".join(lines)


def _record(state: RunState, node_id: str) -> NodeRecord:
    run = state.runs[node_id]
    return NodeRecord(
        node_id=node_id,
        target=run.node.target,
        kind=run.node.kind,
        state=run.state,
        start_s=run.start_s,
        end_s=run.end_s if run.start_s is not None else None,
        attempts=run.attempts,
        error=run.error,
        deps=run.node.deps,
        usage=dict(run.usage) if run.usage is not None else None,
        serving=dict(run.serving) if run.serving is not None else None,
    )


def _label(record: NodeRecord) -> str:
    return f"[{record.node_id}] {record.target}"


def _timeline_row(r: NodeRecord, span_s: float, width: int, name_w: int, critical: bool) -> str:
    bar = [" "] * width
    if r.start_s is not None and r.end_s is not None:
        first = min(width - 1, int(r.start_s / span_s * width))
        last = max(first, min(width - 1, int(r.end_s / span_s * width) - 1))
        for i in range(first, last + 1):
            bar[i] = "*" if critical else "#"
    start = f"{r.start_s:7.3f}" if r.start_s is not None else "      -"
    end = f"{r.end_s:7.3f}" if r.end_s is not None else "      -"
    label = _label(r)[:name_w]
    return f"{label:<{name_w}}  {r.state.value:9} {start} {end}  |{''.join(bar)}|"
