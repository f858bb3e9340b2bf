"""Program-aware scheduling inside vLLM 0.32, plugged in through `scheduler_cls` (no fork).

```python
EngineConfig(scheduler_cls="serving._scheduler.ProgramAwareScheduler")   # the embedded default
agentflow serve                                                            # the OpenAI-compatible server
```

`ProgramAwareScheduler` subclasses vLLM's `Scheduler`; on an engine with async scheduling (GPU)
the same name builds `ProgramAwareAsyncScheduler` (vLLM's `AsyncScheduler` underneath), so one
qualified name serves both. Decisions live in the pure `serving._policy`; this module moves
blocks and requests. Only requests carrying program metadata in `extra_args` (embedded) or
`vllm_xargs` (server) are treated differently; a request without it is scheduled exactly as
stock vLLM schedules it, with either `scheduling_policy`.

What it does with program requests:
- **Program-level FCFS**: the waiting queue is ordered by each request's program's first
  arrival; requests that reuse their program's pinned KV go first; preemption takes the
  youngest program first
  (the running list is kept in the same order, and vLLM preempts its last element).
- **KV pinning with a TTL**: when a call finishes and its metadata names the tool that runs
  next (`next_tool`, not `is_last_turn`), its prefix-cached blocks stay referenced for
  tau* (`serving._policy.choose_ttl`). Released on the program's next request once that
  request has been scheduled and holds the blocks itself (hand-off: which pins a request
  reuses is known when it arrives, from its prompt's block hashes), on expiry unless a
  waiting request is about to reuse the pin, on `end_program` / the last turn / cancel,
  under memory pressure (cheapest pin first, before vLLM would preempt; a request only
  takes pins of programs queued after its own, so an older program's context outlives a
  younger program's work until its TTL ends), and by `reset_prefix_cache`. A program may
  hold several pins (parallel branches).
- **Admission control**: a program with nothing resident waits while admitting it would eat the
  growth room of older resident programs (`reserve_turns`); what younger programs hold counts
  as room. Such requests leave vLLM's queue for one step at a time (`_hold_back`).
- **Urgency**: with `deadline_s`, a request's rank is its latest start time: the remaining
  deadline apportioned along `critical_path_s` (the DAG's remaining critical path) minus the
  call's expected execution time (prefill model + decode rate).

Public methods (call them on the engine thread: `EmbeddedEngine.call_in_engine`; on a server,
through `agentflow_api` / the `/agentflow/...` routes of `agentflow serve`):
- `observe_tool_duration(tool, duration_s)`: a tool's real duration, for the predictor.
- `end_program(program_id) -> dict`: release the program's pins; its summary.
- `agentflow_metrics() -> dict`: pins created/hit/expired/reclaimed, blocks pinned,
  prefix-cache hit tokens per turn, queueing delay (overall and per program), the last
  admissions, the predictor and prefill model, the KV pool, the knobs.
- `configure(**knobs) -> dict`: change knobs at runtime; returns them all.
- `num_free_blocks() -> int`, `reset_prefix_cache()` (releases pins first).

Knobs (`configure`, `EngineConfig(scheduler_policy={...})`, or
`--additional-config '{"agentflow_scheduler": {...}}'`; `serving._policy.PolicyKnobs`):
- `enabled` (True): False schedules every request as stock vLLM (the "vllm" baseline on the
  same engine); pins are released.
- `program_fcfs` (True), `pinning` (True), `urgency` (True): the three mechanisms, separately.
  `pinning=False` with the rest on is vLLM's priority policy keyed by program arrival.
- `fixed_ttl_s` (None): pin for this long instead of the cost model (Continuum pins 2 s).
- `tau_max_s` (30), `handoff_slack_s` (0.05), `memory_price_weight` (0.05): the TTL cost model.
- `max_pinned_fraction` (0.9): pinned blocks never exceed this share of the usable pool.
- `min_tool_samples` (5), `tool_window` (256): the duration predictor.
- `program_idle_gc_s` (600): programs with nothing live are forgotten after this long.
- `reserve_turns` (8): admission control; a program with nothing resident is admitted only if
  older resident programs keep room for this many turns of their context growth (0: off).
- `kv_block_limit` (None): cap the usable KV blocks at runtime by holding the rest back
  (tests and benchmarks emulate a smaller cache without a second engine); must stay above
  `max_model_len / block_size`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from serving import _vllm
from serving._policy import (
    AdmissionCandidate,
    PinBook,
    PolicyKnobs,
    PrefillTimeModel,
    ProgramFields,
    ProgramState,
    ProgramTable,
    ServingMetrics,
    ToolDurationPredictor,
    choose_ttl,
    cold_fits,
    growth_reserve_blocks,
    latest_start_s,
    parse_knobs,
    parse_or_none,
    queue_key,
)

__all__ = ["ProgramAwareAsyncScheduler", "ProgramAwareScheduler"]

logger = logging.getLogger(__name__)

_Scheduler, _AsyncScheduler = _vllm.scheduler_base_classes()
_FCFSRequestQueue = _vllm.fcfs_request_queue_class()
_SchedulingPolicy = _vllm.scheduling_policy_enum()
_RequestStatus = _vllm.request_status_enum()

_PINNABLE_STATUSES = frozenset({_RequestStatus.FINISHED_STOPPED, _RequestStatus.FINISHED_LENGTH_CAPPED})
_GC_INTERVAL_S = 1.0
_EXPECTED_DECODE_TOKENS_CAP = 256  # max_tokens is a cap, not a forecast: bound the decode estimate
_MAX_REJECTION_LOGS = 20
_STALL_NAP_S = 0.005  # longest nap of an engine step that found nothing to run but a pin to wait for

Key = tuple[int, int, float, float, float]
Rank = tuple[int, float, float]  # a request's program's place in the queue order: Key[1:4]


@dataclass(slots=True, kw_only=True)
class _Tracked:
    """A live request that carries program metadata."""

    fields: ProgramFields
    program: ProgramState
    arrival_s: float  # monotonic, when the scheduler got it
    prompt_tokens: int
    matches: dict[int, int]  # pin id -> blocks of that pin the prompt reuses (by prefix-cache hash)
    admitted: bool = False
    held: bool = False  # admission control held it back at least once


class ProgramQueue(_FCFSRequestQueue):  # type: ignore[misc,valid-type]
    """vLLM's waiting queue, ordered by program.

    Requests without metadata keep vLLM's semantics exactly: appended and prepended as a deque
    under the FCFS policy, inserted by (priority, arrival) under the priority policy.
    Program requests are inserted by their key (`serving._policy.queue_key`).
    """

    def __init__(self, key: Callable[[Any], Key], is_program: Callable[[Any], bool], *, by_priority: bool) -> None:
        super().__init__()
        self._key = key
        self._is_program = is_program
        self._by_priority = by_priority
        self.any_program: Callable[[], bool] = lambda: False  # set by the scheduler: program requests live?

    def add_request(self, request: Any) -> None:
        if self._by_priority or self.any_program():
            self._insert(request)
        else:
            self.append(request)

    def prepend_request(self, request: Any) -> None:
        if self._by_priority or self._is_program(request):
            self._insert(request)
        else:
            self.appendleft(request)

    def prepend_requests(self, requests: Iterable[Any]) -> None:
        requests = list(requests)
        if self._by_priority:
            for request in requests:
                self._insert(request)
            return
        plain = [r for r in requests if not self._is_program(r)]
        self.extendleft(plain)  # vLLM's order for these (extendleft reverses, as it expects)
        for request in requests:
            if self._is_program(request):
                self._insert(request)

    def reinsert(self, request: Any) -> None:
        """Put back a request taken out for one step (admission control): in key order."""
        self._insert(request)

    def _insert(self, request: Any) -> None:
        key = self._key(request)
        i = len(self)
        while i > 0 and self._key(self[i - 1]) > key:  # from the back: new arrivals usually go last
            i -= 1
        self.insert(i, request)


class ProgramAwareScheduler(_Scheduler):  # type: ignore[misc,valid-type]
    """vLLM's scheduler with program-level FCFS, KV pinning with a TTL, and urgency (see module doc)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> ProgramAwareScheduler:
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        async_scheduling = getattr(getattr(vllm_config, "scheduler_config", None), "async_scheduling", False)
        if cls is ProgramAwareScheduler and async_scheduling:
            cls = ProgramAwareAsyncScheduler
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _vllm.install_engine_core_hook()
        self.knobs: PolicyKnobs = parse_knobs(None, _vllm.scheduler_options(self.vllm_config))
        # vLLM's own policy machinery stays FCFS; ordering is ours (and vLLM's for plain requests).
        self._by_priority = self.policy == _SchedulingPolicy.PRIORITY
        self.policy = _SchedulingPolicy.FCFS
        self.waiting = ProgramQueue(self._key, self._is_program, by_priority=self._by_priority)
        self.waiting.any_program = lambda: bool(self._tracked)
        self._single_group = len(self.kv_cache_config.kv_cache_groups) == 1  # pinning reads group 0 only
        self._hash_of = _vllm.block_hash_of
        self._tracked: dict[str, _Tracked] = {}  # vLLM request id -> program request
        self._keys: dict[str, Key] = {}  # vLLM request id -> queue key of a program request
        self._programs = ProgramTable()
        self._pins = PinBook()
        self._predictor = ToolDurationPredictor(window=self.knobs.tool_window, min_samples=self.knobs.min_tool_samples)
        self._prefill = PrefillTimeModel()
        self._metrics = ServingMetrics()
        self._steps: deque[tuple[float, int, int]] = deque(maxlen=16)  # (scheduled at, prefill tokens, decodes)
        self._ballast: list[Any] = []  # blocks held back by kv_block_limit
        self._requeue_s = 0.0  # EWMA of program requests' queueing delay
        self._accounted_s = time.monotonic()  # pinned block-seconds integrated up to here
        self._next_gc_s = 0.0
        self._rejections_logged = 0
        self._adjust_ballast()

    # -- public API -------------------------------------------------------------------------------

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """A tool's real duration (the runtime reports each one as it ends)."""
        self._predictor.observe(str(tool), float(duration_s))

    def end_program(self, program_id: str) -> dict[str, Any]:
        """The program ended or was cancelled: release its pins; its summary."""
        now = time.monotonic()
        self._release_all(self._pins.of_program(program_id), "end", now)
        state = self._programs.get(program_id)
        if state is None:
            return {"program_id": program_id, "known": False}
        state.ended = True
        summary = {**state.summary(), "known": True}
        if not any(t.program is state for t in self._tracked.values()):
            self._programs.forget(program_id)
        return summary

    def agentflow_metrics(self) -> dict[str, Any]:
        """Everything `ServingMetrics` counts, plus the predictor, prefill model, pool and knobs."""
        self._account(time.monotonic())
        pool = self.kv_cache_manager.block_pool
        return {
            **self._metrics.snapshot(active_pins=len(self._pins), pinned_blocks=self._pins.num_blocks),
            "programs": self._programs.snapshot(),
            "predictor": self._predictor.snapshot(),
            "prefill_model": self._prefill.snapshot(),
            "requeue_delay_ewma_s": round(self._requeue_s, 6),
            "kv": {
                "num_blocks": pool.num_gpu_blocks - 1,  # less vLLM's null block
                "num_free_blocks": pool.get_num_free_blocks(),
                "block_size": self.block_size,
                "held_back_blocks": len(self._ballast),
                "usage": round(pool.get_usage(), 4),
            },
            "knobs": self.knobs.model_dump(),
        }

    def configure(self, **updates: Any) -> dict[str, Any]:
        """Change knobs (`serving._policy.PolicyKnobs`); returns all of them. Raises UserError."""
        knobs = parse_knobs(self.knobs, updates)
        self.knobs = knobs
        self._predictor.window, self._predictor.min_samples = knobs.tool_window, knobs.min_tool_samples
        if not (knobs.enabled and knobs.pinning):
            self._release_all(list(self._pins), "other", time.monotonic())
        self._adjust_ballast()
        return knobs.model_dump()

    def num_free_blocks(self) -> int:
        """Free blocks in the pool (prefix-cached blocks nobody references count as free)."""
        return int(self.kv_cache_manager.block_pool.get_num_free_blocks())

    def agentflow_next_wakeup_s(self) -> float | None:
        """Seconds until the next pin expires (the idle engine thread sleeps that long)."""
        expiry = self._pins.next_expiry_s()
        return None if expiry is None else max(0.0, expiry - time.monotonic())

    def agentflow_tick(self) -> None:
        """Expire pins and forget idle programs while no request runs."""
        now = time.monotonic()
        self._expire(now, self._pending_handoffs())
        self._collect_garbage(now, force=True)

    def agentflow_api(self, name: str, payload: dict[str, Any]) -> Any:
        """One entry point for the server's engine-core utility call (`agentflow_call`)."""
        if name == "metrics":
            self.agentflow_tick()
            return self.agentflow_metrics()
        if name == "end_program":
            return self.end_program(str(payload["program_id"]))
        if name == "observe_tool_duration":
            self.observe_tool_duration(str(payload["tool"]), float(payload["duration_s"]))
            return None
        if name == "configure":
            return self.configure(**payload)
        raise ValueError(f"unknown agentflow call {name!r}")

    # -- vLLM overrides ---------------------------------------------------------------------------

    def add_request(self, request: Any) -> None:
        fields = self._fields(request)
        if fields is None or request.request_id in self.requests:  # plain, or a streaming continuation
            self._metrics.requests_without_metadata += 1
            super().add_request(request)
            return
        now = time.monotonic()
        program = self._programs.touch(fields, now_s=now, arrival_s=request.arrival_time)
        program.num_requests += 1
        program.observe_prompt(request.num_prompt_tokens)
        matches = self._pins.matching(fields.program_id, request.block_hashes) if self._pins else {}
        self._tracked[request.request_id] = _Tracked(
            fields=fields, program=program, arrival_s=now, prompt_tokens=request.num_prompt_tokens, matches=matches
        )
        self._keys[request.request_id] = self._program_key(request, fields, program, matches)
        self._metrics.requests_with_metadata += 1
        super().add_request(request)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if self.knobs.kv_block_limit is not None or self._ballast:
            self._adjust_ballast()
        held: list[Any] = []
        if self._tracked or self._pins:
            pending = self._pending_handoffs() if self._pins else set()
            self._expire(now, pending)
            held = self._hold_back()
            self._reclaim(now, pending)
            self._collect_garbage(now)
        if self._tracked or self._by_priority:
            self.running.sort(key=self._key)  # vLLM (FCFS machinery) preempts the last one
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            for request in held:
                self.waiting.reinsert(request)
        self._after_schedule(output, time.monotonic())
        return output

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        if scheduler_output.total_num_scheduled_tokens > 0 and self._steps:
            scheduled_at, num_prefill, num_decode = self._steps.popleft()
            self._prefill.observe_step(
                num_prefill_tokens=num_prefill, num_decode=num_decode, step_s=time.perf_counter() - scheduled_at
            )
        return super().update_from_output(scheduler_output, model_runner_output)

    def _free_blocks(self, request: Any) -> None:
        tracked = self._tracked.pop(request.request_id, None)
        key = self._keys.pop(request.request_id, None)
        if tracked is None or key is None:
            super()._free_blocks(request)
            return
        now = time.monotonic()
        ttl_s, p_done = self._pin_ttl(request, tracked, now)
        if ttl_s > 0:
            self._pin(request, tracked, ttl_s, p_done, now, rank=(key[1], key[2], key[3]))
        else:
            super()._free_blocks(request)
        if tracked.fields.is_last_turn:
            self._maybe_end_program(tracked.program, now)

    def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        # Pinned and held-back blocks are referenced: vLLM's reset would refuse. Release, reset, retake.
        self._release_all(list(self._pins), "other", time.monotonic())
        self._free_ballast(len(self._ballast))
        try:
            return bool(super().reset_prefix_cache(*args, **kwargs))
        finally:
            self._adjust_ballast()

    # -- ordering ---------------------------------------------------------------------------------

    def _fields(self, request: Any) -> ProgramFields | None:
        params = request.sampling_params
        if not self.knobs.enabled or params is None or not params.extra_args:
            return None
        fields, malformed = parse_or_none(params.extra_args)
        if malformed:
            # The edges (EmbeddedEngine.generate, the server's middleware) reject these with an
            # error; one that slips through is scheduled as a plain request, never a crash.
            self._metrics.metadata_rejected += 1
            if self._rejections_logged < _MAX_REJECTION_LOGS:
                self._rejections_logged += 1
                logger.warning("request %s: malformed program metadata ignored", request.request_id)
        return fields

    def _is_program(self, request: Any) -> bool:
        return request.request_id in self._keys

    def _key(self, request: Any) -> Key:
        key = self._keys.get(request.request_id)
        if key is not None:
            return key
        priority = request.priority if self._by_priority else 0
        return (1, priority, request.arrival_time, request.arrival_time, request.arrival_time)

    def _program_key(self, request: Any, fields: ProgramFields, program: ProgramState, matches: dict[int, int]) -> Key:
        latest = None
        if fields.deadline_s is not None and self.knobs.urgency:
            latest = latest_start_s(
                now_s=time.time(),
                deadline_s=fields.deadline_s,
                expected_s=self._expected_s(request, matches),
                critical_path_s=fields.critical_path_s,
            )
        return queue_key(
            arrival_s=request.arrival_time,
            user_priority=request.priority if self._by_priority else 0,
            fields=fields,
            program_arrival_s=program.arrival_s,
            holds_pins=bool(matches),  # pinned KV this very request will reuse
            latest_start=latest,
            knobs=self.knobs,
        )

    def _expected_s(self, request: Any, matches: dict[int, int]) -> float:
        """Prefill of what is not pinned + decode at the current batch size."""
        pinned = max(matches.values(), default=0) * self.block_size
        prefill_s = self._prefill.prefill_s(max(0, request.num_prompt_tokens - pinned))
        num_decode = min(request.max_tokens, _EXPECTED_DECODE_TOKENS_CAP)
        return prefill_s + num_decode * self._prefill.decode_step_s(len(self.running) + 1)

    def _pending_handoffs(self) -> set[int]:
        """Pins a waiting request is about to reuse."""
        tracked = self._tracked
        pending: set[int] = set()
        for request in self.waiting:
            t = tracked.get(request.request_id)
            if t is not None and t.matches:
                pending.update(t.matches)
        return pending

    # -- after each schedule: timing, admissions, hand-offs ----------------------------------------

    def _after_schedule(self, output: Any, now: float) -> None:
        if output.total_num_scheduled_tokens > 0:
            num_prefill = num_decode = 0
            for num_tokens in output.num_scheduled_tokens.values():
                if num_tokens > 1:
                    num_prefill += num_tokens
                else:
                    num_decode += 1
            self._steps.append((time.perf_counter(), num_prefill, num_decode))
        if self._tracked:
            for new in output.scheduled_new_reqs:
                tracked = self._tracked.get(new.req_id)
                if tracked is not None and not tracked.admitted:
                    self._admitted(new.req_id, tracked, new.num_computed_tokens, now)
        if self._pins and output.total_num_scheduled_tokens == 0 and self.waiting and not self.running:
            self._unstall(now)
            wakeup_s = self.agentflow_next_wakeup_s()
            if wakeup_s is not None:
                # The head waits for an older program's pin to expire: do not spin empty steps meanwhile.
                time.sleep(min(wakeup_s, _STALL_NAP_S))

    def _admitted(self, request_id: str, tracked: _Tracked, num_cached_tokens: int, now: float) -> None:
        tracked.admitted = True
        delay_s = now - tracked.arrival_s
        program = tracked.program
        program.queue_delay_s += delay_s
        program.max_queue_delay_s = max(program.max_queue_delay_s, delay_s)
        program.prompt_tokens += tracked.prompt_tokens
        program.cached_tokens += num_cached_tokens
        self._requeue_s = 0.9 * self._requeue_s + 0.1 * delay_s
        self._metrics.record_admission(
            program_id=program.program_id,
            turn=tracked.fields.turn,
            prompt_tokens=tracked.prompt_tokens,
            cached_tokens=num_cached_tokens,
            delay_s=delay_s,
        )
        # Hand-off: the request now references the blocks it reused, so its pins can let go.
        hits = [pin for pin_id in tracked.matches if (pin := self._pins.get(pin_id)) is not None]
        if hits and num_cached_tokens > 0:
            self._metrics.pins_hit += len(hits)
            self._metrics.hit_tokens += num_cached_tokens
            program.pins_hit += len(hits)
        self._release_all(hits, "hit", now)

    # -- pins -------------------------------------------------------------------------------------

    def _pin_ttl(self, request: Any, tracked: _Tracked, now: float) -> tuple[float, float]:
        """The TTL to pin this finished call's blocks for (0: free them now), and P(tool done by then)."""
        fields = tracked.fields
        knobs = self.knobs
        if not (knobs.enabled and knobs.pinning and self._single_group):
            return 0.0, 0.0
        if fields.next_tool is None or fields.is_last_turn or request.status not in _PINNABLE_STATUSES:
            return 0.0, 0.0
        if not self._request_blocks_can_be_freed(request):
            return 0.0, 0.0
        num_blocks = _num_hashed(self.kv_cache_manager.get_blocks(request.request_id).blocks[0])
        usable = self.kv_cache_manager.block_pool.num_gpu_blocks - 1 - len(self._ballast)
        if num_blocks == 0 or self._pins.num_blocks + num_blocks > knobs.max_pinned_fraction * usable:
            return 0.0, 0.0
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        choice = choose_ttl(
            self._predictor.distribution(fields.next_tool, fields.next_tool_duration_s),
            reprefill_s=self._prefill.prefill_s(num_blocks * self.block_size),
            requeue_s=self._requeue_s,
            kv_usage=1.0 - free / max(1, usable),  # of the usable pool: held-back blocks are not pressure
            knobs=knobs,
        )
        if choice.ttl_s <= 0:
            self._metrics.pins_skipped += 1
        return choice.ttl_s, choice.p_done

    def _pin(self, request: Any, tracked: _Tracked, ttl_s: float, p_done: float, now: float, *, rank: Rank) -> None:
        """What `Scheduler._free_blocks` does, except that the prefix-cached blocks stay referenced."""
        blocks = self.kv_cache_manager.pop_blocks_for_free(request)
        del self.requests[request.request_id]
        num_kept = _num_hashed(blocks)
        kept, rest = blocks[:num_kept], blocks[num_kept:]
        if rest:  # an unfinished last block can never be a prefix hit: free it now
            self.kv_cache_manager.block_pool.free_blocks(reversed(rest))
        fields = tracked.fields
        self._account(now)
        num_tokens = num_kept * self.block_size
        self._pins.add(
            program_id=fields.program_id,
            turn=fields.turn,
            blocks=kept,
            block_ids=frozenset(block.block_id for block in kept),
            hashes=tuple(self._hash_of(block) for block in kept),
            rank=rank,  # the program's place in the queue order (its key is gone by now)
            num_tokens=num_tokens,
            created_s=now,
            expires_s=now + ttl_s,
            next_tool=fields.next_tool,
            value_s=self._prefill.prefill_s(num_tokens) + self._requeue_s,
            dist=self._predictor.distribution(fields.next_tool, fields.next_tool_duration_s),
        )
        tracked.program.pins_created += 1
        self._metrics.record_pin(
            program_id=fields.program_id,
            turn=fields.turn,
            next_tool=fields.next_tool,
            num_blocks=num_kept,
            ttl_s=ttl_s,
            p_done=p_done,
        )
        self._metrics.pinned_blocks_peak = max(self._metrics.pinned_blocks_peak, self._pins.num_blocks)

    def _release_all(self, pins: Iterable[Any], reason: str, now: float) -> None:
        pins = list(pins)
        if not pins:
            return
        self._account(now)
        pool = self.kv_cache_manager.block_pool
        for pin in pins:
            self._pins.remove(pin)
            pool.free_blocks(reversed(pin.blocks))  # back to the LRU, still hashed: may hit later
            self._count_release(reason)

    def _count_release(self, reason: str) -> None:
        metrics = self._metrics
        if reason == "expired":
            metrics.pins_expired += 1
        elif reason == "reclaim":
            metrics.pins_reclaimed += 1
        elif reason == "end":
            metrics.pins_released_end += 1
        elif reason == "other":
            metrics.pins_released_other += 1
        # "hit" is counted where the hit is seen

    def _expire(self, now: float, pending: set[int]) -> None:
        if self._pins:
            self._release_all(self._pins.expired(now, pending), "expired", now)

    def _reclaim(self, now: float, pending: set[int]) -> None:
        """Release pins, cheapest first, until this step's demand for blocks fits.

        A request, running (its next blocks) or at the head of the queue, may take only pins of
        programs that come after it in the queue order: an older program's pinned context, back
        from its tool soon, outranks a younger program's work (program FCFS). Such pins leave on
        expiry or hand-off instead, and vLLM preempts the youngest running request if it must.
        """
        if not self._pins:
            return
        pool = self.kv_cache_manager.block_pool
        growth, head_demand, head_pins = self._demand_blocks()
        if pool.get_num_free_blocks() >= sum(blocks for _, blocks in growth) + head_demand:
            return
        demand = 0
        for rank, blocks in growth:  # oldest program first
            demand += blocks
            later = self._pins.cheapest_first(now, pending, head_pins, ranked_after=rank)
            self._release_until(demand, later, now, "growth")
        if head_demand and self.waiting:
            head_rank = self._rank(self.waiting.peek_request())
            later = self._pins.cheapest_first(now, pending, head_pins, ranked_after=head_rank)
            self._release_until(demand + head_demand, later, now, "admission")

    def _release_until(self, demand: int, pins: list[Any], now: float, cause: str) -> None:
        pool = self.kv_cache_manager.block_pool
        for pin in pins:
            if pool.get_num_free_blocks() >= demand:
                return
            if self._pins.get(pin.pin_id) is not None:
                self._release_all([pin], "reclaim", now)
                self._metrics.reclaimed_for[cause] += 1

    def _rank(self, request: Any) -> tuple[int, float, float]:
        key = self._key(request)
        return (key[1], key[2], key[3])

    def _demand_blocks(self) -> tuple[list[tuple[tuple[int, float, float], int]], int, set[int]]:
        """Blocks this step may allocate: running requests' growth and the head waiting request's.

        Growth comes as (rank, blocks) per running request that needs blocks, oldest program first.
        Also the pins the head will reuse: never reclaimed for it, its demand is net of them.
        """
        size = self.block_size
        manager = self.kv_cache_manager
        extra = 1 + self.num_lookahead_tokens
        growth: list[tuple[tuple[int, float, float], int]] = []
        for request in self.running:
            held = len(manager.get_blocks(request.request_id).blocks[0])
            needed = request.num_tokens_with_spec + request.num_output_placeholders + extra
            if (blocks := math.ceil(needed / size) - held) > 0:
                growth.append((self._rank(request), blocks))
        growth.sort(key=lambda item: item[0])
        head_demand = 0
        head_pins: set[int] = set()
        if self.waiting:
            head = self.waiting.peek_request()
            tracked = self._tracked.get(head.request_id)
            reused = 0
            if tracked is not None:
                head_pins = {pin_id for pin_id in tracked.matches if self._pins.get(pin_id) is not None}
                reused = max((tracked.matches[pin_id] for pin_id in head_pins), default=0)
            head_demand = max(0, math.ceil((head.num_tokens + 1) / size) - reused)
        return growth, head_demand, head_pins

    # -- admission control ------------------------------------------------------------------------

    def _hold_back(self) -> list[Any]:
        """Take this step's cold program requests that must wait out of the queue (see `cold_fits`).

        Cold: its program has nothing resident (no pin, no running request), so admitting it
        takes fresh blocks that older resident programs will want as their contexts grow; once
        they want them, the youngest programs' pins would be reclaimed and re-prefilled later.
        Nothing is held while nothing runs and nothing is pinned.
        """
        knobs = self.knobs
        if not (knobs.enabled and knobs.pinning and knobs.reserve_turns > 0 and self._single_group):
            return []
        if not self.waiting or not (self.running or self._pins):
            return []
        resident = self._resident_programs()
        queued = list(self.waiting)
        waiting_programs = {t.program.program_id for r in queued if (t := self._tracked.get(r.request_id)) is not None}
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        spent = 0
        held: list[Any] = []
        for request in queued:
            tracked = self._tracked.get(request.request_id)
            if tracked is None or tracked.program.program_id in resident:
                spent += self._new_blocks(request)  # plain or warm: vLLM admits it ahead if it fits
                continue
            if held or not cold_fits(
                free_blocks=free,
                spent_blocks=spent,
                candidate=self._admission_candidate(request, tracked, resident, waiting_programs),
            ):
                held.append(request)
                continue
            spent += self._new_blocks(request)
        if held:
            self.waiting.remove_requests(held)
        for request in held:
            tracked = self._tracked[request.request_id]
            if not tracked.held:
                tracked.held = True
                self._metrics.requests_held += 1
        return held

    def _admission_candidate(
        self,
        request: Any,
        tracked: _Tracked,
        resident: dict[str, tuple[tuple[int, float, float], ProgramState]],
        waiting_programs: set[str],
    ) -> AdmissionCandidate:
        rank = self._rank(request)
        turns = self.knobs.reserve_turns
        size = self.block_size
        return AdmissionCandidate(
            new_blocks=self._new_blocks(request),
            own_reserve=growth_reserve_blocks(tracked.program.growth_tokens, block_size=size, turns=turns),
            reserve_before=sum(
                growth_reserve_blocks(state.growth_tokens, block_size=size, turns=turns)
                for program_id, (program_rank, state) in resident.items()
                if program_rank < rank and program_id not in waiting_programs
            ),
            reclaimable=self._yielding_blocks(rank),
        )

    def _yielding_blocks(self, rank: tuple[int, float, float]) -> int:
        """Blocks that programs queued after `rank` give up for it.

        Their pins (reclaimed) and their running requests' blocks (vLLM preempts the youngest first).
        """
        manager = self.kv_cache_manager
        pinned = sum(pin.num_blocks for pin in self._pins if pin.rank > rank)
        running = sum(len(manager.get_blocks(r.request_id).blocks[0]) for r in self.running if self._rank(r) > rank)
        return pinned + running

    def _resident_programs(self) -> dict[str, tuple[tuple[int, float, float], ProgramState]]:
        """Programs with KV in the pool: pinned or running; each with its queue rank."""
        resident: dict[str, tuple[tuple[int, float, float], ProgramState]] = {}
        for pin in self._pins:
            state = self._programs.get(pin.program_id)
            if state is not None:
                resident[pin.program_id] = (pin.rank, state)
        for request in self.running:
            tracked = self._tracked.get(request.request_id)
            if tracked is not None:
                resident.setdefault(tracked.program.program_id, (self._rank(request), tracked.program))
        return resident

    def _new_blocks(self, request: Any) -> int:
        """Blocks admitting `request` now allocates: its tokens less the leading prefix-cache hits."""
        total = math.ceil((request.num_tokens + 1) / self.block_size)
        pool = self.kv_cache_manager.block_pool
        cached = 0
        for block_hash in request.block_hashes:
            if pool.get_cached_block(block_hash, [0]) is None:
                break
            cached += 1
        return max(0, total - cached)

    def _unstall(self, now: float) -> None:
        """Nothing runs and the head still does not fit beside the pins.

        Pins of later programs go, and so do pins whose waiting turn sits behind the head (a
        pending hand-off that cannot happen before the head runs). Pins of earlier programs
        that nobody waits for stay: their TTL bounds the wait.
        """
        head = self.waiting.peek_request()
        tracked = self._tracked.get(head.request_id)
        keep = set(tracked.matches) if tracked is not None else set()
        rank = self._rank(head)
        pending = self._pending_handoffs()
        stalling = [pin for pin in self._pins if pin.pin_id not in keep and (pin.rank > rank or pin.pin_id in pending)]
        self._release_all(stalling, "reclaim", now)
        self._metrics.reclaimed_for["stall"] += len(stalling)

    def _maybe_end_program(self, program: ProgramState, now: float) -> None:
        if any(t.program is program for t in self._tracked.values()):
            return  # another branch of the program is still live
        self._release_all(self._pins.of_program(program.program_id), "end", now)
        program.ended = True

    def _collect_garbage(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_gc_s:
            return
        self._next_gc_s = now + _GC_INTERVAL_S
        live = {t.fields.program_id for t in self._tracked.values()}
        for program_id in self._programs.stale(now, live, self._pins.programs(), self.knobs.program_idle_gc_s):
            self._programs.forget(program_id)

    def _account(self, now: float) -> None:
        self._metrics.pinned_block_s += self._pins.num_blocks * max(0.0, now - self._accounted_s)
        self._accounted_s = now

    # -- held-back blocks (kv_block_limit) --------------------------------------------------------

    def _adjust_ballast(self) -> None:
        pool = self.kv_cache_manager.block_pool
        limit = self.knobs.kv_block_limit  # applies with enabled=False too: baselines see the same pool
        target = 0 if limit is None else max(0, pool.num_gpu_blocks - 1 - limit)
        if len(self._ballast) > target:
            self._free_ballast(len(self._ballast) - target)
        missing = min(target - len(self._ballast), pool.get_num_free_blocks())
        if missing > 0:
            self._ballast.extend(pool.get_new_blocks(missing))

    def _free_ballast(self, count: int) -> None:
        if count <= 0:
            return
        released, self._ballast = self._ballast[-count:], self._ballast[:-count]
        self.kv_cache_manager.block_pool.free_blocks(released)


class ProgramAwareAsyncScheduler(ProgramAwareScheduler, _AsyncScheduler):  # type: ignore[misc,valid-type]
    """`ProgramAwareScheduler` over vLLM's `AsyncScheduler` (engines with async scheduling: GPU)."""


def _num_hashed(blocks: list[Any]) -> int:
    """Leading blocks that carry a prefix-cache hash (full blocks a later prompt can hit)."""
    count = 0
    for block in blocks:
        if block.block_hash is None or block.is_null:
            break
        count += 1
    return count
