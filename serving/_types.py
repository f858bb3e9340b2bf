"""Records the embedded engine hands to callers (no vLLM types cross this line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GenerationChunk", "GenerationResult", "QueueSnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationChunk:
    """What one engine step produced for one request: a delta, not the text so far."""

    text: str  # new text since the previous chunk
    token_ids: tuple[int, ...]  # new token ids since the previous chunk
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort" once finished
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache (0 until prefill ran)
    # On the finished chunk of a program request: what the scheduler did with it (queue_delay_s,
    # cached_tokens, pin_hit); None otherwise, and always with vLLM's stock scheduler.
    serving: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationResult:
    """A whole generation, as `EmbeddedEngine.complete` returns it."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSnapshot:
    """The engine's queues between two steps, as `EmbeddedEngine.queue_snapshot` reads them."""

    running: frozenset[str]  # request ids (as the caller passed them) of the requests running now
    num_waiting: int  # requests waiting or preempted, every caller's
    kv_usage: float  # used fraction of the KV pool
