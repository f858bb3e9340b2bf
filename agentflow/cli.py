"""The `agentflow` command.

Each package contributes its subcommands through a `register(subparsers)` function in its
`_cli` module, loaded by name (`_COMMAND_MODULES`), so this file stays a dispatcher, the SDK
imports nothing above it, and importing it loads no engine. Benchmarks hang under
`agentflow bench NAME`: a package adds one with `add_bench(...)` from its `register`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentflow.exceptions import AgentflowError

__all__ = ["add_bench", "build_parser", "main"]

_COMMAND_MODULES = (
    "agentflow._cli_core",
    "agentflow._mcp_cli",
    "executor._cli",
    "planner._cli",
    "serving._cli",
    "workloads._cli",
)

_bench_subparsers: Any = None  # the `bench` command's subparsers, while a parser is being built


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentflow", description="Agent-workflow runtime.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    global _bench_subparsers
    bench = subparsers.add_parser("bench", help="run a benchmark; prints figures and writes them with --json")
    _bench_subparsers = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    try:
        for name in _COMMAND_MODULES:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:  # a missing dependency inside the module is a real error
                    raise
                continue
            module.register(subparsers)
    finally:
        _bench_subparsers = None
    return parser


def add_bench(
    name: str, help_text: str, run: Callable[[argparse.Namespace], dict[str, Any]]
) -> argparse.ArgumentParser:
    """Add `agentflow bench NAME [--json PATH]`; `run(args)` returns a report with `all_pass`.

    Call it from a `register(subparsers)` that `build_parser` runs.
    """
    if _bench_subparsers is None:
        raise RuntimeError("add_bench is called from a command module's register(), while build_parser runs")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AgentflowError as exc:
        print(f"agentflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentflow: interrupted", file=sys.stderr)
        return 130
