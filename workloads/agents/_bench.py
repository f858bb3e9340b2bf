"""`agentflow bench agents`: mini-swe-agent, unmodified, K at a time against `agentflow serve` and stock `vllm serve`.

For each server in turn (same model, KV cache, limits and seeds): start it, give each of K agents
a fresh git copy of a shipped task repository (tasks cycled) and its own forwarding proxy, run
the K agents at once (mini-swe-agent's `mini` CLI, configured only through its YAML config), stop
the server. Figures per server: agent JCT (wall time of one agent run: mean, p95), turns, the
cached share of prompt tokens (vLLM's Prometheus prefix-cache counters, and the responses'
`prompt_tokens_details.cached_tokens`), exit statuses, tasks solved (the task's tests pass in the
agent's copy afterwards); for agentflow also the scheduler's `requests`, `turn_gaps`, `pins` and
how many turns it attributed to the right program (`_attribution`).

Report keys: `mean_jct_ratio_vs_vllm` = vllm mean JCT / agentflow mean JCT (> 1: agentflow
faster); with the stock server run twice (`--servers agentflow,vllm,vllm`), `aa_ratio` = the second
stock run / the first, the machine's noise to read that ratio against; `attribution_accuracy`
(target >= 0.95, the one judged in `all_pass`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError
from workloads.agents._attribution import score_attribution
from workloads.agents._config import AgentSettings, agent_overrides, mini_command, render_config
from workloads.agents._proxy import AgentProxy, ProxyGroup
from workloads.agents._servers import SERVER_KINDS, ServerProcess, ServerSpec
from workloads.agents._tasks import Task, copy_task, load_tasks, run_task_tests
from workloads.agents._venv import MINI_SWE_AGENT_VERSION, AgentInstall, agent_env, ensure_agent_venv

__all__ = ["ATTRIBUTION_TARGET", "AgentsBenchOptions", "register_bench", "run_agents_bench"]

ATTRIBUTION_TARGET = 0.95
DEFAULT_MODEL = "smollm2-135m"  # the catalog's tiny model: the serving benchmarks' (K agents on 2 CPU cores)
DEFAULT_KV_TOKENS = 4352  # SmolLM2-135M: ~96 MiB, the replay's pressure: ~2 agents' contexts for 4 agents
_MiB = 1024**2


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentsBenchOptions:
    model_dir: Path
    agents: int = 4
    tasks: list[str] | None = None  # None: all shipped tasks
    servers: tuple[str, ...] = ("agentflow", "vllm")
    settings: AgentSettings = field(default_factory=AgentSettings)
    agent_timeout_s: float = 600.0
    kv_cache_bytes: int | None = None  # None: DEFAULT_KV_TOKENS of the model
    max_model_len: int = 4096
    max_num_seqs: int = 16
    block_size: int = 32
    agent_version: str = MINI_SWE_AGENT_VERSION
    agent_venv: Path | None = None
    work_dir: Path | None = None  # None: a new temporary directory (kept: logs, configs, trajectories)
    report: Callable[[str], None] | None = None


def kv_bytes_per_token(model_dir: Path) -> int:
    """bf16 K and V bytes per token of a Hugging Face model dir (config.json)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * 2
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{model_dir}: cannot read the model's shape from config.json ({exc})") from None


def check_options(options: AgentsBenchOptions) -> None:
    """Raises UserError for bad input before anything starts."""
    if options.agents < 1:
        raise UserError(f"--agents must be at least 1 (got {options.agents})")
    if options.settings.step_limit < 1:
        raise UserError(f"--steps must be at least 1 (got {options.settings.step_limit})")
    if options.agent_timeout_s <= 0:
        raise UserError("--agent-timeout must be positive")
    if not (options.model_dir / "config.json").is_file():
        raise UserError(f"{options.model_dir} is not a local Hugging Face model directory (no config.json)")
    if not options.servers:
        raise UserError("--servers: give at least one of agentflow, vllm")
    if unknown := [s for s in options.servers if s not in SERVER_KINDS]:
        raise UserError(f"--servers: unknown {', '.join(unknown)}; choose from {', '.join(SERVER_KINDS)}")


def run_agents_bench(options: AgentsBenchOptions) -> dict[str, Any]:
    check_options(options)
    tasks = load_tasks(options.tasks)
    say = options.report or (lambda message: print(message, file=sys.stderr, flush=True))
    install = ensure_agent_venv(options.agent_version, venv=options.agent_venv, report=say)
    builtin = install.builtin_config("mini.yaml")
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="agentflow-agents-"))
    work.mkdir(parents=True, exist_ok=True)
    kv_bytes = options.kv_cache_bytes or DEFAULT_KV_TOKENS * kv_bytes_per_token(options.model_dir)
    labels = _labels(options.servers)
    per_server: dict[str, dict[str, Any]] = {}
    for kind, label in zip(options.servers, labels, strict=True):
        spec = ServerSpec(
            model_dir=options.model_dir,
            port=_free_port(),
            kv_cache_bytes=kv_bytes,
            max_model_len=options.max_model_len,
            max_num_seqs=options.max_num_seqs,
            block_size=options.block_size,
            tool_call_parser="hermes" if options.agent_version.split(".")[0] != "1" else None,
        )
        run_dir = work / label.replace(":", "-")
        run_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(kind, spec, run_dir / "server.log")
        say(f"[{label}] starting: {' '.join(server.argv)}")
        server.start()
        say(f"[{label}] ready after {server.startup_s:.0f} s; running {options.agents} agents")
        try:
            before = server.prometheus()
            agents = asyncio.run(_run_agents(options, install, builtin, tasks, spec, run_dir, server))
            after = server.prometheus()
            scheduler = server.scheduler_metrics()
        finally:
            server.stop()
        per_server[label] = _server_figures(label, agents, before, after, scheduler, server.startup_s)
        say(f"[{label}] " + _one_line(per_server[label]))
    report = _report(options, per_server, kv_bytes, tasks, install, work)
    say(render_table(report))
    return report


# -- the agents --------------------------------------------------------------------------------------


@dataclass(slots=True)
class AgentRun:
    name: str
    task: str
    seed: int | None
    wall_s: float = 0.0
    returncode: int | None = None
    timed_out: bool = False
    exit_status: str = ""
    solved: bool = False
    proxy: AgentProxy | None = None


async def _run_agents(
    options: AgentsBenchOptions,
    install: AgentInstall,
    builtin: str,
    tasks: list[Task],
    spec: ServerSpec,
    run_dir: Path,
    server: ServerProcess,
) -> list[AgentRun]:
    names = [f"agent{i}" for i in range(options.agents)]
    group = ProxyGroup(spec.base, names, timeout_s=options.agent_timeout_s + 60)
    await group.start()
    try:
        runs = asyncio.gather(
            *(
                _launch(i, options, install, builtin, tasks[i % len(tasks)], spec, proxy, run_dir)
                for i, proxy in enumerate(group.proxies)
            )
        )
        watch: asyncio.Future[Any] = asyncio.ensure_future(_watch(server))
        pending: set[asyncio.Future[Any]] = {runs, watch}
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if watch in done:  # the server died under the agents: stop them, say so
            runs.cancel()
            await asyncio.gather(runs, return_exceptions=True)
            raise UserError(f"the {server.kind} server died during the run (log: {server.log_path})")
        watch.cancel()
        return list(runs.result())
    finally:
        await group.stop()


async def _watch(server: ServerProcess) -> None:
    while server.alive():
        await asyncio.sleep(1.0)


async def _launch(
    index: int,
    options: AgentsBenchOptions,
    install: AgentInstall,
    builtin: str,
    task: Task,
    spec: ServerSpec,
    proxy: AgentProxy,
    run_dir: Path,
) -> AgentRun:
    agent_dir = run_dir / proxy.agent
    repo = copy_task(task, agent_dir / "repo")
    seed = options.settings.seed
    settings = replace(options.settings, seed=None if seed is None else seed + index)
    overrides = agent_overrides(
        settings, base_url=proxy.base_url, api_key=spec.api_key, model_name=spec.served_model_name, cwd=repo
    )
    config = agent_dir / "mini.yaml"
    config.write_text(render_config(builtin, overrides))
    trajectory = agent_dir / "trajectory.json"
    argv = mini_command(install.mini, config=config, task=task.statement, trajectory=trajectory)
    env = agent_env(install) | {"MSWEA_GLOBAL_CONFIG_DIR": str(agent_dir / "mini-swe-agent")}
    run = AgentRun(name=proxy.agent, task=task.name, seed=settings.seed, proxy=proxy)
    started = time.monotonic()
    with (agent_dir / "agent.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=repo, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        try:
            run.returncode = await asyncio.wait_for(process.wait(), timeout=options.agent_timeout_s)
        except TimeoutError:
            run.timed_out = True
            _kill_group(process.pid)
            run.returncode = await process.wait()
        except asyncio.CancelledError:
            _kill_group(process.pid)
            await process.wait()
            raise
    run.wall_s = time.monotonic() - started
    run.exit_status = "Timeout" if run.timed_out else _exit_status(trajectory)
    run.solved = await asyncio.to_thread(run_task_tests, repo, python=str(install.python))
    return run


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _exit_status(trajectory: Path) -> str:
    """The agent's own exit status from its trajectory file (v1 and v2 both write `info.exit_status`)."""
    try:
        data = json.loads(trajectory.read_text())
    except (OSError, ValueError):
        return "NoTrajectory"
    info = data.get("info") if isinstance(data, dict) else None
    status = info.get("exit_status") if isinstance(info, dict) else None
    return str(status) if status else "Unknown"


# -- figures -------------------------------------------------------------------------------------------


def _server_figures(
    label: str,
    agents: list[AgentRun],
    before: dict[str, float],
    after: dict[str, float],
    scheduler: dict[str, Any] | None,
    startup_s: float | None,
) -> dict[str, Any]:
    walls = [a.wall_s for a in agents]
    turns = [a.proxy.turns if a.proxy else [] for a in agents]
    prompt = sum(t.prompt_tokens for ts in turns for t in ts)
    cached = sum(t.cached_tokens for ts in turns for t in ts)
    hits = after.get("vllm:prefix_cache_hits_total", 0.0) - before.get("vllm:prefix_cache_hits_total", 0.0)
    queries = after.get("vllm:prefix_cache_queries_total", 0.0) - before.get("vllm:prefix_cache_queries_total", 0.0)
    figures: dict[str, Any] = {
        "server": label,
        "startup_s": round(startup_s, 1) if startup_s is not None else None,
        "jct_mean_s": round(sum(walls) / len(walls), 2),
        "jct_p95_s": round(_p95(walls), 2),
        "turns": sum(len(ts) for ts in turns),
        "turns_per_agent": [len(ts) for ts in turns],
        "failed_turns": sum(1 for ts in turns for t in ts if t.status != 200),
        "prompt_tokens": prompt,
        "cached_fraction_usage": round(cached / prompt, 4) if prompt else None,
        "cached_fraction_prometheus": round(hits / queries, 4) if queries > 0 else None,
        "exit_statuses": dict(Counter(a.exit_status for a in agents)),
        "solved": sum(1 for a in agents if a.solved),
        "agents": [
            {
                "agent": a.name,
                "task": a.task,
                "seed": a.seed,
                "wall_s": round(a.wall_s, 2),
                "turns": len(t),
                "exit_status": a.exit_status,
                "solved": a.solved,
            }
            for a, t in zip(agents, turns, strict=True)
        ],
    }
    if scheduler is not None:
        ids = {a.name: a.proxy.response_ids() if a.proxy else [] for a in agents}
        attributions = scheduler.get("attributions")
        if isinstance(attributions, dict):
            figures["attribution"] = score_attribution(ids, attributions).to_dict()
        else:
            figures["attribution"] = None  # a server without an API key does not list them
        figures["scheduler"] = {k: scheduler.get(k) for k in ("requests", "turn_gaps", "pins")}
    return figures


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _labels(servers: tuple[str, ...]) -> list[str]:
    seen: Counter[str] = Counter()
    labels = []
    for kind in servers:
        seen[kind] += 1
        labels.append(kind if seen[kind] == 1 else f"{kind}:aa" if seen[kind] == 2 else f"{kind}:{seen[kind]}")
    return labels


def _report(
    options: AgentsBenchOptions,
    per_server: dict[str, dict[str, Any]],
    kv_bytes: int,
    tasks: list[Task],
    install: AgentInstall,
    work: Path,
) -> dict[str, Any]:
    agentflow = per_server.get("agentflow")
    vllm = per_server.get("vllm")
    report: dict[str, Any] = {
        "agent": f"mini-swe-agent {install.version} (unmodified, `mini` CLI, its built-in mini.yaml + model section)",
        "settings": {
            "model_dir": str(options.model_dir),
            "agents": options.agents,
            "tasks": [t.name for t in tasks],
            "servers": list(options.servers),
            "step_limit": options.settings.step_limit,
            "max_tokens": options.settings.max_tokens,
            "temperature": options.settings.temperature,
            "seed": options.settings.seed,
            "agent_timeout_s": options.agent_timeout_s,
            "kv_cache_mib": round(kv_bytes / _MiB, 1),
            "max_model_len": options.max_model_len,
            "max_num_seqs": options.max_num_seqs,
            "block_size": options.block_size,
            "work_dir": str(work),
        },
        "servers": per_server,
    }
    if agentflow and vllm:
        report["mean_jct_ratio_vs_vllm"] = round(vllm["jct_mean_s"] / agentflow["jct_mean_s"], 3)
        report["p95_jct_ratio_vs_vllm"] = round(vllm["jct_p95_s"] / agentflow["jct_p95_s"], 3)
    if vllm and (aa := per_server.get("vllm:aa")):
        report["aa_ratio"] = round(aa["jct_mean_s"] / vllm["jct_mean_s"], 3)
    attribution = agentflow.get("attribution") if agentflow else None
    accuracy = attribution.get("accuracy") if attribution else None
    report["attribution_accuracy"] = accuracy
    report["attribution_target"] = ATTRIBUTION_TARGET
    report["all_pass"] = accuracy is not None and accuracy >= ATTRIBUTION_TARGET
    return report


def _one_line(figures: dict[str, Any]) -> str:
    text = (
        f"JCT mean {figures['jct_mean_s']:.1f} s, p95 {figures['jct_p95_s']:.1f} s; {figures['turns']} turns; "
        f"cached {figures['cached_fraction_usage']}; exits {figures['exit_statuses']}; solved {figures['solved']}"
    )
    if attribution := figures.get("attribution"):
        text += f"; attribution {attribution['accuracy']} ({attribution['correct']}/{attribution['turns']})"
    return text


def render_table(report: dict[str, Any]) -> str:
    lines = [f"{'server':<12} {'JCT mean':>9} {'JCT p95':>9} {'turns':>6} {'cached':>7} {'solved':>6}  attribution"]
    for label, f in report["servers"].items():
        attribution = f.get("attribution")
        att = f"{attribution['accuracy']} ({attribution['correct']}/{attribution['turns']})" if attribution else "-"
        cached = f["cached_fraction_usage"]
        lines.append(
            f"{label:<12} {f['jct_mean_s']:>8.1f}s {f['jct_p95_s']:>8.1f}s {f['turns']:>6} "
            f"{cached if cached is not None else '-':>7} {f['solved']:>6}  {att}"
        )
    if "mean_jct_ratio_vs_vllm" in report:
        line = f"mean JCT ratio vllm/agentflow {report['mean_jct_ratio_vs_vllm']}"
        if "aa_ratio" in report:
            line += f" (A/A vllm:aa/vllm {report['aa_ratio']})"
        lines.append(line)
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the command ---------------------------------------------------------------------------------------


def register_bench() -> None:
    """Add `agentflow bench agents`."""
    from agentflow.cli import add_bench

    parser = add_bench(
        "agents",
        "mini-swe-agent (unmodified) K at a time against agentflow serve and stock vllm serve: JCT, cached "
        "tokens, program attribution",
        _run,
    )
    defaults = AgentSettings()
    parser.add_argument("--agents", type=int, default=4, help="agents run at once (default: 4)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all shipped tasks)")
    parser.add_argument("--steps", type=int, default=defaults.step_limit, help="the agent's step limit (model calls)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="max tokens per reply")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="agent i sends seed + i with each request (default: none; stock vLLM on CPU may crash on seeds)",
    )
    parser.add_argument("--agent-timeout", type=float, default=600.0, help="seconds before an agent is killed")
    parser.add_argument(
        "--servers",
        default="agentflow,vllm",
        help="servers in the order run; a second 'vllm' is an A/A run (default: agentflow,vllm)",
    )
    parser.add_argument(
        "--model", default=None, help=f"a catalog model name (default: {DEFAULT_MODEL}; agentflow prepare-model --list)"
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="a local Hugging Face model dir")
    parser.add_argument(
        "--kv-cache-mb", type=float, default=None, help=f"KV cache size (default: {DEFAULT_KV_TOKENS} tokens' worth)"
    )
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument(
        "--agent-version",
        default=MINI_SWE_AGENT_VERSION,
        help=f"mini-swe-agent release (default: {MINI_SWE_AGENT_VERSION}); 1.x keeps replies that fail to parse",
    )
    parser.add_argument("--agent-venv", type=Path, default=None, help="use/create the agent's venv here")
    parser.add_argument("--work-dir", type=Path, default=None, help="where logs, configs and trajectories go")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return run_agents_bench(options_from_args(args))


def options_from_args(args: argparse.Namespace) -> AgentsBenchOptions:
    if args.model and args.model_dir:
        raise UserError("give --model or --model-dir, not both")
    if args.model_dir is not None:
        model_dir = args.model_dir.expanduser().absolute()
    else:
        from serving.models import prepare_model

        model_dir = prepare_model(args.model or DEFAULT_MODEL).path
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()] if args.tasks else None
    return AgentsBenchOptions(
        model_dir=model_dir,
        agents=args.agents,
        tasks=tasks,
        servers=tuple(s.strip() for s in args.servers.split(",") if s.strip()),
        settings=AgentSettings(
            step_limit=args.steps, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
        ),
        agent_timeout_s=args.agent_timeout,
        kv_cache_bytes=int(args.kv_cache_mb * _MiB) if args.kv_cache_mb else None,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        agent_version=args.agent_version,
        agent_venv=args.agent_venv,
        work_dir=args.work_dir,
    )
