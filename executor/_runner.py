"""The task fetching unit: the async shell around `RunState`.

Nodes arrive one by one (the planner streams them) or in batches. A node is dispatched the
moment its last input is ready: completion of a call directly starts its dependents, so there
is no polling interval. Limits are counters plus queues, not semaphores, so a call that cannot
start yet costs no task.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import tenacity

from agentflow.backends import Completion, LLMBackend
from agentflow.calls import CallContext, Callee
from agentflow.exceptions import (
    AgentflowError,
    ArgumentValidationError,
    CallFailedError,
    ToolTimeoutError,
    UserError,
)
from agentflow.ir import TERMINAL_STATES, CallGraph, CallKind, CallNode, NodeState, ProgramFacts, resolve_value
from agentflow.metadata import ProgramMetadata

from ._durations import DurationEstimates, shared_estimates
from ._metadata import MetadataIssuer
from ._state import NodeRun, RunState
from ._trace import Trace

__all__ = ["Executor", "ExecutorObserver", "Failure", "RunResult"]

_MAX_PARALLEL_DEFAULT = 64


class ExecutorObserver(Protocol):
    """Told when calls start and end (tool durations reach the serving layer, spans the tracer).

    `run` is the call's live record: read it, never change it. At the end it holds the state,
    the duration, the error, the attempts and, for LLM calls, the token usage and serving facts.
    """

    def on_node_start(self, program_id: str, run: NodeRun) -> None: ...

    def on_node_end(self, program_id: str, run: NodeRun) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A call that did not produce a value, and why."""

    node_id: str
    target: str
    state: NodeState
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a run produced: every output, every failure, and the trace (built when first read)."""

    program_id: str
    outputs: dict[str, Any]  # node id -> output of every node that finished
    states: dict[str, NodeState]
    failures: tuple[Failure, ...]
    build_trace: Callable[[], Trace] = field(repr=False, compare=False)

    @functools.cached_property
    def trace(self) -> Trace:
        return self.build_trace()

    @property
    def ok(self) -> bool:
        return not self.failures


class Executor:
    """Runs one program's call graph."""

    def __init__(
        self,
        resolve: Callable[[str], Callee],
        *,
        facts: ProgramFacts,
        max_parallel: int = _MAX_PARALLEL_DEFAULT,
        backend: LLMBackend | None = None,
        observers: Iterable[ExecutorObserver] = (),
        retry_wait_s: float = 0.05,
        estimates: DurationEstimates | None = None,
    ) -> None:
        if max_parallel < 1:
            raise UserError(f"max_parallel must be >= 1, got {max_parallel}")
        self.facts = facts
        self.graph = CallGraph(facts)
        self.state = RunState()
        self._resolve = resolve
        self._max_parallel = max_parallel
        self._backend = backend
        self._observers = tuple(observers)
        self._retry_wait_s = retry_wait_s
        self._callees: dict[str, Callee] = {}  # node id -> resolved callee
        self._ready: deque[str] = deque()  # ready nodes waiting for a global slot
        self._tool_waiting: dict[str, deque[str]] = {}  # tool name -> ready nodes over its limit
        self._tool_running: dict[str, int] = {}  # tool name -> calls running
        self._num_running = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}  # node id -> running task
        self._futures: dict[str, asyncio.Future[Any]] = {}  # node id -> awaited by a variable
        self.metadata = MetadataIssuer(facts)  # the program's one turn counter
        self._estimates = estimates if estimates is not None else shared_estimates()
        self._closed = False
        self._cancelled = False
        self._cancel_reason = "program cancelled"  # given to running calls too, not only pending ones
        self._settled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._t0 = time.perf_counter()
        self._pool: ThreadPoolExecutor | None = None  # for sync tools, made on first use

    # -- intake -----------------------------------------------------------------------------------

    def submit(self, node: CallNode) -> None:
        """Add one node; its dependencies must be submitted already. Validates before anything runs."""
        self._check_open()
        callee = self._resolve(node.target)
        node = self._with_expected_duration(node, callee)
        self.graph.add(node)
        self._callees[node.id] = callee
        self._track(node)

    def submit_batch(self, nodes: Iterable[CallNode]) -> None:
        """Add nodes in any order; the whole batch is validated (targets, refs, cycles) first."""
        self._check_open()
        batch = list(nodes)
        callees = {node.id: self._resolve(node.target) for node in batch}
        batch = [self._with_expected_duration(node, callees[node.id]) for node in batch]
        ordered = self.graph.add_batch(batch)  # raises on cycles and dangling refs, adds nothing then
        self._callees.update(callees)
        for node in ordered:
            self._track(node)

    def issue_metadata(self, *, is_last_turn: bool = False) -> ProgramMetadata:
        """Metadata for an LLM call of this program made outside the DAG (a planner's plan or join call)."""
        return self.metadata.issue(is_last_turn=is_last_turn)

    def close(self) -> None:
        """No more nodes will come; `wait` returns once every node is terminal."""
        self._closed = True
        self._maybe_settle()

    def cancel(self, reason: str = "program cancelled") -> None:
        """Cancel the program: running calls are cancelled, pending ones never start."""
        if self._cancelled:
            return
        self._cancelled = True
        self._cancel_reason = reason
        self._closed = True
        self._ready.clear()
        self._tool_waiting.clear()
        now = self._now()
        for node_id in self.state.cancel_pending(reason):
            self.state.runs[node_id].end_s = now
            self._settle_future(node_id)
        for node_id, task in list(self._tasks.items()):
            task.cancel(reason)
            # A task cancelled before its first step never runs its body: reap it here.
            task.add_done_callback(functools.partial(self._reap, node_id))
        self._maybe_settle()

    async def wait(self) -> RunResult:
        """Wait until the graph is closed and every node is terminal."""
        await self._settled.wait()
        return self.result()

    def future(self, node_id: str) -> asyncio.Future[Any]:
        """A future of a node's output (raises `CallFailedError` if it does not finish)."""
        fut = self._futures.get(node_id)
        if fut is None:
            fut = self._futures[node_id] = self._loop.create_future()
            if self.state.runs[node_id].state in TERMINAL_STATES:
                self._settle_future(node_id)
        return fut

    def result(self) -> RunResult:
        runs = self.state.runs
        return RunResult(
            program_id=self.facts.program_id,
            outputs=dict(self.state.outputs),
            states={nid: run.state for nid, run in runs.items()},
            failures=tuple(
                Failure(node_id=r.node.id, target=r.node.target, state=r.state, reason=r.error or "")
                for r in self.state.failures()
            ),
            build_trace=self.trace,
        )

    def trace(self) -> Trace:
        ends = [r.end_s for r in self.state.runs.values() if r.end_s is not None]
        return Trace.build(self.facts.program_id, self.graph, self.state, max(ends, default=0.0))

    def shutdown(self) -> None:
        """Release the worker threads (threads still running a timed-out call finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- dispatch -----------------------------------------------------------------------------------

    def _with_expected_duration(self, node: CallNode, callee: Callee) -> CallNode:
        """The node with its expected duration: its own, else the callee's declared one, else the estimate."""
        if node.expected_duration_s is not None:
            return node
        expected_s = callee.expected_duration_s
        if expected_s is None:
            expected_s = self._estimates.expected_s(callee.name)
        if expected_s is None:
            return node
        return node.with_expected_duration(expected_duration_s=expected_s)

    def _track(self, node: CallNode) -> None:
        ready, skipped = self.state.add(node)
        for node_id in skipped:
            self.state.runs[node_id].end_s = self._now()
            self._settle_future(node_id)
        if ready:
            self._ready.append(node.id)
            self._pump()
        self._maybe_settle()

    def _pump(self) -> None:
        """Start ready calls while global and per-tool slots allow."""
        ready = self._ready
        while ready and self._num_running < self._max_parallel:
            node_id = ready.popleft()
            callee = self._callees[node_id]
            limit = callee.max_concurrency
            if limit is not None:
                running = self._tool_running.get(callee.name, 0)
                if running >= limit:
                    self._tool_waiting.setdefault(callee.name, deque()).append(node_id)
                    continue
                self._tool_running[callee.name] = running + 1
            self._start(node_id, callee)

    def _start(self, node_id: str, callee: Callee) -> None:
        self._num_running += 1
        run = self.state.runs[node_id]
        self.state.start(node_id, self._now())
        for observer in self._observers:
            observer.on_node_start(self.facts.program_id, run)
        self._tasks[node_id] = self._loop.create_task(self._run(run, callee))

    def _release(self, callee: Callee) -> None:
        self._num_running -= 1
        if callee.max_concurrency is not None:
            self._tool_running[callee.name] -= 1
            waiting = self._tool_waiting.get(callee.name)
            if waiting:
                self._ready.appendleft(waiting.popleft())
        self._pump()

    async def _run(self, run: NodeRun, callee: Callee) -> None:
        """One call: resolve inputs, validate, invoke with timeout and retries, apply the outcome."""
        node = run.node
        try:
            arguments = self._bind(node, callee)
            output = await self._invoke(run, callee, arguments)
        except asyncio.CancelledError:
            self._on_cancelled(node.id)
        except Exception as exc:  # failure is state: it never escapes the loop
            self._on_failed(node.id, exc)
        else:
            self._on_done(node.id, output)
        finally:
            del self._tasks[node.id]
            self._notify_end(run)
            self._release(callee)
            self._maybe_settle()

    def _bind(self, node: CallNode, callee: Callee) -> dict[str, Any]:
        if node.deps:
            outputs = self.state.outputs
            args = tuple(resolve_value(a, outputs) for a in node.args)
            kwargs = {k: resolve_value(v, outputs) for k, v in node.kwargs.items()}
            return callee.bind(args, kwargs)
        return callee.bind(node.args, node.kwargs)

    async def _invoke(self, run: NodeRun, callee: Callee, arguments: dict[str, Any]) -> Any:
        if callee.retries == 0:
            run.attempts = 1
            return await self._attempt(run, callee, arguments)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(callee.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self._retry_wait_s, max=self._retry_wait_s * 32),
            retry=tenacity.retry_if_exception(_is_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                run.attempts = attempt.retry_state.attempt_number
                return await self._attempt(run, callee, arguments)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, run: NodeRun, callee: Callee, arguments: dict[str, Any]) -> Any:
        if callee.runs_in_thread:
            return await self._attempt_in_thread(callee, arguments)
        awaitable = callee.invoke(arguments, self._context(run, callee))
        if callee.timeout_s is None:  # the common case, without another coroutine frame
            return await awaitable
        return await self._with_timeout(callee, awaitable)

    async def _attempt_in_thread(self, callee: Callee, arguments: dict[str, Any]) -> Any:
        call = functools.partial(contextvars.copy_context().run, callee.invoke_sync, arguments)
        try:
            return await self._with_timeout(callee, self._loop.run_in_executor(self._thread_pool(), call))
        except (ToolTimeoutError, asyncio.CancelledError):
            # The abandoned call still holds its worker thread: later calls get a fresh pool, not a wait.
            self._retire_pool()
            raise

    async def _with_timeout(self, callee: Callee, awaitable: Awaitable[Any]) -> Any:
        if callee.timeout_s is None:
            return await awaitable
        try:
            async with asyncio.timeout(callee.timeout_s):
                return await awaitable
        except TimeoutError:
            raise ToolTimeoutError(callee.name, callee.timeout_s) from None

    def _context(self, run: NodeRun, callee: Callee) -> CallContext:
        if callee.kind is not CallKind.LLM:
            return CallContext(program_id=self.facts.program_id, node_id=run.node.id, attempt=run.attempts)
        return CallContext(
            program_id=self.facts.program_id,
            node_id=run.node.id,
            attempt=run.attempts,
            backend=self._backend,
            metadata=self._metadata(run.node),
            on_completion=functools.partial(_record_usage, run),
        )

    def _metadata(self, node: CallNode) -> ProgramMetadata:
        """What the engine should know about this LLM call, read off the DAG."""
        graph = self.graph
        successors = [graph[s] for s in graph.successors(node.id)]
        next_tool = next((s for s in successors if s.kind is CallKind.TOOL), None)
        later_llm = any(graph[d].kind is CallKind.LLM for d in graph.descendants(node.id))
        return self.metadata.issue(
            is_last_turn=self._closed and not later_llm,
            next_tool=next_tool.target if next_tool else None,
            next_tool_duration_s=next_tool.expected_duration_s if next_tool else None,
            critical_path_s=self._remaining_critical_path_s(node),
        )

    def _remaining_critical_path_s(self, node: CallNode) -> float | None:
        """Longest chain of expected durations from this node to the end (None when none is known).

        Weights outside the node and its descendants are 0, so the graph's longest path is the
        longest chain that starts at this node.
        """
        graph = self.graph
        ahead = graph.descendants(node.id) | {node.id}
        weights = {nid: (graph[nid].expected_duration_s or 0.0) if nid in ahead else 0.0 for nid in ahead}
        _, length = graph.critical_path(weights)
        return length if length > 0 else None

    def _retire_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # its running calls finish on their own threads
            self._pool = None

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # As many threads as calls may run: a blocking tool must never wait for a thread.
            self._pool = ThreadPoolExecutor(max_workers=self._max_parallel, thread_name_prefix="agentflow-tool")
        return self._pool

    # -- outcomes -----------------------------------------------------------------------------------

    def _on_done(self, node_id: str, output: Any) -> None:
        ready = self.state.complete(node_id, output, self._now())
        self._settle_future(node_id)
        if ready:
            self._ready.extend(ready)

    def _on_failed(self, node_id: str, exc: Exception) -> None:
        skipped = self.state.fail(node_id, _describe(exc), self._now(), exception=exc)
        self._settle_skipped(node_id, skipped)

    def _on_cancelled(self, node_id: str) -> None:
        reason = self._cancel_reason if self._cancelled else "call cancelled"
        skipped = self.state.cancel(node_id, reason, self._now())
        self._settle_skipped(node_id, skipped)

    def _reap(self, node_id: str, _task: asyncio.Task[None]) -> None:
        run = self.state.runs[node_id]
        if run.state is not NodeState.RUNNING:
            return
        self._tasks.pop(node_id, None)
        self._on_cancelled(node_id)
        self._notify_end(run)
        self._release(self._callees[node_id])
        self._maybe_settle()

    def _settle_skipped(self, node_id: str, skipped: list[str]) -> None:
        self._settle_future(node_id)
        now = self._now()
        for other in skipped:
            self.state.runs[other].end_s = now
            self._settle_future(other)

    def _settle_future(self, node_id: str) -> None:
        fut = self._futures.get(node_id)
        if fut is None or fut.done():
            return
        run = self.state.runs[node_id]
        if run.state is NodeState.DONE:
            fut.set_result(run.output)
        else:
            fut.set_exception(CallFailedError(node_id, run.state.value, run.error or ""))
            fut.exception()  # mark retrieved: an unawaited failed variable is not an error to log

    def _notify_end(self, run: NodeRun) -> None:
        if run.state is NodeState.DONE:
            self._estimates.observe(run.node.target, run.duration_s)
        for observer in self._observers:
            observer.on_node_end(self.facts.program_id, run)

    def _maybe_settle(self) -> None:
        if self._closed and self.state.all_terminal and not self._settled.is_set():
            self._settled.set()

    def _check_open(self) -> None:
        if self._closed:
            raise UserError("this program is closed: no more calls can be added")

    def _now(self) -> float:
        return time.perf_counter() - self._t0


def _record_usage(run: NodeRun, completion: Completion) -> None:
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cached_tokens": completion.cached_tokens,
    }
    run.usage = {k: v for k, v in usage.items() if v is not None}
    if completion.serving is not None:
        run.serving = dict(completion.serving)


def _is_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, (ArgumentValidationError, asyncio.CancelledError))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AgentflowError):
        return f"{type(exc).__name__}: {exc}"
    return f"ToolError: {type(exc).__name__}: {exc}"
