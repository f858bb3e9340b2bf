"""`agentflow bench scaleout`'s figures from replay reports (pure: no engine, no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from workloads.replay import _scaleout
from workloads.replay._runner import DEFAULTS, ReplayOptions
from workloads.replay._scaleout import busy_s_by_replica, load_imbalance, scaleout_figures, simulation_figures


def run(mean: float, p95: float, busy: dict[str, float], *, p50_us: float = 50.0, moves: int = 0) -> dict[str, Any]:
    after = {
        "router": "x",
        "choose_replicas_us": {"count": 10, "p50": p50_us, "p95": 2 * p50_us},
        "replicas": {rid: {"busy_s": 1.0 + b} for rid, b in busy.items()},
        "affinity": {"moves": moves, "rehomes": 0, "fallbacks": 0},
    }
    before = {"replicas": {rid: {"busy_s": 1.0} for rid in busy}}
    return {
        "status": "ok",
        "jct_mean_s": mean,
        "jct_p95_s": p95,
        "num_failed": 0,
        "routing": {"before": before, "after": after},
    }


def report(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"policies": runs, "settings": {}, "workload": {}, "results_dir": "x"}


def test_ratios_imbalance_overhead_and_targets() -> None:
    figures = scaleout_figures(
        report(
            {
                "agentflow@agentflow": run(10.0, 20.0, {"a": 50.0, "b": 45.0}, moves=2),
                "agentflow@pow2": run(16.0, 30.0, {"a": 50.0, "b": 50.0}),
                "agentflow@session-hash": run(12.0, 25.0, {"a": 80.0, "b": 20.0}),
                "agentflow@prefix": {"status": "failed", "reason": "boom"},
            }
        )
    )
    assert figures["mean_jct_ratio_vs_pow2"] == pytest.approx(1.6)
    assert figures["mean_jct_ratio_vs_session_hash"] == pytest.approx(1.2)
    assert figures["routers"]["session-hash"]["load_imbalance"] == pytest.approx(1.6)
    assert figures["load_imbalance_agentflow"] == pytest.approx(50 / 47.5)
    assert figures["routers"]["agentflow"]["moves"] == 2
    assert figures["all_pass"] is True
    assert figures["failed_runs"] == {"agentflow@prefix": "boom"}
    assert "mean_jct_ratio_vs_prefix" not in figures["pass"]  # prefix did not run: not judged


def test_a_router_that_loses_fails_its_target() -> None:
    figures = scaleout_figures(
        report(
            {
                "agentflow@agentflow": run(10.0, 20.0, {"a": 1.0, "b": 1.0}, p50_us=500.0),
                "agentflow@pow2": run(11.0, 30.0, {"a": 1.0, "b": 1.0}),
            }
        )
    )
    assert figures["pass"]["mean_jct_ratio_vs_pow2"] is False
    assert figures["pass"]["choose_replicas_p50_us_agentflow"] is False
    assert figures["all_pass"] is False


def test_busy_time_and_imbalance_helpers() -> None:
    before = {"replicas": {"a": {"busy_s": 2.0}}}
    after = {"replicas": {"a": {"busy_s": 5.0}, "b": {"busy_s": 3.0}}}
    assert busy_s_by_replica(before, after) == {"a": 3.0, "b": 3.0}
    assert load_imbalance({"a": 3.0, "b": 1.0}) == pytest.approx(1.5)
    assert load_imbalance({"a": 0.0, "b": 0.0}) is None
    assert load_imbalance({"a": 1.0}) is None


def test_simulation_is_calibrated_validated_and_projected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_scaleout, "PROJECTED_REPLICAS", (4,))
    options: ReplayOptions = DEFAULTS.__class__(
        scaling=DEFAULTS.scaling.__class__(token_divisor=12, max_turns=4, max_programs=4, max_context_tokens=2048),
        rate_per_s=2.0,
        replicas=2,
        routers=("agentflow", "pow2"),
    )
    speed = {"prompt_tokens": 512, "prefill_s": 1.0, "decode_s_per_token": 0.05}
    single = {"policies": {"agentflow": {"status": "ok", "jct_mean_s": 20.0, "speed_check": speed}}}
    multi = {"policies": {"agentflow@agentflow": {"jct_mean_s": 15.0}, "agentflow@pow2": {"jct_mean_s": 18.0}}}
    sim = simulation_figures(options, single, multi)
    assert sim["status"] == "ok"
    rows = sim["validation"]["mean_jct"]
    assert rows["1 replica"]["measured_s"] == 20.0 and rows["1 replica"]["simulated_s"] > 0
    assert rows["2 replicas, prefix"]["error"] is None  # not measured: no error claimed
    projected = sim["projections"]["4"]
    assert projected["agentflow"]["replicas"] == 4 and projected["mean_jct_ratio_vs_pow2"] is not None


def test_runs_across_replicas_are_policy_at_router() -> None:
    from agentflow.exceptions import UserError

    options = ReplayOptions(rate_per_s=1.0, policies=("agentflow", "vllm"), replicas=2, routers=("agentflow", "pow2"))
    assert options.runs == ("agentflow@agentflow", "agentflow@pow2", "vllm@agentflow", "vllm@pow2")
    assert ReplayOptions(rate_per_s=1.0, policies=("agentflow",)).runs == ("agentflow",)
    with pytest.raises(UserError, match="unknown router"):
        ReplayOptions(rate_per_s=1.0, policies=("agentflow",), replicas=2, routers=("random",))


def test_affinity_knobs_reach_agentflows_router_runs_only() -> None:
    from agentflow.exceptions import UserError
    from workloads.replay._cli import _affinity_knobs
    from workloads.replay._runner import _replica_extras

    options = ReplayOptions(
        rate_per_s=1.0, replicas=2, routers=("agentflow", "pow2"), affinity_knobs=_affinity_knobs(["move_margin=4"])
    )
    assert _replica_extras("agentflow@agentflow", options)["affinity_knobs"] == {"move_margin": 4}
    assert "affinity_knobs" not in _replica_extras("agentflow@pow2", options)
    with pytest.raises(UserError, match="--affinity-knob"):
        _affinity_knobs(["no_such_knob=1"])
