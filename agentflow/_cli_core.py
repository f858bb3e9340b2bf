"""The SDK's own subcommand: `demo`, the main job on the embedded default model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__: list[str] = []  # internal module: `agentflow.cli` loads it by name


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="run the main demo agent program on the embedded model")
    demo.add_argument("--model", default=None, help="model string (default: embedded; see README)")
    demo.add_argument("--json", type=Path, default=None, help="also write the run (DAG, trace, answer) here")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("agentflow-runs/demo"),
        help="where the timeline goes: trace.json (Chrome/Perfetto) and timeline.png (default: agentflow-runs/demo)",
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from agentflow.demo import run_demo

    return run_demo(model=args.model, json_path=args.json, out_dir=args.out)
