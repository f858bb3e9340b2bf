"""Serving: the embedded vLLM engine (importing this package does not import vLLM)."""

from __future__ import annotations

from serving.engine import EmbeddedEngine, EngineConfig, GenerationChunk, GenerationResult

__all__ = ["EmbeddedEngine", "EngineConfig", "GenerationChunk", "GenerationResult"]
