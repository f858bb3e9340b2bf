"""What the executor needs from anything it can call: tools and semantic functions alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentflow.ir import CallKind

if TYPE_CHECKING:
    from agentflow.backends import Completion, LLMBackend
    from agentflow.metadata import ProgramMetadata

__all__ = ["CallContext", "Callee"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallContext:
    """Per-call facts handed to a callee: who is calling, and with which backend."""

    program_id: str
    node_id: str
    attempt: int = 1
    backend: LLMBackend | None = None  # set for LLM calls
    metadata: ProgramMetadata | None = None  # set for LLM calls
    on_completion: Callable[[Completion], None] | None = None  # LLM calls report token usage here


@runtime_checkable
class Callee(Protocol):
    """A registered callable: a `Tool` or a `SemanticFunction`.

    A callee runs its code as if outside any program (`agentflow._context.detach`): a tool that
    calls another tool calls its function, whenever and wherever it runs.
    """

    name: str
    kind: CallKind
    timeout_s: float | None
    retries: int
    max_concurrency: int | None
    runs_in_thread: bool  # a blocking sync function: the executor runs it in a worker thread
    expected_duration_s: float | None  # declared seconds per call; None: the runtime learns it

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map and validate arguments; raise `ArgumentValidationError` when they do not fit."""
        ...

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """Run with validated arguments (async callees)."""
        ...

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        """Run with validated arguments (sync callees, called in a worker thread)."""
        ...
