"""Serving: the embedded vLLM engine, its program-aware scheduler and the OpenAI-compatible server.

Importing this package does not import vLLM. The SDK reaches the embedded engine by name
(`agentflow.backends.EMBEDDED_BACKEND` -> `serving.embedded.EmbeddedBackend`).
"""

from __future__ import annotations

from serving._control import PROGRAM_AWARE_SCHEDULER, SchedulerControl
from serving._server import ServeOptions, vllm_server_args
from serving.embedded import EmbeddedBackend
from serving.engine import EmbeddedEngine, EngineConfig, GenerationChunk, GenerationResult, QueueSnapshot

__all__ = [
    "PROGRAM_AWARE_SCHEDULER",
    "EmbeddedBackend",
    "EmbeddedEngine",
    "EngineConfig",
    "GenerationChunk",
    "GenerationResult",
    "QueueSnapshot",
    "SchedulerControl",
    "ServeOptions",
    "vllm_server_args",
]
