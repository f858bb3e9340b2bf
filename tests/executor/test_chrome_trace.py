"""The timeline as a Chrome/Perfetto trace (valid trace-event JSON) and as a picture."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from trace_event_format import TRACE_EVENT_FORMAT

from agentflow import Program, tool
from executor import Trace
from executor._chrome import assign_lanes


@tool
async def wait(seconds: float, after: Any = None) -> float:
    """Sleep, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


@tool
def explode(x: Any) -> None:
    """Always fails."""
    raise RuntimeError("boom")


async def _diamond() -> Trace:
    async with Program() as p:
        a = wait(0.05)
        b, c = wait(0.10, a), wait(0.02, a)
        d = wait(0.01, [b, c])
        explode(wait(0.01))  # fails; nothing depends on it
        await d
    return p.result.trace


def test_the_trace_validates_against_the_trace_event_format(tmp_path: Path) -> None:
    trace = asyncio.run(_diamond())
    path = trace.write_chrome_trace(tmp_path / "trace.json")
    document = json.loads(path.read_text())
    jsonschema.validate(document, TRACE_EVENT_FORMAT)
    calls = {e["args"]["node_id"]: e for e in document["traceEvents"] if e["ph"] == "X"}
    assert set(calls) == {r.node_id for r in trace.records if r.start_s is not None}
    assert document["otherData"]["critical_path"] == list(trace.critical_path)
    on_path = {nid for nid, e in calls.items() if e["args"]["critical"]}
    assert on_path == set(trace.critical_path) and all(calls[n]["cname"] == "terrible" for n in on_path)
    assert "critical" in calls[trace.critical_path[0]]["cat"]
    # b and c ran at once: two lanes; every dependency is an arrow from its end to the start it fed.
    assert len({e["tid"] for e in calls.values()}) >= 2
    starts = [e for e in document["traceEvents"] if e["ph"] == "s"]
    ends = [e for e in document["traceEvents"] if e["ph"] == "f"]
    assert len(starts) == len(ends) == sum(len(r.deps) for r in trace.records if r.start_s is not None)
    failed = [e for e in calls.values() if e["args"]["state"] == "failed"]
    assert failed and "boom" in failed[0]["args"]["error"] and failed[0]["cname"] == "bad"


def test_lanes_never_overlap() -> None:
    trace = asyncio.run(_diamond())
    lanes = assign_lanes(trace.records)
    by_lane: dict[int, list[tuple[float, float]]] = {}
    for r in trace.records:
        if r.node_id in lanes:
            assert r.start_s is not None and r.end_s is not None
            by_lane.setdefault(lanes[r.node_id], []).append((r.start_s, r.end_s))
    for spans in by_lane.values():
        spans.sort()
        assert all(end <= nxt_start for (_, end), (nxt_start, _) in zip(spans, spans[1:], strict=False))


def test_the_timeline_png_is_drawn(tmp_path: Path) -> None:
    trace = asyncio.run(_diamond())
    png = trace.write_timeline_png(tmp_path / "out" / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_a_program_that_never_ran_a_call_still_writes_a_valid_trace(tmp_path: Path) -> None:
    async def empty() -> Trace:
        async with Program() as p:
            pass
        return p.result.trace

    document = asyncio.run(empty()).to_chrome_trace()
    jsonschema.validate(document, TRACE_EVENT_FORMAT)


@pytest.mark.parametrize("flag", ["--trace-out", "--timeline-png"])
def test_agentflow_run_writes_the_timeline_files(tmp_path: Path, flag: str) -> None:
    from agentflow.testing import ScriptedLLM
    from planner._cli import run_command

    plan = '1. lookup("a")\n2. join()'
    finish = json.dumps({"thought": "done", "action": "finish", "answer": "a"})
    tools = tmp_path / "tools.py"
    tools.write_text(
        'from agentflow import tool\n\n@tool\ndef lookup(key: str) -> str:\n    """Look up."""\n    return key\n'
    )
    out = tmp_path / ("trace.json" if flag == "--trace-out" else "timeline.png")
    kwargs = {"trace_out": out} if flag == "--trace-out" else {"timeline_png": out}
    assert run_command("a task", tools=str(tools), model=ScriptedLLM([plan, finish]), **kwargs) == 0
    assert out.is_file() and out.stat().st_size > 100


def test_the_demo_writes_a_valid_trace_and_a_picture_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentflow.demo import run_demo
    from agentflow.testing import ScriptedLLM

    assert run_demo(model=ScriptedLLM(lambda request: "A fine city."), out_dir=tmp_path) == 0
    trace_path, png_path = tmp_path / "trace.json", tmp_path / "timeline.png"
    jsonschema.validate(json.loads(trace_path.read_text()), TRACE_EVENT_FORMAT)
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert str(trace_path) in capsys.readouterr().out
