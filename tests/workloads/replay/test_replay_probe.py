"""The throughput probe's figures (pure); the probe itself runs on the engine in the bench and an engine test."""

from __future__ import annotations

import pytest

from agentflow.exceptions import UserError
from workloads.replay._probe import median_ci95, probe_figures, run_probe

PROBE = {"num_requests": 32, "prompt_tokens": 256, "output_tokens": 32, "rounds": 3}


def test_figures_pair_each_round_against_stock_and_take_the_median() -> None:
    raw = {
        "walls_s": {"vllm": [10.0, 9.0, 11.0], "agentflow": [10.5, 9.0, 10.0]},
        "bursts": {"vllm": [], "agentflow": []},
        "order": ["vllm", "agentflow", "agentflow", "vllm", "vllm", "agentflow"],
    }
    figures = probe_figures(PROBE, raw)
    assert figures["vllm"]["best_wall_s"] == 9.0
    assert figures["agentflow"]["output_tokens_per_s"] == pytest.approx(32 * 32 / 9.0)
    paired = [5.0, 0.0, 10 / 11 * 100 - 100]
    assert figures["agentflow"]["paired_cost_pct"] == pytest.approx(paired)
    assert figures["agentflow"]["cost_median_pct"] == pytest.approx(0.0)
    assert figures["agentflow"]["cost_best_of_pct"] == pytest.approx(0.0)
    assert figures["agentflow"]["order"] == raw["order"]
    assert "scheduler_overhead_pct" not in figures["agentflow"]  # no steps timed
    assert figures["agentflow"]["cost_step_median_pct"] is None


def test_steps_are_paired_where_both_bursts_scheduled_the_same_work() -> None:
    stock = {"scheduler_s": 0.0, "num_steps": 4, "steps": [[1.0, 4, 900], [0.1, 4, 4], [0.1, 4, 4]]}
    ours = {"scheduler_s": 0.0, "num_steps": 5, "steps": [[1.1, 4, 900], [0.1, 4, 4], [0.2, 3, 3], [0.1, 3, 3]]}
    raw = {
        "walls_s": {"vllm": [2.0], "agentflow": [2.2]},
        "bursts": {"vllm": [stock], "agentflow": [ours]},
        "order": [],
    }
    figures = probe_figures({**PROBE, "rounds": 1}, raw)["agentflow"]
    assert figures["paired_steps"] == 2 and figures["unmatched_steps"] == 2  # a different step, one extra
    assert figures["cost_step_median_pct"] == pytest.approx(5.0)  # median of 1.1 and 1.0


def test_scheduler_overhead_is_the_added_scheduler_time_per_step_over_the_stock_step() -> None:
    raw = {
        "walls_s": {"vllm": [4.0, 4.0], "agentflow": [4.0, 4.0]},
        "bursts": {
            "vllm": [{"scheduler_s": 0.010, "num_steps": 50}] * 2,
            "agentflow": [{"scheduler_s": 0.015, "num_steps": 50}] * 2,
        },
        "order": ["vllm", "agentflow", "agentflow", "vllm"],
    }
    figures = probe_figures({**PROBE, "num_requests": 16, "rounds": 2}, raw)
    assert figures["vllm"]["scheduler_s_per_step"] == pytest.approx(0.0002)
    assert figures["vllm"]["step_s"] == pytest.approx(0.08)
    # (0.3 ms - 0.2 ms) per step of 80 ms
    assert figures["agentflow"]["scheduler_overhead_pct"] == pytest.approx(0.125)


async def test_the_probe_needs_a_round() -> None:
    with pytest.raises(UserError, match="at least one round"):
        await run_probe(object(), num_requests=1, prompt_tokens=8, output_tokens=2, rounds=0)


def test_the_median_interval_brackets_the_median_and_is_seeded() -> None:
    values = [float(v) for v in (-3, 1, 2, 2, 3, 4, 9)]
    low, high = median_ci95(values)  # type: ignore[misc]
    assert low <= 2.0 <= high and min(values) <= low and high <= max(values)
    assert median_ci95(values) == (low, high)
    assert median_ci95([1.0]) is None
