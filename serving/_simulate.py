"""A discrete-event simulation of engine replicas behind a router: the scale-out projections (pure, no engine).

Each replica is an engine stepped by the step-time model the scheduler fits
(`serving._estimators.StepTimeModel`: a step costs a + b*P + c*P^2 + d*D, P the kilotokens it
prefills, D the requests it decodes): either as the scheduler fitted it on a real replay's steps
(`fitted_replica`: its snapshot from `/agentflow/metrics`), or its seeds scaled by factors
calibrated on a measured prefill and decode (`calibrated_replica`). It
holds each program's context in a KV pool of `capacity_tokens`: a turn prefills only what its
replica does not hold (the shared system prompt and the program's last context, if not evicted;
least recently used contexts are evicted first, never a running request's). Like agentflow's
scheduler's admission control, a program not yet started on a replica waits while the contexts
of the programs started there fill its pool. At most
`max_num_seqs` requests run; each step prefills the newly admitted and decodes one token for the
rest. A program's next turn arrives its tool's pause after the previous turn finished.

Routers: agentflow's (`serving._affinity.AffinityPolicy`, the router's own code, fed exact
reports), and models of Ray's: power of two choices on in-flight requests, consistent hashing of
the program key, and prefix affinity (the replica holding the program's context, else the one
that has received the fewest prompt tokens: Ray LLM's "smallest tenant").

`shared_cores`: every replica runs on the same cores (this machine in the validation runs), so a
step is slowed by the number of replicas busy at its start. Projections assume a device per replica.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving._affinity import AffinityKnobs, AffinityPolicy, ReplicaLoad, RouteRequest, RouterKind
from serving._estimators import ENGINE_NOTES_DECODE_S, StepTimeModel

__all__ = ["SimProgram", "SimReplica", "SimResult", "SimTurn", "calibrated_replica", "fitted_replica", "simulate"]


_RESERVE_TURNS = 8  # serving._knobs.SchedulerKnobs.reserve_turns' default


@dataclass(frozen=True, slots=True)
class SimTurn:
    new_prompt_tokens: int  # appended to the context before this call
    output_tokens: int
    tool_s: float  # the pause after it (0 after the last)


@dataclass(frozen=True, slots=True)
class SimProgram:
    program_id: str
    arrival_s: float
    shared_prefix_tokens: int
    turns: tuple[SimTurn, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimReplica:
    """One replica's engine: its KV pool, its batch limit, its speed relative to the step-time model's seeds."""

    capacity_tokens: int
    max_num_seqs: int = 16
    block_size: int = 32
    prefill_factor: float = 1.0  # prefill seconds x this (calibrated on a measured prefill)
    decode_factor: float = 1.0  # the rest of a step x this (calibrated on a measured decode)
    # A step's (a, b, c, d) as the scheduler fitted them on real steps; None: the seeds' (x the factors).
    coefficients: tuple[float, float, float, float] | None = None


def calibrated_replica(
    *, capacity_tokens: int, max_num_seqs: int, prefill_512_s: float, decode_s_per_token: float
) -> SimReplica:
    """A replica whose prefill and decode match measured ones (a 512-token prefill; batch-1 seconds per token)."""
    a, b, c, d = _coefficients(StepTimeModel())
    model_prefill_512 = b * 0.512 + c * 0.512**2
    return SimReplica(
        capacity_tokens=capacity_tokens,
        max_num_seqs=max_num_seqs,
        prefill_factor=max(prefill_512_s - decode_s_per_token, 1e-6) / max(model_prefill_512, 1e-6),
        decode_factor=decode_s_per_token / max(a + d, 1e-6),
    )


def fitted_replica(*, capacity_tokens: int, max_num_seqs: int, step_time_model: dict[str, Any]) -> SimReplica:
    """A replica stepped by the scheduler's own fit (`StepTimeModel.snapshot()` after a real replay)."""
    try:
        fit = tuple(float(step_time_model[key]) for key in ("a_s", "b_s_per_ktok", "c_s_per_ktok2", "d_s_per_decode"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a step-time model snapshot: {step_time_model!r}") from exc
    a, b, c, d = (max(value, 0.0) for value in fit)
    return SimReplica(capacity_tokens=capacity_tokens, max_num_seqs=max_num_seqs, coefficients=(a, b, c, d))


@dataclass(slots=True)
class SimResult:
    router: str
    num_replicas: int
    jct_s: list[float]
    busy_s: list[float]
    moves: int = 0
    prefill_tokens: int = 0
    prompt_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        jcts = sorted(self.jct_s)
        mean_busy = sum(self.busy_s) / len(self.busy_s) if self.busy_s else 0.0
        return {
            "router": self.router,
            "replicas": self.num_replicas,
            "programs": len(jcts),
            "mean_jct_s": round(sum(jcts) / len(jcts), 3) if jcts else None,
            "p95_jct_s": round(jcts[min(len(jcts) - 1, math.ceil(0.95 * len(jcts)) - 1)], 3) if jcts else None,
            "load_imbalance": round(max(self.busy_s) / mean_busy, 3) if mean_busy > 0 else None,
            "cached_fraction": round(1 - self.prefill_tokens / self.prompt_tokens, 3) if self.prompt_tokens else None,
            "moves": self.moves,
        }


# -- one replica's engine ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    program: int  # index into the programs
    turn: int
    key: str
    prompt_tokens: int
    output_left: int
    routed_at_s: float
    request_id: str
    growth: int = 0  # tokens the turn adds to the context (its new prompt and its output)


@dataclass(slots=True)
class _Engine:
    spec: SimReplica
    waiting: deque[_Request] = field(default_factory=deque)
    running: list[_Request] = field(default_factory=list)
    cache: OrderedDict[str, int] = field(default_factory=OrderedDict)  # key -> context tokens held, LRU first
    has_shared_prefix: bool = False
    busy_s: float = 0.0
    stepping: bool = False
    tokens_routed: int = 0  # prompt tokens sent here (the prefix model's "tenant size")
    active: dict[str, int] = field(default_factory=dict)  # key -> context tokens of programs started here, not ended

    def held_tokens(self) -> int:
        running = {r.key for r in self.running}
        return sum(n for key, n in self.cache.items() if key not in running) + sum(
            r.prompt_tokens + 1 for r in self.running
        )

    def admit(self, shared_prefix: int) -> int:
        """Move waiting requests into the batch while they fit; the tokens their prefill costs.

        In arrival order; a new program held back by admission control lets started programs' turns pass.
        """
        prefill = 0
        held: deque[_Request] = deque()
        while self.waiting and len(self.running) < self.spec.max_num_seqs:
            request = self.waiting.popleft()
            if not self._admissible(request):
                held.append(request)
                continue
            if not self._make_room(request.prompt_tokens):
                self.waiting.appendleft(request)
                break
            cached = min(self.cache.pop(request.key, 0), request.prompt_tokens)
            if cached == 0 and self.has_shared_prefix:
                cached = min(shared_prefix, request.prompt_tokens)
            self.has_shared_prefix = self.has_shared_prefix or shared_prefix > 0
            prefill += request.prompt_tokens - cached
            self.running.append(request)
        self.waiting.extendleft(reversed(held))
        return prefill

    def _admissible(self, request: _Request) -> bool:
        """Admission control, as agentflow's scheduler does it (`reserve_turns`).

        A program not yet started here waits while the programs started here (and not ended), with
        room for `_RESERVE_TURNS` more turns of their context growth, fill the pool.
        """
        need = request.prompt_tokens + _RESERVE_TURNS * request.growth
        if request.key in self.active or not self.active:
            self.active[request.key] = need
            return True
        if sum(self.active.values()) + need > self.spec.capacity_tokens:
            return False
        self.active[request.key] = need
        return True

    def _make_room(self, tokens: int) -> bool:
        running = {r.key for r in self.running}
        while self.held_tokens() + tokens > self.spec.capacity_tokens:
            victim = next((key for key in self.cache if key not in running), None)
            if victim is None:
                return not self.running  # alone, a request always runs (vLLM sizes the pool for one)
            del self.cache[victim]
        return True

    def load(self, resident: bool, compute: str) -> ReplicaLoad:
        blocks = self.spec.capacity_tokens // self.spec.block_size
        used = math.ceil(self.held_tokens() / self.spec.block_size)
        return ReplicaLoad(
            num_blocks=blocks,
            num_free_blocks=max(0, blocks - used),
            num_reclaimable_blocks=0,
            block_size=self.spec.block_size,
            num_waiting=len(self.waiting),
            num_running=len(self.running),
            max_num_seqs=self.spec.max_num_seqs,
            resident=frozenset(self.cache) if resident else frozenset(),
            compute=compute,
        )


# -- routers -------------------------------------------------------------------------------------------------


Choose = Callable[[_Request, list[_Engine]], int]


def _router(
    kind: RouterKind, engines: list[_Engine], rng: random.Random, step: StepTimeModel, shared_cores: bool
) -> tuple[Choose, Any]:
    """A function from a request to a replica index, and agentflow's policy when it is that router."""
    if kind is RouterKind.AGENTFLOW:
        policy = AffinityPolicy(cost=step, knobs=AffinityKnobs())

        def affinity(request: _Request, engines: list[_Engine]) -> int:
            loads = {
                str(i): e.load(resident=False, compute="shared" if shared_cores else str(i))
                for i, e in enumerate(engines)
            }
            policy.update_replicas(loads)
            route = RouteRequest(request_id=request.request_id, key=request.key, context_tokens=request.prompt_tokens)
            chosen = int(policy.choose(route).ranked[0])
            policy.on_routed(route, str(chosen), now_s=request.routed_at_s)
            return chosen

        return affinity, policy
    if kind is RouterKind.POW2:

        def pow2(request: _Request, engines: list[_Engine]) -> int:
            pair = rng.sample(range(len(engines)), k=min(2, len(engines)))
            return min(pair, key=lambda i: len(engines[i].waiting) + len(engines[i].running))

        return pow2, None
    if kind is RouterKind.SESSION_HASH:

        def session_hash(request: _Request, engines: list[_Engine]) -> int:
            return int.from_bytes(hashlib.blake2b(request.key.encode(), digest_size=8).digest(), "big") % len(engines)

        return session_hash, None
    homes: dict[str, int] = {}

    def prefix(request: _Request, engines: list[_Engine]) -> int:
        home = homes.get(request.key)
        chosen = home if home is not None else min(range(len(engines)), key=lambda i: engines[i].tokens_routed)
        homes[request.key] = chosen
        return chosen

    return prefix, None


# -- the simulation ----------------------------------------------------------------------------------------------


def simulate(
    programs: Sequence[SimProgram],
    *,
    replicas: int,
    replica: SimReplica,
    router: RouterKind,
    shared_cores: bool = False,
    seed: int = 0,
) -> SimResult:
    """Every program's JCT and every replica's busy time under `router`."""
    step = StepTimeModel()
    engines = [_Engine(replica) for _ in range(replicas)]
    choose, policy = _router(router, engines, random.Random(seed), step, shared_cores)
    sim = _Sim(programs, engines, choose, policy, step, shared_cores)
    sim.run()
    return SimResult(
        router=router.value,
        num_replicas=replicas,
        jct_s=sim.jct_s,
        busy_s=[e.busy_s for e in engines],
        moves=policy.counters.moves if policy is not None else 0,
        prefill_tokens=sim.prefill_tokens,
        prompt_tokens=sim.prompt_tokens,
    )


def _coefficients(step: StepTimeModel) -> tuple[float, float, float, float]:
    """A step's (a, b, c, d): prefill terms b, c from the model's fit; the decode line a + d*D from its seeds.

    The joint fit puts a small negative intercept under its large prefill terms (-8 ms on the seeds),
    so its batch-1 decode step is clipped to nothing; the decode seeds alone give the step's real
    fixed cost (~28 ms) and per-request cost (~2.5 ms).
    """
    fit = step.snapshot()
    a, d = _line(ENGINE_NOTES_DECODE_S)
    return a, max(float(fit["b_s_per_ktok"]), 0.0), max(float(fit["c_s_per_ktok2"]), 0.0), d


def _line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope through (x, y) points."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x if var_x else 0.0
    return max(mean_y - slope * mean_x, 0.0), max(slope, 0.0)


class _Sim:
    """The event loop: turns arriving, replicas' steps ending (decode-only steps in one event when nothing joins)."""

    def __init__(
        self,
        programs: Sequence[SimProgram],
        engines: list[_Engine],
        choose: Choose,
        policy: AffinityPolicy | None,
        step: StepTimeModel,
        shared_cores: bool,
    ) -> None:
        self.programs = programs
        self.engines = engines
        self.choose = choose
        self.policy = policy
        self.step = step
        self.shared_cores = shared_cores
        self.turns: list[tuple[float, int, int]] = []  # (time, program, turn): turns arriving
        self.steps: list[tuple[float, int]] = []  # (time, engine): steps ending
        self.coefficients = engines[0].spec.coefficients or _coefficients(step)
        self.context = [p.shared_prefix_tokens for p in programs]  # tokens of each program's context so far
        self.jct_s: list[float] = []
        self.prefill_tokens = 0
        self.prompt_tokens = 0

    def run(self) -> None:
        for i, spec in enumerate(self.programs):
            heapq.heappush(self.turns, (spec.arrival_s, i, 0))
        while self.turns or self.steps:
            if self.steps and (not self.turns or self.steps[0][0] <= self.turns[0][0]):
                now, index = heapq.heappop(self.steps)
                self._step_end(now, index)
            else:
                now, index, turn = heapq.heappop(self.turns)
                self._turn(now, index, turn)

    def _turn(self, now: float, program: int, turn: int) -> None:
        spec = self.programs[program]
        self.context[program] += spec.turns[turn].new_prompt_tokens
        request = _Request(
            program=program,
            turn=turn,
            key=f"program:{spec.program_id}",
            prompt_tokens=self.context[program],
            output_left=spec.turns[turn].output_tokens,
            routed_at_s=now,
            request_id=f"{program}-{turn}",
            growth=spec.turns[turn].new_prompt_tokens + spec.turns[turn].output_tokens,
        )
        self.prompt_tokens += request.prompt_tokens
        chosen = self.choose(request, self.engines)
        for other in self.engines:  # a program is active where its latest turn went
            if other is not self.engines[chosen]:
                other.active.pop(request.key, None)
        engine = self.engines[chosen]
        engine.tokens_routed += request.prompt_tokens
        engine.waiting.append(request)
        if not engine.stepping:
            self._start_step(now, chosen)

    def _start_step(self, now: float, index: int) -> None:
        engine = self.engines[index]
        shared_prefix = self.programs[engine.waiting[0].program].shared_prefix_tokens if engine.waiting else 0
        decoding = len(engine.running)
        prefill = engine.admit(shared_prefix)
        self.prefill_tokens += prefill
        if not engine.running:
            engine.stepping = False
            return
        engine.stepping = True
        step_s = self._step_s(prefill, decoding)
        steps = self._steps_at_once(now, engine, prefill, step_s)
        for request in engine.running:
            request.output_left -= steps
        engine.busy_s += steps * step_s
        heapq.heappush(self.steps, (now + steps * step_s, index))

    def _steps_at_once(self, now: float, engine: _Engine, prefill: int, step_s: float) -> int:
        """Decode-only steps nothing can join before they end (no turn arrives; on shared cores, no pace changes)."""
        if prefill or engine.waiting:
            return 1
        steps = min(r.output_left for r in engine.running)
        horizon = [self.turns[0][0]] if self.turns else []
        if self.shared_cores and self.steps:
            horizon.append(self.steps[0][0])
        if horizon:
            steps = min(steps, int((min(horizon) - now) / step_s))
        return max(1, steps)

    def _step_s(self, prefill_tokens: int, decoding: int) -> float:
        a, b, c, d = self.coefficients
        spec = self.engines[0].spec
        k = prefill_tokens / 1000
        prefill_s = (max(b, 0.0) * k + max(c, 0.0) * k * k) * spec.prefill_factor
        seconds = prefill_s + (a + max(d, 0.0) * decoding) * spec.decode_factor
        busy = sum(1 for e in self.engines if e.stepping) if self.shared_cores else 1
        return seconds * max(1, busy)

    def _step_end(self, now: float, index: int) -> None:
        engine = self.engines[index]
        finished = [r for r in engine.running if r.output_left <= 0]
        engine.running = [r for r in engine.running if r.output_left > 0]
        for request in finished:
            self._finish(now, engine, request)
        self._start_step(now, index)

    def _finish(self, now: float, engine: _Engine, request: _Request) -> None:
        spec = self.programs[request.program]
        turn = spec.turns[request.turn]
        self.context[request.program] += turn.output_tokens
        engine.cache[request.key] = self.context[request.program]
        engine.cache.move_to_end(request.key)
        if self.policy is not None:
            self.policy.on_completed(request.request_id, now_s=now)
        if request.turn + 1 < len(spec.turns):
            heapq.heappush(self.turns, (now + turn.tool_s, request.program, request.turn + 1))
        else:
            engine.cache.pop(request.key, None)
            engine.active.pop(request.key, None)
            self.jct_s.append(now - spec.arrival_s)
