"""Core subcommands: `demo`, `prepare-model`, and `bench` with its `executor` benchmark.

Other packages add benchmarks with `add_bench(...)` from their own `_cli.register`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_bench_subparsers: Any = None  # the `bench` command's subparsers, once registered


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="run the main demo agent program on the embedded model")
    demo.add_argument("--model", default=None, help="model string (default: embedded; see README)")
    demo.add_argument("--json", type=Path, default=None, help="also write the run (DAG, trace, answer) here")
    demo.set_defaults(func=_demo)

    prep = subparsers.add_parser("prepare-model", help="convert the packaged default model once (offline)")
    prep.add_argument("--force", action="store_true", help="convert again even if already prepared")
    prep.set_defaults(func=_prepare_model)

    global _bench_subparsers
    bench = subparsers.add_parser("bench", help="run a benchmark; prints figures and writes them with --json")
    _bench_subparsers = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    add_bench("executor", "dispatch overhead, a 10k-node DAG, parallel efficiency", _bench_executor)


def add_bench(
    name: str, help_text: str, run: Callable[[argparse.Namespace], dict[str, Any]]
) -> argparse.ArgumentParser:
    """Add `agentflow bench NAME [--json PATH]`; `run(args)` returns a report with `all_pass`."""
    if _bench_subparsers is None:
        raise RuntimeError("agentflow._cli_core.register must run first")
    parser: argparse.ArgumentParser = _bench_subparsers.add_parser(name, help=help_text)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    parser.set_defaults(func=lambda args: _report(run(args), args.json))
    return parser


def _report(report: dict[str, Any], json_path: Path | None) -> int:
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0 if report.get("all_pass", True) else 1


def _bench_executor(args: argparse.Namespace) -> dict[str, Any]:
    from executor._bench import run_executor_bench

    return run_executor_bench()


def _demo(args: argparse.Namespace) -> int:
    from agentflow.demo import run_demo

    return run_demo(model=args.model, json_path=args.json)


def _prepare_model(args: argparse.Namespace) -> int:
    from agentflow._model import prepare_default_model

    path = prepare_default_model(force=args.force)
    print(f"default model ready at {path}")
    return 0
