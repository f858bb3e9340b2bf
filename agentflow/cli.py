"""The `agentflow` command.

Each package contributes its subcommands through a `register(subparsers)` function in its
`_cli` module (`agentflow._cli_core`, `planner._cli`, `serving._cli`, `workloads._cli`), so
this file stays a dispatcher and importing it loads no engine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agentflow.exceptions import AgentflowError

__all__ = ["build_parser", "main"]

_COMMAND_MODULES = ("agentflow._cli_core", "planner._cli", "serving._cli", "workloads._cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentflow", description="Agent-workflow runtime.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
            continue
        module.register(subparsers)
    return parser


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
