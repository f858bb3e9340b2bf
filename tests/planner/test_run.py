"""compile_and_run end to end on a scripted LLM: streaming, joiner, replans, failures, bounds."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentflow.backends import LLMRequest
from agentflow.exceptions import UserError
from agentflow.ir import CallKind, NodeState
from agentflow.testing import ScriptedLLM
from agentflow.tools import ToolRegistry, tool
from planner import Finish, PlannerOptions, Replan, compile_and_run

FINISH = json.dumps({"thought": "done", "action": "finish", "answer": "42"})


def _replan(reason: str) -> str:
    return json.dumps({"thought": "hmm", "action": "replan", "reason": reason})


async def _run(registry: ToolRegistry, llm: ScriptedLLM, **kwargs: object) -> object:
    async with asyncio.timeout(20):  # a hang is a failure, not a stuck suite
        return await compile_and_run("the task", tools=registry, model=llm, **kwargs)  # type: ignore[arg-type]


async def test_plan_runs_and_the_joiner_finishes(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(['1. lookup("a")\n2. lookup("b")\n3. pack([$1, $2])\n4. join()', FINISH])
    result = await _run(registry, llm)
    assert result.ok and result.answer == "42" and result.status == "finished"
    assert result.replans == 0
    assert result.run.outputs["3"] == {"items": ["value of a", "value of b"], "meta": None}
    assert isinstance(result.rounds[0].decision, Finish)
    joiner_prompt = llm.requests[1].messages[-1]["content"]
    assert "3. pack([$1, $2]) -> {" in joiner_prompt and "value of a" in joiner_prompt
    assert llm.requests[0].metadata.program_id == result.run.program_id
    assert "Timeline" in result.render() and "Answer: 42" in result.render()
    json.dumps(result.to_dict())  # JSON-ready


async def test_streaming_starts_calls_before_the_plan_is_written(registry: ToolRegistry) -> None:
    plan = "\n".join([f'{i}. slow("k{i}", delay_s=0.05)' for i in range(1, 7)] + ["7. join()"])
    streamed = await _run(registry, ScriptedLLM([plan, FINISH], tokens_per_s=40))
    batch = await _run(registry, ScriptedLLM([plan, FINISH], tokens_per_s=40), stream=False)
    first = streamed.rounds[0]
    assert streamed.first_tool_start_s < first.plan_end_s - 0.2  # the first call ran while the plan streamed
    assert batch.first_tool_start_s >= batch.rounds[0].plan_end_s - 0.01
    assert streamed.first_tool_start_s < batch.first_tool_start_s
    assert batch.trace.max_concurrency() == 6  # all six were ready at once
    assert [n.id for n in streamed.rounds[0].nodes] == [n.id for n in batch.rounds[0].nodes]


async def test_garbage_plan_is_fed_back_and_the_replan_finishes(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(["I think we should look things up.", '1. lookup("a")\n2. join()', FINISH])
    result = await _run(registry, llm)
    assert result.ok and result.replans == 1
    error = result.rounds[0].error
    assert error is not None and error.line_no == 1 and "not a plan line" in error.message
    replan_prompt = llm.requests[1].messages[-1]["content"]
    assert "The plan was rejected" in replan_prompt and "not a plan line" in replan_prompt


async def test_a_streamed_plan_that_breaks_midway_keeps_its_results_for_the_replan() -> None:
    calls: list[str] = []

    @tool
    def fetch(key: str) -> str:
        """Fetch."""
        calls.append(key)
        return key.upper()

    registry = ToolRegistry([fetch])
    llm = ScriptedLLM(['1. fetch("a")\n2. fetch($7)\n3. join()', '2. fetch("${1}!")\n3. join()', FINISH])
    result = await _run(registry, llm)
    assert result.ok
    assert result.rounds[0].error is not None and result.rounds[0].error.line_no == 2
    assert calls == ["a", "A!"]  # step 1 ran once; the bad step 2 never ran; the replan reused $1
    assert "Number its steps from 2" in llm.requests[1].messages[-1]["content"]
    assert '1. fetch("a") -> A' in llm.requests[1].messages[-1]["content"]


async def test_joiner_replan_never_repeats_executed_steps() -> None:
    calls: list[str] = []

    @tool
    def fetch(key: str) -> str:
        """Fetch."""
        calls.append(key)
        return f"<{key}>"

    registry = ToolRegistry([fetch])
    llm = ScriptedLLM(
        ['1. fetch("a")\n2. join()', _replan("need b too"), '2. fetch("b")\n3. fetch("$1 and $2")\n4. join()', FINISH]
    )
    result = await _run(registry, llm)
    assert result.ok and result.replans == 1
    assert isinstance(result.rounds[0].decision, Replan) and result.rounds[0].decision.reason == "need b too"
    assert calls == ["a", "b", "<a> and <b>"]
    assert [r.node_id for r in result.trace.records] == ["1", "2", "3"]
    assert "need b too" in llm.requests[2].messages[-1]["content"]


async def test_tool_failures_reach_the_joiner_as_observations(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(
        [
            '1. explode("boom")\n2. lookup($1)\n3. lookup("ok")\n4. join()',
            _replan("1 failed"),
            '5. lookup("other")\n6. join()',
            FINISH,
        ]
    )
    result = await _run(registry, llm)
    joiner_prompt = llm.requests[1].messages[-1]["content"]
    assert '1. explode("boom") -> failed:' in joiner_prompt and "boom" in joiner_prompt
    assert "2. lookup($1) -> skipped:" in joiner_prompt
    assert '3. lookup("ok") -> value of ok' in joiner_prompt
    assert result.ok and result.replans == 1
    assert {f.node_id: f.state for f in result.failures} == {"1": NodeState.FAILED, "2": NodeState.SKIPPED}


async def test_without_joining_the_first_plan_that_parses_is_run_and_nothing_more(registry: ToolRegistry) -> None:
    """`join=False` (function-calling evaluations): the calls are the answer; no joiner call, no replan."""
    llm = ScriptedLLM(["no plan here", '1. lookup("a")\n2. lookup("b")\n3. join()'])
    result = await _run(registry, llm, options=PlannerOptions(join=False))
    assert len(llm.requests) == 2  # the rejected plan, its replan; never a joiner
    assert result.status == "executed" and result.answer is None and result.reason is None
    assert not result.joined and result.rounds[-1].decision is None
    assert sorted(result.run.outputs) == ["1", "2"]


async def test_without_joining_a_run_whose_plans_never_parse_still_fails(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(lambda request: "1. lookup(\n")
    result = await _run(registry, llm, options=PlannerOptions(join=False, max_replans=1))
    assert result.status == "failed" and "no answer after 1 replan(s)" in (result.reason or "")


async def test_max_replans_exhausted_gives_a_failed_result_not_a_hang(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(lambda request: "1. lookup(\n")  # always truncated
    result = await _run(registry, llm, max_replans=2)
    assert not result.ok and result.status == "failed" and result.answer is None
    assert "no answer after 2 replan(s)" in (result.reason or "")
    assert len(llm.requests) == 3  # the first plan and two replans; the joiner never ran
    assert all(r.error is not None for r in result.rounds)


async def test_a_joiner_that_keeps_replanning_stops_at_max_replans(registry: ToolRegistry) -> None:
    def script(request: LLMRequest) -> str:
        if request.messages[0]["content"].startswith("You write plans"):
            done = request.messages[-1]["content"].count(" -> ")
            return f'{done + 1}. lookup("x")\n{done + 2}. join()'
        return _replan("not enough")

    llm = ScriptedLLM(script)
    result = await _run(registry, llm, max_replans=1)
    assert not result.ok and "not enough" in (result.reason or "")
    last_join = llm.requests[-1].messages[-1]["content"]
    assert "No more plans can be made" in last_join and "Replan(" not in last_join


async def test_grammar_and_schema_are_used_when_the_backend_enforces_them(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(["1. now()\n2. join()", FINISH], supports_grammar=True)
    result = await _run(registry, llm)
    plan_request, join_request = llm.requests
    assert result.rounds[0].grammar and plan_request.grammar is not None and 'step1 ::= "1. "' in plan_request.grammar
    assert join_request.json_schema is not None and "anyOf" in join_request.json_schema
    prompt_only = ScriptedLLM(["1. now()\n2. join()", "Thought: ok\nAction: Finish(noon)"], supports_grammar=True)
    result = await _run(registry, prompt_only, use_grammar=False)
    assert prompt_only.requests[0].grammar is None and prompt_only.requests[0].stop == ("<END_OF_PLAN>",)
    assert prompt_only.requests[1].json_schema is None and result.answer == "noon"


async def test_last_round_joiner_schema_only_admits_finish(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(["1. now()\n2. join()", FINISH], supports_grammar=True)
    await _run(registry, llm, max_replans=0)
    schema = llm.requests[1].json_schema
    assert schema is not None and schema["properties"]["action"] == {"const": "finish"}


async def test_plans_call_semantic_functions_as_llm_nodes(registry: ToolRegistry) -> None:
    def script(request: LLMRequest) -> str:
        content = request.messages[-1]["content"]
        if content.startswith("Describe"):
            return "small blue thing"
        if request.messages[0]["content"].startswith("You write plans"):
            return '1. lookup("sky")\n2. describe($1)\n3. join()'
        return FINISH

    result = await _run(registry, ScriptedLLM(script))
    assert result.run.outputs["2"] == "small blue thing"
    kinds = {r.node_id: r.kind for r in result.trace.records}
    assert kinds == {"1": CallKind.TOOL, "2": CallKind.LLM}


async def test_batch_mode_rejects_a_bad_plan_before_anything_runs(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(['1. lookup("a")\n2. nosuch()\n3. join()', '1. lookup("b")\n2. join()', FINISH])
    result = await _run(registry, llm, stream=False)
    assert result.ok and result.rounds[0].error is not None
    assert result.rounds[0].nodes == ()
    assert [r.node_id for r in result.trace.records] == ["1"] and result.run.outputs["1"] == "value of b"


async def test_unreadable_joiner_text_is_taken_as_the_answer(registry: ToolRegistry) -> None:
    result = await _run(registry, ScriptedLLM(["1. now()\n2. join()", "It is noon."]))
    assert result.answer == "It is noon."


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="max_replans"):
        PlannerOptions(max_replans=-1)


async def test_a_replan_that_repeats_finished_calls_reuses_their_results() -> None:
    calls: list[str] = []

    @tool
    def fetch(key: str) -> str:
        """Fetch."""
        calls.append(key)
        return key.upper()

    @tool
    def join_words(words: list[str]) -> str:
        """Join."""
        calls.append("join_words")
        return " ".join(words)

    registry = ToolRegistry([fetch, join_words])
    first = '1. fetch("a")\n2. fetch("b")\n3. join()'
    again = '3. fetch("a")\n4. fetch("b")\n5. fetch("c")\n6. join_words([$3, $4, $5])\n7. join()'
    llm = ScriptedLLM([first, _replan("combine them"), again, FINISH])
    result = await _run(registry, llm)
    assert result.ok
    assert calls == ["a", "b", "c", "join_words"]  # a and b ran once
    assert result.rounds[1].reused == {"3": "1", "4": "2"}
    combine = result.rounds[1].nodes[-1]
    assert combine.deps == ("1", "2", "5") and combine.label == "6. join_words([$1, $2, $5])"
    assert result.run.outputs["6"] == "A B C"
    assert "not run again" in result.render()


def test_sync_wrapper(registry: ToolRegistry) -> None:
    from planner import compile_and_run_sync

    result = compile_and_run_sync("t", tools=registry, model=ScriptedLLM(["1. now()\n2. join()", FINISH]))
    assert result.answer == "42" and result.run.outputs == {"1": "noon"}
