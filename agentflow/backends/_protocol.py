"""The one protocol every LLM backend implements, and the records it carries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Completion", "LLMBackend", "LLMRequest", "ProgramMetadata"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramMetadata:
    """What the runtime knows about the program an LLM call belongs to.

    Sent with every LLM call of a `Program` so a program-aware engine can schedule it
    (vLLM: `SamplingParams.extra_args`; OpenAI-compatible servers: `vllm_xargs`).

    Backends may also offer two optional hooks the runtime calls when present:
    `observe_tool_duration(tool, duration_s)` as each tool ends, and `async end_program(program_id)`
    when a program exits (the embedded backend releases the program's pinned KV there).
    """

    program_id: str
    arrival_s: float  # unix time the program started
    turn: int  # index of this LLM call within the program, from 0
    is_last_turn: bool = False  # no LLM call depends on this one
    next_tool: str | None = None  # the tool that consumes this call's output, if any
    next_tool_duration_s: float | None = None  # predicted duration of that tool
    deadline_s: float | None = None  # unix time the program must finish by
    # Expected seconds from this call's start to the program's end along the DAG's longest
    # remaining chain (this call included), when node durations are known: urgency needs it.
    critical_path_s: float | None = None

    def to_extra_args(self) -> dict[str, Any]:
        """Flat JSON-safe mapping, the form vLLM's `extra_args` and `vllm_xargs` take."""
        out: dict[str, Any] = {
            "program_id": self.program_id,
            "program_arrival_s": self.arrival_s,
            "turn": self.turn,
            "is_last_turn": self.is_last_turn,
        }
        if self.next_tool is not None:
            out["next_tool"] = self.next_tool
        if self.next_tool_duration_s is not None:
            out["next_tool_duration_s"] = self.next_tool_duration_s
        if self.deadline_s is not None:
            out["deadline_s"] = self.deadline_s
        if self.critical_path_s is not None:
            out["critical_path_s"] = self.critical_path_s
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMRequest:
    """One LLM call: a raw prompt or chat messages, sampling options, constraints, metadata."""

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # EBNF for constrained decoding, where the backend supports it
    json_schema: dict[str, Any] | None = None  # JSON schema constraint, where supported
    metadata: ProgramMetadata | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific passthrough

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("LLMRequest needs exactly one of prompt or messages")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """The result of one LLM call."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache


@runtime_checkable
class LLMBackend(Protocol):
    """An LLM behind one interface: the embedded engine, an OpenAI-compatible server, litellm."""

    name: str
    supports_grammar: bool  # accepts `LLMRequest.grammar` (EBNF) and enforces it

    async def start(self) -> None:
        """Get ready to serve (load the model, open connections); calls do this lazily anyway."""
        ...

    async def complete(self, request: LLMRequest) -> Completion:
        """Run the request to completion."""
        ...

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Yield text deltas as they are generated."""
        ...

    async def aclose(self) -> None:
        """Release connections; the shared embedded engine stays up for the process."""
        ...
