"""Shared helpers for the workloads tests: small BFCL data directories built from the real files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from workloads.bfcl._env import bfcl_data_dir


@pytest.fixture
def make_data_dir(tmp_path: Path) -> Callable[..., Path]:
    """A data dir laid out like bfcl_eval/data: the first `n` real lines of a category plus `extra` lines."""

    def make(category: str, n: int, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
        real = bfcl_data_dir()
        root = tmp_path / "data"
        (root / "possible_answer").mkdir(parents=True, exist_ok=True)
        name = f"BFCL_v4_{category}.json"
        lines = (real / name).read_text().splitlines()[:n]
        (root / name).write_text("\n".join([*lines, *extra]) + "\n")
        answers = real / "possible_answer" / name
        if answers.exists():
            shutil.copy(answers, root / "possible_answer" / name)
        if (real / "multi_turn_func_doc").is_dir() and not (root / "multi_turn_func_doc").exists():
            shutil.copytree(real / "multi_turn_func_doc", root / "multi_turn_func_doc")
        return root

    return make


@pytest.fixture
def read_results() -> Callable[[Path], list[dict]]:
    """The records of a results file."""

    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    return read
