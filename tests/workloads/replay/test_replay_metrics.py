"""Replay metrics, the bench's figures, the report table, and the runner's report path (no engine)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from agentflow.exceptions import UserError
from workloads.replay._bench import serving_figures
from workloads.replay._metrics import percentile, ratio, summarize_outcomes
from workloads.replay._run import CallRecord, ProgramOutcome
from workloads.replay._runner import ProbeSettings, ReplayOptions, render_table, run_replay
from workloads.replay._trace import TraceProgram, TraceScaling, TraceTurn, dump_trace


def _call(turn: int, *, submit: float, finish: float, queued: float, prompt: int, cached: int) -> CallRecord:
    return CallRecord(
        turn=turn,
        submit_s=submit,
        first_token_s=submit + 0.5,
        finish_s=finish,
        queued_s=queued,
        num_prompt_tokens=prompt,
        num_cached_tokens=cached,
        num_output_tokens=4,
        tool="ls",
        tool_s=0.1,
    )


def _outcome(index: int, arrival: float, finish: float, *, deadline: float | None = None, error: str | None = None):
    calls = (
        _call(0, submit=arrival, finish=arrival + 1, queued=0.5, prompt=100, cached=0),
        _call(1, submit=arrival + 1.1, finish=finish, queued=1.5, prompt=200, cached=96),
    )
    return ProgramOutcome(
        program_id=f"p{index}",
        index=index,
        arrival_s=arrival,
        finish_s=finish,
        deadline_s=deadline,
        calls=calls,
        error=error,
    )


# -- pure metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (100, 4.0), (25, 1.75), (95, 3.85)])
def test_percentile_interpolates_like_numpy(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ratio_guards() -> None:
    assert ratio(6.0, 2.0) == 3.0
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None
    assert ratio(float("nan"), 1.0) is None


def test_summary_figures() -> None:
    outcomes = [
        _outcome(0, 0.0, 10.0, deadline=12.0),  # JCT 10, met
        _outcome(1, 2.0, 22.0, deadline=20.0),  # JCT 20, missed
        _outcome(2, 4.0, 34.0, deadline=40.0),  # JCT 30, met
        _outcome(3, 5.0, 6.0, deadline=50.0, error="EngineError: boom"),  # failed: a miss, no JCT
    ]
    s = summarize_outcomes(outcomes)
    assert s["num_programs"] == 4 and s["num_failed"] == 1 and s["errors"] == ["EngineError: boom"]
    assert s["jct_mean_s"] == pytest.approx(20.0)
    assert s["jct_p50_s"] == pytest.approx(20.0)
    assert s["jct_p95_s"] == pytest.approx(29.0)
    assert s["makespan_s"] == pytest.approx(34.0)  # first arrival 0 to the last end
    assert s["queueing_delay_mean_s"] == pytest.approx(2.0)  # 0.5 + 1.5 per program
    assert s["queueing_delay_per_call_mean_s"] == pytest.approx(1.0)
    assert s["cached_token_fraction"] == pytest.approx(96 * 3 / (300 * 3))
    assert s["cached_token_fraction_after_turn_0"] == pytest.approx(96 / 200)
    assert s["slo_attainment"] == pytest.approx(2 / 4)
    assert s["ttft_mean_s"] == pytest.approx(0.5)


def test_summary_of_nothing_is_none_not_nan() -> None:
    s = summarize_outcomes([])
    assert s["jct_mean_s"] is None and s["jct_p95_s"] is None and s["makespan_s"] is None
    assert s["slo_attainment"] is None and s["cached_token_fraction"] is None


def test_outcome_json_round_trip() -> None:
    outcome = _outcome(0, 1.0, 5.0, deadline=9.0)
    raw = json.loads(json.dumps(outcome.to_json()))
    assert raw["jct_s"] == 4.0
    assert ProgramOutcome.from_json(raw) == outcome


# -- the bench's figures -------------------------------------------------------------------------------


def _policy(mean: float, p95: float, *, cost_pct: float | None = None, status: str = "ok") -> dict[str, Any]:
    figures: dict[str, Any] = {"status": status, "jct_mean_s": mean, "jct_p95_s": p95, "makespan_s": p95 + 1}
    if cost_pct is not None:  # what workloads.replay._probe.probe_figures reports for agentflow
        figures["throughput_probe"] = {"walls_s": [4.0], "cost_median_pct": cost_pct, "cost_best_of_pct": 0.5}
    return figures


def _report(policies: dict[str, Any]) -> dict[str, Any]:
    return {"policies": policies, "settings": {"seed": 0}, "workload": {"num_programs": 3}}


def test_serving_figures_and_targets() -> None:
    report = _report(
        {
            "vllm": _policy(90.0, 120.0),
            "priority": _policy(45.0, 70.0),
            "agentflow": _policy(20.0, 50.0, cost_pct=1.0),
        }
    )
    figures = serving_figures(report)
    assert figures["mean_jct_ratio_vs_vllm"] == pytest.approx(4.5)
    assert figures["p95_jct_ratio_vs_vllm"] == pytest.approx(2.4)
    assert figures["mean_jct_ratio_vs_priority"] == pytest.approx(2.25)
    assert figures["throughput_cost_pct"] == pytest.approx(1.0)
    assert figures["throughput_cost_best_of_pct"] == pytest.approx(0.5)
    assert figures["all_pass"] is True and all(figures["pass"].values())
    assert figures["settings"] == {"seed": 0}


def test_serving_figures_fail_when_a_target_is_missed_or_agentflow_is_absent() -> None:
    slow = serving_figures(
        _report(
            {
                "vllm": _policy(90.0, 120.0),
                "priority": _policy(45.0, 70.0),
                "agentflow": _policy(40.0, 50.0, cost_pct=10.0),
            }
        )
    )
    assert slow["pass"]["mean_jct_ratio_vs_priority"] is False
    assert slow["pass"]["throughput_cost_pct"] is False and slow["all_pass"] is False
    absent = serving_figures(
        _report(
            {
                "vllm": _policy(90.0, 120.0),
                "priority": _policy(45.0, 70.0),
                "agentflow": {"status": "unavailable", "reason": "not installed"},
            }
        )
    )
    assert absent["mean_jct_ratio_vs_vllm"] is None and absent["all_pass"] is False
    assert absent["unavailable"] == {"agentflow": "not installed"}


def test_render_table_shows_every_policy() -> None:
    table = render_table(
        _report({"vllm": {**_policy(90.0, 120.0), "slo_attainment": 0.5}, "agentflow": {"status": "unavailable"}})
    )
    lines = table.splitlines()
    assert lines[0].startswith("policy") and "vllm" in lines[2] and "90.0" in lines[2] and "50%" in lines[2]
    assert "unavailable" in lines[3]


# -- the runner without an engine: results resumed from a finished run ---------------------------------


def _tiny_trace(tmp_path: Path) -> Path:
    turns = (
        TraceTurn(input_tokens=400, cached_tokens=64, output_tokens=32, tool="ls", tool_s=0.1),
        TraceTurn(input_tokens=600, output_tokens=32),
    )
    return dump_trace([TraceProgram(program_id=f"p{i}", turns=turns) for i in range(3)], tmp_path / "t.jsonl")


def test_runner_resumes_a_finished_policy_and_writes_report_and_plot(tmp_path: Path) -> None:
    options = ReplayOptions(
        trace_path=_tiny_trace(tmp_path),
        policies=("vllm",),
        scaling=TraceScaling(token_divisor=4),
        rate_per_s=1.0,
        out_dir=tmp_path / "out",
        resume=True,
        probe=ProbeSettings(),
    )
    # A first run would have written this; its digest must match the spec the runner builds.
    from workloads.replay._run import poisson_arrivals
    from workloads.replay._runner import _base_spec, _digest, _ideal_s
    from workloads.replay._trace import load_trace, scale_trace

    programs = scale_trace(load_trace(options.trace_path), options.scaling)
    arrivals = poisson_arrivals(3, rate_per_s=1.0, seed=0)
    deadlines = [options.slo_factor * _ideal_s(p, options) for p in programs]
    spec = {**_base_spec(options, programs, arrivals, deadlines), "policy": "vllm"}
    outcomes = [_outcome(i, arrivals[i], arrivals[i] + 3.0 + i) for i in range(3)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "vllm.result.json").write_text(
        json.dumps({"spec_digest": _digest(spec), "outcomes": [o.to_json() for o in outcomes], "replay_wall_s": 7.0})
    )
    result = run_replay(options)
    figures = result.report["policies"]["vllm"]
    assert figures["status"] == "ok" and figures["resumed"] is True
    assert figures["jct_mean_s"] == pytest.approx(4.0)
    assert result.plot_path is not None and result.plot_path.read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["settings"]["scaling_note"].startswith("token counts / 4")
    assert written["workload"]["num_programs"] == 3


def test_agentflow_policy_reports_unavailable_without_its_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workloads.replay._runner as runner

    monkeypatch.setattr(runner, "_agentflow_scheduler_present", lambda: False)
    options = ReplayOptions(
        trace_path=_tiny_trace(tmp_path), policies=("agentflow",), rate_per_s=1.0, out_dir=tmp_path / "out"
    )
    result = run_replay(options)
    assert result.report["policies"]["agentflow"]["status"] == "unavailable"
    assert result.plot_path is None


def test_options_need_one_arrival_mode_and_known_policies(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="exactly one"):
        ReplayOptions(rate_per_s=1.0, concurrency=2)
    with pytest.raises(UserError, match="exactly one"):
        ReplayOptions()
    with pytest.raises(UserError, match="unknown policy"):
        ReplayOptions(rate_per_s=1.0, policies=("fifo",))


def test_machine_check_flags_unequal_runs() -> None:
    from workloads.replay._runner import _machine_check

    def fig(decode_s: float) -> dict[str, Any]:
        return {"status": "ok", "speed_check": {"decode_s_per_token": decode_s}}

    even = _machine_check({"vllm": fig(0.025), "agentflow": fig(0.027), "priority": {"status": "failed"}})
    assert even["speed_spread_pct"] == pytest.approx(8.0) and even["warning"] is None
    uneven = _machine_check({"vllm": fig(0.025), "agentflow": fig(0.5)})
    assert uneven["warning"] is not None and "idle machine" in uneven["warning"]
    assert _machine_check({"vllm": fig(0.025)})["speed_spread_pct"] is None


def test_continuum_and_client_metadata_figures_are_judged_when_they_ran() -> None:
    figures = serving_figures(
        _report(
            {
                "vllm": _policy(90.0, 120.0),
                "continuum": _policy(30.0, 60.0),
                "agentflow": _policy(20.0, 50.0, cost_pct=1.0),
                "agentflow:none": _policy(24.0, 55.0),
            }
        )
    )
    assert figures["mean_jct_ratio_vs_continuum"] == pytest.approx(1.5)
    assert figures["p95_jct_ratio_vs_continuum"] == pytest.approx(1.2)
    # (90 / 24) / (90 / 20): the share of the full-metadata gain a client sending nothing keeps.
    assert figures["client_metadata_recovery_none"] == pytest.approx(20 / 24)
    assert figures["pass"]["client_metadata_recovery_none"] is True
    assert "mean_jct_ratio_vs_priority" not in figures["targets"]  # priority did not run: not judged
    weak = serving_figures(
        _report({"vllm": _policy(90.0, 120.0), "agentflow": _policy(20.0, 50.0), "agentflow:session": _policy(30, 60)})
    )
    assert weak["client_metadata_recovery_session"] == pytest.approx(20 / 30)
    assert weak["pass"]["client_metadata_recovery_session"] is False


def test_client_metadata_swaps_or_adds_the_agentflow_variant() -> None:
    from workloads.replay._run import POLICIES, with_client_metadata

    assert with_client_metadata(("vllm", "agentflow"), "none") == ("vllm", "agentflow:none")
    assert with_client_metadata(("vllm", "agentflow"), "full") == ("vllm", "agentflow")
    with pytest.raises(UserError):
        with_client_metadata(("agentflow",), "some")
    assert POLICIES["agentflow:session"].client_metadata == "session" and POLICIES["vllm:aa"].scheduler_cls is None
    assert dict(POLICIES["continuum"].knobs)["fixed_ttl_s"] == 2.0 and POLICIES["continuum"].program_metadata


def test_a_policy_named_twice_is_refused() -> None:
    from workloads.replay._runner import ReplayOptions

    with pytest.raises(UserError, match="vllm:aa"):
        ReplayOptions(policies=("vllm", "vllm"), rate_per_s=1.0)


def test_sweep_figures_judge_each_rate_against_the_aa_spread() -> None:
    from workloads.replay._sweep import render_sweep, sweep_figures

    def rate(vllm: float, aa: float, ours: float, none: float, queued: tuple[float, float, float]) -> dict[str, Any]:
        return {
            "vllm": {**_policy(vllm, vllm), "queueing_delay_mean_s": queued[0]},
            "vllm:aa": {**_policy(aa, aa), "queueing_delay_mean_s": queued[1]},
            "continuum": _policy(vllm * 0.8, vllm),
            "agentflow": {**_policy(ours, ours), "queueing_delay_mean_s": queued[2]},
            "agentflow:none": {**_policy(none, none), "queueing_delay_mean_s": queued[2]},
        }

    figures = sweep_figures(
        {"0.25": rate(10.0, 10.4, 10.2, 10.3, (0.5, 0.45, 0.52)), "4": rate(40.0, 41.0, 20.0, 25.0, (9, 9, 3))}
    )
    low = figures["rates"]["0.25"]
    assert low["aa_spread"] == pytest.approx(1 - 10 / 10.4)
    # 10 / 10.2 = 0.980 >= 1 - 0.038: within the machine's noise, so no slower.
    assert figures["no_slower_than_vllm"] == {
        "agentflow@0.25": True,
        "agentflow:none@0.25": True,
        "agentflow@4": True,
        "agentflow:none@4": True,
    }
    queueing = figures["queueing_at_lowest_rate"]
    assert queueing["pass"] is True  # 0.52 <= 0.5 + |0.5 - 0.45|, agentflow and agentflow:none
    assert queueing["agentflow_s"] == queueing["agentflow_none_s"] == 0.52
    assert figures["all_pass"] is True
    slower = sweep_figures({"1": rate(10.0, 10.0, 12.0, 10.0, (1, 1, 2))})
    assert slower["no_slower_than_vllm"]["agentflow@1"] is False and slower["all_pass"] is False
    assert "agentflow:none" in render_sweep(figures)
