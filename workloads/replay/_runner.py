"""Replay a trace through several serving policies, one fresh engine process each, and report.

Every policy replays the same scaled programs with the same seed, arrivals and deadlines on the
same engine settings (only the scheduler class and policy differ), one after the other, each in
its own process (`workloads.replay._worker`). The parent loads and scales the trace, draws the
arrivals, runs the workers, then computes the metrics (`workloads.replay._metrics`), writes the report
and the JCT CDF plot.

Output directory layout:
- `<policy>.programs.jsonl`: one line per program as it finishes (appended, fsynced);
- `<policy>.result.json`: that policy's raw results once its replay ended;
- `report.json`, `jct_cdf.png`.

`resume=True` reuses the `<policy>.result.json` of a policy that finished with the same settings
and re-runs the rest. A policy killed midway is re-run whole: its timings were taken on a
machine whose load changed, so they cannot be spliced with a second run's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError
from serving import PROGRAM_AWARE_SCHEDULER
from workloads.replay._metrics import summarize_outcomes
from workloads.replay._probe import OURS, STOCK, probe_figures
from workloads.replay._run import ProgramOutcome, get_policy, ideal_program_s, poisson_arrivals, router_kind, split_run
from workloads.replay._trace import (
    DEFAULT_TRACE_PATH,
    ScaledProgram,
    TraceProgram,
    TraceScaling,
    load_trace,
    scale_trace,
)

__all__ = ["DEFAULTS", "EngineSettings", "ProbeSettings", "ReplayOptions", "ReplayReport", "render_table", "run_replay"]

_MiB = 1024**2


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """The engine every policy runs on (the policy adds its scheduler class and policy)."""

    kv_cache_bytes: int = 96 * _MiB  # SmolLM2-135M: 23,040 B/token -> ~4,300 tokens: memory pressure
    max_model_len: int = 2048  # vLLM wants the cache to hold one whole max-length request
    max_num_seqs: int = 16
    block_size: int = 32
    max_num_batched_tokens: int | None = None
    model_dir: str | None = None  # None: the tiny catalog model (what the defaults here are sized for)

    def to_engine_config_kwargs(self) -> dict[str, Any]:
        from serving.models import TINY_MODEL, catalog_dir, lookup

        kwargs = asdict(self)
        if kwargs["model_dir"] is None:
            kwargs["model_dir"] = str(catalog_dir(lookup(TINY_MODEL)))
        return kwargs


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSettings:
    """The single-turn throughput probe (plain requests, no metadata), after the replays (`workloads.replay._probe`).

    One engine, agentflow's scheduler and vLLM's stock one swapped between bursts A B B A ....
    A burst is one wave (max_num_seqs 16) of ~4.5 s that fits the replay's KV cache (16 x 8
    blocks of 32 tokens <= 135): no preemption, whose recompute would dominate what is
    measured. The two bursts of a round, back to back on the shared 2-core box, still differ by
    ~7% (one standard deviation: the machine's speed wanders from one second to the next), so
    48 rounds (~8 minutes): the median of their paired costs is good to about +-1.3%.
    """

    num_requests: int = 16
    prompt_tokens: int = 224
    output_tokens: int = 32
    rounds: int = 48


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    """Everything one replay run depends on; all of it lands in the report."""

    trace_path: Path = DEFAULT_TRACE_PATH
    policies: tuple[str, ...] = ("vllm", "priority", "continuum", "agentflow")
    scaling: TraceScaling = field(default_factory=TraceScaling)
    rate_per_s: float | None = None  # Poisson arrivals (programs/s); None: closed loop
    concurrency: int | None = None  # closed loop: programs at once
    seed: int = 0
    engine: EngineSettings = field(default_factory=EngineSettings)
    # SLO: deadline = slo_factor x the program's time alone with a warm cache (cost model below).
    slo_factor: float = 4.0
    prefill_s_per_token: float = 0.001  # SmolLM2-135M on the 2-core CPU box, ~0.5 s / 512 tokens
    decode_s_per_token: float = 0.025  # ~40 tokens/s at batch 1
    # Deadlines always score SLO attainment; sent to the agentflow scheduler only when asked,
    # since urgency ordering changes the order that the JCT comparison with `priority` holds fixed.
    send_deadlines: bool = False
    agentflow_knobs: dict[str, Any] = field(default_factory=dict)  # serving._knobs.SchedulerKnobs overrides
    probe: ProbeSettings | None = None  # the throughput probe after the replays (needs vllm and agentflow)
    out_dir: Path | None = None
    resume: bool = False
    progress: bool | None = None  # None: a bar on a terminal only
    worker_timeout_s: float | None = None
    # Engine replicas on Ray Serve (serving._ray): > 1 runs each policy once per router, as `policy@router`.
    replicas: int = 1
    routers: tuple[str, ...] = ("agentflow",)
    affinity_knobs: dict[str, Any] = field(default_factory=dict)  # serving._affinity.AffinityKnobs overrides

    @property
    def runs(self) -> tuple[str, ...]:
        """What runs, one engine (or replica set) each: the policies, times the routers across replicas."""
        if self.replicas == 1:
            return self.policies
        return tuple(f"{policy}@{router}" for policy in self.policies for router in self.routers)

    def __post_init__(self) -> None:
        if (self.rate_per_s is None) == (self.concurrency is None):
            raise UserError("give exactly one of --rate and --concurrency")
        for name in self.policies:
            get_policy(name)
        if not self.policies:
            raise UserError("no policy to replay")
        if len(set(self.policies)) != len(self.policies):
            raise UserError(f"a policy is named twice in {', '.join(self.policies)} (for an A/A pair use vllm,vllm:aa)")
        if not self.slo_factor > 0:
            raise UserError(f"slo_factor must be > 0, got {self.slo_factor}")
        if self.replicas < 1:
            raise UserError(f"replicas must be >= 1, got {self.replicas}")
        if self.replicas > 1 and len(set(self.routers)) != len(self.routers):
            raise UserError(f"a router is named twice in {', '.join(self.routers)} (for an A/A pair use pow2,pow2:aa)")
        for name in self.runs:
            get_policy(name)  # checks the router too


# The default run (`agentflow replay`, `agentflow bench serving`), sized for the 2-core CPU box:
# - the first 16 turns of the first 16 programs, token counts / 12: contexts grow to ~840 tokens
#   on average (1,034 at most), 121k prompt tokens if no prefix ever hits, 10k if all do;
# - tool pauses x 0.1: the replayed calls run ~15x faster than the recorded ones, and this keeps
#   tools at about their recorded share of a program's time (~30% replayed alone vs ~24% recorded);
# - Poisson arrivals at 4 programs/s (all 16 within ~5 s: a burst that overloads the engine);
# - a 96 MiB KV cache (~4,300 tokens: ~4 final contexts for 16 active programs): memory pressure.
# All three policies take ~8 minutes in all (engine starts and the throughput probe included).
DEFAULTS = ReplayOptions(
    scaling=TraceScaling(token_divisor=12, max_turns=16, max_programs=16, max_context_tokens=2048, tool_time_scale=0.1),
    rate_per_s=4.0,
    engine=EngineSettings(kv_cache_bytes=96 * _MiB, max_model_len=2048),
    worker_timeout_s=900.0,  # a policy that stalls is reported failed; the others still run
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    report: dict[str, Any]  # JSON-ready: settings, workload, per-policy figures
    outcomes: dict[str, list[ProgramOutcome]]  # policy -> its programs (policies that ran)
    out_dir: Path
    plot_path: Path | None


def run_replay(options: ReplayOptions) -> ReplayReport:
    """Replay the trace under each policy in turn; the report, also written to `out_dir`."""
    recorded = load_trace(options.trace_path)
    programs = scale_trace(recorded, options.scaling)
    arrivals = (
        poisson_arrivals(len(programs), rate_per_s=options.rate_per_s, seed=options.seed)
        if options.rate_per_s
        else None
    )
    deadlines = [options.slo_factor * _ideal_s(program, options) for program in programs]
    out_dir = options.out_dir or _default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    base_spec = _base_spec(options, programs, arrivals, deadlines)
    policies: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, list[ProgramOutcome]] = {}
    for name in options.runs:
        policies[name], ran = _run_policy(name, base_spec, options, out_dir)
        if ran is not None:
            outcomes[name] = ran
    _run_probe(base_spec, options, policies)
    plot_path = _plot(outcomes, out_dir, options) if outcomes else None
    report = {
        "machine": _machine_check(policies),
        "settings": _settings(options),
        "workload": {**_workload(programs, arrivals, deadlines), **_time_shares(recorded, programs, options)},
        "policies": policies,
        "results_dir": str(out_dir),
        "plot": str(plot_path) if plot_path else None,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return ReplayReport(report=report, outcomes=outcomes, out_dir=out_dir, plot_path=plot_path)


# -- per policy ---------------------------------------------------------------------------------------


def _run_policy(
    name: str, base_spec: dict[str, Any], options: ReplayOptions, out_dir: Path
) -> tuple[dict[str, Any], list[ProgramOutcome] | None]:
    policy = get_policy(name)
    head = {
        "description": policy.description,
        "scheduler_cls": policy.scheduler_cls,
        "scheduling_policy": policy.scheduling_policy,
    }
    if policy.scheduler_cls == PROGRAM_AWARE_SCHEDULER and not _agentflow_scheduler_present():
        return {**head, "status": "unavailable", "reason": f"{PROGRAM_AWARE_SCHEDULER} is not installed"}, None
    spec = {
        **base_spec,
        **_policy_extras(name, options),
        **_replica_extras(name, options),
        "policy": name,
        "results_path": str(out_dir / f"{name}.programs.jsonl"),
        "progress": options.progress,
    }
    digest = _digest(spec)
    result_path = out_dir / f"{name}.result.json"
    raw = _resumed(result_path, digest) if options.resume else None
    resumed = raw is not None
    if raw is None:
        Path(spec["results_path"]).unlink(missing_ok=True)  # a fresh run of this policy
        try:
            raw = _run_worker(spec, options.worker_timeout_s)
        except UserError as exc:
            return {**head, "status": "failed", "reason": str(exc)}, None
        result_path.write_text(json.dumps({"spec_digest": digest, **raw}) + "\n")
    ran = [ProgramOutcome.from_json(item) for item in raw["outcomes"]]
    figures = {
        **head,
        "status": "ok",
        "resumed": resumed,
        **summarize_outcomes(ran),
        "engine_startup_s": raw.get("engine_startup_s"),
        "replay_wall_s": raw.get("replay_wall_s"),
        "engine_stats": raw.get("engine_stats"),
        "speed_check": raw.get("speed_check"),
        "serving_metrics": raw.get("serving_metrics"),
        **({"routing": raw["routing"]} if "routing" in raw else {}),
    }
    return figures, ran


def _run_probe(base_spec: dict[str, Any], options: ReplayOptions, policies: dict[str, dict[str, Any]]) -> None:
    """The throughput probe, stock vLLM against agentflow on one engine (`workloads.replay._probe`); into `policies`."""
    names = (STOCK, OURS)
    if options.probe is None or not all(policies.get(name, {}).get("status") == "ok" for name in names):
        return
    probe = asdict(options.probe)
    spec = {"engine": base_spec["engine"], **_policy_extras(OURS, options), "policy": OURS, "seed": options.seed}
    try:
        raw = _run_worker({**spec, "probe": probe}, options.worker_timeout_s, probe=True)
    except UserError as exc:
        for name in names:
            policies[name]["throughput_probe"] = {"status": "failed", "reason": str(exc)}
        return
    for name, figures in probe_figures(probe, raw).items():
        policies[name]["throughput_probe"] = figures


def _policy_extras(name: str, options: ReplayOptions) -> dict[str, Any]:
    # Only program-aware policies read these: the stock policies' specs (and digests) stay put.
    policy = get_policy(name)
    if not policy.program_aware:
        return {}
    extras: dict[str, Any] = {"send_deadlines": options.send_deadlines} if policy.program_metadata else {}
    knobs = dict(policy.knobs)
    if name.startswith("agentflow"):
        knobs.update(options.agentflow_knobs)  # --agentflow-knob: agentflow's, not the baselines'
    if knobs:
        extras["engine_extra"] = {"scheduler_knobs": knobs}
    return extras


def _replica_extras(name: str, options: ReplayOptions) -> dict[str, Any]:
    """Replicas and router, for runs across replicas only (a single engine's spec and digest stay put)."""
    _, router = split_run(name)
    if router is None:
        return {}
    kind = router_kind(router)
    knobs = {"affinity_knobs": dict(options.affinity_knobs)} if kind == "agentflow" and options.affinity_knobs else {}
    return {"replicas": options.replicas, "router": kind, **knobs}


def _agentflow_scheduler_present() -> bool:
    module = PROGRAM_AWARE_SCHEDULER.rpartition(".")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _run_worker(spec: dict[str, Any], timeout_s: float | None, *, probe: bool = False) -> dict[str, Any]:
    """Run `workloads.replay._worker` on `spec` in a process of its own; its result (a replay's, or the probe's)."""
    what = "the throughput probe" if probe else f"policy {spec['policy']!r}"
    expected = "walls_s" if probe else "outcomes"
    with tempfile.TemporaryDirectory(prefix="agentflow-replay-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "workloads.replay._worker", *(["--probe"] if probe else []), str(spec_path)]
        env = {**os.environ, **_worker_env()}
        try:
            # The worker's stdout goes to our stderr: our stdout carries the report.
            done = subprocess.run([*command, str(out_path)], env=env, stdout=sys.stderr, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"{what} did not finish within {timeout_s} s") from exc
        result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if done.returncode != 0 or expected not in result:
            reason = result.get("error") or f"the worker process exited with {done.returncode} (see its stderr)"
            raise UserError(f"{what}: {reason}")
        return result


def _worker_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(_project_root()), os.environ.get("PYTHONPATH")]))}


def _resumed(result_path: Path, digest: str) -> dict[str, Any] | None:
    try:
        raw = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and raw.get("spec_digest") == digest else None


def _digest(spec: dict[str, Any]) -> str:
    # What determines the result; where the lines go and whether a bar shows do not.
    kept = {k: v for k, v in spec.items() if k not in ("results_path", "progress")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _default_out_dir() -> Path:
    return Path("agentflow-runs") / "replay" / time.strftime("%Y%m%d-%H%M%S")


# -- the report --------------------------------------------------------------------------------------


def _base_spec(
    options: ReplayOptions, programs: list[ScaledProgram], arrivals: list[float] | None, deadlines: list[float]
) -> dict[str, Any]:
    return {
        "engine": options.engine.to_engine_config_kwargs(),
        "programs": [program.to_json() for program in programs],
        "seed": options.seed,
        "arrivals_s": arrivals,
        "concurrency": options.concurrency,
        "deadlines_s": deadlines,
    }


def _ideal_s(program: ScaledProgram, options: ReplayOptions) -> float:
    return ideal_program_s(
        program, prefill_s_per_token=options.prefill_s_per_token, decode_s_per_token=options.decode_s_per_token
    )


def _settings(options: ReplayOptions) -> dict[str, Any]:
    arrivals: dict[str, Any] = (
        {"process": "poisson", "rate_per_s": options.rate_per_s, "seed": options.seed, "first_at_s": 0.0}
        if options.rate_per_s
        else {"process": "closed_loop", "concurrency": options.concurrency}
    )
    return {
        "trace": str(options.trace_path),
        "scaling": asdict(options.scaling),
        "scaling_note": options.scaling.describe(),
        "arrivals": arrivals,
        "seed": options.seed,
        "engine": asdict(options.engine),
        "slo": {
            "deadline": "slo_factor x (tool pauses + new prompt tokens x prefill_s_per_token "
            "+ output tokens x decode_s_per_token)",
            "slo_factor": options.slo_factor,
            "prefill_s_per_token": options.prefill_s_per_token,
            "decode_s_per_token": options.decode_s_per_token,
        },
        "prompts": "token ids; turn i = turn i-1 prompt + its generated tokens + seeded tool-output tokens",
        "outputs": "forced to the scaled recorded length (ignore_eos + max_tokens), temperature 0",
        "policies": list(options.policies),
        "replicas": options.replicas,
        "routers": list(options.routers) if options.replicas > 1 else None,
        "affinity_knobs": dict(options.affinity_knobs),
        "agentflow_metadata": "program_id, program_arrival_s, turn, is_last_turn, next_tool (the tool's name; its "
        "duration is not sent: the scheduler learns durations from the real ones reported as each tool ends)"
        + (", deadline_s" if options.send_deadlines else "; deadlines not sent (SLO scoring only)"),
        "agentflow_knobs": dict(options.agentflow_knobs),
        "probe": asdict(options.probe) if options.probe else None,
    }


def _workload(programs: list[ScaledProgram], arrivals: list[float] | None, deadlines: list[float]) -> dict[str, Any]:
    contexts = [p.context_tokens for p in programs]
    num_calls = sum(len(p.turns) for p in programs)
    full_prefill = sum(p.prompt_tokens(i) for p in programs for i in range(len(p.turns)))
    new_prefill = sum(p.shared_prefix_tokens + sum(t.new_prompt_tokens for t in p.turns) for p in programs)
    return {
        "num_programs": len(programs),
        "num_calls": num_calls,
        "turns_mean": num_calls / len(programs),
        "context_tokens_mean": sum(contexts) / len(contexts),
        "context_tokens_max": max(contexts),
        "shared_prefix_tokens": programs[0].shared_prefix_tokens,
        "output_tokens_total": sum(t.output_tokens for p in programs for t in p.turns),
        "prompt_tokens_total": full_prefill,  # what a cache that never hits prefills
        "new_prompt_tokens_total": new_prefill,  # what a cache that always hits prefills
        "tool_s_total": sum(t.tool_s for p in programs for t in p.turns),
        "tool_s_max_per_program": max(sum(t.tool_s for t in p.turns) for p in programs),
        "programs_cut_by_context": sum(p.cut_by_context for p in programs),
        "last_arrival_s": arrivals[-1] if arrivals else None,
        "deadline_mean_s": sum(deadlines) / len(deadlines),
    }


# Beyond this spread in the per-policy speed checks, the policies did not run on equal machines.
_SPEED_SPREAD_WARN_PCT = 25.0


def _machine_check(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether every policy ran on an equally fast machine (decode speed of one plain request)."""
    decode = {
        name: fig["speed_check"]["decode_s_per_token"]
        for name, fig in policies.items()
        if fig.get("status") == "ok" and fig.get("speed_check")
    }
    if len(decode) < 2:
        return {"decode_s_per_token": decode, "speed_spread_pct": None, "warning": None}
    spread_pct = (max(decode.values()) / min(decode.values()) - 1) * 100
    warning = (
        f"the policies' speed checks differ by {spread_pct:.0f}%: the machine's load changed during the run "
        "(another process on the engine's cores); the comparison is not on equal terms, run it again on an idle machine"
        if spread_pct > _SPEED_SPREAD_WARN_PCT
        else None
    )
    return {"decode_s_per_token": decode, "speed_spread_pct": spread_pct, "warning": warning}


def _time_shares(recorded: list[TraceProgram], programs: list[ScaledProgram], options: ReplayOptions) -> dict[str, Any]:
    """Tools' share of a program's time, as recorded and as replayed alone (the cost model).

    LLM calls replayed on the small model are far shorter than the recorded ones, so tool
    pauses slept in full would dwarf them; `tool_time_scale` brings tools back to about their
    recorded share. Both shares are reported so the choice can be checked.
    """
    by_id = {p.program_id: p for p in recorded}
    llm_s = tool_s = 0.0
    for program in programs:
        kept = by_id[program.program_id].turns[: len(program.turns)]
        llm_s += sum(t.llm_s for t in kept if t.llm_s is not None)
        tool_s += sum(t.tool_s or 0.0 for t in kept[:-1])  # no tool runs after the kept last call
    replay_tool_s = sum(t.tool_s for p in programs for t in p.turns)
    replay_llm_s = sum(_ideal_s(p, options) for p in programs) - replay_tool_s
    return {
        "recorded_llm_s_total": llm_s,
        "recorded_tool_s_total": tool_s,
        "recorded_tool_share": tool_s / (tool_s + llm_s) if tool_s + llm_s else None,
        "replayed_llm_s_alone_total": replay_llm_s,
        "replayed_tool_share_alone": replay_tool_s / (replay_tool_s + replay_llm_s) if replay_llm_s else None,
    }


def _plot(outcomes: dict[str, list[ProgramOutcome]], out_dir: Path, options: ReplayOptions) -> Path:
    from workloads.replay._plots import plot_jct_cdf

    jcts = {name: [o.jct_s for o in ran if o.error is None] for name, ran in outcomes.items()}
    arrivals = f"Poisson {options.rate_per_s:g}/s" if options.rate_per_s else f"{options.concurrency} at once"
    title = f"JCT CDF: {len(next(iter(outcomes.values())))} programs, {arrivals}\n{options.scaling.describe()}"
    return plot_jct_cdf(jcts, out_dir / "jct_cdf.png", title=title)


# -- the table ----------------------------------------------------------------------------------------

_COLUMNS = (
    ("policy", None, "{}"),
    ("status", "status", "{}"),
    ("JCT mean", "jct_mean_s", "{:.1f}"),
    ("p50", "jct_p50_s", "{:.1f}"),
    ("p95", "jct_p95_s", "{:.1f}"),
    ("p99", "jct_p99_s", "{:.1f}"),
    ("makespan", "makespan_s", "{:.1f}"),
    ("queued/prog", "queueing_delay_mean_s", "{:.1f}"),
    ("cached", "cached_token_fraction", "{:.0%}"),
    ("SLO met", "slo_attainment", "{:.0%}"),
)


def render_table(report: dict[str, Any]) -> str:
    """The per-policy figures as a text table (seconds)."""
    rows = [[title for title, _, _ in _COLUMNS]]
    for name, figures in report["policies"].items():
        rows.append([name] + [_cell(figures.get(key), fmt) for _, key, fmt in _COLUMNS[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value) if isinstance(value, int | float) else str(value)
