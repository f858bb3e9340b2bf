"""Native mode, multi-turn: BFCL's prompting loop over BFCL's real backends, as an agentflow program."""

from __future__ import annotations

import pytest

from agentflow.backends import LLMRequest
from agentflow.testing import ScriptedLLM
from workloads.bfcl._data import BfclRecord, load_category
from workloads.bfcl._native import instantiate_backends, run_native
from workloads.bfcl._scripted import ground_truth_replies


def _record(category: str, index: int = 0) -> BfclRecord:
    item = load_category(category)[index]
    assert isinstance(item, BfclRecord)
    return item


def _contents(request: LLMRequest) -> list[str]:
    assert request.messages is not None
    return [m["content"] for m in request.messages]


async def test_prompt_feedback_and_state_follow_bfcl() -> None:
    record = _record("multi_turn_base")  # turn 0: cd document, mkdir temp, mv final_report.pdf temp
    model = ScriptedLLM(ground_truth_replies(record))
    inference = await run_native(record, model, max_tokens=64)
    assert inference.score is not None and inference.score.valid

    first = model.requests[0]
    assert first.messages is not None and first.messages[0]["role"] == "system"
    assert "You are an expert in composing functions" in first.messages[0]["content"]
    assert '"name": "mkdir"' in first.messages[0]["content"]  # the function docs, as JSON
    assert first.messages[1]["content"].startswith("Move 'final_report.pdf'")
    assert first.metadata is not None and first.metadata.program_id.startswith("bfcl-multi_turn_base_0-")

    feedback = _contents(model.requests[1])[-1]  # the tool results come back as a user message
    assert model.requests[1].messages[-1]["role"] == "user"  # type: ignore[index]
    assert feedback.startswith("[{'role': 'tool', 'name': \"cd(folder='document')\"")
    assert inference.calls[:3] == [{"name": n, "ok": True} for n in ("cd", "mkdir", "mv")]


async def test_a_wrong_call_changes_the_backend_state_and_fails_the_checker() -> None:
    record = _record("multi_turn_base")
    replies = ground_truth_replies(record)
    replies[0] = "[cd(folder='document'), mkdir(dir_name='temporary')]"  # not the directory asked for
    inference = await run_native(record, ScriptedLLM(replies), max_tokens=64)
    assert inference.score is not None and not inference.score.valid
    assert inference.score.error_type is not None and inference.score.error_type.startswith("multi_turn:")


async def test_tool_errors_are_fed_back_like_bfcls_executor() -> None:
    record = _record("multi_turn_base")
    model = ScriptedLLM(["[cd(folder=3, nope=1), no_such_function(x=1)]", "", "", "", ""])
    inference = await run_native(record, model, max_tokens=64)
    feedback = _contents(model.requests[1])[-1]
    assert "Error during execution: ArgumentValidationError" in feedback
    assert "Error during execution: name 'no_such_function' is not defined" in feedback
    assert [c["ok"] for c in inference.calls] == [False, False]
    assert inference.score is not None and not inference.score.valid


async def test_held_back_functions_are_announced_at_their_turn() -> None:
    record = _record("multi_turn_miss_func")
    (turn,) = record.missed_function  # e.g. {"3": [sort's doc]}
    assert all(d["name"] not in {f["name"] for f in record.functions} for d in record.missed_function[turn])
    model = ScriptedLLM(ground_truth_replies(record))
    inference = await run_native(record, model, max_tokens=64)
    assert inference.score is not None and inference.score.valid
    announced = [r for r in model.requests if "I have updated some more functions" in _contents(r)[-1]]
    assert len(announced) == 1


async def test_step_limit_forces_a_quit() -> None:
    record = _record("multi_turn_base")
    inference = await run_native(record, ScriptedLLM(lambda request: "[pwd()]"), max_tokens=16)
    assert inference.force_quit
    assert inference.llm_calls == 21  # BFCL's MAXIMUM_STEP_LIMIT (20) + 1 steps, then the record ends
    assert inference.score is not None and inference.score.error_type == "multi_turn:force_terminated"


def test_backends_are_fresh_per_record() -> None:
    record = _record("multi_turn_base")
    first, second = instantiate_backends(record), instantiate_backends(record)
    fs = first["GorillaFileSystem"]
    fs.mkdir(dir_name="only_here")
    assert "only_here" in fs.ls()["current_directory_content"]
    assert "only_here" not in second["GorillaFileSystem"].ls()["current_directory_content"]


@pytest.mark.parametrize("category", ["multi_turn_miss_param", "multi_turn_long_context"])
async def test_ground_truth_replay_passes(category: str) -> None:
    record = _record(category, 1)
    inference = await run_native(record, ScriptedLLM(ground_truth_replies(record)), max_tokens=64)
    assert inference.score is not None and inference.score.valid, inference.score
