"""`agentflow bfcl` on the real embedded model (the session's shared engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentflow import cli
from serving.engine import EmbeddedEngine

pytestmark = pytest.mark.engine


def _engine_flags(engine_options: dict[str, Any]) -> list[str]:
    # The same EngineConfig as the fixture's, so the runner shares that engine instead of starting one.
    return [flag for key, value in engine_options.items() for flag in ("--engine", f"{key}={value}")]


def test_bfcl_simple_python_on_the_embedded_model(
    engine: EmbeddedEngine, engine_options: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary_path = tmp_path / "run", tmp_path / "out.json"
    argv = ["bfcl", "--category", "simple_python", "--limit", "3", "--out", str(out), "--json", str(summary_path)]
    assert cli.main([*argv, "--concurrency", "3", "--max-tokens", "64", *_engine_flags(engine_options)]) == 0
    summary = json.loads(summary_path.read_text())
    (row,) = summary["categories"]
    assert row["category"] == "simple_python" and row["n"] == 3 and 0.0 <= row["accuracy"] <= 1.0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["llm_calls"] == 1 and record["completion_tokens"] >= 1 and record["prompt_tokens"] > 300
        assert isinstance(record["model_output"], str)
    assert (out / "accuracy.png").stat().st_size > 0
    assert "simple_python" in capsys.readouterr().out
