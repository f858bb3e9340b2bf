"""Shared fixtures. One embedded engine for every engine test in the session: starting one costs ~6-13 s on CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from serving.engine import EmbeddedEngine, EngineConfig

# `embedded` means the tiny model in tests (and in the servers and workers they start): fast, and
# what the engine tests' numbers are sized for. A test that needs a capable model names it.
os.environ.setdefault("AGENTFLOW_DEFAULT_MODEL", "smollm2-135m")

# Small on purpose: 256 MiB holds ~11k tokens of SmolLM2-135M KV, plenty for these tests.
TEST_ENGINE_OPTIONS: dict[str, Any] = {"kv_cache_bytes": 256 * 1024**2, "max_model_len": 2048, "max_num_seqs": 16}


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers this marker; register it here too until it exists.
    if not any(line.startswith("engine:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "engine: needs the real embedded vLLM engine")


@pytest.fixture(scope="session")
def engine_options() -> dict[str, Any]:
    return dict(TEST_ENGINE_OPTIONS)


@pytest.fixture(scope="session")
def engine() -> Iterator[EmbeddedEngine]:
    # shared(): an EmbeddedBackend built with the same options reuses this engine.
    shared = EmbeddedEngine.shared(EngineConfig(**TEST_ENGINE_OPTIONS))
    shared.start()
    yield shared
    shared.shutdown()
