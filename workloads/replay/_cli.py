"""`agentflow replay` (a trace through serving policies) and `agentflow convert-trace` (mini-swe-agent -> trace)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = ["add_replay_options", "options_from_args", "register"]

_EPILOG = """\
policies: vllm (stock FCFS + prefix caching; vllm:aa the same again, the A/A pair), priority (stock
priority scheduling keyed by program arrival order), continuum (program FCFS + a fixed 2 s pin, no
admission control), agentflow (the program-aware scheduler: program FCFS + KV pinned across tool
calls), agentflow:session and agentflow:none (the same scheduler fed only a session id, or nothing).
Each policy runs in its own engine process, one after another, on the same programs, seed and arrivals.

The default trace is 99 real mini-swe-agent runs on SWE-bench Lite, scaled to fit the embedded model:
token counts / --token-divisor, the first --turns turns of the first --programs programs.

Writes <out>/<policy>.programs.jsonl (a line per program as it finishes), report.json, jct_cdf.png.
"""


def register(subparsers: Any) -> None:
    """Add `replay` and `convert-trace` to the `agentflow` command."""
    replay = subparsers.add_parser(
        "replay",
        help="replay an agent trace (default: SWE-bench Lite mini-swe-agent runs) through serving policies",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_replay_options(replay, policies_flag="--policy")
    replay.add_argument("--json", type=Path, default=None, help="also write the report here")
    replay.set_defaults(func=_run_replay)

    convert = subparsers.add_parser(
        "convert-trace", help="convert mini-swe-agent trajectory JSON files (or directories of them) to a trace"
    )
    convert.add_argument("sources", nargs="+", type=Path, help="*.traj.json files or directories holding them")
    convert.add_argument("--out", type=Path, required=True, help="trace file to write (.jsonl or .jsonl.gz)")
    convert.add_argument(
        "--chars-per-token", type=float, default=4.0, help="token estimate where usage was not recorded (default 4)"
    )
    convert.add_argument("--source", default=None, help="the trace's source label (default: from the trajectories)")
    convert.set_defaults(func=_run_convert)


def add_replay_options(parser: argparse.ArgumentParser, *, policies_flag: str) -> None:
    """The trace, scaling, arrival, engine and SLO options shared by `replay` and `bench serving`."""
    from workloads.replay._run import CLIENT_METADATA, POLICIES, ROUTERS
    from workloads.replay._runner import DEFAULTS

    parser.add_argument(
        "--trace", type=Path, default=None, help="trace file (default: the shipped SWE-bench Lite trace)"
    )
    parser.add_argument(
        policies_flag,
        dest="policies",
        default=",".join(DEFAULTS.policies),
        help=f"NAME[,NAME...] of {', '.join(POLICIES)} (default {','.join(DEFAULTS.policies)})",
    )
    parser.add_argument(
        "--client-metadata",
        choices=CLIENT_METADATA,
        default="full",
        help="what agentflow's client sends: every program field (full), only a session id, or nothing",
    )
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument(
        "--rate", type=float, default=None, help=f"Poisson arrivals, programs/s (default {DEFAULTS.rate_per_s})"
    )
    arrivals.add_argument("--concurrency", type=int, default=None, help="closed loop: K programs at once")
    scaling = DEFAULTS.scaling
    parser.add_argument("--programs", type=int, default=scaling.max_programs, help="first M programs of the trace")
    parser.add_argument("--turns", type=int, default=scaling.max_turns, help="first N turns of each program")
    parser.add_argument("--token-divisor", type=float, default=scaling.token_divisor, help="k: token counts / k")
    parser.add_argument(
        "--tool-time-scale", type=float, default=scaling.tool_time_scale, help="tool pauses x this (1: as recorded)"
    )
    parser.add_argument("--no-shared-prefix", action="store_true", help="no system prompt shared by all programs")
    engine = DEFAULTS.engine
    parser.add_argument(
        "--kv-cache-mb", type=float, default=engine.kv_cache_bytes / 1024**2, help="KV cache size (small: pressure)"
    )
    parser.add_argument("--max-model-len", type=int, default=engine.max_model_len)
    parser.add_argument("--max-num-seqs", type=int, default=engine.max_num_seqs)
    parser.add_argument("--model-dir", default=None, help="a local HF model directory (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="arrivals and synthetic tokens")
    parser.add_argument(
        "--slo-factor", type=float, default=DEFAULTS.slo_factor, help="deadline = factor x time alone, warm cache"
    )
    parser.add_argument(
        "--send-deadlines",
        action="store_true",
        help="also give each program's deadline to the agentflow scheduler (urgency ordering); always scored",
    )
    parser.add_argument(
        "--agentflow-knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a knob of the agentflow scheduler (serving._knobs.SchedulerKnobs), e.g. fixed_ttl_s=2",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="engine replicas on a local Ray instance (needs agentflow[scale]); > 1 runs each policy per --router",
    )
    parser.add_argument(
        "--router",
        dest="routers",
        default="agentflow",
        help=f"with --replicas: ROUTER[,ROUTER...] of {', '.join(ROUTERS)} (default agentflow)",
    )
    parser.add_argument(
        "--affinity-knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --replicas: a knob of agentflow's router (serving._affinity.AffinityKnobs), e.g. move_margin=2",
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: a new one)")
    parser.add_argument("--resume", action="store_true", help="reuse policies already finished in --out")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULTS.worker_timeout_s,
        help=f"give up on a policy after this long (default {DEFAULTS.worker_timeout_s:g} s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace, *, keep_full_metadata: bool = False, **overrides: Any) -> Any:
    """`ReplayOptions` from parsed `add_replay_options` arguments.

    `--client-metadata session|none` replaces `agentflow` by `agentflow:session|none`, or, with
    `keep_full_metadata` (the bench), runs that beside it.
    """
    from workloads.replay._runner import DEFAULTS, EngineSettings, ReplayOptions
    from workloads.replay._trace import DEFAULT_TRACE_PATH, TraceScaling

    rate = args.rate if args.rate is not None or args.concurrency is not None else DEFAULTS.rate_per_s
    names = tuple(name.strip() for name in args.policies.split(",") if name.strip())
    options = ReplayOptions(
        trace_path=args.trace or DEFAULT_TRACE_PATH,
        policies=_policies(names, args.client_metadata, keep_full=keep_full_metadata),
        scaling=TraceScaling(
            token_divisor=args.token_divisor,
            max_turns=args.turns,
            max_programs=args.programs,
            max_context_tokens=args.max_model_len,
            tool_time_scale=args.tool_time_scale,
            shared_prefix=not args.no_shared_prefix,
        ),
        rate_per_s=rate,
        concurrency=args.concurrency,
        seed=args.seed,
        engine=EngineSettings(
            kv_cache_bytes=int(args.kv_cache_mb * 1024**2),
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            model_dir=args.model_dir,
        ),
        slo_factor=args.slo_factor,
        send_deadlines=args.send_deadlines,
        agentflow_knobs=_knobs(args.agentflow_knob),
        out_dir=args.out,
        resume=args.resume,
        progress=False if args.no_progress else None,
        worker_timeout_s=args.timeout_s,
        replicas=args.replicas,
        routers=tuple(name.strip() for name in args.routers.split(",") if name.strip()),
        affinity_knobs=_affinity_knobs(args.affinity_knob),
    )
    return dataclasses.replace(options, **overrides) if overrides else options


def _policies(names: tuple[str, ...], client_metadata: str, *, keep_full: bool) -> tuple[str, ...]:
    from workloads.replay._run import with_client_metadata

    if not keep_full:
        return with_client_metadata(names, client_metadata)
    extra = with_client_metadata(("agentflow",), client_metadata)
    return names + tuple(name for name in extra if name not in names)


def _run_replay(args: argparse.Namespace) -> int:
    from workloads.replay._runner import render_table, run_replay

    result = run_replay(options_from_args(args))
    print(render_table(result.report))
    print(f"\nscaling: {result.report['settings']['scaling_note']}")
    if warning := result.report["machine"]["warning"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report {result.out_dir / 'report.json'}" + (f"; plot {result.plot_path}" if result.plot_path else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.report, indent=2) + "\n")
    failed = [name for name, fig in result.report["policies"].items() if fig["status"] == "failed"]
    if failed:
        raise UserError(f"policy {', '.join(failed)} failed; see {result.out_dir / 'report.json'}")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from workloads.replay._swebench import convert_paths

    report = convert_paths(args.sources, args.out, chars_per_token=args.chars_per_token, source=args.source)
    print(
        f"wrote {report.out_path}: {report.num_programs} programs, {report.num_calls} calls "
        f"({report.num_estimated_calls} with token counts estimated from text), {len(report.skipped)} skipped"
    )
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def _affinity_knobs(pairs: list[str]) -> dict[str, Any]:
    from serving.scaleout import AffinityKnobs

    knobs = _knobs(pairs, flag="--affinity-knob")
    try:
        AffinityKnobs(**knobs)
    except TypeError as exc:
        raise UserError(f"--affinity-knob: {exc}") from None
    return knobs


def _knobs(pairs: list[str], *, flag: str = "--agentflow-knob") -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} takes KEY=VALUE, got {pair!r}")
        knobs[key.strip()] = _literal(value.strip())
    return knobs


def _literal(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)
