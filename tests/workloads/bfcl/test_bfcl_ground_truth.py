"""Acceptance: BFCL's ground truth fed as model output scores 100% through the whole path.

The "model" is `scripted:ground_truth` (a ScriptedLLM per record): the expected calls are
written as the text a model emits, decoded by BFCL's decoders, run as agentflow programs (the
multi-turn ones on BFCL's real backends) and scored by BFCL's own checkers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from workloads import ALL_CATEGORIES, BfclOptions, run_bfcl
from workloads.bfcl._data import AST_CATEGORIES, MULTI_TURN_CATEGORIES, RELEVANCE_CATEGORIES

NUM_RECORDS = 25  # per category; BFCL ships fewer for three of them
SHIPPED = {"live_parallel": 16, "live_relevance": 16, "live_parallel_multiple": 24}


def test_every_offline_category_is_covered() -> None:
    assert set(ALL_CATEGORIES) == {*AST_CATEGORIES, *RELEVANCE_CATEGORIES, *MULTI_TURN_CATEGORIES}
    assert len(ALL_CATEGORIES) == 15


@pytest.mark.parametrize("mode", ["native", "fc", "compiled"])
@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_ground_truth_scores_100_percent(category: str, mode: str, tmp_path: Path, read_results: Callable) -> None:
    """Compiled mode: the ground truth as plans (`1. f(a=1)` ... `N. join()`) run by the planner + executor."""
    report = run_bfcl(
        BfclOptions(
            categories=(category,),
            limit=NUM_RECORDS,
            mode=mode,  # type: ignore[arg-type]
            model="scripted:ground_truth",
            concurrency=8,
            out_dir=tmp_path / "run",
            progress=False,
        )
    )
    (row,) = report.summary["categories"]
    assert row["n"] == min(NUM_RECORDS, SHIPPED.get(category, NUM_RECORDS))
    failures = [(r["key"], r["error"]) for r in read_results(report.results_path) if not r["valid"]]
    assert failures == []
    assert row["accuracy"] == 1.0
    assert row["malformed"] == 0


def test_multi_turn_ground_truth_really_runs_the_backends(tmp_path: Path, read_results: Callable) -> None:
    report = run_bfcl(
        BfclOptions(
            categories=("multi_turn_base",),
            limit=3,
            model="scripted:ground_truth",
            out_dir=tmp_path / "run",
            progress=False,
        )
    )
    for record in read_results(report.results_path):
        assert record["valid"]
        assert record["calls"] and all(call["ok"] for call in record["calls"]), record["calls"]
        # one LLM call per turn with calls, plus one empty reply that ends each turn
        assert record["llm_calls"] == len(record["model_output"]) + sum(1 for t in record["model_output"] if t[0])
