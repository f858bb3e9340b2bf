"""`embedded:NAME` is a catalog model's directory, `embedded:/path` a local one; unknown names list the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.backends import resolve_backend
from agentflow.exceptions import BackendConfigError
from serving.embedded import EmbeddedBackend, model_path
from serving.models import default_model_dir


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AGENTFLOW_MODEL_DIR", raising=False)


def test_names_and_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert model_path(None) is None
    assert model_path("qwen2.5-coder-1.5b") == tmp_path / "models" / "qwen2.5-coder-1.5b"
    assert model_path("smollm2-135m") == default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert model_path("/models/mine") == Path("/models/mine")
    assert model_path("./mine") == Path("./mine")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert model_path("mine") == Path("mine")  # an existing directory stays a path


def test_the_model_string_reaches_the_engine_config(tmp_path: Path) -> None:
    backend = resolve_backend("embedded:qwen2.5-coder-0.5b")  # nothing starts: the engine is lazy
    assert isinstance(backend, EmbeddedBackend)
    assert backend.engine.config.model_dir == (tmp_path / "models" / "qwen2.5-coder-0.5b").absolute()
    default = resolve_backend("embedded")
    assert isinstance(default, EmbeddedBackend)
    assert resolve_backend("embedded:smollm2-135m").engine is default.engine  # one default, one engine


def test_an_unknown_name_is_a_config_error_listing_the_catalog() -> None:
    with pytest.raises(
        BackendConfigError, match=r"unknown embedded model 'qwen9': the catalog has qwen2.5-coder-0.5b, "
    ):
        resolve_backend("embedded:qwen9")
