"""Program-aware scheduling inside vLLM 0.32, plugged in through `scheduler_cls` (no fork).

```python
EngineConfig(scheduler_cls=PROGRAM_AWARE_SCHEDULER)   # the embedded default (serving._control)
agentflow serve                                        # the OpenAI-compatible server
```

`ProgramAwareScheduler` subclasses vLLM's `Scheduler`; on an engine with async scheduling (GPU)
the same name builds `ProgramAwareAsyncScheduler` (vLLM's `AsyncScheduler` underneath), so one
qualified name serves both. This module wires vLLM's hooks to the pure parts around it:
decisions (`serving._decisions`), admission control (`serving._admission`), the pin lifecycle
(`serving._pinning`), program recognition (`serving._recognize`), estimators, books and
metrics; every touch of the KV pool goes through `serving._vllm.KVPort`. Only requests the
scheduler knows to belong to a program are treated differently: by their program fields in
`extra_args` (embedded) or `vllm_xargs` (server), by a session id, or by their prompt extending a
finished request's (`SchedulerKnobs.identify_by_*`). While none is live, the scheduler runs vLLM's
own code paths with the configured `scheduling_policy`, so any other request is scheduled exactly
as stock vLLM schedules it.

What it does with program requests:
- **Program-level FCFS**: the waiting queue is ordered by each request's program's first
  arrival; requests that reuse their program's pinned KV go first; preemption takes the
  youngest program first (the running list is kept in the same order, and vLLM preempts its last
  element).
- **KV pinning with a TTL**: when a call finishes and its metadata names the tool that runs
  next (`next_tool`, not `is_last_turn`), or it belongs to a program recognised by its session or
  prompt chain, its prefix-cached blocks stay referenced for tau* (`serving._decisions.choose_ttl`:
  the tool's duration distribution, or the learned gap between turns and P(a next turn comes));
  see `serving._pinning` for how a pin ends. A request only
  takes pins of programs queued after its own, so an older program's context outlives a younger
  program's work until its TTL ends. A program may hold several pins (parallel branches).
- **Admission control**: a program with nothing resident waits while admitting it would eat the
  growth room of older resident programs (`reserve_turns`, `serving._admission`). Such requests
  leave vLLM's queue for one step at a time.
- **Urgency**: with `deadline_at_s`, a request's rank is its latest start time: the remaining
  deadline apportioned along `critical_path_s` (the DAG's remaining critical path) minus the
  call's expected execution time (step-time model + decode rate).

Its control plane is `serving._control.SchedulerControl` (call it on the engine thread:
`EmbeddedEngine.call_in_engine`; on a server, the `/agentflow/...` routes of `agentflow serve`).

Knobs: `serving._knobs` (what each does, and every way to set them).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agentflow.exceptions import MetadataError
from agentflow.metadata import ProgramMetadata
from serving import _vllm
from serving._admission import QueuedRequest, ResidentProgram, requests_to_hold
from serving._books import ProgramState, ProgramTable
from serving._chains import Link
from serving._decisions import (
    Key,
    Rank,
    TtlChoice,
    choose_ttl,
    latest_start_s,
    plain_key,
    queue_key,
    rank_of,
    trusted_deadline_s,
)
from serving._estimators import DurationDistribution, StepTimeModel, ToolDurationPredictor
from serving._knobs import EngineLimits, SchedulerKnobs, parse_knobs
from serving._metrics import ServingMetrics
from serving._pinning import HeldBackBlocks, PinKeeper, Release
from serving._recognize import ProgramRecognizer, Recognized

__all__ = ["Clock", "ProgramAwareAsyncScheduler", "ProgramAwareScheduler"]

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
_MAX_FACTS = 4096  # per-request facts kept for their callers


class Identity(enum.StrEnum):
    """How the scheduler knows which program a request belongs to (`SchedulerKnobs.identify_by_*`)."""

    FIELDS = "fields"  # agentflow's program fields
    SESSION = "session"  # a session id, then its prompt chain within the session
    CHAIN = "chain"  # its prompt extends a recently finished request's prompt and output


@dataclass(slots=True)
class Clock:
    """Where the scheduler reads time: the engine's real clocks, or a test's fake one (the CPU harness)."""

    monotonic: Callable[[], float] = time.monotonic  # pin TTLs, queueing delays
    unix: Callable[[], float] = time.time  # deadlines and program arrivals are unix times
    perf: Callable[[], float] = time.perf_counter  # engine step durations
    sleep: Callable[[float], None] = time.sleep


@dataclass(slots=True, kw_only=True)
class _Tracked:
    """A live request that carries program metadata."""

    metadata: ProgramMetadata
    identity: Identity
    session: str | None  # a digest of its session id
    program: ProgramState
    key: Key  # its place in the waiting queue
    arrival_s: float  # monotonic, when the scheduler got it
    prompt_tokens: int
    matches: dict[int, int]  # pin id -> blocks of that pin the prompt reuses (by prefix-cache hash)
    admitted: bool = False
    held: bool = False  # admission control held it back at least once


@dataclass(frozen=True, slots=True)
class _Identified:
    metadata: ProgramMetadata
    identity: Identity
    session: str | None
    arrival_s: float  # unix: when the engine first saw the program


class ProgramQueue(_FCFSRequestQueue):  # type: ignore[misc,valid-type]
    """vLLM's waiting queue, ordered by program.

    While no program request is live, vLLM's semantics exactly: appended and prepended as a deque
    under the FCFS policy, kept in (priority, arrival, request id) order under the priority policy
    (the order vLLM's heap pops them in). While some are, every request is inserted by its key
    (`serving._decisions.queue_key`), a preempted one too: program requests by their program's
    place, plain ones by their own arrival, so one order holds between them.
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
        if self._by_priority or self.any_program():
            self._insert(request)
        else:
            self.appendleft(request)

    def prepend_requests(self, requests: Iterable[Any]) -> None:
        if self._by_priority or self.any_program():
            for request in requests:
                self._insert(request)
        else:
            self.extendleft(requests)  # vLLM's order (extendleft reverses, as it expects)

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
        vllm_config = kwargs["vllm_config"] if "vllm_config" in kwargs else args[0]
        if cls is ProgramAwareScheduler and vllm_config.scheduler_config.async_scheduling:
            cls = ProgramAwareAsyncScheduler
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _vllm.install_engine_core_hook()
        self.clock = Clock()
        self._limits = EngineLimits(max_model_len=self.max_model_len, block_size=self.block_size)
        self.knobs: SchedulerKnobs = parse_knobs(None, _vllm.scheduler_knobs(self.vllm_config), limits=self._limits)
        # vLLM's preemption reads `self.policy`: the configured one while no program request is
        # live (stock behaviour), FCFS over our ordering of `running` while some are.
        self._configured_policy = self.policy
        self._by_priority = self.policy == _SchedulingPolicy.PRIORITY
        self.waiting = ProgramQueue(self._key, self._is_program, by_priority=self._by_priority)
        self.waiting.any_program = lambda: bool(self._tracked)
        self._single_group = len(self.kv_cache_config.kv_cache_groups) == 1  # pinning reads group 0 only
        self._port = _vllm.KVPort(self.kv_cache_manager)
        self._tracked: dict[str, _Tracked] = {}  # vLLM request id -> program request
        self._programs = ProgramTable()
        self._metrics = ServingMetrics()
        self._pins = PinKeeper(self._port, self._metrics, block_size=self.block_size)
        self._predictor = ToolDurationPredictor(window=self.knobs.tool_window, min_samples=self.knobs.min_tool_samples)
        self._recognizer = ProgramRecognizer(
            horizon_s=self.knobs.chain_horizon_s, window=self.knobs.tool_window, min_samples=self.knobs.min_tool_samples
        )
        self._step_model = StepTimeModel()
        self._steps: deque[tuple[float, int, int]] = deque(maxlen=16)  # (scheduled at, prefill tokens, decodes)
        self._held_back = HeldBackBlocks(self._port)  # kv_block_limit
        self._requeue_s = 0.0  # EWMA of program requests' queueing delay
        self._next_gc_s = 0.0
        self._rejections_logged = 0
        # caller's request id -> what scheduling did to it (read once when it finishes; bounded)
        self._facts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._apply_block_limit(self.clock.monotonic())

    # -- control plane (serving._control.SchedulerControl) -----------------------------------------

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """A tool's real duration (the runtime reports each one as it ends)."""
        self._predictor.observe(str(tool), float(duration_s))

    def end_program(self, program_id: str) -> dict[str, Any]:
        """The program ended or was cancelled: release its pins; its summary."""
        self._pins.release_program(program_id, self.clock.monotonic())
        self._recognizer.forget_program(program_id)
        state = self._programs.get(program_id)
        if state is None:
            return {"program_id": program_id, "known": False}
        state.ended = True
        summary = {**state.summary(), "known": True}
        if not self._has_live_request(state):
            self._programs.forget(program_id)
        return summary

    def agentflow_metrics(self) -> dict[str, Any]:
        """Everything `ServingMetrics` counts, plus the predictor, step-time model, pool and knobs."""
        self._pins.account(self.clock.monotonic())
        port = self._port
        return {
            **self._metrics.snapshot(active_pins=len(self._pins), pinned_blocks=self._pins.num_blocks),
            "programs": self._programs.snapshot(),
            "predictor": self._predictor.snapshot(),
            "turn_gaps": self._recognizer.snapshot(),
            "step_time_model": self._step_model.snapshot(),
            "requeue_delay_ewma_s": round(self._requeue_s, 6),
            "kv": {
                "num_blocks": port.num_blocks,
                "num_free_blocks": port.num_free(),
                "block_size": self.block_size,
                "held_back_blocks": self._held_back.num_blocks,
                "usage": round(port.usage(), 4),
            },
            "knobs": self.knobs.model_dump(),
            "attributions": self._recognizer.attributions,
        }

    def configure(self, **updates: Any) -> dict[str, Any]:
        """Change knobs (`serving._knobs.SchedulerKnobs`); returns all of them. Raises UserError."""
        knobs = parse_knobs(self.knobs, updates, limits=self._limits)
        self.knobs = knobs
        self._predictor.window, self._predictor.min_samples = knobs.tool_window, knobs.min_tool_samples
        self._recognizer.chains.horizon_s = knobs.chain_horizon_s
        now = self.clock.monotonic()
        if not (knobs.enabled and knobs.pinning):
            self._pins.release_all(Release.OTHER, now)
        self._apply_block_limit(now)
        return knobs.model_dump()

    def next_wakeup_s(self) -> float | None:
        """Seconds until the next pin expires (the idle engine thread sleeps that long)."""
        expiry = self._pins.next_expiry_s()
        return None if expiry is None else max(0.0, expiry - self.clock.monotonic())

    def tick(self) -> None:
        """Expire pins and forget idle programs while no request runs."""
        now = self.clock.monotonic()
        self._pins.expire(now, self._pending_handoffs())
        self._collect_garbage(now, force=True)

    def pop_request_facts(self, request_id: str) -> dict[str, Any] | None:
        """What the scheduler did with a program request, by the id its caller gave; once (then forgotten)."""
        return self._facts.pop(request_id, None)

    # -- for tests and benchmarks -------------------------------------------------------------------

    def num_free_blocks(self) -> int:
        """Free blocks in the pool (prefix-cached blocks nobody references count as free)."""
        return self._port.num_free()

    def check_invariants(self) -> None:
        """Raise `AssertionError` if the books disagree with the pool (the CPU harness runs it every step).

        A pin holds each of its blocks exactly once; pinned blocks never exceed the cap; with no
        request and no pin, every usable block not held back is free again.
        """
        self._pins.check_invariants(cap_blocks=self._pin_cap_blocks())
        assert set(self._tracked) <= set(self.requests), "a tracked request vLLM no longer holds"
        if not self.requests and not self._pins:
            free, usable = self._port.num_free(), self._port.num_blocks - self._held_back.num_blocks
            assert free == usable, f"{usable - free} blocks leaked: {free} free of {usable} with nothing live"

    # -- vLLM overrides ---------------------------------------------------------------------------

    def add_request(self, request: Any) -> None:
        now = self.clock.monotonic()
        # A streaming continuation (the same id again) is its request's, not a new one.
        streaming = request.request_id in self.requests
        identified = None if streaming else self._identify(request, now)
        if not streaming:
            program_id = identified.metadata.program_id if identified else None
            self._recognizer.attribute(_vllm.external_request_id(request.request_id), program_id)
        if identified is None:
            self._metrics.requests_without_metadata += 1
            super().add_request(request)
            return
        metadata = identified.metadata
        program = self._programs.touch(metadata, now_s=now, arrival_s=identified.arrival_s)
        program.num_requests += 1
        program.observe_prompt(request.num_prompt_tokens)
        matches = self._pins.book.matching(metadata.program_id, request.block_hashes) if self._pins else {}
        self._tracked[request.request_id] = _Tracked(
            metadata=metadata,
            identity=identified.identity,
            session=identified.session,
            program=program,
            key=self._program_key(request, metadata, program, matches),
            arrival_s=now,
            prompt_tokens=request.num_prompt_tokens,
            matches=matches,
        )
        self._metrics.count_identity(identified.identity)
        super().add_request(request)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        now = self.clock.monotonic()
        if self.knobs.kv_block_limit is not None or self._held_back.num_blocks:
            self._apply_block_limit(now)
        held: list[Any] = []
        if self._tracked or self._pins:
            pending = self._pending_handoffs() if self._pins else set()
            self._pins.expire(now, pending)
            held = self._hold_back()
            self._reclaim(now, pending)
            self._collect_garbage(now)
        elif self._recognizer.chains and now >= self._next_gc_s:
            self._next_gc_s = now + _GC_INTERVAL_S
            self._recognizer.expire(now)
        self._order_running()
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            for request in held:
                self.waiting.reinsert(request)
        self._after_schedule(output, self.clock.monotonic())
        return output

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        if scheduler_output.total_num_scheduled_tokens > 0 and self._steps:
            scheduled_at, num_prefill, num_decode = self._steps.popleft()
            self._step_model.observe_step(
                num_prefill_tokens=num_prefill, num_decode=num_decode, step_s=self.clock.perf() - scheduled_at
            )
        return super().update_from_output(scheduler_output, model_runner_output)

    def _free_blocks(self, request: Any) -> None:
        tracked = self._tracked.pop(request.request_id, None)
        now = self.clock.monotonic()
        link = self._link_finished(request, tracked, now)
        if tracked is None:
            if link is None or not self._maybe_pin_first_turn(request, link, now):
                super()._free_blocks(request)
            return
        if not self._maybe_pin(request, tracked, now):
            super()._free_blocks(request)
        if tracked.metadata.is_last_turn:
            self._maybe_end_program(tracked.program, now)

    def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        # Pinned and held-back blocks are referenced: vLLM's reset would refuse. Release, reset, retake.
        now = self.clock.monotonic()
        self._pins.release_all(Release.OTHER, now)
        self._held_back.release_all()
        try:
            return bool(super().reset_prefix_cache(*args, **kwargs))
        finally:
            self._apply_block_limit(now)

    # -- which program a request belongs to --------------------------------------------------------

    def _identify(self, request: Any, now: float) -> _Identified | None:
        """Its program by its fields, else its session, else its prompt chain (`serving._recognize`); None: plain."""
        knobs = self.knobs
        if not knobs.enabled:
            return None
        if knobs.identify_by_fields and (metadata := self._read_metadata(request)) is not None:
            return _Identified(metadata, Identity.FIELDS, None, request.arrival_time)
        if request.prompt_token_ids is None:
            return None  # prompt embeddings: no tokens to chain on
        session = self._recognizer.session_key(request.session_id) if knobs.identify_by_session else None
        found = self._recognizer.recognize(
            session=session,
            hashes=request.block_hashes,
            prompt=request.prompt_token_ids,
            block_size=self.block_size,
            arrival_s=request.arrival_time,
            now_s=now,
            by_chain=knobs.identify_by_chain,
        )
        if found is None:
            return None
        identity = Identity.SESSION if session is not None else Identity.CHAIN
        metadata = ProgramMetadata(program_id=found.program_id, turn=found.turn)
        return _Identified(metadata, identity, session, found.arrival_s)

    def _link_finished(self, request: Any, tracked: _Tracked | None, now: float) -> Link | None:
        """Index a finished request that a later prompt may continue: plain ones and session or chain programs'."""
        if request.status not in _PINNABLE_STATUSES or not self.knobs.enabled:
            return None
        if tracked is not None and tracked.identity is Identity.FIELDS:
            return None
        if tracked is None and not self.knobs.identify_by_chain:
            return None  # a plain request is only continued by a chain (a session's requests are tracked)
        program = None
        if tracked is not None:
            program = Recognized(
                tracked.program.program_id, tracked.metadata.turn, tracked.session, tracked.program.arrival_s
            )
        return self._recognizer.finished(
            request_id=_vllm.external_request_id(request.request_id),
            program=program,
            hashes=request.block_hashes,
            prompt=request.prompt_token_ids or (),
            output=request.output_token_ids,
            block_size=self.block_size,
            arrival_s=request.arrival_time,
            now_s=now,
        )

    # -- ordering ---------------------------------------------------------------------------------

    def _read_metadata(self, request: Any) -> ProgramMetadata | None:
        params = request.sampling_params
        if not self.knobs.enabled or params is None or not params.extra_args:
            return None
        try:
            return ProgramMetadata.from_extra_args(params.extra_args)
        except MetadataError:
            # The edges (EmbeddedEngine.generate, the server's middleware) reject these with an
            # error; one that slips through is scheduled as a plain request, never a crash.
            self._metrics.metadata_rejected += 1
            if self._rejections_logged < _MAX_REJECTION_LOGS:
                self._rejections_logged += 1
                logger.warning("request %s: malformed program metadata ignored", request.request_id)
            return None

    def _is_program(self, request: Any) -> bool:
        return request.request_id in self._tracked

    def _key(self, request: Any) -> Key:
        tracked = self._tracked.get(request.request_id)
        if tracked is not None:
            return tracked.key
        priority = request.priority if self._by_priority else 0
        return plain_key(request_id=request.request_id, arrival_s=request.arrival_time, user_priority=priority)

    def _rank(self, request: Any) -> Rank:
        return rank_of(self._key(request))

    def _order_running(self) -> None:
        """Stock order and policy while no program request is live; otherwise youngest program last.

        vLLM preempts `running[-1]` under FCFS and the max (priority, arrival) under the priority
        policy; with program requests live it must take the youngest program instead.
        """
        if self._tracked:
            self.policy = _SchedulingPolicy.FCFS
            self.running.sort(key=self._key)
        else:
            self.policy = self._configured_policy

    def _program_key(
        self, request: Any, metadata: ProgramMetadata, program: ProgramState, matches: dict[int, int]
    ) -> Key:
        latest = None
        if metadata.deadline_at_s is not None and self.knobs.urgency:
            now = self.clock.unix()
            latest = latest_start_s(
                now_s=now,
                deadline_s=trusted_deadline_s(metadata.deadline_at_s, now_s=now),
                expected_s=self._expected_s(request, matches),
                critical_path_s=metadata.critical_path_s,
            )
        return queue_key(
            request_id=request.request_id,
            arrival_s=request.arrival_time,
            user_priority=request.priority if self._by_priority else 0,
            metadata=metadata,
            program_arrival_s=program.arrival_s,
            holds_pins=bool(matches),  # pinned KV this very request will reuse
            latest_start=latest,
            knobs=self.knobs,
        )

    def _expected_s(self, request: Any, matches: dict[int, int]) -> float:
        """Prefill of what is not pinned + decode at the current batch size."""
        pinned = max(matches.values(), default=0) * self.block_size
        prefill_s = self._step_model.prefill_s(max(0, request.num_prompt_tokens - pinned))
        num_decode = min(request.max_tokens, _EXPECTED_DECODE_TOKENS_CAP)
        return prefill_s + num_decode * self._step_model.decode_step_s(len(self.running) + 1)

    def _pending_handoffs(self) -> set[int]:
        """Pins a waiting request is about to reuse."""
        tracked = self._tracked
        pending: set[int] = set()
        for request in self.waiting:
            t = tracked.get(request.request_id)
            if t is not None and t.matches:
                pending.update(t.matches)
        return pending

    def _has_live_request(self, program: ProgramState) -> bool:
        return any(t.program is program for t in self._tracked.values())

    # -- after each schedule: timing, admissions, hand-offs ----------------------------------------

    def _after_schedule(self, output: Any, now: float) -> None:
        if output.total_num_scheduled_tokens > 0:
            num_prefill = num_decode = 0
            for num_tokens in output.num_scheduled_tokens.values():
                if num_tokens > 1:
                    num_prefill += num_tokens
                else:
                    num_decode += 1
            self._steps.append((self.clock.perf(), num_prefill, num_decode))
        if self._tracked:
            for new in output.scheduled_new_reqs:
                tracked = self._tracked.get(new.req_id)
                if tracked is not None and not tracked.admitted:
                    self._admitted(new.req_id, tracked, new.num_computed_tokens, now)
        if self._pins and output.total_num_scheduled_tokens == 0 and self.waiting and not self.running:
            self._unstall(now)
            wakeup_s = self.next_wakeup_s()
            if wakeup_s is not None:
                # The head waits for an older program's pin to expire: do not spin empty steps meanwhile.
                self.clock.sleep(min(wakeup_s, _STALL_NAP_S))

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
            turn=tracked.metadata.turn,
            prompt_tokens=tracked.prompt_tokens,
            cached_tokens=num_cached_tokens,
            delay_s=delay_s,
        )
        # Hand-off: the request now references the blocks it reused, so its pins can let go.
        pin_hit = self._pins.hand_off(tracked.matches, num_cached_tokens=num_cached_tokens, program=program, now_s=now)
        self._record_facts(
            request_id, {"queue_delay_s": delay_s, "cached_tokens": num_cached_tokens, "pin_hit": pin_hit}
        )

    def _record_facts(self, request_id: str, facts: dict[str, Any]) -> None:
        self._facts[_vllm.external_request_id(request_id)] = facts
        while len(self._facts) > _MAX_FACTS:  # callers that never read theirs (servers) must not grow it
            self._facts.popitem(last=False)

    # -- pins -------------------------------------------------------------------------------------

    def _maybe_pin(self, request: Any, tracked: _Tracked, now: float) -> bool:
        """Pin a finished call's blocks if its next turn is worth waiting for; False: free them as vLLM does.

        A program that named its next tool is pinned by that tool's duration; one the scheduler
        recognised (session, chain) by the learned gap between turns and how often one comes at all.
        """
        metadata = tracked.metadata
        if tracked.identity is Identity.FIELDS:
            if metadata.next_tool is None or metadata.is_last_turn:
                return False
            dist = self._predictor.distribution(metadata.next_tool, metadata.next_tool_duration_s)
            p_next = 1.0
        else:
            outlook = self._recognizer.outlook(tracked.session)
            if outlook is None:
                return False
            dist, p_next = outlook
        decided = self._pin_choice(request, dist, p_next)
        if decided is None:
            return False
        _, choice = decided
        rank = rank_of(tracked.key)
        self._pin(request, tracked.program, metadata.turn, metadata.next_tool, rank, dist, p_next, choice, now)
        return True

    def _maybe_pin_first_turn(self, request: Any, link: Link, now: float) -> bool:
        """A plain request that programs' next turns usually continue: pinned as a chain program's first turn."""
        outlook = self._recognizer.outlook(None)
        if outlook is None or not self._recognizer.tracks_new_chains():
            return False
        dist, p_next = outlook
        decided = self._pin_choice(request, dist, p_next)
        if decided is None:
            return False
        _, choice = decided
        metadata = ProgramMetadata(program_id=self._recognizer.adopt(link))
        program = self._programs.touch(metadata, now_s=now, arrival_s=request.arrival_time)
        rank = rank_of(plain_key(request_id=request.request_id, arrival_s=request.arrival_time, user_priority=0))
        self._pin(request, program, 0, None, rank, dist, p_next, choice, now)
        return True

    def _pin_choice(self, request: Any, dist: DurationDistribution, p_next: float) -> tuple[int, TtlChoice] | None:
        """(blocks, the TTL choice) if the finished request may and should be pinned."""
        knobs = self.knobs
        if not (knobs.enabled and knobs.pinning and self._single_group):
            return None
        if request.status not in _PINNABLE_STATUSES or not self._request_blocks_can_be_freed(request):
            return None
        num_blocks = self._port.num_pinnable(request.request_id)
        if num_blocks == 0 or self._pins.num_blocks + num_blocks > self._pin_cap_blocks():
            return None
        usable = self._port.num_blocks - self._held_back.num_blocks
        choice = choose_ttl(
            dist,
            reprefill_s=self._step_model.prefill_s(num_blocks * self.block_size),
            requeue_s=self._requeue_s,
            kv_usage=1.0 - self._port.num_free() / max(1, usable),  # held-back blocks are not pressure
            knobs=knobs,
            p_next=p_next,
        )
        if choice.ttl_s <= 0:
            self._metrics.pins_skipped += 1
            return None
        return num_blocks, choice

    def _pin(
        self,
        request: Any,
        program: ProgramState,
        turn: int,
        next_tool: str | None,
        rank: Rank,
        dist: DurationDistribution,
        p_next: float,
        choice: TtlChoice,
        now: float,
    ) -> None:
        self._pins.pin(
            request,
            program=program,
            turn=turn,
            next_tool=next_tool,
            rank=rank,
            ttl_s=choice.ttl_s,
            p_done=choice.p_done,
            value_s=choice.value_s * p_next,  # what it saves, if its next turn comes at all
            dist=dist,
            now_s=now,
        )
        del self.requests[request.request_id]  # what Scheduler._free_blocks does besides freeing

    def _pin_cap_blocks(self) -> float:
        return self.knobs.max_pinned_fraction * (self._port.num_blocks - self._held_back.num_blocks)

    def _reclaim(self, now: float, pending: set[int]) -> None:
        """Release pins, cheapest first, until this step's demand for blocks fits.

        A request, running (its next blocks) or at the head of the queue, may take only pins of
        programs that come after it in the queue order: an older program's pinned context, back
        from its tool soon, outranks a younger program's work (program FCFS). Such pins leave on
        expiry or hand-off instead, and vLLM preempts the youngest running request if it must.
        """
        if not self._pins:
            return
        growth, head_demand, head_pins = self._demand_blocks()
        head_rank = self._rank(self.waiting.peek_request()) if self.waiting else None
        self._pins.reclaim_for_demand(
            growth, head_rank=head_rank, head_demand=head_demand, head_pins=head_pins, pending=pending, now_s=now
        )

    def _demand_blocks(self) -> tuple[list[tuple[Rank, int]], int, set[int]]:
        """Blocks this step may allocate: running requests' growth and the head waiting request's.

        Growth comes as (rank, blocks) per running request that needs blocks, oldest program first.
        Also the pins the head will reuse: never reclaimed for it, its demand is net of them.
        """
        size = self.block_size
        extra = 1 + self.num_lookahead_tokens
        growth: list[tuple[Rank, int]] = []
        for request in self.running:
            held = self._port.num_held(request.request_id)
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
                head_pins = {pin_id for pin_id in tracked.matches if self._pins.book.get(pin_id) is not None}
                reused = max((tracked.matches[pin_id] for pin_id in head_pins), default=0)
            head_demand = max(0, math.ceil((head.num_tokens + 1) / size) - reused)
        return growth, head_demand, head_pins

    def _unstall(self, now: float) -> None:
        """Nothing runs and the head still does not fit beside the pins (`PinKeeper.unstall`)."""
        head = self.waiting.peek_request()
        tracked = self._tracked.get(head.request_id)
        keep = set(tracked.matches) if tracked is not None else set()
        self._pins.unstall(head_rank=self._rank(head), keep=keep, pending=self._pending_handoffs(), now_s=now)

    def _maybe_end_program(self, program: ProgramState, now: float) -> None:
        if self._has_live_request(program):
            return  # another branch of the program is still live
        self._pins.release_program(program.program_id, now)
        program.ended = True

    def _collect_garbage(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_gc_s:
            return
        self._next_gc_s = now + _GC_INTERVAL_S
        self._recognizer.expire(now)
        live = {t.metadata.program_id for t in self._tracked.values()}
        for program_id in self._programs.stale(now, live, self._pins.book.programs(), self.knobs.program_idle_gc_s):
            self._programs.forget(program_id)

    # -- admission control --------------------------------------------------------------------------

    def _hold_back(self) -> list[Any]:
        """Take this step's cold program requests that must wait out of the queue (`serving._admission`).

        Nothing is held while nothing runs: holding would idle the engine (it measured 0.83 s of
        queueing against vLLM's 0.48 s at 0.25 programs/s while pins waited out their tools). The
        pins stay safe without it: a younger request cannot reclaim an older program's pin
        (`_reclaim`), and should an older program's growth need the blocks later, vLLM preempts the
        youngest running request.
        """
        knobs = self.knobs
        if not (knobs.enabled and knobs.pinning and knobs.reserve_turns > 0 and self._single_group):
            return []
        if not self.waiting or not self.running:
            return []
        requests = list(self.waiting)
        queue = [self._queued(request) for request in requests]
        held = [
            requests[i]
            for i in requests_to_hold(
                queue,
                resident=self._resident_programs(),
                free_blocks=self._port.num_free(),
                block_size=self.block_size,
                reserve_turns=knobs.reserve_turns,
                new_blocks=lambda i: self._new_blocks(requests[i]),
                yielding_blocks=self._yielding_blocks,
            )
        ]
        if held:
            self.waiting.remove_requests(held)
        for request in held:
            tracked = self._tracked[request.request_id]
            if not tracked.held:
                tracked.held = True
                self._metrics.requests_held += 1
        return held

    def _queued(self, request: Any) -> QueuedRequest:
        tracked = self._tracked.get(request.request_id)
        if tracked is None:
            return QueuedRequest(program_id=None, rank=self._rank(request), growth_tokens=None)
        program = tracked.program
        rank = rank_of(tracked.key)
        return QueuedRequest(program_id=program.program_id, rank=rank, growth_tokens=program.growth_tokens)

    def _yielding_blocks(self, rank: Rank) -> int:
        """Blocks that programs queued after `rank` give up for it.

        Their pins (reclaimed) and their running requests' blocks (vLLM preempts the youngest first).
        """
        pinned = sum(pin.num_blocks for pin in self._pins.book if pin.rank > rank)
        running = sum(self._port.num_held(r.request_id) for r in self.running if self._rank(r) > rank)
        return pinned + running

    def _resident_programs(self) -> dict[str, ResidentProgram]:
        """Programs with KV in the pool: pinned or running; each with its queue rank."""
        resident: dict[str, ResidentProgram] = {}
        for pin in self._pins.book:
            state = self._programs.get(pin.program_id)
            if state is not None:
                resident[pin.program_id] = ResidentProgram(rank=pin.rank, growth_tokens=state.growth_tokens)
        for request in self.running:
            tracked = self._tracked.get(request.request_id)
            if tracked is not None:
                resident.setdefault(
                    tracked.program.program_id,
                    ResidentProgram(rank=self._rank(request), growth_tokens=tracked.program.growth_tokens),
                )
        return resident

    def _new_blocks(self, request: Any) -> int:
        """Blocks admitting `request` now allocates: its tokens less the leading prefix-cache hits."""
        total = math.ceil((request.num_tokens + 1) / self.block_size)
        return max(0, total - self._port.num_cached_leading(request.block_hashes))

    # -- held-back blocks (kv_block_limit) --------------------------------------------------------

    def _apply_block_limit(self, now: float) -> None:
        # The limit applies with enabled=False too: baselines see the same pool.
        self._held_back.hold(self.knobs.kv_block_limit)
        self._pins.enforce_cap(self._pin_cap_blocks(), now)  # a smaller pool has a smaller cap


class ProgramAwareAsyncScheduler(ProgramAwareScheduler, _AsyncScheduler):  # type: ignore[misc,valid-type]
    """`ProgramAwareScheduler` over vLLM's `AsyncScheduler` (engines with async scheduling: GPU)."""
