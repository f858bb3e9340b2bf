"""`agentflow bfcl`: run BFCL categories as agentflow programs and score them with BFCL's checkers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = ["register"]

_EPILOG = """\
categories: simple_python, multiple, parallel, parallel_multiple, irrelevance, live_simple,
live_multiple, live_parallel, live_parallel_multiple, live_irrelevance, live_relevance,
multi_turn_base, multi_turn_miss_func, multi_turn_miss_param, multi_turn_long_context;
groups: all, single_turn, multi_turn, live, non_live.

model strings: embedded (default: Qwen2.5-Coder-0.5B in-process), embedded:NAME (a catalog model:
smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), embedded:/model/dir,
vllm:MODEL@URL, openai:MODEL[@URL], litellm:PROVIDER/MODEL. Test double (this runner only):
scripted:ground_truth[@LATENCY_S] answers every record with BFCL's expected calls.

Writes <out>/results.jsonl (one line per record as it completes), summary.json, accuracy.png.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bfcl",
        help="run BFCL categories (bfcl-eval's data and checkers) as agentflow programs",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--category", required=True, help="NAME[,NAME...]: categories or groups (see below)")
    parser.add_argument("--limit", type=int, default=None, help="first N records per category")
    parser.add_argument("--sample", type=int, default=None, help="N random records per category (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    parser.add_argument(
        "--mode",
        choices=("native", "fc", "compiled"),
        default="native",
        help="native: calls written as text, as BFCL prompts (its Prompt column); fc: the model's native "
        "function calling (its FC column); compiled: the planner builds the DAG",
    )
    parser.add_argument("--model", default="embedded", help="model string (default: embedded)")
    parser.add_argument("--concurrency", type=int, default=1, help="records run at once (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results directory (default: a new one under agentflow-runs/bfcl/)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip records already in <out>/results.jsonl (default --out: the newest run)",
    )
    parser.add_argument("--max-tokens", type=int, default=192, help="per LLM call (default 192)")
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="embedded engine option, e.g. max_model_len=8192 or kv_cache_bytes=2147483648",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="a directory laid out like bfcl_eval/data (default: the installed package's)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="serve the embedded model from N engine replicas on a local Ray instance behind agentflow's router "
        "(needs agentflow[scale]; --model must be embedded or embedded:NAME)",
    )
    parser.set_defaults(func=_run)

    from agentflow.cli import add_bench

    bench = add_bench("bfcl", "BFCL runner throughput on the embedded model, --concurrency K vs 1", _bench)
    bench.add_argument("--category", default="simple_python", help="category to draw records from")
    bench.add_argument("--records", type=int, default=24, help="records per run (default 24)")
    bench.add_argument("--concurrency", type=int, default=8, help="K (default 8)")
    bench.add_argument("--max-tokens", type=int, default=192, help="per LLM call (default 192)")


def _run(args: argparse.Namespace) -> int:
    from workloads.bfcl._run import run_bfcl

    if args.replicas > 1:
        return _run_on_replicas(args)
    options = _options(args, model=args.model)
    return _report(run_bfcl(options))


def _options(args: argparse.Namespace, *, model: str) -> Any:
    from workloads.bfcl._data import parse_categories
    from workloads.bfcl._run import BfclOptions

    return BfclOptions(
        categories=tuple(parse_categories(args.category)),
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        mode=args.mode,
        model=model,
        concurrency=args.concurrency,
        out_dir=args.out,
        json_path=args.json,
        resume=args.resume,
        max_tokens=args.max_tokens,
        data_dir=args.data_dir,
        engine_options=_engine_options(args.engine),
        progress=False if args.no_progress else None,
    )


def _run_on_replicas(args: argparse.Namespace) -> int:
    """The same run against `--replicas` engine replicas behind one endpoint (the records' LLM calls spread there)."""
    import socket

    from serving.embedded import model_path
    from serving.engine import EngineConfig
    from serving.scaleout import ScaleOutOptions, start
    from workloads.bfcl._run import engine_options_for, run_bfcl

    scheme, _, name = args.model.partition(":")
    if scheme != "embedded":
        raise UserError(f"--replicas serves the embedded engine: --model must be embedded[:NAME], got {args.model!r}")
    engine_options = engine_options_for(name or None, _engine_options(args.engine))  # what `embedded` gets
    engine = EngineConfig(model_dir=model_path(name or None), **engine_options)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = start(ScaleOutOptions(engine=engine, replicas=args.replicas, port=port))
    try:
        return _report(run_bfcl(_options(args, model=f"vllm:default@{server.url}/v1")))
    finally:
        server.close()


def _report(report: Any) -> int:
    run = report.summary["run"]
    print(report.table)
    print(
        f"\n{run['run_now']} run now, {run['resumed']} resumed, wall {run['wall_s']:.1f} s "
        f"({run['records_per_s']:.2f} records/s); results {report.results_path}"
        + (f"; plot {report.plot_path}" if report.plot_path else "")
    )
    if run["dropped_partial_lines"]:
        print(
            f"dropped {run['dropped_partial_lines']} partial line(s) from an interrupted run; re-ran them",
            file=sys.stderr,
        )
    return 0


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from workloads.bfcl._bench import run_throughput_bench

    return run_throughput_bench(
        category=args.category, num_records=args.records, concurrency=args.concurrency, max_tokens=args.max_tokens
    )


def _engine_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--engine takes KEY=VALUE, got {pair!r}")
        options[key.strip()] = _literal(value.strip())
    return options


def _literal(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)
