"""The one protocol every LLM backend implements, and the records it carries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentflow.metadata import ProgramMetadata

__all__ = ["Completion", "LLMBackend", "LLMRequest", "ProgramAwareBackend", "ToolCall"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A function call the model made natively (OpenAI's `tool_calls`, Qwen/Hermes `<tool_call>`)."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        """The call as an entry of an assistant message's `tool_calls` (OpenAI's chat format)."""
        import json

        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMRequest:
    """One LLM call: a raw prompt or chat messages, sampling options, constraints, tools, metadata.

    `messages` are OpenAI chat messages (an assistant message may carry `tool_calls`, a `tool`
    message the result of one). `tools` are OpenAI function-tool specs (`Tool.openai_schema()`):
    the model may answer with native tool calls, which come back in `Completion.tool_calls`.
    """

    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # EBNF for constrained decoding, where the backend supports it
    json_schema: dict[str, Any] | None = None  # JSON schema constraint, where supported
    tools: tuple[dict[str, Any], ...] | None = None  # native tool calling: OpenAI function-tool specs
    tool_choice: str | None = None  # "auto" (default with tools), "required" or "none", where supported
    metadata: ProgramMetadata | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific passthrough

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("LLMRequest needs exactly one of prompt or messages")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.tools is not None and self.messages is None:
            raise ValueError("native tool calling needs chat messages, not a raw prompt")


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """The result of one LLM call."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache
    # What a program-aware engine did with the call (queue_delay_s, cached_tokens, pin_hit), if it says.
    serving: dict[str, Any] | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # native tool calls, when the request offered tools
    tool_call_error: str | None = None  # the output looked like a tool call but did not parse: why


@runtime_checkable
class LLMBackend(Protocol):
    """An LLM behind one interface: the embedded engine, an OpenAI-compatible server, litellm."""

    # Read-only: a plain attribute satisfies them, and so does a property (a backend resolved lazily).
    @property
    def name(self) -> str: ...

    @property
    def supports_grammar(self) -> bool:
        """Whether it accepts `LLMRequest.grammar` (EBNF) and enforces it."""
        ...

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


@runtime_checkable
class ProgramAwareBackend(Protocol):
    """A backend that keeps per-program state in the engine (pinned KV, learned tool durations).

    `Program` tells it what only the runtime knows: each tool's real duration as the tool ends,
    and the program's end (its pinned KV is released at once, not on expiry).
    """

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """A tool of some program just took `duration_s` seconds (never blocks)."""
        ...

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        """The program is over: release what the engine holds for it; the engine's summary of it."""
        ...

    def post_end_program(self, program_id: str) -> None:
        """`end_program` without waiting, for a task that is being cancelled."""
        ...
