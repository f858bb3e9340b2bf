"""`agentflow bfcl` from the command line (with the scripted ground-truth test double)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agentflow import cli


def _run(tmp_path: Path, *extra: str) -> int:
    argv = ["bfcl", "--model", "scripted:ground_truth", "--no-progress", *extra]
    return cli.main(argv)


def test_sample_and_seed_pick_the_same_records_per_category(
    tmp_path: Path, read_results: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    picks = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["--category", "simple_python,irrelevance", "--sample", "5", "--seed", "3", "--out", str(out)]
        assert _run(tmp_path, *args, "--json", str(tmp_path / f"{name}.json")) == 0
        picks.append([r["key"] for r in read_results(out / "results.jsonl")])
    assert picks[0] == picks[1] and len(picks[0]) == 10
    assert picks[0][:5] != [f"simple_python_{i}" for i in range(5)]  # sampled, not the first five
    summary = json.loads((tmp_path / "a.json").read_text())
    assert [c["category"] for c in summary["categories"]] == ["simple_python", "irrelevance"]
    assert summary["overall"]["n"] == 10 and summary["overall"]["accuracy"] == 1.0
    assert Path(summary["plot"]).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "overall" in printed and "10 run now, 0 resumed" in printed


def test_resume_without_out_takes_the_newest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default results dir is ./agentflow-runs/bfcl/<timestamp>
    assert _run(tmp_path, "--category", "simple_python", "--limit", "2") == 0
    assert _run(tmp_path, "--category", "simple_python", "--limit", "3", "--resume") == 0
    assert "1 run now, 2 resumed" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "agentflow-runs" / "bfcl").iterdir()
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 3


def test_bad_arguments_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--category", "nope") == 2
    assert "unknown BFCL category 'nope'" in capsys.readouterr().err
    assert _run(tmp_path, "--category", "simple_python", "--engine", "oops", "--out", str(tmp_path / "x")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
