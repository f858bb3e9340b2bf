"""A run killed with SIGKILL and resumed loses nothing and runs nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from workloads import BfclOptions, run_bfcl

REPO = Path(__file__).resolve().parents[3]
NUM_RECORDS = 24


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agentflow", "bfcl", "--category", "simple_python", "--limit", str(NUM_RECORDS),
        "--model", "scripted:ground_truth@0.25", "--concurrency", "2", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} lines")


def test_sigkill_then_resume_loses_nothing_and_duplicates_nothing(tmp_path: Path, read_results: Callable) -> None:
    out = tmp_path / "run"
    results = out / "results.jsonl"
    proc = subprocess.Popen(_cli(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_lines(results, 6, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = results.read_bytes()
    finished_before = before[: before.rfind(b"\n") + 1]  # whole lines written before the kill
    assert 6 <= finished_before.count(b"\n") < NUM_RECORDS

    resumed = subprocess.run(_cli(out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = results.read_bytes()
    assert after.startswith(finished_before)  # what was written stays, byte for byte
    records = read_results(results)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == NUM_RECORDS
    assert all(r["valid"] for r in records)
    num_before = finished_before.count(b"\n")
    assert f"{NUM_RECORDS - num_before} run now, {num_before} resumed" in resumed.stdout


def test_truncated_last_line_is_detected_and_that_record_rerun(tmp_path: Path, read_results: Callable) -> None:
    options = BfclOptions(
        categories=("simple_python",), limit=6, model="scripted:ground_truth", out_dir=tmp_path / "run", progress=False
    )
    first = run_bfcl(options)
    lines = first.results_path.read_bytes().splitlines(keepends=True)
    last_key = read_results(first.results_path)[-1]["key"]
    first.results_path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write

    second = run_bfcl(BfclOptions(**{**_fields(options), "resume": True}))
    assert second.summary["run"]["dropped_partial_lines"] == 1
    assert second.summary["run"]["run_now"] == 1 and second.summary["run"]["resumed"] == 5
    records = read_results(second.results_path)
    assert [r["key"] for r in records][-1] == last_key
    assert len({r["key"] for r in records}) == len(records) == 6
    assert second.summary["overall"]["accuracy"] == 1.0


def test_existing_results_need_resume(tmp_path: Path) -> None:
    options = BfclOptions(
        categories=("simple_python",), limit=2, model="scripted:ground_truth", out_dir=tmp_path / "run", progress=False
    )
    run_bfcl(options)
    with pytest.raises(UserError, match="--resume"):
        run_bfcl(options)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    options = BfclOptions(
        categories=("simple_python",), limit=2, model="scripted:ground_truth", out_dir=tmp_path / "run", progress=False
    )
    run_bfcl(options)
    with pytest.raises(UserError, match="max_tokens"):
        run_bfcl(BfclOptions(**{**_fields(options), "resume": True, "max_tokens": 7}))


def _fields(options: BfclOptions) -> dict:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
