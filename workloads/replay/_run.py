"""Replay scaled agent programs through the embedded engine, as the agents ran them.

Each program is a chain of LLM calls separated by tool pauses:

- turn i's prompt (token ids) = turn i-1's prompt + the tokens turn i-1 generated + the tool's
  output (fresh seeded tokens): an identical prefix, so the engine's prefix cache hits whenever
  the program's KV survived the tool pause;
- each call's output is forced to its recorded (scaled) length: `ignore_eos` + `max_tokens`;
- the tool pause after a call is slept as recorded (scaled), then reported to the policy (the
  runtime reports real tool durations to a program-aware scheduler the same way);
- programs arrive as a seeded Poisson process (`poisson_arrivals`) or run K at a time (closed loop).

A serving policy (`POLICIES`) is the engine configuration plus what each request carries:
`vllm` (stock FCFS with prefix caching; `vllm:aa` the same again, the A/A pair that shows the
machine's noise), `priority` (stock priority scheduling keyed by program arrival order),
`continuum` (program FCFS and a fixed 2 s pin, no admission control: what Continuum's public code
does, fed program ids), and `agentflow` (the program-aware scheduler) fed what a client sends
(`ClientMetadata`): every program field and the runtime's tool reports (`agentflow`), only a
session id (`agentflow:session`), or nothing at all (`agentflow:none`).

Queueing delay is observed, not guessed: a sampler reads the live scheduler between engine steps
(`EmbeddedEngine.call_in_engine`) and records when each request first runs and when it is
preempted back to waiting; a call's queueing delay is its time not running before it finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agentflow.exceptions import UserError
from agentflow.ir import ProgramFacts
from executor import MetadataIssuer
from serving import PROGRAM_AWARE_SCHEDULER
from workloads.replay._trace import ScaledProgram

__all__ = [
    "POLICIES",
    "ROUTERS",
    "CallRecord",
    "CLIENT_METADATA",
    "ClientMetadata",
    "ServingPolicy",
    "ProgramOutcome",
    "ReplaySettings",
    "RuntimeHooks",
    "next_prompt",
    "poisson_arrivals",
    "program_tokens",
    "replay_programs",
    "speed_check",
    "split_run",
    "timed_burst",
    "with_client_metadata",
]

# Token ids drawn for synthetic text: clear of the special and byte tokens at the low end of
# common vocabularies, inside every vocabulary of >= 40k entries (SmolLM2: 49,152; Llama 3: 128k).
DEFAULT_VOCAB_RANGE = (1_000, 40_000)


# -- policies ---------------------------------------------------------------------------------------


ClientMetadata = Literal["full", "session", "none"]
CLIENT_METADATA: tuple[ClientMetadata, ...] = ("full", "session", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingPolicy:
    """A serving policy under test: engine settings and what each request carries."""

    name: str
    description: str
    scheduler_cls: str | None  # None: vLLM's stock scheduler
    scheduling_policy: Literal["fcfs", "priority"]
    priority_by_arrival: bool  # request priority = its program's arrival order (lower runs first)
    # What each request carries: every program field in extra_args and the runtime's reports of
    # tool durations and program ends ("full"), the program id as a session id ("session"), nothing.
    client_metadata: ClientMetadata = "none"
    knobs: tuple[tuple[str, Any], ...] = ()  # the policy's own scheduler knobs

    @property
    def program_metadata(self) -> bool:
        """Requests carry program metadata in extra_args (and the runtime reports tools and ends)."""
        return self.client_metadata == "full"

    @property
    def program_aware(self) -> bool:
        """It runs agentflow's scheduler (whatever its requests carry)."""
        return self.scheduler_cls == PROGRAM_AWARE_SCHEDULER

    def engine_overrides(self) -> dict[str, Any]:
        """The `EngineConfig` fields this policy sets."""
        return {"scheduler_cls": self.scheduler_cls, "scheduling_policy": self.scheduling_policy}


_VLLM = ServingPolicy(
    name="vllm",
    description="stock vLLM: FCFS per request, prefix caching, KV freed when a call ends",
    scheduler_cls=None,
    scheduling_policy="fcfs",
    priority_by_arrival=False,
)
_AGENTFLOW_DESCRIPTION = "agentflow's program-aware scheduler: program FCFS, KV pinned across tool calls with a TTL"

POLICIES: dict[str, ServingPolicy] = {
    "vllm": _VLLM,
    "vllm:aa": dataclasses.replace(
        _VLLM, name="vllm:aa", description="stock vLLM again, its own process: the A/A pair (the machine's noise)"
    ),
    "priority": ServingPolicy(
        name="priority",
        description="stock vLLM priority scheduling, priority = program arrival order (no pinning)",
        scheduler_cls=None,
        scheduling_policy="priority",
        priority_by_arrival=True,
    ),
    "continuum": ServingPolicy(
        name="continuum",
        description="Continuum: program-level FCFS and a fixed 2 s pin after each call a tool follows, "
        "no admission control, program ids sent",
        scheduler_cls=PROGRAM_AWARE_SCHEDULER,
        scheduling_policy="priority",
        priority_by_arrival=False,
        client_metadata="full",
        knobs=(
            ("fixed_ttl_s", 2.0),
            ("reserve_turns", 0.0),
            ("urgency", False),
            ("identify_by_session", False),
            ("identify_by_chain", False),
        ),
    ),
    "agentflow": ServingPolicy(
        name="agentflow",
        description=_AGENTFLOW_DESCRIPTION + "; every program field sent, tool durations reported",
        scheduler_cls=PROGRAM_AWARE_SCHEDULER,
        scheduling_policy="priority",
        priority_by_arrival=False,  # the program metadata carries the order; users write nothing extra
        client_metadata="full",
    ),
    "agentflow:session": ServingPolicy(
        name="agentflow:session",
        description=_AGENTFLOW_DESCRIPTION + "; only a session id sent (programs and gaps inferred)",
        scheduler_cls=PROGRAM_AWARE_SCHEDULER,
        scheduling_policy="priority",
        priority_by_arrival=False,
        client_metadata="session",
    ),
    "agentflow:none": ServingPolicy(
        name="agentflow:none",
        description=_AGENTFLOW_DESCRIPTION + "; bare requests (programs inferred from prompt chains)",
        scheduler_cls=PROGRAM_AWARE_SCHEDULER,
        scheduling_policy="priority",
        priority_by_arrival=False,
        client_metadata="none",
    ),
}


ROUTERS = ("agentflow", "pow2", "session-hash", "prefix")  # serving._affinity.RouterKind's values
AA_SUFFIX = ":aa"  # `pow2:aa`: the same router again, its own run: the A/A pair across replicas


def split_run(name: str) -> tuple[str, str | None]:
    """A run's policy and router: `agentflow@pow2` -> (`agentflow`, `pow2`); a single engine's run has none."""
    policy, sep, router = name.partition("@")
    if sep and router_kind(router) not in ROUTERS:
        known = ", ".join(ROUTERS)
        raise UserError(f"unknown router {router!r} in {name!r}; known: {known} (any of them + {AA_SUFFIX!r})")
    return policy, router if sep else None


def router_kind(router: str) -> str:
    """The router a run name's router runs: `pow2:aa` runs `pow2`."""
    return router.removesuffix(AA_SUFFIX)


def get_policy(name: str) -> ServingPolicy:
    """The serving policy of a run name (`agentflow`, or `agentflow@pow2` across replicas)."""
    policy, _ = split_run(name)
    try:
        return POLICIES[policy]
    except KeyError:
        raise UserError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


def with_client_metadata(names: Sequence[str], client_metadata: str) -> tuple[str, ...]:
    """The policy names with `agentflow` sending `client_metadata` instead of every field."""
    if client_metadata not in CLIENT_METADATA:
        raise UserError(f"unknown client metadata {client_metadata!r}; known: {', '.join(CLIENT_METADATA)}")
    if client_metadata == "full":
        return tuple(names)
    return tuple(f"agentflow:{client_metadata}" if name == "agentflow" else name for name in names)


# -- prompts and arrivals (pure) ---------------------------------------------------------------------


def program_tokens(
    num_tokens: int, *, seed: int, key: str, vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE
) -> list[int]:
    """`num_tokens` synthetic token ids, the same for the same (seed, key) on every run."""
    low, high = vocab_range
    rng = random.Random(f"{seed}:{key}")  # str seeds hash with SHA-512: stable across processes
    return [rng.randrange(low, high) for _ in range(num_tokens)]


def first_prompt(program: ScaledProgram, *, seed: int, vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE) -> list[int]:
    """Turn 0's prompt: the shared system prefix, then the program's own task tokens."""
    shared = program_tokens(program.shared_prefix_tokens, seed=seed, key="system", vocab_range=vocab_range)
    task = program_tokens(
        program.turns[0].new_prompt_tokens, seed=seed, key=f"{program.program_id}:0", vocab_range=vocab_range
    )
    return shared + task


def tool_output_tokens(
    program: ScaledProgram, turn: int, *, seed: int, vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE
) -> list[int]:
    """The tool output appended before call `turn` (turn >= 1)."""
    assert turn >= 1, "turn 0's new tokens are the task prompt"
    n = program.turns[turn].new_prompt_tokens
    return program_tokens(n, seed=seed, key=f"{program.program_id}:{turn}", vocab_range=vocab_range)


def next_prompt(previous_prompt: Sequence[int], output: Sequence[int], tool_output: Sequence[int]) -> list[int]:
    """The next call's prompt: everything before, unchanged, then the new tokens."""
    return [*previous_prompt, *output, *tool_output]


def poisson_arrivals(num_programs: int, *, rate_per_s: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process; the first program arrives at 0."""
    if not rate_per_s > 0:
        raise UserError(f"arrival rate must be > 0 programs/s, got {rate_per_s}")
    rng = random.Random(f"arrivals:{seed}")
    arrivals: list[float] = []
    t = 0.0
    for index in range(num_programs):
        if index:
            t += rng.expovariate(rate_per_s)
        arrivals.append(t)
    return arrivals


# -- records ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One replayed LLM call. Times are seconds since the replay started."""

    turn: int
    submit_s: float
    first_token_s: float
    finish_s: float
    queued_s: float  # time not running (waiting, or preempted) before it finished
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    tool: str | None
    tool_s: float  # the pause slept after it


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramOutcome:
    """One replayed program. Times are seconds since the replay started."""

    program_id: str
    index: int  # arrival order
    arrival_s: float
    finish_s: float
    deadline_s: float | None  # relative to the replay start
    calls: tuple[CallRecord, ...]
    error: str | None = None

    @property
    def jct_s(self) -> float:
        return self.finish_s - self.arrival_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "jct_s": self.jct_s}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProgramOutcome:
        fields = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and k != "calls"}
        return cls(**fields, calls=tuple(CallRecord(**call) for call in raw["calls"]))


# -- the replay loop ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeHooks:
    """What the agentflow runtime tells the engine besides requests, called as the runtime calls them.

    `tool_done(tool, duration_s)` as each tool ends (the scheduler's duration predictor learns
    from truth); `program_done(program_id)` once a program ends (its pinned KV is released).
    """

    tool_done: Callable[[str, float], None] | None = None
    program_done: Callable[[str], Awaitable[object]] | None = None


@dataclass(slots=True)
class _RequestTimes:
    submit_s: float
    queued_s: float = 0.0
    waiting_since_s: float | None = None  # set while not running
    ran: bool = False


@dataclass(slots=True)
class _Load:
    """Time-weighted engine load over the busy time (some request running or waiting)."""

    num_snapshots: int = 0
    busy_s: float = 0.0
    running_s: float = 0.0  # integral of the running count over time
    waiting_s: float = 0.0  # integral of the waiting count
    kv_usage_s: float = 0.0  # integral of the KV pool's used fraction
    kv_usage_max: float = 0.0
    waiting_max: int = 0

    def add(self, dt_s: float, num_running: int, num_waiting: int, kv_usage: float | None) -> None:
        self.num_snapshots += 1
        if not (num_running or num_waiting):
            return
        self.busy_s += dt_s
        self.running_s += num_running * dt_s
        self.waiting_s += num_waiting * dt_s
        self.waiting_max = max(self.waiting_max, num_waiting)
        if kv_usage is not None:
            self.kv_usage_s += kv_usage * dt_s
            self.kv_usage_max = max(self.kv_usage_max, kv_usage)

    def to_json(self) -> dict[str, Any]:
        busy = self.busy_s
        return {
            "num_snapshots": self.num_snapshots,
            "busy_s": busy,
            "running_mean": self.running_s / busy if busy else None,
            "waiting_mean": self.waiting_s / busy if busy else None,
            "waiting_max": self.waiting_max,
            "kv_usage_mean": self.kv_usage_s / busy if busy else None,
            "kv_usage_max": self.kv_usage_max,
        }


@dataclass(slots=True)
class _QueueTracker:
    """Running/not-running intervals of our requests, from snapshots between engine steps."""

    t0: float
    requests: dict[str, _RequestTimes] = field(default_factory=dict)  # our request id -> times
    last_snapshot_s: float = 0.0
    load: _Load = field(default_factory=lambda: _Load())

    def submitted(self, request_id: str, now_s: float) -> None:
        self.requests[request_id] = _RequestTimes(submit_s=now_s, waiting_since_s=now_s)

    def observe(self, now_s: float, running_ids: Set[str], num_waiting: int, kv_usage: float | None) -> None:
        # A request seen running now started in the step after the previous snapshot.
        started_s = self.last_snapshot_s
        for request_id, times in self.requests.items():
            running = request_id in running_ids
            if running and times.waiting_since_s is not None:
                times.queued_s += max(0.0, started_s - times.waiting_since_s)
                times.waiting_since_s = None
                times.ran = True
            elif not running and times.waiting_since_s is None:
                times.waiting_since_s = now_s  # preempted back to waiting
        self.load.add(now_s - self.last_snapshot_s, len(running_ids), num_waiting, kv_usage)
        self.last_snapshot_s = now_s

    def finished(self, request_id: str) -> float:
        """The request's queueing delay; it is forgotten."""
        times = self.requests.pop(request_id)
        if times.waiting_since_s is not None and not times.ran:
            # Ran and finished between two snapshots: it started in the last step at the latest.
            # (One that ran and was then missing had finished, not been preempted: no wait to add.)
            times.queued_s += max(0.0, self.last_snapshot_s - times.waiting_since_s)
        return times.queued_s


async def _sample(engine: Any, tracker: _QueueTracker, stop: asyncio.Event, period_s: float) -> None:
    while not stop.is_set():
        snapshot = await engine.queue_snapshot()
        tracker.observe(time.perf_counter() - tracker.t0, snapshot.running, snapshot.num_waiting, snapshot.kv_usage)
        # The call already waited for a step boundary; the pause only keeps an idle engine quiet.
        await asyncio.sleep(period_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySettings:
    policy: ServingPolicy
    seed: int = 0
    arrivals_s: tuple[float, ...] | None = None  # open loop: one offset per program
    concurrency: int | None = None  # closed loop: this many programs at once
    deadlines_s: tuple[float, ...] | None = None  # per program, relative to its arrival
    send_deadlines: bool = False  # also put them in the program metadata (urgency ordering)
    vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE
    sample_period_s: float = 0.005

    def __post_init__(self) -> None:
        if (self.arrivals_s is None) == (self.concurrency is None):
            raise UserError("a replay takes exactly one of arrivals (a rate) or a concurrency")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"concurrency must be >= 1, got {self.concurrency}")


@dataclass(slots=True, kw_only=True)
class _Replay:
    engine: Any
    settings: ReplaySettings
    tracker: _QueueTracker
    t0: float
    wall_t0: float
    hooks: RuntimeHooks
    on_done: Callable[[ProgramOutcome], None] | None

    def now_s(self) -> float:
        return time.perf_counter() - self.t0


async def replay_programs(
    engine: Any,
    programs: Sequence[ScaledProgram],
    settings: ReplaySettings,
    *,
    hooks: RuntimeHooks | None = None,
    on_done: Callable[[ProgramOutcome], None] | None = None,
) -> tuple[list[ProgramOutcome], dict[str, Any]]:
    """Replay `programs` on a started engine; their outcomes (arrival order) and engine stats."""
    if settings.arrivals_s is not None and len(settings.arrivals_s) != len(programs):
        raise UserError(f"{len(settings.arrivals_s)} arrivals for {len(programs)} programs")
    t0 = time.perf_counter()
    replay = _Replay(
        engine=engine,
        settings=settings,
        tracker=_QueueTracker(t0=t0),
        t0=t0,
        wall_t0=time.time(),
        hooks=hooks or RuntimeHooks(),
        on_done=on_done,
    )
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(engine, replay.tracker, stop, settings.sample_period_s))
    try:
        outcomes = await _run_all(replay, programs)
    finally:
        stop.set()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    return outcomes, _engine_stats(replay.tracker)


def _engine_stats(tracker: _QueueTracker) -> dict[str, Any]:
    # Our requests only count as running; the waiting count is the engine's whole queue.
    return tracker.load.to_json()


async def _run_all(replay: _Replay, programs: Sequence[ScaledProgram]) -> list[ProgramOutcome]:
    settings = replay.settings
    if settings.arrivals_s is not None:
        tasks = [
            _run_at(replay, index, program, arrival_s)
            for index, (program, arrival_s) in enumerate(zip(programs, settings.arrivals_s, strict=True))
        ]
        return list(await asyncio.gather(*tasks))
    assert settings.concurrency is not None
    return await _run_closed_loop(replay, programs, settings.concurrency)


async def _run_at(replay: _Replay, index: int, program: ScaledProgram, arrival_s: float) -> ProgramOutcome:
    await asyncio.sleep(max(0.0, arrival_s - replay.now_s()))
    return await _run_program(replay, index, program, arrival_s)


async def _run_closed_loop(
    replay: _Replay, programs: Sequence[ScaledProgram], concurrency: int
) -> list[ProgramOutcome]:
    slots = asyncio.Semaphore(concurrency)
    # Admission in arrival order: each program takes a slot before the next is considered.
    order = asyncio.Lock()

    async def one(index: int, program: ScaledProgram) -> ProgramOutcome:
        async with order:
            await slots.acquire()
        try:
            return await _run_program(replay, index, program, replay.now_s())
        finally:
            slots.release()

    # Created in order; each waits on the ordered lock, so admission follows the list.
    tasks = [asyncio.create_task(one(index, program)) for index, program in enumerate(programs)]
    return list(await asyncio.gather(*tasks))


async def _run_program(replay: _Replay, index: int, program: ScaledProgram, arrival_s: float) -> ProgramOutcome:
    settings = replay.settings
    deadline_s = arrival_s + settings.deadlines_s[index] if settings.deadlines_s is not None else None
    issuer = _issuer(replay, program, arrival_s, deadline_s) if settings.policy.program_metadata else None
    prompt = first_prompt(program, seed=settings.seed, vocab_range=settings.vocab_range)
    output: list[int] = []
    calls: list[CallRecord] = []
    error: str | None = None
    try:
        for turn_index, turn in enumerate(program.turns):
            if turn_index:
                tool_output = tool_output_tokens(
                    program, turn_index, seed=settings.seed, vocab_range=settings.vocab_range
                )
                prompt = next_prompt(prompt, output, tool_output)
            record, output = await _call(replay, program, index, turn_index, prompt, issuer)
            calls.append(record)
            if turn.tool is not None:
                await _run_tool(replay, turn.tool, turn.tool_s)
    except Exception as exc:  # a failed program is recorded; the replay goes on
        error = f"{type(exc).__name__}: {exc}"
    finish_s = replay.now_s()
    if replay.hooks.program_done is not None:
        await replay.hooks.program_done(program.program_id)
    outcome = ProgramOutcome(
        program_id=program.program_id,
        index=index,
        arrival_s=arrival_s,
        finish_s=finish_s,
        deadline_s=deadline_s,
        calls=tuple(calls),
        error=error,
    )
    if replay.on_done is not None:
        replay.on_done(outcome)
    return outcome


async def _run_tool(replay: _Replay, tool: str, tool_s: float) -> None:
    started = time.perf_counter()
    await asyncio.sleep(tool_s)
    if replay.hooks.tool_done is not None:
        replay.hooks.tool_done(tool, time.perf_counter() - started)


async def _call(
    replay: _Replay,
    program: ScaledProgram,
    index: int,
    turn_index: int,
    prompt: list[int],
    issuer: MetadataIssuer | None,
) -> tuple[CallRecord, list[int]]:
    turn = program.turns[turn_index]
    request_id = f"replay-{index}-{turn_index}"
    kwargs = _request_kwargs(replay, program, index, turn_index, issuer)
    submit_s = replay.now_s()
    replay.tracker.submitted(request_id, submit_s)
    output: list[int] = []
    first_token_s: float | None = None
    num_prompt = num_cached = 0
    try:
        async for chunk in replay.engine.generate(
            prompt=prompt, max_tokens=turn.output_tokens, ignore_eos=True, request_id=request_id, **kwargs
        ):
            if chunk.token_ids and first_token_s is None:
                first_token_s = replay.now_s()
            output.extend(chunk.token_ids)
            num_prompt, num_cached = chunk.num_prompt_tokens, max(num_cached, chunk.num_cached_tokens)
    finally:
        queued_s = replay.tracker.finished(request_id)
    finish_s = replay.now_s()
    record = CallRecord(
        turn=turn_index,
        submit_s=submit_s,
        first_token_s=first_token_s if first_token_s is not None else finish_s,
        finish_s=finish_s,
        queued_s=queued_s,
        num_prompt_tokens=num_prompt or len(prompt),
        num_cached_tokens=num_cached,
        num_output_tokens=len(output),
        tool=turn.tool,
        tool_s=turn.tool_s,
    )
    return record, output


def _issuer(replay: _Replay, program: ScaledProgram, arrival_s: float, deadline_s: float | None) -> MetadataIssuer:
    """The program's metadata issuer: its facts in unix time, as a `Program` would give them."""
    send_deadline = deadline_s is not None and replay.settings.send_deadlines
    facts = ProgramFacts(
        program_id=program.program_id,
        arrival_s=replay.wall_t0 + arrival_s,
        deadline_at_s=replay.wall_t0 + deadline_s if send_deadline and deadline_s is not None else None,
    )
    return MetadataIssuer(facts)


def _request_kwargs(
    replay: _Replay, program: ScaledProgram, index: int, turn_index: int, issuer: MetadataIssuer | None
) -> dict[str, Any]:
    policy = replay.settings.policy
    kwargs: dict[str, Any] = {"priority": index if policy.priority_by_arrival else 0}
    if policy.client_metadata == "session":
        kwargs["session_id"] = program.program_id  # what a client's x-session-id header carries
    if issuer is not None:
        # The tool's name only: its duration is not known in advance; the scheduler's predictor
        # learns it from the durations reported after each tool ends.
        metadata = issuer.issue(
            is_last_turn=turn_index == len(program.turns) - 1, next_tool=program.turns[turn_index].tool
        )
        kwargs["extra_args"] = metadata.to_extra_args()
    return kwargs


# -- throughput on single-turn requests without metadata ----------------------------------------------


async def timed_burst(engine: Any, prompts: list[list[int]], output_tokens: int) -> float:
    """Seconds from the step that starts every prompt at once to the last one's end.

    The burst enters the engine as one batch (`EmbeddedEngine.paused`): how many requests the
    first step sees would otherwise depend on the event loop's timing, and so would the whole
    schedule. Plain requests: no metadata, outputs forced to `output_tokens`.
    """
    calls: list[asyncio.Task[None]] = []
    try:
        async with engine.paused():
            before = await engine.num_unfinished_requests()
            calls = [asyncio.create_task(_plain_call(engine, prompt, output_tokens)) for prompt in prompts]
            while await engine.num_unfinished_requests() < before + len(prompts):
                if done := [call for call in calls if call.done()]:
                    await asyncio.gather(*done)  # a request the engine rejected: raise its error
                await asyncio.sleep(0.001)
            started = time.perf_counter()
        await asyncio.gather(*calls)
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    return time.perf_counter() - started


async def speed_check(
    engine: Any, *, prompt_tokens: int = 512, output_tokens: int = 32, seed: int = 0, repeats: int = 3
) -> dict[str, Any]:
    """One plain request alone on the engine, best of `repeats` runs: its prefill and per-token decode time.

    Run before each policy's replay. The policies run one after another, so a machine whose
    load changed in between (another process on the cores the engine's threads are bound to
    slows every step many times over) shows here as a spread between the policies' figures.
    Each run has a prompt of its own (no prefix-cache hit); the best one is the least disturbed.
    """
    runs = [
        await _one_request_timing(
            engine, program_tokens(prompt_tokens, seed=seed, key=f"speed-check:{i}"), output_tokens
        )
        for i in range(repeats)
    ]
    prefill_s = min(prefill for prefill, _ in runs)
    decode_s = min(decode for _, decode in runs)
    return {
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "repeats": repeats,
        "prefill_s": prefill_s,
        "decode_s_per_token": decode_s,
    }


async def _one_request_timing(engine: Any, prompt: list[int], output_tokens: int) -> tuple[float, float]:
    """(time to the first token, seconds per later token) of one request."""
    started = time.perf_counter()
    first_s: float | None = None
    async for chunk in engine.generate(prompt=prompt, max_tokens=output_tokens, ignore_eos=True):
        if chunk.token_ids and first_s is None:
            first_s = time.perf_counter() - started
    total_s = time.perf_counter() - started
    prefill_s = first_s if first_s is not None else total_s
    return prefill_s, (total_s - prefill_s) / max(1, output_tokens - 1)


async def _plain_call(engine: Any, prompt: list[int], output_tokens: int) -> None:
    async for _ in engine.generate(prompt=prompt, max_tokens=output_tokens, ignore_eos=True):
        pass


def ideal_program_s(program: ScaledProgram, *, prefill_s_per_token: float, decode_s_per_token: float) -> float:
    """A program's time alone on the engine with its prefix always cached: the SLO's yardstick."""
    llm_s = sum(t.new_prompt_tokens * prefill_s_per_token + t.output_tokens * decode_s_per_token for t in program.turns)
    llm_s += program.shared_prefix_tokens * prefill_s_per_token
    return llm_s + sum(t.tool_s for t in program.turns)
