"""Compiled mode: the planner builds the DAG over the record's tools; the executed calls are scored."""

from __future__ import annotations

from agentflow.testing import ScriptedLLM
from workloads.bfcl._compiled import run_compiled
from workloads.bfcl._data import BfclRecord, load_category


def _record(category: str, index: int = 0) -> BfclRecord:
    item = load_category(category)[index]
    assert isinstance(item, BfclRecord)
    return item


async def test_executed_calls_are_scored_under_bfcl_names() -> None:
    record = _record("simple_python", 1)  # math.factorial: planned as math_factorial
    model = ScriptedLLM(["1. math_factorial(5)\n2. join()"])
    inference = await run_compiled(record, model, max_tokens=64)
    assert inference.score is not None and inference.score.valid, inference.score
    assert inference.score.decoded == [{"math.factorial": {"number": 5}}]  # positional bound to its name
    assert inference.calls == [{"name": "math.factorial", "ok": True, "detail": None}]
    assert inference.llm_calls == 1  # one plan, as BFCL asks once: no joiner on single-turn records
    prompt = "".join(m["content"] for m in model.requests[0].messages or ())
    assert "math_factorial(number: int)" in prompt and "math_factorial(number=1)" in prompt  # tools, example


async def test_plans_that_never_parse_are_undecodable() -> None:
    inference = await run_compiled(_record("simple_python"), ScriptedLLM(["nonsense", "more nonsense"]), max_tokens=32)
    score = inference.score
    assert score is not None and not score.valid and score.undecodable
    assert score.error is not None and "no plan parsed" in score.error


async def test_irrelevance_wants_no_call() -> None:
    record = _record("irrelevance")
    name = record.functions[0]["name"].replace(".", "_")
    quiet = await run_compiled(record, ScriptedLLM(["1. join()", "Action: Finish(none fits)"]), max_tokens=32)
    assert quiet.score is not None and quiet.score.valid
    required = record.functions[0]["parameters"].get("required", [])
    args = ", ".join(f"{p}=1" for p in required)
    eager = await run_compiled(
        record, ScriptedLLM([f"1. {name}({args})\n2. join()", "Action: Finish(x)"]), max_tokens=32
    )
    assert eager.score is not None and not eager.score.valid
    assert eager.score.error_type == "irrelevance_error:call_made"


async def test_multi_turn_plans_run_on_the_real_backends_in_plan_order() -> None:
    record = _record("multi_turn_base")  # turn 0: cd document, mkdir temp, mv final_report.pdf temp
    from workloads.bfcl._scripted import ground_truth_plans

    plans = ground_truth_plans(record)
    assert plans[0].splitlines()[:3] == [
        '1. cd(folder="document")', '2. mkdir(dir_name="temp")', '3. mv(source="final_report.pdf", destination="temp")'
    ]  # fmt: skip
    inference = await run_compiled(record, ScriptedLLM(plans), max_tokens=64)
    assert inference.score is not None and inference.score.valid, inference.score
    assert [c["name"] for c in inference.calls[:3]] == ["cd", "mkdir", "mv"]
