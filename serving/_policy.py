"""The program-aware scheduling policy, pure: no vLLM, no clock reads, no threads.

The vLLM adapter (`serving._scheduler`) owns the engine objects and calls in here for every
decision, passing the time and the engine's state as plain values:

- `parse_program_metadata`: the program fields of a request's `extra_args`, validated
  (`MetadataError` on wrong types, negative durations, unknown fields).
- `ToolDurationPredictor`: an online per-tool duration distribution learned from the real
  durations the runtime reports. Cold start: the tool's own samples once it has
  `min_samples`, else all tools' samples, else a prior (tool pauses of real mini-swe-agent
  runs on SWE-bench Lite: p50 0.27 s, p90 0.45 s, p99 3.4 s). A predicted duration sent by the
  runtime rescales the shape to that median while the tool has too few samples of its own.
- `PrefillTimeModel`: step time = a + b*P + c*P^2 + d*D (P prefill tokens, D decoding requests),
  least squares over the engine's real steps, anchored by the ENGINE_NOTES measurements.
- `choose_ttl`: tau* = argmax_tau P(tool done within tau) * (re-prefill cost + re-queueing
  delay) - tau * memory cost, the memory price rising with KV usage.
- `queue_key`: program-level FCFS, programs holding pinned KV first, deadline programs by
  their latest start time (remaining deadline apportioned along the remaining critical path).
- `PinBook`, `ProgramTable`, `ServingMetrics`: bookkeeping of pinned blocks (held as opaque
  objects), programs, and the counters `agentflow_metrics()` reports.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentflow.exceptions import MetadataError, UserError

__all__: list[str] = []  # internal module: the scheduler's module docstring documents the knobs

# Keys vLLM itself reads from `extra_args` (vllm/v1/request.py, the server's session_id):
# never program metadata, never "unknown fields".
VLLM_RESERVED_KEYS = frozenset({"kv_transfer_params", "ec_transfer_params", "kv_cache_report_mode", "session_id"})

# Tool pauses of 99 real mini-swe-agent runs on SWE-bench Lite (7,825 tool calls of
# ../shared/data/swebench_lite_msa_traces.jsonl): (cumulative probability, seconds).
TRACE_PRIOR_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.0, 0.05),
    (0.01, 0.161),
    (0.05, 0.185),
    (0.10, 0.200),
    (0.25, 0.231),
    (0.50, 0.265),
    (0.75, 0.328),
    (0.90, 0.447),
    (0.95, 1.26),
    (0.99, 3.34),
    (0.999, 36.8),
    (1.0, 120.0),
)

# SmolLM2-135M bf16 eager on the 2-core CPU box (ENGINE_NOTES): (prefill tokens, step seconds)
# and (decoding requests, step seconds) from 33 / 185 / 294 tokens/s at batch 1 / 8 / 32.
ENGINE_NOTES_PREFILL_S: tuple[tuple[int, float], ...] = ((512, 0.76), (2048, 4.8), (4096, 13.3))
ENGINE_NOTES_DECODE_S: tuple[tuple[int, float], ...] = ((1, 0.030), (8, 0.043), (32, 0.109))


# -- program metadata -----------------------------------------------------------------------------


class ProgramFields(BaseModel):
    """The program metadata one request carries (`ProgramMetadata.to_extra_args()` produces it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    program_id: str = Field(min_length=1, max_length=512)
    program_arrival_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # unix time
    turn: int = Field(default=0, ge=0)
    is_last_turn: bool = False
    next_tool: str | None = Field(default=None, min_length=1, max_length=512)
    next_tool_duration_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    deadline_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # unix time
    critical_path_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # this call to the end

    @field_validator("is_last_turn", mode="before")
    @classmethod
    def _int_flag(cls, value: Any) -> Any:
        # vLLM's server types `vllm_xargs` values as str | int | float: JSON true arrives as 1.
        if type(value) is int and value in (0, 1):
            return bool(value)
        return value


PROGRAM_KEYS = frozenset(ProgramFields.model_fields)


def parse_program_metadata(extra_args: Mapping[str, Any] | None) -> ProgramFields | None:
    """The program fields of `extra_args`; None when it carries none.

    Once any program field is present, every key that is not vLLM's own must be a program
    field of the right type.

    Raises:
        MetadataError: wrong types, negative durations, unknown fields, a missing program_id.
    """
    if not extra_args:
        return None
    if not isinstance(extra_args, Mapping):
        raise MetadataError(f"program metadata must be a JSON object, got {type(extra_args).__name__}")
    fields = {k: v for k, v in extra_args.items() if k not in VLLM_RESERVED_KEYS}
    if not PROGRAM_KEYS & fields.keys():
        return None
    try:
        return ProgramFields.model_validate(fields)
    except ValidationError as exc:
        raise MetadataError(_describe_validation(exc)) from None


def parse_or_none(extra_args: Mapping[str, Any] | None) -> tuple[ProgramFields | None, bool]:
    """`parse_program_metadata` that never raises: (fields or None, whether they were malformed)."""
    try:
        return parse_program_metadata(extra_args), False
    except MetadataError:
        return None, True


def _describe_validation(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "metadata"
        problems.append(f"{where}: {error['msg']}")
    return "malformed program metadata: " + "; ".join(problems)


# -- policy knobs -----------------------------------------------------------------------------------


class PolicyKnobs(BaseModel):
    """The scheduler's public knobs (see `serving._scheduler`'s docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # False: every request is scheduled exactly as stock vLLM, metadata or not
    program_fcfs: bool = True  # order waiting requests by their program's first arrival
    pinning: bool = True  # keep a finished call's KV while its tool runs
    urgency: bool = True  # deadline programs by latest start time
    fixed_ttl_s: float | None = Field(default=None, ge=0)  # a fixed TTL instead of the cost model
    tau_max_s: float = Field(default=30.0, gt=0)  # longest TTL the cost model may choose
    handoff_slack_s: float = Field(default=0.05, ge=0)  # added to tau: tool end -> next request
    memory_price_weight: float = Field(default=0.05, ge=0)  # lambda(u) = w * u / (1 - u + 0.05), 1/s
    max_pinned_fraction: float = Field(default=0.9, gt=0, le=1)  # of the usable KV blocks
    min_tool_samples: int = Field(default=5, ge=1)
    tool_window: int = Field(default=256, ge=1)  # recent durations kept per tool
    program_idle_gc_s: float = Field(default=600.0, gt=0)  # forget programs idle this long
    kv_block_limit: int | None = Field(default=None, ge=1)  # usable KV blocks (emulates a smaller cache)
    # Admission control: a program with nothing resident (no pin, nothing running) is admitted only
    # if, beside it, older resident programs keep room for this many turns of their context growth.
    # 0: admit whatever fits now (vLLM's rule), so younger programs' pins get reclaimed as older ones grow.
    reserve_turns: float = Field(default=8.0, ge=0)


def parse_knobs(base: PolicyKnobs | None, updates: Mapping[str, Any]) -> PolicyKnobs:
    """`base` with `updates` applied. Raises UserError naming the bad knob."""
    merged = {**(base.model_dump() if base is not None else {}), **dict(updates)}
    try:
        return PolicyKnobs.model_validate(merged)
    except ValidationError as exc:
        raise UserError("bad scheduler knobs: " + _describe_validation(exc).partition(": ")[2]) from None


# -- tool durations ---------------------------------------------------------------------------------

_MIN_DURATION_S = 1e-3


@dataclass(frozen=True, slots=True)
class DurationDistribution:
    """A CDF over durations: knots (seconds, cumulative probability), linear in log-seconds between them."""

    xs: tuple[float, ...]  # increasing
    ps: tuple[float, ...]  # non-decreasing, ps[0] == 0, ps[-1] == 1

    @classmethod
    def from_quantiles(cls, quantiles: Iterable[tuple[float, float]]) -> DurationDistribution:
        points = sorted((max(x, _MIN_DURATION_S), p) for p, x in quantiles)
        xs: list[float] = []
        ps: list[float] = []
        for x, p in points:
            if xs and x <= xs[-1]:
                ps[-1] = max(ps[-1], p)
                continue
            xs.append(x)
            ps.append(max(p, ps[-1]) if ps else p)
        ps[0], ps[-1] = 0.0, 1.0
        return cls(tuple(xs), tuple(ps))

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> DurationDistribution:
        ordered = sorted(max(s, _MIN_DURATION_S) for s in samples)
        n = len(ordered)
        # Just below the smallest sample the CDF starts from 0: a step at each sample, barely smoothed.
        quantiles = [(0.0, ordered[0] * 0.95)] + [((i + 1) / n, x) for i, x in enumerate(ordered)]
        return cls.from_quantiles(quantiles)

    def cdf(self, x: float) -> float:
        if x <= self.xs[0]:
            return 0.0
        if x >= self.xs[-1]:
            return 1.0
        i = bisect.bisect_right(self.xs, x)
        x0, x1, p0, p1 = self.xs[i - 1], self.xs[i], self.ps[i - 1], self.ps[i]
        return p0 + (p1 - p0) * math.log(x / x0) / math.log(x1 / x0)

    def quantile(self, p: float) -> float:
        i = bisect.bisect_left(self.ps, p)
        if i <= 0:
            return self.xs[0]
        if i >= len(self.ps):
            return self.xs[-1]
        x0, x1, p0, p1 = self.xs[i - 1], self.xs[i], self.ps[i - 1], self.ps[i]
        if p1 == p0:
            return x1
        return x0 * math.exp((p - p0) / (p1 - p0) * math.log(x1 / x0))

    def scaled(self, factor: float) -> DurationDistribution:
        return DurationDistribution(tuple(x * factor for x in self.xs), self.ps)

    def remaining(self, elapsed_s: float, tau_s: float) -> float:
        """P(done within `tau_s` more | still running after `elapsed_s`)."""
        done = self.cdf(elapsed_s)
        if done >= 1.0:
            return 1.0
        return max(0.0, (self.cdf(elapsed_s + tau_s) - done) / (1.0 - done))


TRACE_PRIOR = DurationDistribution.from_quantiles(TRACE_PRIOR_QUANTILES)


class ToolDurationPredictor:
    """Per-tool empirical duration distributions, learned online from reported durations."""

    def __init__(self, *, window: int = 256, min_samples: int = 5, prior: DurationDistribution = TRACE_PRIOR) -> None:
        self.window = window
        self.min_samples = min_samples
        self.prior = prior
        self._samples: dict[str, deque[float]] = {}  # tool -> recent durations
        self._global: deque[float] = deque(maxlen=window * 4)
        self._cache: dict[str, DurationDistribution] = {}  # tool ("" = global) -> distribution
        self.num_observed = 0

    def observe(self, tool: str, duration_s: float) -> None:
        if not math.isfinite(duration_s) or duration_s < 0:
            return
        samples = self._samples.get(tool)
        if samples is None:
            if len(self._samples) >= 4096:  # bound the table against unbounded tool names
                return
            samples = self._samples[tool] = deque(maxlen=self.window)
        samples.append(duration_s)
        self._global.append(duration_s)
        self._cache.pop(tool, None)
        self._cache.pop("", None)
        self.num_observed += 1

    def distribution(self, tool: str | None, hint_s: float | None = None) -> DurationDistribution:
        """The tool's own samples, else the hint-rescaled global/prior shape, else global, else prior."""
        own = self._samples.get(tool) if tool is not None else None
        if own is not None and len(own) >= self.min_samples:
            return self._cached(tool or "", own)
        shape = self._cached("", self._global) if len(self._global) >= self.min_samples else self.prior
        if hint_s is not None and hint_s > 0:
            return shape.scaled(hint_s / shape.quantile(0.5))
        return shape

    def _cached(self, key: str, samples: deque[float]) -> DurationDistribution:
        dist = self._cache.get(key)
        if dist is None:
            dist = self._cache[key] = DurationDistribution.from_samples(list(samples))
        return dist

    def snapshot(self) -> dict[str, Any]:
        tools = {
            name: {
                "samples": len(samples),
                "p50_s": round(self.distribution(name).quantile(0.5), 4),
                "p90_s": round(self.distribution(name).quantile(0.9), 4),
            }
            for name, samples in sorted(self._samples.items(), key=lambda kv: -len(kv[1]))[:32]
        }
        return {"observed": self.num_observed, "global_samples": len(self._global), "tools": tools}


# -- prefill time -----------------------------------------------------------------------------------


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None if singular."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    return [a[i][n] / a[i][i] for i in range(n)]


class PrefillTimeModel:
    """Engine step time from its work: a + b*P + c*P^2 + d*D, P in kilotokens, D decoding requests.

    Least squares over observed steps (exponentially forgotten) plus the seed measurements,
    whose weight fades as real steps accumulate (`seed_weight` at first, a quarter of it after
    8 steps, ~1% after 70): the engine's own timings win, and the seeds still shape what the
    run never measured (the quadratic term, when only short prompts were seen).
    """

    _DIM = 4

    def __init__(
        self,
        *,
        seed_prefill: Sequence[tuple[int, float]] = ENGINE_NOTES_PREFILL_S,
        seed_decode: Sequence[tuple[int, float]] = ENGINE_NOTES_DECODE_S,
        seed_weight: float = 4.0,
        forgetting: float = 0.998,
    ) -> None:
        self._forgetting = forgetting
        self._seed_weight = seed_weight
        self._prior_xtx, self._prior_xty = self._zeros()
        for tokens, step_s in seed_prefill:
            self._accumulate(self._prior_xtx, self._prior_xty, self._features(tokens, 0), step_s, 1.0)
        for num_decode, step_s in seed_decode:
            self._accumulate(self._prior_xtx, self._prior_xty, self._features(0, num_decode), step_s, 1.0)
        self._xtx, self._xty = self._zeros()
        self.num_steps = 0
        self._coef = self._fit()

    @staticmethod
    def _zeros() -> tuple[list[list[float]], list[float]]:
        return [[0.0] * PrefillTimeModel._DIM for _ in range(PrefillTimeModel._DIM)], [0.0] * PrefillTimeModel._DIM

    @staticmethod
    def _features(num_prefill_tokens: int, num_decode: int) -> list[float]:
        k = num_prefill_tokens / 1000.0
        return [1.0, k, k * k, float(num_decode)]

    @staticmethod
    def _accumulate(xtx: list[list[float]], xty: list[float], x: list[float], y: float, w: float) -> None:
        for i in range(PrefillTimeModel._DIM):
            xty[i] += w * x[i] * y
            for j in range(PrefillTimeModel._DIM):
                xtx[i][j] += w * x[i] * x[j]

    def observe_step(self, *, num_prefill_tokens: int, num_decode: int, step_s: float) -> None:
        if not (math.isfinite(step_s) and step_s > 0):
            return
        lam = self._forgetting
        for i in range(self._DIM):
            self._xty[i] *= lam
            for j in range(self._DIM):
                self._xtx[i][j] *= lam
        self._accumulate(self._xtx, self._xty, self._features(num_prefill_tokens, num_decode), step_s, 1.0)
        self.num_steps += 1
        if self.num_steps <= 64 or self.num_steps % 16 == 0:  # refit often early, then every 16 steps
            self._coef = self._fit()

    def _fit(self) -> list[float]:
        # A floor keeps the seeds deciding what the steps never measured (e.g. long prompts).
        w = max(self._seed_weight * (8.0 / (8.0 + self.num_steps)) ** 2, 1e-3)
        dim = range(self._DIM)
        xtx = [[w * self._prior_xtx[i][j] + self._xtx[i][j] + (1e-6 if i == j else 0.0) for j in dim] for i in dim]
        xty = [w * self._prior_xty[i] + self._xty[i] for i in dim]
        return _solve(xtx, xty) or [0.03, 1.5, 0.4, 0.003]

    def prefill_s(self, num_tokens: int) -> float:
        """Seconds a step that prefills `num_tokens` (and nothing else) takes; >= 0, grows with n."""
        if num_tokens <= 0:
            return 0.0
        a, b, c, _ = self._coef
        k = num_tokens / 1000.0
        # A badly conditioned fit must not make a longer prompt look cheaper than a shorter one.
        return max(0.0, a + max(b, 0.0) * k + max(c, 0.0) * k * k)

    def decode_step_s(self, num_decode: int) -> float:
        a, _, _, d = self._coef
        return max(1e-4, a + max(d, 0.0) * num_decode)

    def snapshot(self) -> dict[str, Any]:
        a, b, c, d = self._coef
        return {
            "steps_observed": self.num_steps,
            "a_s": round(a, 6),
            "b_s_per_ktok": round(b, 6),
            "c_s_per_ktok2": round(c, 6),
            "d_s_per_decode": round(d, 6),
            "prefill_2048_s": round(self.prefill_s(2048), 4),
        }


# -- TTL --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TtlChoice:
    ttl_s: float  # 0: do not pin
    p_done: float  # P(tool done within the chosen tau)
    value_s: float  # re-prefill cost + re-queueing delay the pin saves when it is used
    cost_per_s: float  # memory cost of holding the pin, seconds of value per second


def memory_price_per_s(kv_usage: float, weight: float) -> float:
    """lambda(u): the share of a pin's value its memory costs per second held, rising with usage."""
    u = min(max(kv_usage, 0.0), 1.0)
    return weight * u / (1.0 - u + 0.05)


def choose_ttl(
    dist: DurationDistribution,
    *,
    reprefill_s: float,
    requeue_s: float,
    kv_usage: float,
    knobs: PolicyKnobs,
) -> TtlChoice:
    """tau* = argmax over a grid of P(D <= tau) * value - tau * cost; the slack is added on top.

    Memory cost = blocks held x a per-block price; the price is the block's share of the
    re-prefill cost times lambda(u), so cost = lambda(u) * reprefill_s per second held.
    """
    value_s = reprefill_s + requeue_s
    cost_per_s = memory_price_per_s(kv_usage, knobs.memory_price_weight) * reprefill_s
    if knobs.fixed_ttl_s is not None:
        return TtlChoice(ttl_s=knobs.fixed_ttl_s, p_done=dist.cdf(knobs.fixed_ttl_s), value_s=value_s, cost_per_s=0.0)
    if value_s <= 0:
        return TtlChoice(ttl_s=0.0, p_done=0.0, value_s=value_s, cost_per_s=cost_per_s)
    best_tau, best_gain = 0.0, 0.0
    for tau in _tau_grid(dist, knobs.tau_max_s):
        gain = dist.cdf(tau) * value_s - tau * cost_per_s
        if gain > best_gain + 1e-12:
            best_tau, best_gain = tau, gain
    if best_tau <= 0:
        return TtlChoice(ttl_s=0.0, p_done=0.0, value_s=value_s, cost_per_s=cost_per_s)
    return TtlChoice(
        ttl_s=best_tau + knobs.handoff_slack_s, p_done=dist.cdf(best_tau), value_s=value_s, cost_per_s=cost_per_s
    )


def _tau_grid(dist: DurationDistribution, tau_max_s: float) -> Iterator[float]:
    yield from (x for x in dist.xs if x <= tau_max_s)
    lo = max(dist.xs[0], 1e-3)
    steps = 48
    ratio = (tau_max_s / lo) ** (1 / steps) if tau_max_s > lo else 1.0
    for i in range(steps + 1):
        yield lo * ratio**i


# -- ordering ---------------------------------------------------------------------------------------

QueueKey = tuple[int, float, float, float]  # (tier, rank_s, program_arrival_s, arrival_s): smaller first


def latest_start_s(*, now_s: float, deadline_s: float, expected_s: float, critical_path_s: float | None) -> float:
    """When this call must start: the remaining deadline apportioned along the remaining critical path.

    slack = (deadline - now) * expected / critical_path: this call's share of the time left;
    urgency = expected - slack; the latest start (now + slack - expected) orders most urgent first.
    """
    expected = max(expected_s, 1e-3)
    path = max(critical_path_s or 0.0, expected)
    slack = (deadline_s - now_s) * expected / path
    return now_s + slack - expected


def queue_key(
    *,
    arrival_s: float,
    user_priority: int,
    fields: ProgramFields | None,
    program_arrival_s: float | None,
    holds_pins: bool,
    latest_start: float | None,
    knobs: PolicyKnobs,
) -> tuple[int, int, float, float, float]:
    """Sort key of a waiting request (smaller runs first); all times unix seconds.

    Without metadata: (1, priority, own arrival): vLLM's own order. Program requests: programs
    holding pinned KV first (tier 0), then by rank = their program's first arrival or, with a
    deadline, their latest start time; program FCFS breaks ties.
    """
    if fields is None or not knobs.enabled:
        return (1, user_priority, arrival_s, arrival_s, arrival_s)
    program_s = program_arrival_s if (knobs.program_fcfs and program_arrival_s is not None) else arrival_s
    rank = program_s
    if knobs.urgency and latest_start is not None:
        rank = latest_start
    tier = 0 if (holds_pins and knobs.pinning) else 1
    return (tier, user_priority, rank, program_s, arrival_s)


def growth_reserve_blocks(growth_tokens: float | None, *, block_size: int, turns: float) -> int:
    """Blocks to keep free for `turns` turns of a resident program's growth (2 blocks a turn unknown)."""
    per_turn = growth_tokens if growth_tokens is not None else 2.0 * block_size
    return math.ceil(turns * per_turn / block_size) + 1 if turns > 0 else 0


@dataclass(frozen=True, slots=True)
class AdmissionCandidate:
    """A waiting request as admission control sees it, in queue order."""

    new_blocks: int  # blocks it would allocate now (prompt less its prefix-cache hits)
    own_reserve: int  # blocks its own next turns will want once resident (cold only)
    reserve_before: int  # growth reserve of resident programs queued before it (not waiting themselves)
    reclaimable: int  # blocks of programs queued after it (pins, running requests): they yield to it


def cold_fits(*, free_blocks: int, spent_blocks: int, candidate: AdmissionCandidate) -> bool:
    """Whether a cold request may be admitted now (admission control).

    It must fit beside what is queued ahead of it (`spent_blocks`) and the growth reserve of
    older resident programs; what younger programs hold counts as room (their pins are
    reclaimed for it, their running requests preempted).
    The scheduler holds the first cold request that does not fit and every cold one after it
    (FCFS among programs); warm and plain requests are never held.
    """
    # Its own reserve guards it against older programs' growth: with none resident, it is the
    # oldest and takes what it grows into from younger programs.
    own = candidate.own_reserve if candidate.reserve_before > 0 else 0
    need = spent_blocks + candidate.new_blocks + own + candidate.reserve_before
    return need <= free_blocks + candidate.reclaimable


# -- pins -------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Pin:
    """KV blocks of one finished call kept for its program's next turn."""

    pin_id: int
    program_id: str
    turn: int
    blocks: list[Any]  # the engine's block objects, in allocation order; one reference each
    block_ids: frozenset[int]
    hashes: tuple[bytes, ...]  # each block's prefix-cache hash: a later prompt reuses a leading run of them
    rank: tuple[int, float, float] = (0, 0.0, 0.0)  # its program's place in the queue order (queue_key[1:4])
    num_tokens: int
    created_s: float  # monotonic
    expires_s: float  # monotonic
    next_tool: str | None
    value_s: float  # what the pin saves if used
    dist: DurationDistribution

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def value_density(self, now_s: float, handoff_pending: bool) -> float:
        """Expected seconds saved per block held: the reclaim order (lowest first)."""
        if handoff_pending:
            return self.value_s / max(1, self.num_blocks) * 2.0  # its next turn is waiting: certain
        p = self.dist.remaining(now_s - self.created_s, max(0.0, self.expires_s - now_s))
        return p * self.value_s / max(1, self.num_blocks)


def matched_blocks(pin_hashes: Sequence[bytes], request_hashes: Sequence[bytes]) -> int:
    """How many leading blocks of a pin a prompt with these block hashes reuses."""
    count = 0
    for pinned, wanted in zip(pin_hashes, request_hashes, strict=False):
        if pinned != wanted:
            break
        count += 1
    return count


class PinBook:
    """Every live pin, by program."""

    def __init__(self) -> None:
        self._by_program: dict[str, list[Pin]] = {}  # program id -> its pins, oldest first
        self._by_id: dict[int, Pin] = {}  # pin id -> pin
        self._next_id = 0
        self.num_blocks = 0

    def __len__(self) -> int:
        return sum(len(pins) for pins in self._by_program.values())

    def __bool__(self) -> bool:
        return bool(self._by_program)

    def __iter__(self) -> Iterator[Pin]:
        for pins in self._by_program.values():
            yield from pins

    def programs(self) -> set[str]:
        return set(self._by_program)

    def holds(self, program_id: str) -> bool:
        return program_id in self._by_program

    def add(self, **fields: Any) -> Pin:
        pin = Pin(pin_id=self._next_id, **fields)
        self._next_id += 1
        self._by_program.setdefault(pin.program_id, []).append(pin)
        self._by_id[pin.pin_id] = pin
        self.num_blocks += pin.num_blocks
        return pin

    def get(self, pin_id: int) -> Pin | None:
        return self._by_id.get(pin_id)

    def remove(self, pin: Pin) -> None:
        pins = self._by_program.get(pin.program_id)
        if pins is None or pin not in pins:
            return
        pins.remove(pin)
        if not pins:
            del self._by_program[pin.program_id]
        del self._by_id[pin.pin_id]
        self.num_blocks -= pin.num_blocks

    def of_program(self, program_id: str) -> list[Pin]:
        return list(self._by_program.get(program_id, ()))

    def matching(self, program_id: str, request_hashes: Sequence[bytes]) -> dict[int, int]:
        """Which pins a new request of the program reuses: pin id -> blocks of it reused.

        Parallel branches of a program may hold pins with a common prefix; a request counts as
        extending the ones it matches furthest.
        """
        lengths = {p.pin_id: matched_blocks(p.hashes, request_hashes) for p in self._by_program.get(program_id, ())}
        best = max(lengths.values(), default=0)
        return {pin_id: n for pin_id, n in lengths.items() if n > 0 and n == best}

    def expired(self, now_s: float, pending: set[int]) -> list[Pin]:
        """Pins past their TTL that no waiting request is about to reuse (those are pending hand-offs)."""
        return [pin for pin in self._by_id.values() if pin.expires_s <= now_s and pin.pin_id not in pending]

    def next_expiry_s(self) -> float | None:
        return min((pin.expires_s for pin in self), default=None)

    def cheapest_first(
        self,
        now_s: float,
        pending: set[int],
        exclude: set[int],
        *,
        ranked_after: tuple[int, float, float] | None = None,
    ) -> list[Pin]:
        """Pins in reclaim order; with `ranked_after`, only those of programs that come later in the queue."""
        candidates = [
            pin
            for pin in self._by_id.values()
            if pin.pin_id not in exclude and (ranked_after is None or pin.rank > ranked_after)
        ]
        return sorted(candidates, key=lambda p: p.value_density(now_s, p.pin_id in pending))


# -- programs ---------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class ProgramState:
    program_id: str
    arrival_s: float  # unix: the metadata's program arrival, else the first request's arrival
    last_active_s: float  # monotonic
    num_requests: int = 0
    queue_delay_s: float = 0.0
    max_queue_delay_s: float = 0.0
    cached_tokens: int = 0
    prompt_tokens: int = 0
    pins_created: int = 0
    pins_hit: int = 0
    ended: bool = False
    last_prompt_tokens: int = 0
    growth_tokens: float | None = None  # EWMA of how much its prompt grows per turn (output + tool output)

    def observe_prompt(self, num_prompt_tokens: int) -> None:
        """A new request's prompt: learn the per-turn growth from the previous one."""
        if self.last_prompt_tokens and num_prompt_tokens > self.last_prompt_tokens:
            delta = float(num_prompt_tokens - self.last_prompt_tokens)
            self.growth_tokens = delta if self.growth_tokens is None else 0.5 * self.growth_tokens + 0.5 * delta
        self.last_prompt_tokens = num_prompt_tokens

    def summary(self) -> dict[str, Any]:
        return {
            "program_id": self.program_id,
            "requests": self.num_requests,
            "queue_delay_s": round(self.queue_delay_s, 6),
            "max_queue_delay_s": round(self.max_queue_delay_s, 6),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "pins_created": self.pins_created,
            "pins_hit": self.pins_hit,
        }


class ProgramTable:
    """Programs the scheduler has seen and not yet forgotten."""

    def __init__(self, *, recent: int = 256) -> None:
        self._programs: dict[str, ProgramState] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=recent)  # summaries of forgotten programs

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, program_id: str) -> ProgramState | None:
        return self._programs.get(program_id)

    def touch(self, fields: ProgramFields, *, now_s: float, arrival_s: float) -> ProgramState:
        state = self._programs.get(fields.program_id)
        if state is None:
            first = fields.program_arrival_s if fields.program_arrival_s is not None else arrival_s
            state = self._programs[fields.program_id] = ProgramState(
                program_id=fields.program_id, arrival_s=first, last_active_s=now_s
            )
        state.last_active_s = now_s
        state.ended = False
        return state

    def forget(self, program_id: str) -> dict[str, Any] | None:
        state = self._programs.pop(program_id, None)
        if state is None:
            return None
        summary = state.summary()
        self.finished.append(summary)
        return summary

    def stale(self, now_s: float, live: set[str], pinned: set[str], idle_s: float) -> list[str]:
        """Programs with nothing live or pinned that ended or went idle."""
        return [
            pid
            for pid, state in self._programs.items()
            if pid not in live and pid not in pinned and (state.ended or now_s - state.last_active_s > idle_s)
        ]

    def snapshot(self, limit: int = 64) -> dict[str, Any]:
        live = [state.summary() for state in list(self._programs.values())[-limit:]]
        return {"tracked": len(self._programs), "active": live, "recent_finished": list(self.finished)[-limit:]}


# -- metrics ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class TurnStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class ServingMetrics:
    """Counters since the scheduler started (or since `reset`)."""

    pins_created: int = 0
    pins_hit: int = 0  # the program's next request reused the pinned blocks
    pins_expired: int = 0
    pins_reclaimed: int = 0  # released for memory
    # why: a running request's growth, the head's admission, or a stall (nothing runs, the head waits)
    reclaimed_for: dict[str, int] = field(default_factory=lambda: {"growth": 0, "admission": 0, "stall": 0})
    pins_released_end: int = 0  # program ended, was cancelled, or finished its last turn
    pins_released_other: int = 0  # reset_prefix_cache, knobs turned off
    pins_skipped: int = 0  # a tool followed but the cost model chose no pin
    pinned_blocks_peak: int = 0
    pinned_block_s: float = 0.0  # integral of blocks held over time
    hit_tokens: int = 0  # cached prompt tokens of requests that used a pin
    ttl_sum_s: float = 0.0
    requests_with_metadata: int = 0
    requests_without_metadata: int = 0
    metadata_rejected: int = 0
    requests_held: int = 0  # program requests admission control kept waiting at least one step
    queue_delay_sum_s: float = 0.0
    queue_delay_max_s: float = 0.0
    queued_requests: int = 0
    by_turn: dict[int, TurnStats] = field(default_factory=dict)
    admissions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=512))
    recent_pins: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))  # TTL decisions

    def record_pin(
        self, *, program_id: str, turn: int, next_tool: str | None, num_blocks: int, ttl_s: float, p_done: float
    ) -> None:
        self.pins_created += 1
        self.ttl_sum_s += ttl_s
        self.recent_pins.append(
            {
                "program_id": program_id,
                "turn": turn,
                "next_tool": next_tool,
                "num_blocks": num_blocks,
                "ttl_s": round(ttl_s, 4),
                "p_tool_done": round(p_done, 4),
            }
        )

    def record_admission(
        self, *, program_id: str | None, turn: int | None, prompt_tokens: int, cached_tokens: int, delay_s: float
    ) -> None:
        self.queued_requests += 1
        self.queue_delay_sum_s += delay_s
        self.queue_delay_max_s = max(self.queue_delay_max_s, delay_s)
        if turn is not None:
            stats = self.by_turn.setdefault(min(turn, 1000), TurnStats())
            stats.requests += 1
            stats.prompt_tokens += prompt_tokens
            stats.cached_tokens += cached_tokens
        self.admissions.append(
            {
                "program_id": program_id,
                "turn": turn,
                "prompt_tokens": prompt_tokens,
                "cached_tokens": cached_tokens,
                "queue_delay_s": round(delay_s, 6),
            }
        )

    def snapshot(self, *, active_pins: int, pinned_blocks: int) -> dict[str, Any]:
        created = self.pins_created
        return {
            "pins": {
                "created": created,
                "hit": self.pins_hit,
                "expired": self.pins_expired,
                "reclaimed": self.pins_reclaimed,
                "reclaimed_for": dict(self.reclaimed_for),
                "released_on_end": self.pins_released_end,
                "released_other": self.pins_released_other,
                "skipped_by_cost_model": self.pins_skipped,
                "active": active_pins,
                "blocks_pinned": pinned_blocks,
                "blocks_pinned_peak": self.pinned_blocks_peak,
                "pinned_block_s": round(self.pinned_block_s, 3),
                "hit_tokens": self.hit_tokens,
                "hit_rate": round(self.pins_hit / created, 4) if created else None,
                "mean_ttl_s": round(self.ttl_sum_s / created, 4) if created else None,
            },
            "requests": {
                "with_metadata": self.requests_with_metadata,
                "without_metadata": self.requests_without_metadata,
                "metadata_rejected": self.metadata_rejected,
                "held_by_admission_control": self.requests_held,
            },
            "prefix_cache_by_turn": {
                str(turn): {
                    "requests": s.requests,
                    "prompt_tokens": s.prompt_tokens,
                    "cached_tokens": s.cached_tokens,
                    "hit_rate": round(s.cached_tokens / s.prompt_tokens, 4) if s.prompt_tokens else None,
                }
                for turn, s in sorted(self.by_turn.items())
            },
            "queueing": {
                "requests": self.queued_requests,
                "mean_delay_s": round(self.queue_delay_sum_s / self.queued_requests, 6)
                if self.queued_requests
                else None,
                "max_delay_s": round(self.queue_delay_max_s, 6),
            },
            "admissions": list(self.admissions),
            "recent_pins": list(self.recent_pins),
        }
