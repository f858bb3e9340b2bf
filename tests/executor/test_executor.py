"""The executor through `Program` and directly: dispatch, limits, retries, timeouts, cancellation, trace."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentflow.exceptions import CallFailedError, UserError
from agentflow.ir import CallKind, CallNode, NodeState, ProgramFacts, Ref
from agentflow.program import Program
from agentflow.tools import ToolRegistry, tool
from executor import Executor, Failure, NodeRun, RunResult, Trace

# Every test runs under this limit: a hang is a failure, not a stuck suite.
HANG_S = 5.0
# Dispatch is a direct call chain from one call's end to its dependents' start: no loop tick, no poll.
DISPATCH_GAP_S = 0.005


class Gauge:
    """Counts calls running at once (thread-safe: sync tools run in worker threads)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started = 0
        self._lock = threading.Lock()

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


def records_by_id(result: RunResult) -> dict[str, Any]:
    return {r.node_id: r for r in result.trace.records}


# -- dispatch -----------------------------------------------------------------------------------------


async def test_a_dependent_starts_the_moment_its_dependency_ends() -> None:
    @tool
    async def step(ms: int, prev: int | None = None) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    async with asyncio.timeout(HANG_S), Program() as p:
        a = step(30)
        b = step(10, a)
        fan = [step(5, b) for _ in range(3)]
    records = records_by_id(p.result)
    assert records[b.node_id].start_s - records[a.node_id].end_s < DISPATCH_GAP_S
    for v in fan:
        assert records[v.node_id].start_s - records[b.node_id].end_s < DISPATCH_GAP_S
    assert p.result.ok


async def test_independent_calls_run_in_parallel() -> None:
    gauge = Gauge()

    @tool
    async def nap() -> None:
        with gauge.track():
            await asyncio.sleep(0.05)

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        for _ in range(10):
            nap()
    assert time.perf_counter() - start < 0.4  # 10 x 50 ms serially would be 0.5 s
    assert gauge.peak == 10
    assert p.result.trace.max_concurrency() == 10


async def test_global_max_parallel_is_respected() -> None:
    gauge = Gauge()

    @tool
    async def nap() -> None:
        with gauge.track():
            await asyncio.sleep(0.01)

    async with asyncio.timeout(HANG_S), Program(max_parallel=3) as p:
        for _ in range(12):
            nap()
    assert gauge.peak == 3 and gauge.started == 12
    assert p.result.trace.max_concurrency() == 3
    assert p.result.ok


async def test_per_tool_max_concurrency_is_respected() -> None:
    limited_gauge, free_gauge = Gauge(), Gauge()

    @tool(max_concurrency=2)
    async def limited() -> None:
        with limited_gauge.track():
            await asyncio.sleep(0.02)

    @tool
    async def free() -> None:
        with free_gauge.track():
            await asyncio.sleep(0.02)

    async with asyncio.timeout(HANG_S), Program() as p:
        for _ in range(8):
            limited()
        for _ in range(5):
            free()
    assert limited_gauge.peak == 2 and limited_gauge.started == 8
    assert free_gauge.peak == 5  # the limit of one tool does not hold back another
    assert p.result.ok


async def test_per_tool_limit_applies_to_sync_tools_in_threads() -> None:
    gauge = Gauge()

    @tool(max_concurrency=3)
    def blocking() -> None:
        with gauge.track():
            time.sleep(0.02)

    async with asyncio.timeout(HANG_S), Program() as p:
        for _ in range(9):
            blocking()
    assert gauge.peak == 3 and gauge.started == 9
    assert p.result.ok


async def test_global_and_per_tool_limits_together() -> None:
    a_gauge, b_gauge, all_gauge = Gauge(), Gauge(), Gauge()

    @tool(max_concurrency=1)
    async def tool_a() -> None:
        with a_gauge.track(), all_gauge.track():
            await asyncio.sleep(0.01)

    @tool
    async def tool_b() -> None:
        with b_gauge.track(), all_gauge.track():
            await asyncio.sleep(0.01)

    async with asyncio.timeout(HANG_S), Program(max_parallel=3) as p:
        for _ in range(4):
            tool_a()
        for _ in range(6):
            tool_b()
    assert a_gauge.peak == 1 and all_gauge.peak == 3
    assert a_gauge.started == 4 and b_gauge.started == 6
    assert p.result.ok


# -- retries and timeouts -------------------------------------------------------------------------------


async def test_retries_until_success() -> None:
    calls: list[int] = []

    @tool(retries=2)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    async with asyncio.timeout(HANG_S), Program() as p:
        v = flaky()
        assert await v == "ok"
    assert len(calls) == 3
    record = records_by_id(p.result)[v.node_id]
    assert record.state is NodeState.DONE and record.attempts == 3


async def test_retries_exhausted_fail_with_the_last_error() -> None:
    calls: list[int] = []

    @tool(retries=2)
    def always_fails() -> str:
        calls.append(1)
        raise RuntimeError(f"failure number {len(calls)}")

    async with asyncio.timeout(HANG_S), Program() as p:
        v = always_fails()
    assert len(calls) == 3
    record = records_by_id(p.result)[v.node_id]
    assert record.state is NodeState.FAILED and record.attempts == 3
    assert record.error == "ToolError: RuntimeError: failure number 3"


async def test_validation_errors_are_not_retried() -> None:
    calls: list[int] = []

    @tool(retries=3)
    async def strict(n: int) -> int:
        calls.append(n)
        return n

    async with asyncio.timeout(HANG_S), Program() as p:
        v = strict("not a number")
    assert calls == []
    record = records_by_id(p.result)[v.node_id]
    assert record.state is NodeState.FAILED and record.attempts == 0
    assert "ArgumentValidationError" in (record.error or "")


async def test_a_validation_error_raised_inside_a_tool_is_not_retried() -> None:
    calls: list[int] = []

    @tool
    def inner(n: int) -> int:
        return n

    @tool(retries=3)
    def outer() -> int:
        calls.append(1)
        return inner.bind(("nope",), {})["n"]  # a tool validating what it passes on

    async with asyncio.timeout(HANG_S), Program() as p:
        v = outer()
    assert len(calls) == 1
    assert records_by_id(p.result)[v.node_id].attempts == 1
    assert p.result.states[v.node_id] is NodeState.FAILED


async def test_the_timeout_applies_to_each_attempt() -> None:
    calls: list[int] = []

    @tool(timeout_s=0.05, retries=1)
    async def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(10)
        return "second attempt"

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        v = slow_then_fast()
        assert await v == "second attempt"
    assert time.perf_counter() - start < 1.0
    assert records_by_id(p.result)[v.node_id].attempts == 2


async def test_a_timeout_on_every_attempt_fails_the_node() -> None:
    @tool(timeout_s=0.03, retries=1)
    async def hangs() -> None:
        await asyncio.sleep(10)

    async with asyncio.timeout(HANG_S), Program() as p:
        v = hangs()
    record = records_by_id(p.result)[v.node_id]
    assert record.state is NodeState.FAILED and record.attempts == 2
    assert record.error == "ToolTimeoutError: tool 'hangs' timed out after 0.03 s"


async def test_a_blocking_sync_tool_times_out_without_waiting_for_its_thread() -> None:
    @tool(timeout_s=0.05)
    def blocks() -> None:
        time.sleep(1.0)

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        v = blocks()
    assert time.perf_counter() - start < 0.5
    assert p.result.states[v.node_id] is NodeState.FAILED
    assert "timed out after 0.05 s" in p.result.failures[0].reason


# -- cancellation ---------------------------------------------------------------------------------------


async def test_cancel_a_program() -> None:
    cancelled: list[str] = []
    started: list[str] = []

    @tool
    async def long_call(name: str) -> str:
        started.append(name)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    @tool
    def after(value: str) -> str:
        started.append("after")
        return value

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        a, b = long_call("a"), long_call("b")
        c = after(a)
        await asyncio.sleep(0.02)
        p.cancel("user pressed stop")
        with pytest.raises(CallFailedError, match="cancelled"):
            await c
    assert time.perf_counter() - start < 1.0
    assert sorted(cancelled) == ["a", "b"]
    assert sorted(started) == ["a", "b"]  # the pending call never started
    result = p.result
    assert set(result.states.values()) == {NodeState.CANCELLED}
    assert {f.node_id for f in result.failures} == {a.node_id, b.node_id, c.node_id}
    assert records_by_id(result)[c.node_id].start_s is None
    assert result.failures[2].reason == "user pressed stop"


async def test_cancel_reaps_calls_that_never_took_a_step() -> None:
    @tool
    async def never_runs() -> None:
        raise AssertionError("cancelled before its first step")

    async with asyncio.timeout(HANG_S), Program() as p:
        v = never_runs()
        p.cancel()  # same tick: the task exists but has not run
    assert p.result.states == {v.node_id: NodeState.CANCELLED}


async def test_cancel_a_program_with_a_blocking_sync_tool() -> None:
    @tool
    def blocks() -> None:
        time.sleep(1.0)

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        v = blocks()
        await asyncio.sleep(0.02)
        p.cancel()
    assert time.perf_counter() - start < 0.5  # the program does not wait for the thread
    assert p.result.states[v.node_id] is NodeState.CANCELLED


async def test_an_exception_in_the_body_cancels_the_program() -> None:
    cancelled: list[str] = []

    @tool
    async def long_call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("yes")
            raise

    program = Program()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="body failed"):
        async with asyncio.timeout(HANG_S), program as p:
            long_call()
            long_call()
            await asyncio.sleep(0.01)
            raise ValueError("body failed")
    assert time.perf_counter() - start < 1.0
    assert cancelled == ["yes", "yes"]
    assert set(p.result.states.values()) == {NodeState.CANCELLED}
    assert all("ValueError" in f.reason for f in p.result.failures)


async def test_the_deadline_cancels_at_exit() -> None:
    @tool
    async def slow() -> None:
        await asyncio.sleep(10)

    @tool
    async def quick() -> str:
        return "fast"

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program(deadline_in_s=0.1) as p:
        slow()
        q = quick()
    wall_s = time.perf_counter() - start
    assert 0.09 < wall_s < 0.6
    assert p.result.states == {"1": NodeState.CANCELLED, q.node_id: NodeState.DONE}
    assert "deadline of 0.1 s passed" in p.result.failures[0].reason


async def test_the_deadline_cancels_while_the_body_awaits() -> None:
    @tool
    async def slow() -> int:
        await asyncio.sleep(10)
        return 1

    start = time.perf_counter()
    with pytest.raises(CallFailedError, match="deadline of 0.1 s passed"):
        async with asyncio.timeout(HANG_S), Program(deadline_in_s=0.1) as p:
            await slow()
    assert time.perf_counter() - start < 0.6
    assert p.result.states == {"1": NodeState.CANCELLED}


async def test_the_deadline_reaches_the_graph_facts() -> None:
    before = time.time()
    async with Program(deadline_in_s=30, program_id="p-1") as p:
        remaining = p.deadline_remaining_s()
        facts = p.graph.facts
    assert facts is not None and facts.program_id == "p-1"
    assert facts.deadline_at_s == pytest.approx(facts.arrival_s + 30)
    assert before <= facts.arrival_s <= time.time()
    assert remaining is not None and 29 < remaining <= 30
    async with Program() as q:
        assert q.deadline_remaining_s() is None


# -- failure as state -------------------------------------------------------------------------------------


async def test_skips_propagate_through_chains() -> None:
    ran: list[str] = []

    @tool
    async def source() -> int:
        raise ValueError("no data")

    @tool
    async def step(x: int) -> int:
        ran.append("step")
        return x

    @tool
    async def independent() -> str:
        return "fine"

    async with asyncio.timeout(HANG_S), Program() as p:
        a = source()
        b = step(a)
        c = step(b)
        d = step(c)
        ok = independent()
    assert ran == []
    result = p.result
    assert result.states == {
        a.node_id: NodeState.FAILED,
        b.node_id: NodeState.SKIPPED,
        c.node_id: NodeState.SKIPPED,
        d.node_id: NodeState.SKIPPED,
        ok.node_id: NodeState.DONE,
    }
    assert result.outputs == {ok.node_id: "fine"}
    assert not result.ok
    assert result.failures[0] == Failure(
        node_id=a.node_id, target="source", state=NodeState.FAILED, reason="ToolError: ValueError: no data"
    )
    for failure in result.failures[1:]:
        assert failure.state is NodeState.SKIPPED
        assert failure.reason == f"dependency {a.node_id!r} failed: ToolError: ValueError: no data"


async def test_awaiting_failed_and_skipped_variables_raises_call_failed() -> None:
    @tool
    async def boom() -> int:
        raise RuntimeError("kaput")

    @tool
    async def use(x: int) -> int:
        return x

    async with asyncio.timeout(HANG_S), Program():
        a = boom()
        b = use(a)
        with pytest.raises(CallFailedError) as failed:
            await a
        with pytest.raises(CallFailedError) as skipped:
            await b
    assert (failed.value.node_id, failed.value.state) == (a.node_id, "failed")
    assert "kaput" in failed.value.reason
    assert (skipped.value.node_id, skipped.value.state) == (b.node_id, "skipped")
    assert a.state is NodeState.FAILED and not a.done()


async def test_nodes_added_after_others_finished() -> None:
    @tool
    async def produce(x: int) -> int:
        return x

    @tool
    async def boom() -> int:
        raise RuntimeError("kaput")

    @tool
    async def add_one(x: int) -> int:
        return x + 1

    async with asyncio.timeout(HANG_S), Program() as p:
        a = produce(1)
        bad = boom()
        assert await a == 1
        await p.wait()
        assert bad.state is NodeState.FAILED
        late = add_one(a)  # its input is done already: ready at once
        assert await late == 2
        late_bad = add_one(bad)  # its input failed already: skipped at once
        assert late_bad.state is NodeState.SKIPPED
        later = add_one(late)
    assert p.result.outputs[later.node_id] == 3
    assert p.result.states[late_bad.node_id] is NodeState.SKIPPED


async def test_incremental_ir_nodes_while_running() -> None:
    @tool
    async def slow(x: int) -> int:
        await asyncio.sleep(0.03)
        return x

    async with asyncio.timeout(HANG_S), Program(tools=[slow]) as p:
        p.submit(CallNode(id="a", kind=CallKind.TOOL, target="slow", args=(1,)))
        await asyncio.sleep(0.01)
        assert p.node_state("a") is NodeState.RUNNING
        p.submit(CallNode(id="b", kind=CallKind.TOOL, target="slow", args=(Ref("a"),)))
        p.submit_batch(
            [
                CallNode(id="d", kind=CallKind.TOOL, target="slow", kwargs={"x": Ref("c")}),
                CallNode(id="c", kind=CallKind.TOOL, target="slow", args=(Ref("b"),)),
            ]
        )
    assert p.result.outputs == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert p.graph.topological_order() == ["a", "b", "c", "d"]


async def test_new_node_id_does_not_collide_with_calls() -> None:
    @tool
    async def one() -> int:
        return 1

    async with Program(tools=[one]) as p:
        v = one()
        nid = p.new_node_id()
        p.submit(CallNode(id=nid, kind=CallKind.TOOL, target="one"))
        w = one()
    assert len({v.node_id, nid, w.node_id}) == 3
    assert p.result.ok and len(p.result.outputs) == 3


# -- trace --------------------------------------------------------------------------------------------


async def test_trace_of_a_known_dag() -> None:
    @tool
    async def sleep_ms(ms: int, after: list[Any] | None = None) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    async with asyncio.timeout(HANG_S), Program(program_id="known") as p:
        a = sleep_ms(40)
        b = sleep_ms(80, [a])  # the long branch
        c = sleep_ms(10, [a])
        d = sleep_ms(20, [b, c])
        e = sleep_ms(30)  # off the path
    trace = p.result.trace
    assert isinstance(trace, Trace) and trace.program_id == "known"
    records = {r.node_id: r for r in trace.records}
    assert list(records) == [a.node_id, b.node_id, c.node_id, d.node_id, e.node_id]
    for record in records.values():
        assert record.state is NodeState.DONE and record.attempts == 1
        assert record.start_s is not None and record.end_s is not None and record.end_s > record.start_s
    assert records[d.node_id].deps == (b.node_id, c.node_id)
    assert records[a.node_id].duration_s >= 0.04
    assert trace.critical_path == (a.node_id, b.node_id, d.node_id)
    assert 0.14 <= trace.critical_path_s < 0.14 + 0.06
    assert trace.wall_s >= trace.critical_path_s
    assert 0.7 < trace.parallel_efficiency <= 1.0
    assert trace.max_concurrency() == 2  # a with e, then b with c


async def test_render_timeline_has_a_row_per_call() -> None:
    @tool
    async def nap(ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    @tool
    async def boom() -> None:
        raise RuntimeError("x")

    async with asyncio.timeout(HANG_S), Program() as p:
        nap(20)
        nap(10)
        boom()
    text = p.result.trace.render_timeline(width=20)
    lines = text.splitlines()
    assert lines[0].startswith("call") and "timeline" in lines[0]
    assert len(lines) == 1 + 3 + 1
    assert lines[1].startswith("[1] nap") and "done" in lines[1] and "*" in lines[1]
    assert lines[2].startswith("[2] nap") and "#" in lines[2]
    assert "failed" in lines[3]
    assert all(line.count("|") == 2 for line in lines[1:4])
    assert lines[-1].startswith("wall ") and "critical path" in lines[-1] and "max parallel 3" in lines[-1]


async def test_trace_to_dict() -> None:
    @tool
    async def one() -> int:
        return 1

    async with Program(program_id="pid") as p:
        one()
    data = p.result.trace.to_dict()
    assert data["program_id"] == "pid" and data["critical_path"] == ["1"]
    assert data["records"][0]["node_id"] == "1" and data["records"][0]["state"] == "done"
    assert set(data) == {"program_id", "wall_s", "critical_path", "critical_path_s", "parallel_efficiency", "records"}


def test_parallel_efficiency_and_concurrency_of_hand_built_traces() -> None:
    assert Trace(program_id="p", wall_s=0.0, records=(), critical_path=(), critical_path_s=0.0).parallel_efficiency == 1
    trace = Trace(program_id="p", wall_s=2.0, records=(), critical_path=(), critical_path_s=1.5)
    assert trace.parallel_efficiency == 0.75
    assert trace.max_concurrency() == 0
    assert "max parallel 0" in trace.render_timeline()


async def test_an_empty_program() -> None:
    async with asyncio.timeout(HANG_S), Program() as p:
        pass
    assert p.result.ok and p.result.outputs == {} and p.result.trace.records == ()
    assert p.result.trace.critical_path == ()


# -- observers and the executor directly -------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def on_node_start(self, program_id: str, run: NodeRun) -> None:
        assert run.state is NodeState.RUNNING
        self.events.append(("start", program_id, run.node.id))

    def on_node_end(self, program_id: str, run: NodeRun) -> None:
        assert run.duration_s >= 0 and run.end_s is not None
        self.events.append(("end", run.node.id, run.state.value))


async def test_observers_see_every_start_and_end() -> None:
    @tool
    async def ok() -> int:
        return 1

    @tool
    async def bad() -> int:
        raise RuntimeError("x")

    recorder = Recorder()
    async with Program(program_id="obs", observers=[recorder]) as p:
        ok()
        bad()
    assert sorted(recorder.events) == sorted(
        [("start", "obs", "1"), ("start", "obs", "2"), ("end", "1", "done"), ("end", "2", "failed")]
    )
    assert p.result.states["2"] is NodeState.FAILED


async def test_the_executor_directly() -> None:
    @tool
    async def double(x: int) -> int:
        return 2 * x

    registry = ToolRegistry([double])
    executor = Executor(registry.get, facts=ProgramFacts(program_id="direct", arrival_s=time.time()))
    executor.submit(CallNode(id="1", kind=CallKind.TOOL, target="double", args=(2,)))
    executor.submit(CallNode(id="2", kind=CallKind.TOOL, target="double", args=(Ref("1"),)))
    assert await executor.future("2") == 8
    executor.close()
    with pytest.raises(UserError, match="closed"):
        executor.submit(CallNode(id="3", kind=CallKind.TOOL, target="double", args=(1,)))
    async with asyncio.timeout(HANG_S):
        result = await executor.wait()
    executor.shutdown()
    assert result.program_id == "direct" and result.outputs == {"1": 4, "2": 8} and result.ok
    assert executor.future("1").result() == 4  # a future made after the fact is settled at once


async def test_executor_rejects_a_bad_max_parallel() -> None:
    with pytest.raises(UserError, match="max_parallel"):
        Executor(ToolRegistry().get, facts=ProgramFacts(program_id="p", arrival_s=0.0), max_parallel=0)


# -- program misuse -----------------------------------------------------------------------------------------


async def test_program_misuse_is_a_user_error() -> None:
    @tool
    async def one() -> int:
        return 1

    with pytest.raises(UserError, match="deadline_in_s"):
        Program(deadline_in_s=0)
    with pytest.raises(UserError, match="async with"):
        _ = Program().graph
    program = Program()
    async with program as p:
        first = one()
    with pytest.raises(UserError, match="runs once"):
        async with program:
            pass
    with pytest.raises(UserError, match="closed"):
        p.call(one)
    async with Program() as other:
        with pytest.raises(UserError, match="belongs to another program"):
            other.call(one, first)
    assert p.result.outputs == {first.node_id: 1}


async def test_variables_are_awaitable_after_the_program_ends() -> None:
    @tool
    async def one() -> int:
        return 1

    async with Program() as p:
        v = one()
    assert v.done() and await v == 1
    assert repr(v) == f"<SemanticVariable ${v.node_id} from one (done)>"
    assert v.ref == Ref(v.node_id)
    assert p.result is p.result  # the final result is kept


async def test_program_result_while_running() -> None:
    @tool
    async def slow() -> None:
        await asyncio.sleep(0.02)

    async with Program() as p:
        v = slow()
        assert p.result.states == {v.node_id: NodeState.RUNNING}
        assert p.result.failures == ()
        assert p.result.ok  # nothing failed yet


# -- callees run outside the program --------------------------------------------------------------------


async def test_a_tool_calling_another_tool_calls_its_function() -> None:
    @tool
    def inner(x: int) -> int:
        return x * 10

    @tool
    def outer_sync(x: int) -> int:
        return inner(x) + 1  # in a worker thread: a plain call, never a node scheduled from the thread

    @tool
    async def inner_async(x: int) -> int:
        return x * 100

    @tool
    async def outer_async(x: int) -> int:
        return await inner_async(x) + inner(x)

    async with asyncio.timeout(HANG_S), Program() as p:
        a = outer_sync(2)
        b = outer_async(3)
        assert await a == 21 and await b == 330
        c = outer_sync(4)  # runs after the block exits, and behaves the same
    assert p.result.outputs == {a.node_id: 21, b.node_id: 330, c.node_id: 41}
    assert len(p.graph) == 3  # the nested calls added no nodes


async def test_an_abandoned_blocking_call_does_not_hold_up_later_sync_calls() -> None:
    @tool(timeout_s=0.03)
    def hogs_its_thread() -> None:
        time.sleep(1.0)

    @tool
    def quick() -> str:
        return "quick"

    async with asyncio.timeout(HANG_S), Program(max_parallel=1) as p:
        hogs_its_thread()
        await asyncio.sleep(0.06)  # timed out; its thread still sleeps
        start = time.perf_counter()
        v = quick()
        assert await v == "quick"
        waited_s = time.perf_counter() - start
    assert waited_s < 0.5  # not the 0.9 s left on the abandoned thread
    assert p.result.states["1"] is NodeState.FAILED


async def test_an_outer_timeout_cancels_the_program_cleanly() -> None:
    recorder = Recorder()

    @tool
    async def slow() -> None:
        await asyncio.sleep(10)

    program = Program(observers=[recorder])
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), program:
            await slow()
    assert time.perf_counter() - start < 0.5
    assert program.result.states == {"1": NodeState.CANCELLED}
    assert recorder.events[-1] == ("end", "1", "cancelled")
    assert "CancelledError" in program.result.failures[0].reason
