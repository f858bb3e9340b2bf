"""Expected durations, declared or learned from measured calls, and the one metadata issuer.

A tool's expected duration is the one it declares, else the one learned from the calls the
executor measures; the issuer's turn counter is shared by every LLM call of a program.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

from agentflow import Program, semantic_function, tool
from agentflow.exceptions import ToolDefinitionError
from agentflow.ir import CallKind, CallNode, ProgramFacts
from agentflow.testing import ScriptedLLM
from agentflow.tools import ToolRegistry
from executor import DurationEstimates, Executor, MetadataIssuer
from planner import compile_and_run

HANG_S = 10


@tool(expected_duration_s=2.5)
async def fetch(url: str) -> str:
    """Fetch a page (declared: 2.5 s)."""
    return f"page {url}"


@tool
async def nap(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


@semantic_function(max_tokens=8)
def summarize(text: str) -> str:
    """Summarize: {text}"""


# -- the estimates ----------------------------------------------------------------------------------------


def test_estimates_start_empty_then_follow_the_measurements() -> None:
    estimates = DurationEstimates(weight=0.5)
    assert estimates.expected_s("t") is None
    estimates.observe("t", 1.0)
    assert estimates.expected_s("t") == 1.0
    estimates.observe("t", 3.0)
    assert estimates.expected_s("t") == 2.0  # half the way to the new sample
    for garbage in (-1.0, math.nan, math.inf):
        estimates.observe("t", garbage)
    assert estimates.expected_s("t") == 2.0 and estimates.snapshot() == {"t": 2.0}
    with pytest.raises(ValueError, match="weight"):
        DurationEstimates(weight=0.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "3", True])
def test_a_negative_or_non_finite_declared_duration_is_refused_at_decoration(bad: Any) -> None:
    with pytest.raises(ToolDefinitionError, match="expected_duration_s"):

        @tool(expected_duration_s=bad)
        def f() -> None:
            """Nothing."""

    with pytest.raises(ToolDefinitionError, match="expected_duration_s"):

        @semantic_function(expected_duration_s=bad)
        def g() -> str:
            """Nothing."""


async def test_the_executor_gives_every_node_an_expected_duration() -> None:
    estimates = DurationEstimates()
    async with asyncio.timeout(HANG_S), Program(estimates=estimates) as p:
        a = fetch("x")
        b = nap(0.05)
        await asyncio.gather(a, b)
    graph = p.graph
    assert graph[a.node_id].expected_duration_s == 2.5  # declared
    assert graph[b.node_id].expected_duration_s is None  # nothing measured yet
    assert estimates.expected_s("nap") == pytest.approx(0.05, abs=0.04)
    async with asyncio.timeout(HANG_S), Program(estimates=estimates) as q:
        c = nap(0.01)
        await c
    assert q.graph[c.node_id].expected_duration_s == pytest.approx(0.05, abs=0.04)  # learned
    # A declared duration wins over what was measured; the measurement is learned all the same.
    assert estimates.expected_s("fetch") is not None and estimates.expected_s("fetch") < 1.0


async def test_a_node_that_brings_its_own_expected_duration_keeps_it() -> None:
    registry = ToolRegistry([fetch])
    facts = ProgramFacts(program_id="p", arrival_s=0.0)
    executor = Executor(registry.get, facts=facts, estimates=DurationEstimates())
    executor.submit(CallNode(id="1", kind=CallKind.TOOL, target="fetch", args=("u",), expected_duration_s=9.0))
    executor.close()
    await asyncio.wait_for(executor.wait(), HANG_S)
    assert executor.graph["1"].expected_duration_s == 9.0


async def test_llm_calls_carry_the_next_tools_duration_and_the_critical_path() -> None:
    llm = ScriptedLLM(lambda request: "short")
    async with asyncio.timeout(HANG_S), Program(model=llm, estimates=DurationEstimates(), deadline_in_s=60):
        page = fetch(summarize("topic"))
        await summarize(page)
    first, second = (r.metadata for r in llm.requests)
    assert first is not None and second is not None
    assert first.next_tool == "fetch" and first.next_tool_duration_s == 2.5
    assert first.critical_path_s == 2.5  # summarize (not measured yet) + fetch 2.5 + summarize
    assert first.deadline_at_s is not None and second.turn == 1


def test_the_issuer_numbers_turns_and_stamps_the_program_facts() -> None:
    issuer = MetadataIssuer(ProgramFacts(program_id="p", arrival_s=100.0, deadline_at_s=160.0))
    first = issuer.issue(next_tool="grep", next_tool_duration_s=0.3)
    last = issuer.issue(is_last_turn=True)
    assert (first.turn, last.turn) == (0, 1) and issuer.num_issued == 2
    assert first.program_arrival_s == 100.0 and first.deadline_at_s == 160.0 and first.next_tool == "grep"
    assert last.is_last_turn and last.next_tool is None


async def test_a_planner_program_has_one_turn_counter_and_feeds_urgency() -> None:
    plan = '1. summarize("topic")\n2. fetch($1)\n3. join()'
    finish = json.dumps({"thought": "done", "action": "finish", "answer": "ok"})
    llm = ScriptedLLM([plan, "a summary", finish])
    registry = ToolRegistry([summarize, fetch])
    result = await asyncio.wait_for(
        compile_and_run("the task", tools=registry, model=llm, use_grammar=False, stream=False, max_replans=0), HANG_S
    )
    assert result.ok
    plan_md, step_md, join_md = (r.metadata for r in llm.requests)
    assert plan_md is not None and step_md is not None and join_md is not None
    assert [plan_md.turn, step_md.turn, join_md.turn] == [0, 1, 2]  # plan, the plan's LLM step, the joiner
    assert step_md.next_tool == "fetch" and step_md.next_tool_duration_s == 2.5
    assert step_md.critical_path_s is not None and step_md.critical_path_s >= 2.5
    assert join_md.is_last_turn and {m.program_id for m in (plan_md, step_md, join_md)} == {result.run.program_id}
    assert result.run.outputs["2"] == "page a summary"
