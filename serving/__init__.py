"""Serving: the embedded vLLM engine and its program-aware scheduler (importing this package does not import vLLM)."""

from __future__ import annotations

from serving.engine import PROGRAM_AWARE_SCHEDULER, EmbeddedEngine, EngineConfig, GenerationChunk, GenerationResult

__all__ = ["PROGRAM_AWARE_SCHEDULER", "EmbeddedEngine", "EngineConfig", "GenerationChunk", "GenerationResult"]
