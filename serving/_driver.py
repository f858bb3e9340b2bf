"""The engine thread: owns one vLLM engine, steps it, routes outputs to callers' event loops.

Everything that touches the vLLM engine runs on this one thread, so vLLM needs no locks and
its OpenMP/torch thread settings (made while the engine is built) apply to the thread that
runs the model. Callers talk to it through a command queue; it talks back through
`loop.call_soon_threadsafe` onto one asyncio.Queue per request.

Loop: drain commands (block only when no request is unfinished) -> `engine.step()` ->
route each output. Failure is delivered, never swallowed: a rejected request gets its own
error; if the loop itself dies, every waiter and every later submitter gets an EngineError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.exceptions import EngineError, EngineUnavailableError, UserError
from serving import _vllm
from serving._types import GenerationChunk

if TYPE_CHECKING:
    from serving.engine import EngineConfig

__all__: list[str] = []  # internal module

logger = logging.getLogger(__name__)


class Sink:
    """Delivers one request's chunks (or its error) to the event loop that awaits them."""

    __slots__ = ("_loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

    def put(self, item: GenerationChunk | BaseException) -> bool:
        """Hand `item` to the caller's loop; False if that loop is closed (nobody listens)."""
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            return False
        return True


@dataclass(slots=True, kw_only=True)
class Submit:
    request_id: str
    prompt: str | list[int]
    params: Any  # vllm.SamplingParams, built by serving._vllm
    priority: int
    sink: Sink
    session_id: str | None = None  # vLLM's `Request.session_id` (what the server sets from a session header)


@dataclass(slots=True)
class Abort:
    request_id: str


@dataclass(slots=True)
class RunOnEngine:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


@dataclass(slots=True)
class Pause:
    """While paused, the loop applies commands (adds requests) but runs no engine step."""

    paused: bool


class Stop:
    """Ends the loop after the commands queued before it."""


Command = Submit | Abort | RunOnEngine | Pause | Stop


class Driver:
    """One engine thread and the vLLM engine it owns."""

    def __init__(self, config: EngineConfig, resolve_model_dir: Callable[[], Path]) -> None:
        self._config = config
        self._resolve_model_dir = resolve_model_dir
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}  # request_id -> sink; touched by the engine thread only
        self._lock = threading.Lock()  # orders post() against _die(): no command slips past death
        self._dead: EngineError | None = None
        self._paused = False  # touched by the engine thread only (set through Pause commands)
        self.engine: Any = None  # vllm LLMEngine once ready
        self.startup_s: float | None = None  # model preparation + engine build + warm-up, seconds
        self.busy_s = 0.0  # seconds spent in engine steps since it started (replicas report it)
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        # RUNNING futures cannot be cancelled: a cancelled waiter must not cancel the start.
        self.ready.set_running_or_notify_cancel()
        self.thread = threading.Thread(target=self._run, name="agentflow-engine", daemon=True)

    # --- called from any thread ---------------------------------------------------------

    @property
    def dead(self) -> EngineError | None:
        return self._dead

    def post(self, command: Command) -> bool:
        """Queue a command for the engine thread; False if the engine is dead."""
        with self._lock:
            if self._dead is not None:
                return False
            self._commands.put(command)
            return True

    def submit(self, command: Submit) -> None:
        if not self.post(command):
            raise copy_error(self._dead)

    def stop(self, *, timeout_s: float | None) -> None:
        self.post(Stop())
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout_s)

    # --- engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        if not self._start_engine():
            return
        reason: EngineError
        try:
            self._loop()
            reason = EngineError("the embedded engine was shut down")
        except BaseException as exc:  # the loop must report any death to its waiters
            logger.exception("embedded engine thread died")
            reason = EngineError(f"the embedded engine died: {type(exc).__name__}: {exc}")
        # Release vLLM's process-global state (torch.distributed groups) before anyone
        # learns the engine is dead and builds a replacement.
        self._shutdown_engine()
        self._die(reason)

    def _start_engine(self) -> bool:
        started = time.perf_counter()
        try:
            model_dir = self._resolve_model_dir()
            self.engine = _vllm.build_engine(model_dir=model_dir, **self._engine_kwargs())
            warm_up_started = time.perf_counter()
            _vllm.warm_up(self.engine)
            warm_up_s = time.perf_counter() - warm_up_started
        except BaseException as exc:
            if isinstance(exc, EngineError):  # ours, and its message names the fix
                error = exc
            else:
                logger.exception("embedded engine failed to start")
                error = EngineUnavailableError(f"the embedded engine failed to start: {type(exc).__name__}: {exc}")
            if self.engine is not None:  # built, then failed to warm up
                self._shutdown_engine()
            self._die(error)
            self.ready.set_exception(error)
            return False
        self.startup_s = time.perf_counter() - started
        logger.info("embedded engine ready in %.1f s (warm-up %.2f s)", self.startup_s, warm_up_s)
        self.ready.set_result(None)
        return True

    def _engine_kwargs(self) -> dict[str, Any]:
        c = self._config
        return {
            "kv_cache_bytes": c.kv_cache_bytes,
            "max_model_len": c.max_model_len,
            "block_size": c.block_size,
            "max_num_seqs": c.max_num_seqs,
            "max_num_batched_tokens": c.max_num_batched_tokens,
            "enable_prefix_caching": c.enable_prefix_caching,
            "scheduler_cls": c.scheduler_cls,
            "scheduling_policy": c.scheduling_policy,
            "seed": c.seed,
            "scheduler_knobs": dict(c.scheduler_knobs),
        }

    def _loop(self) -> None:
        # Block on the queue only when idle: no busy spin, no polling sleep. An idle scheduler
        # may still want a wake-up (a pinned KV block's TTL ends): block until then at most.
        # Paused, the loop only applies commands: requests queue up and start in one step.
        while True:
            idle = self._paused or not _vllm.has_unfinished_requests(self.engine)
            timeout_s = _vllm.idle_wakeup_s(self.engine) if idle and not self._paused else None
            if not self._drain(block=idle, timeout_s=timeout_s):
                return
            if self._paused:
                continue
            if _vllm.has_unfinished_requests(self.engine):
                step_started = time.perf_counter()
                outputs = _vllm.step(self.engine)
                self.busy_s += time.perf_counter() - step_started
                self._route(outputs)
            elif idle and timeout_s is not None:
                _vllm.idle_tick(self.engine)

    def _drain(self, *, block: bool, timeout_s: float | None = None) -> bool:
        """Apply queued commands; False once Stop is seen."""
        try:
            command = self._commands.get(timeout=timeout_s) if block else self._commands.get_nowait()
            while True:
                if isinstance(command, Stop):
                    return False
                self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            return True

    def _apply(self, command: Command) -> None:
        if isinstance(command, Submit):
            self._add(command)
        elif isinstance(command, Abort):
            self._abort(command.request_id)
        elif isinstance(command, RunOnEngine):
            _run_call(command)
        elif isinstance(command, Pause):
            self._paused = command.paused

    def _add(self, command: Submit) -> None:
        if command.request_id in self._sinks:
            command.sink.put(UserError(f"request id {command.request_id!r} is already running"))
            return
        try:
            _vllm.add_request(
                self.engine,
                request_id=command.request_id,
                prompt=command.prompt,
                params=command.params,
                priority=command.priority,
                session_id=command.session_id,
            )
        except Exception as exc:  # a bad request fails alone; the engine goes on
            command.sink.put(EngineError(f"the engine rejected the request: {type(exc).__name__}: {exc}"))
            return
        self._sinks[command.request_id] = command.sink

    def _abort(self, request_id: str) -> None:
        # Unknown ids are requests that already finished: nothing to do.
        if self._sinks.pop(request_id, None) is not None:
            _vllm.abort(self.engine, [request_id])

    def _route(self, outputs: list[Any]) -> None:
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if sink is None:  # aborted after this step's outputs were made
                continue
            chunk = _vllm.to_chunk(output, self.engine)
            if chunk.finished:
                del self._sinks[output.request_id]
            if not sink.put(chunk) and not chunk.finished:
                self._abort(output.request_id)

    def _die(self, reason: EngineError) -> None:
        with self._lock:
            self._dead = reason
            pending = _drain_nowait(self._commands)
        for command in pending:
            if isinstance(command, Submit):
                command.sink.put(copy_error(reason))
            elif isinstance(command, RunOnEngine) and command.future.set_running_or_notify_cancel():
                command.future.set_exception(copy_error(reason))
        for sink in self._sinks.values():
            sink.put(copy_error(reason))
        self._sinks.clear()

    def _shutdown_engine(self) -> None:
        try:
            _vllm.shutdown(self.engine)
        except Exception:
            logger.warning("embedded engine shutdown failed", exc_info=True)


def _run_call(command: RunOnEngine) -> None:
    if not command.future.set_running_or_notify_cancel():
        return  # the caller gave up waiting
    try:
        command.future.set_result(command.fn())
    except BaseException as exc:
        command.future.set_exception(exc)


def _drain_nowait(commands: queue.SimpleQueue[Command]) -> list[Command]:
    drained: list[Command] = []
    while True:
        try:
            drained.append(commands.get_nowait())
        except queue.Empty:
            return drained


def copy_error(error: EngineError | None) -> EngineError:
    # One instance per waiter: an exception raised in several tasks would share a traceback.
    return type(error)(str(error)) if error is not None else EngineError("the embedded engine is not running")
