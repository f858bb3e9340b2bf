"""Issue 2's bad input, one test each: the runtime turns it into state or a typed error, never a hang."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentflow.backends import resolve_backend
from agentflow.exceptions import (
    BackendConfigError,
    CycleError,
    EngineError,
    UnknownNodeError,
    UnknownToolError,
)
from agentflow.ir import CallKind, CallNode, NodeState, Ref
from agentflow.program import Program
from agentflow.tools import tool

HANG_S = 5.0


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever reaches the loop's exception handler ("Task exception was never retrieved", ...)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    gc.collect()  # unretrieved task exceptions are reported when the task is collected
    loop.set_exception_handler(None)


# -- (1) arguments that fail validation ---------------------------------------------------------------


async def test_invalid_arguments_fail_the_node_and_the_tool_never_runs() -> None:
    runs = 0

    @tool
    def book(city: str, nights: int) -> str:
        nonlocal runs
        runs += 1
        return city

    @tool
    def confirm(booking: str) -> str:
        nonlocal runs
        runs += 1
        return booking

    async with asyncio.timeout(HANG_S), Program() as p:
        v = book("Rome", nights="three")
        w = confirm(v)
    assert runs == 0
    result = p.result
    assert result.states == {v.node_id: NodeState.FAILED, w.node_id: NodeState.SKIPPED}
    reason = result.failures[0].reason
    assert reason.startswith("ArgumentValidationError: invalid arguments for 'book'")
    assert "nights: Input should be a valid integer" in reason and "'three'" in reason


async def test_arguments_from_a_variable_are_validated_too() -> None:
    runs = 0

    @tool
    async def produce() -> str:
        return "not a number"

    @tool
    async def needs_int(n: int) -> int:
        nonlocal runs
        runs += 1
        return n

    async with asyncio.timeout(HANG_S), Program() as p:
        v = needs_int(produce())
    assert runs == 0
    assert p.result.states[v.node_id] is NodeState.FAILED
    assert "n: Input should be a valid integer" in p.result.failures[0].reason


async def test_missing_and_extra_arguments_fail_the_node() -> None:
    runs = 0

    @tool
    async def one_arg(x: int) -> int:
        nonlocal runs
        runs += 1
        return x

    async with asyncio.timeout(HANG_S), Program() as p:
        one_arg()
        one_arg(1, 2)
        one_arg(1, y=2)
    assert runs == 0
    reasons = [f.reason for f in p.result.failures]
    assert "x: Field required" in reasons[0]
    assert "takes 1 arguments but 2 were given" in reasons[1]
    assert "y: Extra inputs are not permitted" in reasons[2]


# -- (2) a tool that raises, a tool that passes its timeout ----------------------------------------------


async def test_a_raising_tool_and_a_timed_out_tool_become_failures(loop_errors: list[dict[str, Any]]) -> None:
    downstream_runs = 0

    @tool
    def explodes(city: str) -> str:
        raise KeyError(city)

    @tool(timeout_s=0.05)
    async def too_slow() -> str:
        await asyncio.sleep(10)
        return "never"

    @tool
    async def combine(a: str, b: str) -> str:
        nonlocal downstream_runs
        downstream_runs += 1
        return a + b

    @tool
    async def fine() -> str:
        return "ok"

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        a = explodes("Atlantis")
        b = too_slow()
        c = combine(a, b)
        d = combine(c, fine())
        e = fine()
    assert time.perf_counter() - start < 1.0
    assert downstream_runs == 0
    result = p.result
    assert not result.ok
    assert result.outputs[e.node_id] == "ok"
    by_id = {f.node_id: f for f in result.failures}
    assert set(by_id) == {a.node_id, b.node_id, c.node_id, d.node_id}
    assert by_id[a.node_id].state is NodeState.FAILED
    assert by_id[a.node_id].reason == "ToolError: KeyError: 'Atlantis'"
    assert by_id[b.node_id].state is NodeState.FAILED
    assert by_id[b.node_id].reason == "ToolTimeoutError: tool 'too_slow' timed out after 0.05 s"
    for skipped in (c, d):
        assert by_id[skipped.node_id].state is NodeState.SKIPPED
        assert by_id[skipped.node_id].reason.startswith("dependency ")
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_a_failed_program_exits_its_block_normally() -> None:
    @tool
    async def boom() -> None:
        raise RuntimeError("nothing to see")

    async with asyncio.timeout(HANG_S), Program() as p:
        boom()  # never awaited: the failure is state, not an exception out of the block
    assert p.result.failures[0].reason == "ToolError: RuntimeError: nothing to see"


# -- (3) cycles, unknown nodes, unknown tools ----------------------------------------------------------


def _counting_tool() -> tuple[Any, list[int]]:
    runs: list[int] = []

    @tool
    async def step(x: Any = None) -> int:
        runs.append(1)
        return 1

    return step, runs


async def test_a_cycle_is_a_typed_error_before_anything_runs() -> None:
    step, runs = _counting_tool()
    batch = [
        CallNode(id="1", kind=CallKind.TOOL, target="step"),  # valid on its own: must not run either
        CallNode(id="2", kind=CallKind.TOOL, target="step", args=(Ref("4"),)),
        CallNode(id="3", kind=CallKind.TOOL, target="step", args=(Ref("2"),)),
        CallNode(id="4", kind=CallKind.TOOL, target="step", args=(Ref("3"),)),
    ]
    async with asyncio.timeout(HANG_S), Program(tools=[step]) as p:
        with pytest.raises(CycleError) as info:
            p.submit_batch(batch)
        await asyncio.sleep(0.01)
        assert len(p.graph) == 0
    assert runs == []
    assert set(info.value.cycle) == {"2", "3", "4"}
    assert p.result.states == {}


async def test_a_self_reference_is_a_cycle() -> None:
    with pytest.raises(CycleError):
        CallNode(id="1", kind=CallKind.TOOL, target="step", args=(Ref("1"),))


async def test_a_reference_to_an_unknown_node_is_a_typed_error_before_anything_runs() -> None:
    step, runs = _counting_tool()
    async with asyncio.timeout(HANG_S), Program(tools=[step]) as p:
        with pytest.raises(UnknownNodeError) as info:
            p.submit(CallNode(id="a", kind=CallKind.TOOL, target="step", args=(Ref("ghost"),)))
        with pytest.raises(UnknownNodeError):
            p.submit_batch(
                [
                    CallNode(id="b", kind=CallKind.TOOL, target="step"),
                    CallNode(id="c", kind=CallKind.TOOL, target="step", kwargs={"x": [Ref("ghost")]}),
                ]
            )
        await asyncio.sleep(0.01)
    assert runs == []
    assert (info.value.node_id, info.value.referenced_by) == ("ghost", "a")
    assert p.result.states == {}


async def test_an_unknown_tool_is_a_typed_error_before_anything_runs() -> None:
    step, runs = _counting_tool()
    async with asyncio.timeout(HANG_S), Program(tools=[step]) as p:
        with pytest.raises(UnknownToolError, match=r"unknown tool 'teleport' \(known: step\)"):
            p.submit(CallNode(id="1", kind=CallKind.TOOL, target="teleport"))
        with pytest.raises(UnknownToolError):
            p.submit_batch(
                [
                    CallNode(id="2", kind=CallKind.TOOL, target="step"),
                    CallNode(id="3", kind=CallKind.TOOL, target="teleport", args=(Ref("2"),)),
                ]
            )
        await asyncio.sleep(0.01)
        assert len(p.graph) == 0
    assert runs == []
    assert p.result.states == {}


async def test_the_program_keeps_working_after_a_rejected_batch() -> None:
    step, runs = _counting_tool()
    async with asyncio.timeout(HANG_S), Program(tools=[step]) as p:
        with pytest.raises(UnknownToolError):
            p.submit_batch([CallNode(id="1", kind=CallKind.TOOL, target="nope")])
        p.submit_batch([CallNode(id="1", kind=CallKind.TOOL, target="step")])  # the id is still free
    assert runs == [1] and p.result.ok


# -- (4) a blocking sync tool does not stall other calls ---------------------------------------------------


async def test_a_blocking_sync_tool_does_not_stall_async_calls() -> None:
    @tool
    def blocking(seconds: float) -> str:
        time.sleep(seconds)  # blocks its thread, not the event loop
        return "woke"

    @tool
    async def quick(i: int, prev: int | None = None) -> int:
        await asyncio.sleep(0.005)
        return i

    async with asyncio.timeout(HANG_S), Program() as p:
        blocker = blocking(0.3)
        chain = quick(0)
        for i in range(1, 10):  # ten dependent steps: each needs the loop while the blocker sleeps
            chain = quick(i, chain)
        first_done = await chain
        blocker_state = blocker.state
    assert first_done == 9
    assert blocker_state is NodeState.RUNNING  # the async work finished while the tool still blocked
    records = {r.node_id: r for r in p.result.trace.records}
    assert records[chain.node_id].end_s < records[blocker.node_id].end_s
    assert p.result.outputs[blocker.node_id] == "woke"


async def test_several_blocking_tools_overlap_in_threads() -> None:
    @tool
    def blocking(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program() as p:
        for _ in range(4):
            blocking(0.2)
    wall_s = time.perf_counter() - start
    assert wall_s < 0.6  # serially 0.8 s
    assert p.result.trace.max_concurrency() == 4
    assert p.result.ok


# -- (5) engine missing, model conversion failing, a bad model string ------------------------------------


# (Missing engine and model-conversion messages: tests/serving/test_model_prep.py.)


@pytest.mark.parametrize("spec", ["bogus:x", "gpt-4", "openai", "vllm:", "litellm:"])
def test_a_bad_model_string_lists_the_forms(spec: str) -> None:
    with pytest.raises(BackendConfigError) as info:
        resolve_backend(spec)
    message = str(info.value)
    for form in ("embedded", "vllm:MODEL@URL", "openai:MODEL[@URL]", "litellm:PROVIDER/MODEL"):
        assert form in message
    assert isinstance(info.value, EngineError)


def test_a_non_backend_object_is_a_config_error() -> None:
    with pytest.raises(BackendConfigError, match="neither a model string nor an LLMBackend"):
        resolve_backend(42)  # type: ignore[arg-type]


async def test_a_bad_model_string_fails_the_llm_node_not_the_program() -> None:
    from agentflow.semantic import semantic_function

    @semantic_function
    def ask(q: str) -> str:
        """Answer: {q}"""

    async with asyncio.timeout(HANG_S), Program(model="bogus:x") as p:
        v = ask("hi")
    assert p.result.states[v.node_id] is NodeState.FAILED
    assert p.result.failures[0].reason.startswith("BackendConfigError: unknown model string 'bogus:x'")
