"""scripts/bfcl_table.py (which runs it skips, the table it renders) and the engine options each model gets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bfcl_table.py"


def table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bfcl_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(mode: str, category: str, accuracy: float, *, limit: int = 100) -> dict[str, Any]:
    row = {"category": category, "n": limit, "accuracy": accuracy, "invalid": 1, "latency_mean_s": 12.34}
    return {"model": "embedded:qwen2.5-coder-1.5b", "mode": mode, "categories": [row], "settings": {"limit": limit}}


def test_a_finished_run_with_the_same_limit_is_not_run_again(tmp_path: Path) -> None:
    script = table_script()
    path = tmp_path / "native" / "parallel.json"
    assert not script._done(path, 100)  # never ran
    path.parent.mkdir()
    path.write_text(json.dumps(summary("native", "parallel", 0.75, limit=50)))
    assert not script._done(path, 100)  # ran with another limit
    assert script._done(path, 50)


def test_the_table_has_a_row_per_model_and_category_and_columns_per_mode() -> None:
    script = table_script()
    table = script.render([summary("native", "parallel", 0.75), summary("fc", "parallel", 0.0)])
    header, rule, row = table.splitlines()
    assert header.startswith("| model | category | n | native acc") and "fc s/rec" in header
    assert rule.count("---|") == 9
    assert row == "| qwen2.5-coder-1.5b | parallel | 100 | 75% | 1 | 12.3 | 0% | 1 | 12.3 |"


def test_engine_options_give_each_model_its_own_context(tmp_path: Path) -> None:
    from workloads.bfcl._run import DEFAULT_ENGINE_OPTIONS, engine_options_for

    qwen = engine_options_for("qwen2.5-coder-1.5b")
    assert qwen["max_model_len"] == 32768 and qwen["kv_cache_bytes"] == 4 * 1024**3  # Qwen2.5 takes 32k
    assert engine_options_for("smollm2-135m") == DEFAULT_ENGINE_OPTIONS  # 8k is all it takes
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"max_position_embeddings": 131072}))
    assert engine_options_for(str(local))["max_model_len"] == 32768  # capped
    assert engine_options_for(str(local), {"max_model_len": 4096})["max_model_len"] == 4096  # --engine wins
    (local / "config.json").write_text("{not json")
    assert engine_options_for(str(local))["max_model_len"] == 8192  # unreadable: the default
