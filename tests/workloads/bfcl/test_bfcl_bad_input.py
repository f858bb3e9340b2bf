"""Bad input: malformed records are skipped with a reason; undecodable output is scored invalid."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from agentflow.testing import ScriptedLLM
from workloads import BfclOptions, MalformedRecord, load_category, run_bfcl
from workloads.bfcl._data import BfclRecord, parse_categories
from workloads.bfcl._native import run_native

BAD_LINES = [
    "{not json",
    json.dumps({"id": "simple_python_900", "function": []}),  # no question
    json.dumps({"id": "simple_python_901", "question": [[{"role": "user", "content": "hi"}]],
                "function": [{"name": "f", "parameters": {"properties": {"a": "string"}}}]}),  # bad doc
    json.dumps({"id": "simple_python_902", "question": [[{"role": "user", "content": "hi"}]],
                "function": [{"name": "f", "parameters": {"type": "dict", "properties": {}}}]}),  # no answer
]  # fmt: skip


def test_malformed_records_are_skipped_with_reasons_and_the_batch_goes_on(
    make_data_dir: Callable[..., Path], tmp_path: Path, read_results: Callable
) -> None:
    data_dir = make_data_dir("simple_python", 5, BAD_LINES)
    items = load_category("simple_python", data_dir=data_dir)
    reasons = {i.key: i.reason for i in items if isinstance(i, MalformedRecord)}
    assert set(reasons) == {"simple_python@line6", "simple_python_900", "simple_python_901", "simple_python_902"}
    assert reasons["simple_python@line6"].startswith("not JSON")
    assert "question" in reasons["simple_python_900"]
    assert "bad function doc" in reasons["simple_python_901"]
    assert reasons["simple_python_902"] == "no possible answer"

    report = run_bfcl(
        BfclOptions(
            categories=("simple_python",),
            model="scripted:ground_truth",
            data_dir=data_dir,
            out_dir=tmp_path / "run",
            progress=False,
        )
    )
    (row,) = report.summary["categories"]
    assert (row["n"], row["accuracy"], row["malformed"]) == (5, 1.0, 4)
    skipped = [r for r in read_results(report.results_path) if r["status"] == "malformed"]
    assert {r["key"] for r in skipped} == set(reasons) and all(r["reason"] for r in skipped)
    assert "malformed" in report.table


def _record(category: str, index: int = 0) -> BfclRecord:
    item = load_category(category)[index]
    assert isinstance(item, BfclRecord)
    return item


@pytest.mark.parametrize(
    "reply", ["The area is 25 square units.", "[calculate_triangle_area(base=10, height=", "[1 +]"]
)
async def test_undecodable_output_is_scored_invalid_with_the_decode_error(reply: str) -> None:
    inference = await run_native(_record("simple_python"), ScriptedLLM([reply]), max_tokens=32)
    score = inference.score
    assert score is not None and not score.valid and score.undecodable
    assert score.error_type == "ast_decoder:decoder_failed"
    assert score.error is not None and "Failed to decode AST" in score.error and "Error" in score.error
    assert inference.model_output == reply


async def test_an_empty_reply_decodes_to_no_call_as_in_bfcl() -> None:
    inference = await run_native(_record("simple_python"), ScriptedLLM([""]), max_tokens=32)
    assert inference.score is not None and not inference.score.valid
    assert inference.score.error_type == "simple_function_checker:wrong_count"


async def test_wrong_but_decodable_output_is_scored_by_the_checker() -> None:
    inference = await run_native(
        _record("simple_python"), ScriptedLLM(["[calculate_triangle_area(base=10, height=6)]"]), max_tokens=32
    )
    assert inference.score is not None and not inference.score.valid and not inference.score.undecodable
    assert inference.score.error_type == "value_error:others" or "height" in (inference.score.error or "")
    assert inference.calls == [{"name": "calculate_triangle_area", "ok": True}]


async def test_irrelevance_is_correct_only_without_a_call() -> None:
    record = _record("irrelevance")
    name = record.functions[0]["name"]
    refused = await run_native(record, ScriptedLLM(["None of the functions fit."]), max_tokens=16)
    called = await run_native(record, ScriptedLLM([f"[{name}()]"]), max_tokens=16)
    assert refused.score is not None and refused.score.valid
    assert called.score is not None and not called.score.valid
    assert called.score.error_type == "irrelevance_error:decoder_success"


async def test_a_failing_model_call_scores_the_record_invalid() -> None:
    def explode(request: object) -> str:
        raise RuntimeError("engine said no")

    inference = await run_native(_record("simple_python"), ScriptedLLM(explode), max_tokens=16)
    assert inference.score is not None and not inference.score.valid
    assert inference.score.error_type == "inference_error" and "engine said no" in (inference.score.error or "")


def test_unknown_category_and_bad_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown BFCL category"):
        parse_categories("simple_java")
    assert parse_categories("multi_turn,simple_python") == [
        "multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context", "simple_python"
    ]  # fmt: skip
    with pytest.raises(UserError, match="--limit"):
        BfclOptions(categories=("simple_python",), limit=0)
    with pytest.raises(UserError, match="scripted:ground_truth"):
        run_bfcl(BfclOptions(categories=("simple_python",), model="scripted:oops", limit=1, out_dir=tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written
