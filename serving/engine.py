"""The embedded engine: one in-process vLLM engine, awaited from any event loop or thread.

```python
engine = EmbeddedEngine.shared()               # one per process per config; starts lazily
async for chunk in engine.generate(prompt=engine.apply_chat_template(messages), max_tokens=64):
    print(chunk.text, end="")
```

A dedicated daemon thread owns the vLLM engine (see `serving._driver`); callers on any
loop get `GenerationChunk` deltas through per-request queues. Cancelling the consuming task
(or closing the generator) aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from agentflow.exceptions import BackendConfigError, UserError
from agentflow.metadata import MAX_NAME_CHARS, ProgramMetadata
from serving import _vllm
from serving._control import PROGRAM_AWARE_SCHEDULER, SchedulerControl
from serving._driver import Abort, Driver, Pause, RunOnEngine, Sink, Submit, copy_error
from serving._knobs import EngineLimits, parse_knobs
from serving._types import GenerationChunk, GenerationResult, QueueSnapshot
from serving.models import default_model_dir, prepare_model, spec_for_dir

__all__ = [
    "PROGRAM_AWARE_SCHEDULER",
    "EmbeddedEngine",
    "EngineConfig",
    "GenerationChunk",
    "GenerationResult",
    "QueueSnapshot",
]

_T = TypeVar("_T")
_GiB = 1024**3
_SHUTDOWN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """How to build the embedded engine. Equal configs share one engine per process."""

    model_dir: Path | None = None  # None: the default model; catalog models are prepared on first start
    kv_cache_bytes: int = 1 * _GiB  # Qwen2.5-Coder-0.5B: 12,288 B/token in bf16 -> ~87k tokens
    max_model_len: int = 4096
    block_size: int = 32  # tokens per KV block; vLLM's CPU backend wants a multiple of 32
    max_num_seqs: int = 64  # most requests decoded in one step
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    enable_prefix_caching: bool = True
    # Qualified name of a vLLM Scheduler subclass; None: vLLM's stock scheduler.
    scheduler_cls: str | None = PROGRAM_AWARE_SCHEDULER
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    seed: int = 0
    # Knobs of the program-aware scheduler (serving._knobs), as a mapping; kept as sorted items.
    scheduler_knobs: Mapping[str, Any] | tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        """Resolve the model directory and check the limits of vLLM's CPU backend."""
        # Resolve the default now so EngineConfig() and an explicit default path are equal.
        path = default_model_dir() if self.model_dir is None else Path(self.model_dir).expanduser()
        object.__setattr__(self, "model_dir", path.absolute())
        # Sorted items: equal knobs make equal (hashable) configs, and so one shared engine.
        knobs = self.scheduler_knobs
        items = tuple(sorted(knobs.items() if isinstance(knobs, Mapping) else knobs))
        object.__setattr__(self, "scheduler_knobs", items)
        if self.block_size <= 0 or self.block_size % 32:
            raise UserError(f"block_size must be a positive multiple of 32 on CPU, got {self.block_size}")
        if self.kv_cache_bytes <= 0:
            raise UserError(f"kv_cache_bytes must be positive, got {self.kv_cache_bytes}")
        if self.max_model_len < self.block_size:
            raise UserError(f"max_model_len ({self.max_model_len}) is below block_size ({self.block_size})")
        if self.max_num_seqs < 1:
            raise UserError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if items:
            limits = EngineLimits(max_model_len=self.max_model_len, block_size=self.block_size)
            parse_knobs(None, dict(items), limits=limits)  # fail here, not inside the engine


class EmbeddedEngine:
    """One vLLM engine in this process, driven by its own thread, safe to use from any loop."""

    _registry: ClassVar[dict[EngineConfig, EmbeddedEngine]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: EngineConfig | None = None) -> None:
        """A private engine; most code wants `EmbeddedEngine.shared()` instead."""
        self.config = config or EngineConfig()
        self._driver: Driver | None = None
        self._start_lock = threading.Lock()
        self._tokenizer: Any = None

    @classmethod
    def shared(cls, config: EngineConfig | None = None) -> EmbeddedEngine:
        """The process-wide engine for `config` (a dead one is replaced). Not started yet."""
        config = config or EngineConfig()
        with cls._registry_lock:
            engine = cls._registry.get(config)
            if engine is None or engine.dead:
                engine = cls._registry[config] = cls(config)
        return engine

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine if needed and block until it is ready.

        ~10 s on the 2-core CPU box (vLLM import ~6 s, build ~3.5 s), plus ~22 s once per
        machine when the default model is first converted.

        Raises:
            EngineUnavailableError: vLLM is missing or the engine cannot be built.
            ModelPreparationError: the default model cannot be converted.
        """
        self._ensure_driver().ready.result()

    async def astart(self) -> None:
        """`start()` without blocking the event loop."""
        driver = self._ensure_driver()
        # shield: a cancelled waiter must not cancel the start for everyone else.
        await asyncio.shield(asyncio.wrap_future(driver.ready))

    def shutdown(self, *, timeout_s: float = _SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the engine thread; unfinished requests fail with EngineError."""
        with self._start_lock:
            driver, self._driver = self._driver, None
        if driver is not None:
            driver.stop(timeout_s=timeout_s)
        with self._registry_lock:
            if self._registry.get(self.config) is self:
                del self._registry[self.config]

    @property
    def dead(self) -> bool:
        """True once the engine failed or was shut down; `shared()` then builds a new one."""
        driver = self._driver
        return driver is not None and driver.dead is not None

    @property
    def startup_s(self) -> float | None:
        """Seconds the engine took to start (model preparation + vLLM build), once started."""
        return self._driver.startup_s if self._driver is not None else None

    @property
    def busy_s(self) -> float:
        """Seconds the engine has spent in steps since it started (0 before)."""
        return self._driver.busy_s if self._driver is not None else 0.0

    # --- generation ---------------------------------------------------------------------

    async def generate(
        self,
        *,
        prompt: str | list[int],
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        grammar: str | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        extra_args: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        priority: int = 0,
        session_id: str | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream one request's deltas. The last chunk has `finished=True`.

        `prompt` is raw text (apply the chat template first for chat) or token ids.
        `grammar` is EBNF (xgrammar) and `json_schema` a JSON schema; at most one.
        `extra_args` reaches the scheduler as `request.sampling_params.extra_args`; `session_id`
        as `request.session_id` (what `agentflow serve` sets from a client's session id).

        Raises:
            EngineError: the engine rejected the request or died while it ran.
            MetadataError: malformed program metadata in `extra_args`.
            UserError: bad arguments (both constraints, a request id already running).
        """
        _check_generate_args(max_tokens=max_tokens, grammar=grammar, json_schema=json_schema, session_id=session_id)
        ProgramMetadata.from_extra_args(extra_args)  # raises MetadataError before anything reaches the engine
        driver = await self._started()
        params = _vllm.make_sampling_params(
            max_tokens=max_tokens,
            temperature=temperature,
            stop=tuple(stop),
            ignore_eos=ignore_eos,
            grammar=grammar,
            json_schema=dict(json_schema) if isinstance(json_schema, Mapping) else json_schema,
            extra_args=dict(extra_args) if extra_args else None,
        )
        request_id = request_id or f"af-{uuid.uuid4().hex}"
        sink = Sink(asyncio.get_running_loop())
        driver.submit(
            Submit(
                request_id=request_id, prompt=prompt, params=params, priority=priority, sink=sink, session_id=session_id
            )
        )
        finished = False
        try:
            while not finished:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine already dropped the request
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # cancelled, or the consumer stopped iterating
                driver.post(Abort(request_id))

    async def complete(
        self,
        *,
        prompt: str | list[int],
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        grammar: str | None = None,
        json_schema: Mapping[str, Any] | str | None = None,
        extra_args: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        priority: int = 0,
        session_id: str | None = None,
    ) -> GenerationResult:
        """Run one request to the end; the whole text and its token counts."""
        texts: list[str] = []
        token_ids: list[int] = []
        last: GenerationChunk | None = None
        async for chunk in self.generate(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            ignore_eos=ignore_eos,
            grammar=grammar,
            json_schema=json_schema,
            extra_args=extra_args,
            request_id=request_id,
            priority=priority,
            session_id=session_id,
        ):
            texts.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            last = chunk
        assert last is not None and last.finished, "generate() ends with a finished chunk"
        return GenerationResult(
            text="".join(texts),
            token_ids=tuple(token_ids),
            finish_reason=last.finish_reason,
            num_prompt_tokens=last.num_prompt_tokens,
            num_completion_tokens=len(token_ids),
            num_cached_tokens=last.num_cached_tokens,
        )

    # --- tokenizer and scheduler ----------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer of the engine's model.

        Its own instance, not the engine thread's, so callers may encode concurrently with
        the engine. Loading it does not start the engine (it may prepare the default model).
        """
        with self._start_lock:
            if self._tokenizer is None:
                self._tokenizer = _load_tokenizer(self._model_dir())
            return self._tokenizer

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Chat messages -> the prompt text the model was trained on (its own chat template).

        `tools`: OpenAI function-tool specs, rendered by the template's own tools section (Qwen2.5:
        a `<tools>` block and the `<tool_call>` format); a template without one ignores them.
        Messages may carry assistant `tool_calls` and `tool` results, as OpenAI's API has them.
        """
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=[dict(t) for t in tools] if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert isinstance(text, str)
        return text

    @property
    def scheduler(self) -> Any:
        """The live vLLM scheduler (starts the engine).

        It belongs to the engine thread: read it anywhere, but change it only through
        `call_in_engine`, which runs between two engine steps.
        """
        self.start()
        driver = self._driver
        assert driver is not None
        return _vllm.live_scheduler(driver.engine)

    async def build_stock_scheduler(self) -> Any:
        """Build vLLM's stock FCFS scheduler beside this engine's own, idle until swapped in.

        For side-by-side measurements on one engine, one model, one process: run a burst, swap,
        run the same burst (`swap_scheduler`). Machine noise between two engine processes is
        larger than the difference between two schedulers.
        """
        driver = await self._started()
        return await self.call_in_engine(lambda: _vllm.build_stock_scheduler(driver.engine))

    async def swap_scheduler(self, scheduler: Any) -> Any:
        """Make `scheduler` the engine's (between steps, with no request in flight); the one it replaces.

        Raises:
            UserError: a request is in flight.
        """
        driver = await self._started()
        return await self.call_in_engine(lambda: _vllm.swap_scheduler(driver.engine, scheduler))

    async def call_in_engine(self, fn: Callable[[], _T]) -> _T:
        """Run `fn()` on the engine thread between two steps; its result or exception."""
        driver = await self._started()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        if not driver.post(RunOnEngine(fn, future)):
            raise _dead_error(driver)
        return await asyncio.wrap_future(future)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold engine steps for the block: requests submitted inside queue up, none runs.

        On exit the engine resumes, and everything queued meanwhile is scheduled together from
        the next step on: a burst that starts as one batch whatever the event loop's timing
        (benchmarks; `vllm.LLM.generate` of a list behaves so). Wait inside the block until the
        engine holds the requests (`num_unfinished_requests`); the engine still answers calls.
        """
        driver = await self._started()
        if not driver.post(Pause(True)):
            raise _dead_error(driver)
        try:
            yield
        finally:
            driver.post(Pause(False))

    async def queue_snapshot(self) -> QueueSnapshot:
        """Which requests run now (by the ids their callers gave), how many wait, KV usage: between two steps."""
        driver = await self._started()
        return await self.call_in_engine(lambda: _vllm.queue_snapshot(driver.engine))

    async def num_unfinished_requests(self) -> int:
        """Requests the engine holds that have not finished (read on the engine thread)."""
        driver = await self._started()
        return await self.call_in_engine(lambda: _vllm.num_unfinished_requests(driver.engine))

    # --- the program-aware scheduler (serving._control.SchedulerControl) ----------------------
    # Each is a no-op (None) on an engine with another scheduler, and none starts the engine
    # except those that must read it.

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """Report a tool's real duration to the scheduler's predictor; never blocks, never starts the engine."""
        self._post_to_scheduler(lambda control: control.observe_tool_duration(tool, duration_s))

    def post_end_program(self, program_id: str) -> None:
        """`end_program` without waiting (safe from a cancelled task); never starts the engine."""
        self._post_to_scheduler(lambda control: control.end_program(program_id))

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        """Release the program's pinned KV; its serving summary (None if the engine is not running)."""
        if not self._running():
            return None
        return await self._scheduler_call(lambda control: control.end_program(program_id))

    async def agentflow_metrics(self) -> dict[str, Any] | None:
        """The scheduler's counters (`ProgramAwareScheduler.agentflow_metrics`)."""
        return await self._scheduler_call(lambda control: control.agentflow_metrics())

    async def configure_scheduler(self, **knobs: Any) -> dict[str, Any] | None:
        """Change the scheduler's knobs at runtime (`serving._knobs.SchedulerKnobs`); all knobs after.

        Raises:
            UserError: an unknown knob or a bad value (no knob changes then).
        """
        return await self._scheduler_call(lambda control: control.configure(**knobs))

    async def num_free_blocks(self) -> int:
        """Free KV blocks in the pool (prefix-cached blocks nobody references count as free)."""
        driver = await self._started()
        return await self.call_in_engine(lambda: _vllm.num_free_blocks(driver.engine))

    async def reset_prefix_cache(self) -> bool:
        """Drop every prefix-cached block (pinned ones are released first by agentflow's scheduler)."""
        driver = await self._started()
        return await self.call_in_engine(lambda: bool(_vllm.live_scheduler(driver.engine).reset_prefix_cache()))

    def _running(self) -> bool:
        driver = self._driver
        return driver is not None and driver.ready.done() and driver.dead is None and driver.ready.exception() is None

    async def _scheduler_call(self, fn: Callable[[SchedulerControl], _T]) -> _T | None:
        driver = await self._started()

        def call() -> _T | None:
            control = _vllm.scheduler_control(driver.engine)
            return None if control is None else fn(control)

        return await self.call_in_engine(call)

    def _post_to_scheduler(self, fn: Callable[[SchedulerControl], object]) -> None:
        if not self._running():
            return
        driver = self._driver
        assert driver is not None

        def call() -> None:
            control = _vllm.scheduler_control(driver.engine)
            if control is not None:
                fn(control)

        driver.post(RunOnEngine(call, concurrent.futures.Future()))  # nobody waits: errors are dropped with it

    # --- internals ----------------------------------------------------------------------

    async def _started(self) -> Driver:
        await self.astart()
        driver = self._driver
        if driver is None or driver.dead is not None:
            raise _dead_error(driver)
        return driver

    def _ensure_driver(self) -> Driver:
        with self._start_lock:
            if self._driver is None:
                self._driver = Driver(self.config, self._model_dir)
                self._driver.thread.start()
                _started_engines.add(self)
            return self._driver

    def _model_dir(self) -> Path:
        model_dir = self.config.model_dir
        assert model_dir is not None  # EngineConfig resolves None
        spec = spec_for_dir(model_dir)
        if spec is not None:  # a catalog model: prepared on first use, instant after
            return prepare_model(spec, model_dir=model_dir).path
        if not (model_dir / "config.json").is_file():
            # vLLM would take the path for a hub repo id and fail obscurely.
            raise BackendConfigError(
                f"{model_dir} is not a local Hugging Face model directory (no config.json); "
                "agentflow never downloads models"
            )
        return model_dir


def _check_generate_args(
    *, max_tokens: int, grammar: str | None, json_schema: object, session_id: str | None = None
) -> None:
    if max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
    if grammar is not None and json_schema is not None:
        raise UserError("pass at most one of grammar and json_schema")
    if session_id is not None and not (isinstance(session_id, str) and 0 < len(session_id) <= MAX_NAME_CHARS):
        raise UserError(f"session_id must be a non-empty string of at most {MAX_NAME_CHARS} characters")


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _dead_error(driver: Driver | None) -> Exception:
    return copy_error(driver.dead if driver is not None else None)


# Engines with a running thread, stopped at exit: a daemon thread still inside torch while
# the interpreter tears modules down can crash the exit.
_started_engines: weakref.WeakSet[EmbeddedEngine] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for engine in list(_started_engines):
        engine.shutdown(timeout_s=5.0)
