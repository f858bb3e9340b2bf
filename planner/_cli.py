"""`agentflow run` (compile a task into a plan and run it) and `agentflow bench planner`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from agentflow.backends import LLMBackend
from agentflow.exceptions import UserError
from agentflow.tools import ToolRegistry, load_tools_module

__all__ = ["load_tools_module", "planner_examples", "register", "run_command"]


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="compile a task into a parallel plan over your tools and run it")
    run.add_argument("task", help="what to do, in plain language")
    run.add_argument(
        "--tools", required=True, metavar="MODULE", help="module name or .py file defining @tool functions"
    )
    run.add_argument("--model", default=None, help="model string (default: embedded; see README)")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument("--max-replans", type=int, default=2, help="replans allowed after the first plan (default 2)")
    run.add_argument("--no-grammar", action="store_true", help="prompt-only plans even where a grammar is enforced")
    run.add_argument("--batch", action="store_true", help="parse the whole plan before running any step")
    run.add_argument(
        "--trace-out", type=Path, default=None, metavar="PATH", help="write the timeline as a Chrome/Perfetto trace"
    )
    run.add_argument("--timeline-png", type=Path, default=None, metavar="PATH", help="draw the timeline as a PNG")
    run.set_defaults(func=_run_command)

    from agentflow.cli import add_bench

    bench = add_bench("planner", "planner vs sequential ReAct speedup, plan validity, first tool start", _bench)
    bench.add_argument("--no-engine", action="store_true", help="skip the embedded-model figures (quick run)")
    bench.add_argument(
        "--num-tasks",
        type=int,
        default=None,
        help="N tasks spread evenly over the task set, every kind represented (default: all 43)",
    )
    bench.add_argument("--model", default=None, help="model string for the real-model figures (default: embedded)")
    bench.add_argument("--seed", type=int, default=0)


def planner_examples(module: ModuleType) -> list[Any] | None:
    """The module's `PLANNER_EXAMPLES` (pairs of task and plan text) as few-shot examples, if any."""
    from planner._prompt import PlanExample

    raw: Sequence[Any] | None = getattr(module, "PLANNER_EXAMPLES", None)
    if raw is None:
        return None
    examples = []
    for item in raw:
        if isinstance(item, PlanExample):
            examples.append(item)
        else:
            task, plan = item
            examples.append(PlanExample(task=str(task), plan=str(plan)))
    return examples


def _run_command(args: argparse.Namespace) -> int:
    return run_command(
        args.task,
        tools=args.tools,
        model=args.model,
        json_output=args.json,
        max_replans=args.max_replans,
        use_grammar=False if args.no_grammar else None,
        stream=not args.batch,
        trace_out=args.trace_out,
        timeline_png=args.timeline_png,
    )


def run_command(
    task: str,
    *,
    tools: str,
    model: str | LLMBackend | None = None,
    json_output: bool = False,
    max_replans: int = 2,
    use_grammar: bool | None = None,
    stream: bool = True,
    trace_out: Path | None = None,
    timeline_png: Path | None = None,
) -> int:
    """`agentflow run`: load the tools module, compile and run the task, print the result (and its timeline files)."""
    from planner._run import PlannerOptions, compile_and_run

    module = load_tools_module(tools)
    registry = ToolRegistry.from_module(module)
    if len(registry) == 0:
        raise UserError(f"--tools {tools}: the module defines no @tool or @semantic_function at top level")
    options = PlannerOptions(
        max_replans=max_replans, use_grammar=use_grammar, stream=stream, examples=planner_examples(module)
    )
    result = asyncio.run(compile_and_run(task, tools=registry, model=model, options=options))
    if json_output:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result.render())
    if trace_out is not None:
        print(f"trace: {result.trace.write_chrome_trace(trace_out)} (open in https://ui.perfetto.dev)", file=sys.stderr)
    if timeline_png is not None:
        print(f"timeline: {result.trace.write_timeline_png(timeline_png)}", file=sys.stderr)
    return 0 if result.ok else 1


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from planner._bench import run_planner_bench

    return run_planner_bench(engine=not args.no_engine, num_tasks=args.num_tasks, model=args.model, seed=args.seed)
