"""`Program`: one run of an agent program, with its id, optional deadline, DAG and trace.

```python
async with Program(deadline_in_s=60) as p:
    a = fetch("x")            # tools and semantic functions return variables at once
    b = summarize(a)          # passing a variable adds an edge
    print(await b)            # awaiting yields the value
print(p.result.trace.render_timeline())
```
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from agentflow import _context, otel
from agentflow.backends import MODEL_ENV, Completion, LLMBackend, LLMRequest, ProgramAwareBackend, resolve_backend
from agentflow.calls import Callee
from agentflow.exceptions import AgentflowError, UserError
from agentflow.ir import CallGraph, CallKind, CallNode, NodeState, ProgramFacts, Ref
from agentflow.metadata import ProgramMetadata
from agentflow.semantic import SemanticVariable
from agentflow.tools import ToolRegistry

if TYPE_CHECKING:
    from agentflow._otel import ProgramSpans
    from executor import DurationEstimates, Executor, ExecutorObserver, NodeRun, RunResult

__all__ = ["Program"]

_log = logging.getLogger(__name__)


class _AsyncCloseable(Protocol):
    """A resource a program closes when it ends (see `Program.close_on_exit`)."""

    async def aclose(self) -> None: ...


class Program:
    """One run: a DAG of calls executed as their inputs become ready."""

    def __init__(
        self,
        *,
        program_id: str | None = None,
        deadline_in_s: float | None = None,
        model: str | LLMBackend | None = None,
        tools: Iterable[Any] = (),
        max_parallel: int = 64,
        observers: Iterable[ExecutorObserver] = (),
        estimates: DurationEstimates | None = None,
    ) -> None:
        """A program, run by `async with`.

        `deadline_in_s`: seconds from entering the program until it is cancelled (urgency
        scheduling reads it too); `estimates`: learned call durations (default: shared by the
        process's programs).
        """
        if deadline_in_s is not None and not (isinstance(deadline_in_s, int | float) and 0 < deadline_in_s < 1e9):
            raise UserError(f"deadline_in_s must be a number of seconds > 0, got {deadline_in_s!r}")
        self.program_id = program_id or f"prog-{uuid.uuid4().hex[:12]}"
        self.deadline_in_s = deadline_in_s  # seconds from entering the program
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self._model = model
        self._max_parallel = max_parallel
        self._observers = tuple(observers)
        self._estimates = estimates
        self._ids = itertools.count(1)
        self._executor: Executor | None = None
        self._token: Any = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._result: RunResult | None = None
        self._lazy_backend = _LazyBackend(model)  # resolves `model` on the first LLM call
        self.backend: LLMBackend = self._lazy_backend
        # What a program-aware backend reported when the program ended (pins, queueing, cache hits).
        self.serving: dict[str, Any] | None = None
        self._to_close: list[_AsyncCloseable] = []  # closed when the program ends, last registered first
        self._spans: ProgramSpans | None = None  # OpenTelemetry spans, when tracing is on (agentflow.otel)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Program:
        if self._executor is not None:
            raise UserError("a Program runs once; create a new one")
        arrival_s = time.time()
        facts = ProgramFacts(
            program_id=self.program_id,
            arrival_s=arrival_s,
            deadline_at_s=arrival_s + self.deadline_in_s if self.deadline_in_s is not None else None,
        )
        # The SDK's one arrow up, taken when a program runs: `executor` imports the SDK's modules,
        # so importing it here at module level would make `import executor` before `import
        # agentflow` a circular import.
        from executor import Executor

        observers: tuple[ExecutorObserver, ...] = (*self._observers, _ToolDurationFeed(self._lazy_backend))
        self._spans = otel.program_spans(self.program_id, model_name=self._lazy_backend.label)
        if self._spans is not None:
            observers = (*observers, self._spans)
        self._executor = Executor(
            self.registry.get,
            facts=facts,
            max_parallel=self._max_parallel,
            backend=self.backend,
            observers=observers,
            estimates=self._estimates,
        )
        if self.deadline_in_s is not None:
            # A timer, not a timeout around the exit: the deadline must also stop a body awaiting a variable.
            self._deadline_timer = asyncio.get_running_loop().call_later(self.deadline_in_s, self._on_deadline)
        self._token = _context.enter(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _context.leave(self._token)
        executor = self._running()
        if exc is not None:
            executor.cancel(f"program body raised {exc_type.__name__ if exc_type else 'an error'}")
        executor.close()
        try:
            self._result = await executor.wait()
        except asyncio.CancelledError as cancelled:
            executor.cancel("program cancelled")
            self._result = executor.result()
            _post_end_program(self._lazy_backend, self.program_id)
            await self._close_resources()
            if self._spans is not None:
                self._spans.close(self._result, cancelled)
            raise
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            executor.shutdown()
        await self._close_resources()
        self.serving = await _end_program(self._lazy_backend, self.program_id)
        if self._spans is not None:
            self._spans.close(self._result, exc)

    def close_on_exit(self, resource: _AsyncCloseable) -> None:
        """Close `resource` (`await resource.aclose()`) when the program ends.

        Resources close after the program's calls have settled (when it is cancelled: once its
        calls are cancelled), the last registered first. A resource that fails to close is
        logged; it does not turn the program's result into an error.
        """
        if self._result is not None:
            raise UserError("this program has ended: close the resource yourself")
        self._to_close.append(resource)

    async def _close_resources(self) -> None:
        resources, self._to_close = self._to_close[::-1], []
        for resource in resources:
            try:
                await resource.aclose()
            except Exception:  # closing is best effort: the run's result stands
                _log.warning("program %s: closing %r failed", self.program_id, resource, exc_info=True)

    def _on_deadline(self) -> None:
        self._running().cancel(f"deadline of {self.deadline_in_s:g} s passed")

    def cancel(self, reason: str = "program cancelled") -> None:
        """Cancel every running call; pending ones never start."""
        self._running().cancel(reason)

    # -- building the DAG ---------------------------------------------------------------------------

    def call(self, callee: Callee, *args: Any, **kwargs: Any) -> SemanticVariable[Any]:
        """Schedule a call; variables among the arguments become edges."""
        executor = self._running()
        self.registry.register(callee)
        node = CallNode(
            id=str(next(self._ids)),
            kind=callee.kind,
            target=callee.name,
            args=tuple(self._to_ir(a) for a in args),
            kwargs={k: self._to_ir(v) for k, v in kwargs.items()},
        )
        executor.submit(node)
        return SemanticVariable(self, node.id, callee.name)

    def submit(self, node: CallNode) -> None:
        """Add an IR node directly (the planner streams nodes in this way)."""
        self._running().submit(node)

    def submit_batch(self, nodes: Iterable[CallNode]) -> None:
        """Add a batch of IR nodes, validated together before any runs."""
        self._running().submit_batch(nodes)

    def llm_metadata(self, *, is_last_turn: bool = False) -> ProgramMetadata:
        """Metadata for an LLM call of this program made outside its DAG (a planner's plan or join call).

        The program's executor issues it, so these calls and the DAG's LLM calls share one turn counter.
        """
        return self._running().issue_metadata(is_last_turn=is_last_turn)

    def new_node_id(self) -> str:
        """A fresh node id for this program."""
        return str(next(self._ids))

    def _to_ir(self, value: Any) -> Any:
        if isinstance(value, SemanticVariable):
            if value._program is not self:
                raise UserError(f"variable ${value.node_id} belongs to another program")
            return Ref(value.node_id)
        if isinstance(value, list):
            return [self._to_ir(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._to_ir(v) for v in value)
        if isinstance(value, Mapping):
            return {k: self._to_ir(v) for k, v in value.items()}
        return value

    # -- reading --------------------------------------------------------------------------------------

    @property
    def graph(self) -> CallGraph:
        return self._running().graph

    @property
    def result(self) -> RunResult:
        """The outputs, failures and trace; after the `async with` block, the final ones."""
        if self._result is not None:
            return self._result
        return self._running().result()

    def node_state(self, node_id: str) -> NodeState:
        return self._running().state.runs[node_id].state

    def future(self, node_id: str) -> asyncio.Future[Any]:
        return self._running().future(node_id)

    async def wait(self) -> RunResult:
        """Wait for every call submitted so far (the program stays open for more)."""
        executor = self._running()
        futures = [executor.future(nid) for nid in list(executor.state.runs)]
        await asyncio.gather(*futures, return_exceptions=True)
        return executor.result()

    def deadline_remaining_s(self) -> float | None:
        facts = self._running().facts
        return None if facts.deadline_at_s is None else facts.deadline_at_s - time.time()

    def _running(self) -> Executor:
        if self._executor is None:
            raise UserError("use the program inside `async with Program(...) as p:`")
        return self._executor


class _ToolDurationFeed:
    """Reports each tool's real duration to a backend that learns from it (the program-aware engine)."""

    def __init__(self, backend: _LazyBackend) -> None:
        self._backend = backend

    def on_node_start(self, program_id: str, run: NodeRun) -> None:
        pass

    def on_node_end(self, program_id: str, run: NodeRun) -> None:
        if run.node.kind is not CallKind.TOOL or run.state not in (NodeState.DONE, NodeState.FAILED):
            return
        backend = self._backend.program_aware
        if backend is not None:
            backend.observe_tool_duration(run.node.target, run.duration_s)


async def _end_program(backend: _LazyBackend, program_id: str) -> dict[str, Any] | None:
    """Tell a backend that keeps per-program state (pinned KV) that the program is over."""
    resolved = backend.program_aware
    if resolved is None:
        return None
    try:
        return await resolved.end_program(program_id)
    except AgentflowError:  # an engine that died after the run must not turn its result into an error
        return None


def _post_end_program(backend: _LazyBackend, program_id: str) -> None:
    # The task is being cancelled: post without awaiting.
    resolved = backend.program_aware
    if resolved is not None:
        resolved.post_end_program(program_id)


class _LazyBackend:
    """Resolves the model string on the first LLM call, so tool-only programs never load a model."""

    def __init__(self, model: str | LLMBackend | None) -> None:
        self._model = model
        self._backend: LLMBackend | None = None
        self._program_aware: ProgramAwareBackend | None = None
        if isinstance(model, LLMBackend):
            self._set(model)

    def _get(self) -> LLMBackend:
        if self._backend is None:
            self._set(resolve_backend(self._model))
        assert self._backend is not None
        return self._backend

    def _set(self, backend: LLMBackend) -> None:
        self._backend = backend
        # Checked once: a runtime protocol check costs ~20 us, and tools end by the thousand.
        self._program_aware = backend if isinstance(backend, ProgramAwareBackend) else None

    def label(self) -> str:
        """The backend's name once resolved, else the model string it will resolve (never loads one)."""
        if self._backend is not None:
            return self._backend.name
        return self._model if isinstance(self._model, str) else os.environ.get(MODEL_ENV) or "embedded"

    @property
    def program_aware(self) -> ProgramAwareBackend | None:
        """The backend, if a call resolved it already and it keeps per-program state (never loads one)."""
        return self._program_aware

    @property
    def name(self) -> str:
        return self._get().name

    @property
    def supports_grammar(self) -> bool:
        return self._get().supports_grammar

    async def start(self) -> None:
        await self._get().start()

    async def complete(self, request: LLMRequest) -> Completion:
        return await self._get().complete(request)

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        return self._get().stream(request)

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
