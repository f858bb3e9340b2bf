"""FC mode: BFCL records answered by native tool calls (`Completion.tool_calls`), as BFCL's FC column."""

from __future__ import annotations

import json

from agentflow.testing import ScriptedLLM
from workloads.bfcl._data import BfclRecord, load_category
from workloads.bfcl._fc import fc_tools, run_fc
from workloads.bfcl._scripted import ground_truth_tool_calls


def _record(category: str, index: int = 0) -> BfclRecord:
    item = load_category(category)[index]
    assert isinstance(item, BfclRecord)
    return item


def test_function_docs_become_openai_tools_with_bfcl_names_mapped_back() -> None:
    record = next(
        r for r in load_category("simple_python") if isinstance(r, BfclRecord) and "." in r.functions[0]["name"]
    )
    tools = fc_tools(record.functions)
    (spec,) = tools.specs
    assert spec["type"] == "function" and "." not in spec["function"]["name"]  # OpenAI names: no dots
    assert spec["function"]["parameters"]["type"] == "object"  # BFCL's "dict" is JSON schema's object
    assert tools.original[spec["function"]["name"]] == record.functions[0]["name"]


async def test_the_request_carries_tools_and_no_bfcl_system_prompt() -> None:
    record = _record("simple_python")
    model = ScriptedLLM(ground_truth_tool_calls(record), native_tool_calls=True)
    inference = await run_fc(record, model, max_tokens=64)
    assert inference.score is not None and inference.score.valid, inference.score
    (request,) = model.requests
    assert request.tools is not None and request.tool_choice == "auto"
    assert request.messages is not None and all(m["role"] != "system" for m in request.messages)


async def test_a_reply_that_is_not_a_valid_tool_call_is_scored_invalid_with_the_parsers_error() -> None:
    record = _record("simple_python")
    name = fc_tools(record.functions).specs[0]["function"]["name"]
    model = ScriptedLLM([f'{{"name": "{name}", "arguments": {{"base": 10'], native_tool_calls=True)
    inference = await run_fc(record, model, max_tokens=64)
    assert inference.score is not None and not inference.score.valid
    assert inference.score.error_type == "fc:invalid_tool_call" and "not JSON" in (inference.score.error or "")
    assert inference.model_output["tool_call_error"]


async def test_multi_turn_feeds_results_back_as_tool_messages() -> None:
    record = _record("multi_turn_base")
    model = ScriptedLLM(ground_truth_tool_calls(record), native_tool_calls=True)
    inference = await run_fc(record, model, max_tokens=64)
    assert inference.score is not None and inference.score.valid, inference.score
    second = model.requests[1].messages
    assert second is not None
    at = max(i for i, m in enumerate(second) if m["role"] == "assistant")
    assistant, results = second[at], second[at + 1 :]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["cd", "mkdir", "mv"]
    assert [r["role"] for r in results] == ["tool"] * 3
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in assistant["tool_calls"]]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"folder": "document"}
