"""The scheduler's decisions, pure: TTLs, queue order, admission. No vLLM, no clock reads.

- `choose_ttl`: tau* = argmax_tau P(tool done within tau) * (re-prefill cost + re-queueing
  delay) - tau * memory cost, the memory price rising with KV usage.
- `queue_key`: program-level FCFS, programs holding pinned KV first, deadline programs by
  their latest start time (remaining deadline apportioned along the remaining critical path).
- `cold_fits`: admission control for programs with nothing resident.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from agentflow.metadata import ProgramMetadata
from serving._estimators import DurationDistribution
from serving._knobs import SchedulerKnobs

__all__ = [
    "AdmissionCandidate",
    "Key",
    "Rank",
    "TtlChoice",
    "choose_ttl",
    "cold_fits",
    "growth_reserve_blocks",
    "latest_start_s",
    "MAX_DEADLINE_AHEAD_S",
    "MIN_P_NEXT_FIXED_TTL",
    "memory_price_per_s",
    "plain_key",
    "queue_key",
    "rank_of",
    "trusted_deadline_s",
]

# A waiting request's sort key, smaller first: (tier, user priority, rank_s, program_arrival_s,
# arrival_s, request id). All times unix seconds; the request id breaks ties as vLLM's own
# `Request.__lt__` does.
Key = tuple[int, int, float, float, float, str]
Rank = tuple[int, float, float]  # a request's program's place in the queue order: Key[1:4]


def rank_of(key: Key) -> Rank:
    return (key[1], key[2], key[3])


@dataclass(frozen=True, slots=True, kw_only=True)
class TtlChoice:
    ttl_s: float  # 0: do not pin
    p_done: float  # P(tool done within the chosen tau)
    value_s: float  # re-prefill cost + re-queueing delay the pin saves when it is used
    cost_per_s: float  # memory cost of holding the pin, seconds of value per second


MIN_P_NEXT_FIXED_TTL = 0.5  # a fixed TTL pins a recognised program's turn only if a next turn is likelier than not


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
    knobs: SchedulerKnobs,
    p_next: float = 1.0,
) -> TtlChoice:
    """tau* = argmax over a grid of P(next turn within tau) * value - tau * cost; the slack is added on top.

    P(next turn within tau) = p_next * P(D <= tau): `p_next` is the probability that a next turn
    comes at all (1 when the program named the tool that runs next; learned for programs the
    scheduler recognised by their session or prompt chain). Memory cost = blocks held x a
    per-block price; the price is the block's share of the re-prefill cost times lambda(u), so
    cost = lambda(u) * reprefill_s per second held. A fixed TTL pins only turns more likely
    continued than not.
    """
    value_s = reprefill_s + requeue_s
    cost_per_s = memory_price_per_s(kv_usage, knobs.memory_price_weight) * reprefill_s
    if knobs.fixed_ttl_s is not None:
        ttl_s = knobs.fixed_ttl_s if p_next >= MIN_P_NEXT_FIXED_TTL else 0.0
        return TtlChoice(ttl_s=ttl_s, p_done=p_next * dist.cdf(knobs.fixed_ttl_s), value_s=value_s, cost_per_s=0.0)
    if value_s <= 0 or p_next <= 0:
        return TtlChoice(ttl_s=0.0, p_done=0.0, value_s=value_s, cost_per_s=cost_per_s)
    best_tau, best_gain = 0.0, 0.0
    for tau in _tau_grid(dist, knobs.tau_max_s):
        gain = p_next * dist.cdf(tau) * value_s - tau * cost_per_s
        if gain > best_gain + 1e-12:
            best_tau, best_gain = tau, gain
    if best_tau <= 0:
        return TtlChoice(ttl_s=0.0, p_done=0.0, value_s=value_s, cost_per_s=cost_per_s)
    return TtlChoice(
        ttl_s=best_tau + knobs.handoff_slack_s,
        p_done=p_next * dist.cdf(best_tau),
        value_s=value_s,
        cost_per_s=cost_per_s,
    )


def _tau_grid(dist: DurationDistribution, tau_max_s: float) -> Iterator[float]:
    yield from (x for x in dist.xs if x <= tau_max_s)
    lo = max(dist.xs[0], 1e-3)
    steps = 48
    ratio = (tau_max_s / lo) ** (1 / steps) if tau_max_s > lo else 1.0
    for i in range(steps + 1):
        yield lo * ratio**i


MAX_DEADLINE_AHEAD_S = 30 * 24 * 3600.0  # deadlines further out are clamped to this far


def trusted_deadline_s(deadline_at_s: float, *, now_s: float) -> float:
    """A client's deadline, clamped to [now, now + 30 days].

    A deadline in the past would rank a request ahead of every honest one by as much as it
    claims; clamped to now, it ranks as the most urgent request that is still on time could:
    its latest start is now less its own expected run time. Far-future deadlines only lower a
    request's urgency; they are clamped so the arithmetic stays finite.
    """
    return min(max(deadline_at_s, now_s), now_s + MAX_DEADLINE_AHEAD_S)


def latest_start_s(*, now_s: float, deadline_s: float, expected_s: float, critical_path_s: float | None) -> float:
    """When this call must start: the remaining deadline apportioned along the remaining critical path.

    slack = (deadline - now) * expected / critical_path: this call's share of the time left;
    urgency = expected - slack; the latest start (now + slack - expected) orders most urgent first.
    """
    expected = max(expected_s, 1e-3)
    path = max(critical_path_s or 0.0, expected)
    slack = (deadline_s - now_s) * expected / path
    return now_s + slack - expected


def plain_key(*, request_id: str, arrival_s: float, user_priority: int) -> Key:
    """Sort key of a request without metadata: (priority, arrival, request id), vLLM's own order."""
    return (1, user_priority, arrival_s, arrival_s, arrival_s, request_id)


def queue_key(
    *,
    request_id: str,
    arrival_s: float,
    user_priority: int,
    metadata: ProgramMetadata | None,
    program_arrival_s: float | None,
    holds_pins: bool,
    latest_start: float | None,
    knobs: SchedulerKnobs,
) -> Key:
    """Sort key of a waiting request (smaller runs first); all times unix seconds.

    Without metadata: `plain_key`, vLLM's own order. Program requests: programs holding pinned KV
    first (tier 0), then by rank = their program's first arrival or, with a deadline, their
    latest start time; program FCFS breaks ties, then the request's own arrival and id.
    """
    if metadata is None or not knobs.enabled:
        return plain_key(request_id=request_id, arrival_s=arrival_s, user_priority=user_priority)
    program_s = program_arrival_s if (knobs.program_fcfs and program_arrival_s is not None) else arrival_s
    rank = program_s
    if knobs.urgency and latest_start is not None:
        rank = latest_start
    tier = 0 if (holds_pins and knobs.pinning) else 1
    return (tier, user_priority, rank, program_s, arrival_s, request_id)


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
