"""The shared batch behaviour: durable JSONL, repair on resume, selection, summary, concurrency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from workloads import BatchItem, ResultsFile, run_batch, summarize
from workloads._batch import plot_accuracy, render_table, select


def _item(key: str, *, valid: bool = True, delay_s: float = 0.0, category: str = "c") -> BatchItem:
    async def run() -> dict:
        await asyncio.sleep(delay_s)
        return {"status": "scored", "valid": valid, "undecodable": not valid}

    return BatchItem(key=key, category=category, run=run)


def test_results_file_appends_whole_lines(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.append({"key": "a", "x": 1})
    results.append({"key": "b", "x": "é"})
    results.close()
    assert results.path.read_text(encoding="utf-8").splitlines() == ['{"key": "a", "x": 1}', '{"key": "b", "x": "é"}']
    assert set(ResultsFile(results.path).load()) == {"a", "b"}


def test_partial_last_line_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "val')
    results = ResultsFile(path)
    assert set(results.load()) == {"a", "b"}
    assert results.dropped_lines == 1
    assert path.read_text() == '{"key": "a"}\n{"key": "b"}\n'
    results.append({"key": "c"})  # appending after the repair yields whole lines
    results.close()
    assert set(ResultsFile(path).load()) == {"a", "b", "c"}


def test_unreadable_and_duplicate_lines_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "n": 1}\ngarbage\n{"no_key": 1}\n{"key": "a", "n": 2}\n{"key": "b"}\n')
    results = ResultsFile(path)
    records = results.load()
    assert records["a"]["n"] == 1 and set(records) == {"a", "b"}
    assert results.dropped_lines == 3
    assert len(path.read_text().splitlines()) == 2


def test_missing_file_loads_empty(tmp_path: Path) -> None:
    assert ResultsFile(tmp_path / "none.jsonl").load() == {}


def test_select_samples_with_a_seed_then_limits() -> None:
    items = list(range(100))
    assert select(items, limit=5, sample=None, seed=0) == [0, 1, 2, 3, 4]
    sampled = select(items, limit=None, sample=10, seed=7)
    assert len(sampled) == 10 and sampled == sorted(sampled)
    assert sampled == select(items, limit=None, sample=10, seed=7)
    assert sampled != select(items, limit=None, sample=10, seed=8)
    assert select(items, limit=3, sample=10, seed=7) == sampled[:3]
    assert select([1, 2], limit=None, sample=10, seed=0) == [1, 2]


async def test_run_batch_skips_done_keys_and_writes_each_result(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    items = [_item("a"), _item("b", valid=False), BatchItem(key="m", category="c", skip_reason="bad line")]
    stats = await run_batch(items, results, done={"a"}, progress=False)
    results.close()
    lines = [json.loads(line) for line in results.path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["b", "m"]
    assert lines[1] == {"key": "m", "category": "c", "status": "malformed", "reason": "bad line"}
    assert stats.num_selected == 3 and stats.num_resumed == 1 and stats.num_run == 2


async def test_concurrency_runs_items_at_once(tmp_path: Path) -> None:
    items = [_item(str(i), delay_s=0.1) for i in range(8)]
    results = ResultsFile(tmp_path / "r.jsonl")
    stats = await run_batch(items, results, concurrency=8, progress=False)
    results.close()
    assert stats.num_run == 8
    assert stats.wall_s < 0.4  # 8 x 0.1 s one at a time would take 0.8 s


async def test_a_failing_item_is_recorded_unless_fatal(tmp_path: Path) -> None:
    async def boom() -> dict:
        raise RuntimeError("kaput")

    results = ResultsFile(tmp_path / "r.jsonl")
    items = [BatchItem(key="x", category="c", run=boom), _item("y")]
    await run_batch(items, results, progress=False, is_fatal=lambda exc: False)
    results.close()
    records = results.load()
    assert records["x"]["valid"] is False and "kaput" in records["x"]["error"]
    assert records["y"]["valid"] is True

    fresh = ResultsFile(tmp_path / "r2.jsonl")
    with pytest.raises(RuntimeError, match="kaput"):
        await run_batch([BatchItem(key="x", category="c", run=boom)], fresh, progress=False)
    assert fresh.load() == {}  # a fatal error leaves the record to be run on resume


async def test_bad_concurrency_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        await run_batch([_item("a")], ResultsFile(tmp_path / "r.jsonl"), concurrency=0)


def test_summary_table_and_plot(tmp_path: Path) -> None:
    records = [
        {"key": "1", "category": "a", "status": "scored", "valid": True, "latency_s": 1.0},
        {"key": "2", "category": "a", "status": "scored", "valid": False, "undecodable": True, "latency_s": 3.0},
        {"key": "3", "category": "a", "status": "malformed", "reason": "x"},
        {"key": "4", "category": "b", "status": "scored", "valid": False, "undecodable": False, "latency_s": 2.0},
    ]
    rows = summarize(records, ["a", "b", "c"])
    by_name = {r.category: r for r in rows}
    assert [r.category for r in rows] == ["a", "b", "c", "overall"]
    assert (by_name["a"].n, by_name["a"].correct, by_name["a"].invalid, by_name["a"].malformed) == (2, 1, 1, 1)
    assert by_name["a"].accuracy == 0.5 and by_name["a"].latency_mean_s == 2.0 and by_name["a"].latency_p50_s == 2.0
    assert by_name["c"].accuracy is None
    assert by_name["overall"].n == 3 and by_name["overall"].correct == 1
    table = render_table(rows)
    assert "50.0% (1)" in table and table.splitlines()[0].split()[:3] == ["category", "n", "accuracy"]
    png = plot_accuracy(rows, tmp_path / "acc.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
