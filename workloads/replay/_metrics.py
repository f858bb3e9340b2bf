"""Metrics of replayed agent programs: JCT, makespan, queueing delay, cache hits, SLO attainment.

Pure functions over `ProgramOutcome` records; nothing here touches an engine.

- JCT (job completion time) of a program: its last call's end minus its arrival.
- makespan: the last program's end minus the first program's arrival.
- queueing delay of a program: the sum over its calls of the time each was not running
  (waiting to be scheduled, or preempted) before it finished.
- cached-token fraction: prompt tokens served from the prefix cache / all prompt tokens.
- SLO attainment: the fraction of programs that finished by their deadline (a failed program misses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from workloads.replay._run import ProgramOutcome

__all__ = ["percentile", "ratio", "summarize_outcomes"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, or None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def summarize_outcomes(outcomes: Sequence[ProgramOutcome]) -> dict[str, Any]:
    """The report figures of one policy's replay (seconds; NaN-free: missing is None)."""
    done = [o for o in outcomes if o.error is None]
    jcts = [o.jct_s for o in done]
    calls = [call for o in done for call in o.calls]
    num_prompt = sum(c.num_prompt_tokens for c in calls)
    num_cached = sum(c.num_cached_tokens for c in calls)
    queued = [sum(c.queued_s for c in o.calls) for o in done]
    return {
        "num_programs": len(outcomes),
        "num_failed": len(outcomes) - len(done),
        "errors": sorted({o.error for o in outcomes if o.error is not None}),
        "num_calls": len(calls),
        "jct_mean_s": _mean(jcts),
        "jct_p50_s": _none_if_nan(percentile(jcts, 50)),
        "jct_p95_s": _none_if_nan(percentile(jcts, 95)),
        "jct_p99_s": _none_if_nan(percentile(jcts, 99)),
        "jct_max_s": max(jcts) if jcts else None,
        "makespan_s": _makespan(outcomes),
        "queueing_delay_mean_s": _mean(queued),  # per program, summed over its calls
        "queueing_delay_p95_s": _none_if_nan(percentile(queued, 95)),
        "queueing_delay_per_call_mean_s": _mean([c.queued_s for c in calls]),
        "ttft_mean_s": _mean([c.first_token_s - c.submit_s for c in calls]),
        "num_prompt_tokens": num_prompt,
        "num_cached_tokens": num_cached,
        "cached_token_fraction": num_cached / num_prompt if num_prompt else None,
        "cached_token_fraction_after_turn_0": _cached_fraction_after_first(done),
        "slo_attainment": _slo_attainment(outcomes),
        "tool_s_total": sum(c.tool_s for c in calls),
    }


def _cached_fraction_after_first(outcomes: Sequence[ProgramOutcome]) -> float | None:
    # Turns >= 1 are where a kept KV cache pays off: their prefix is the previous turn's context.
    calls = [c for o in outcomes for c in o.calls if c.turn > 0]
    prompt = sum(c.num_prompt_tokens for c in calls)
    return sum(c.num_cached_tokens for c in calls) / prompt if prompt else None


def _makespan(outcomes: Sequence[ProgramOutcome]) -> float | None:
    if not outcomes:
        return None
    return max(o.finish_s for o in outcomes) - min(o.arrival_s for o in outcomes)


def _slo_attainment(outcomes: Sequence[ProgramOutcome]) -> float | None:
    with_deadline = [o for o in outcomes if o.deadline_s is not None]
    if not with_deadline:
        return None
    met = sum(1 for o in with_deadline if o.error is None and o.deadline_s is not None and o.finish_s <= o.deadline_s)
    return met / len(with_deadline)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
