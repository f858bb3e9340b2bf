"""The planner on a real model: the task set (`planner.taskset`) through planner+executor and through ReAct.

Same model, same tools (lookups wait a seeded 0.2-1 s, a data service's latency), one task at a
time and the two systems back to back on each task, so both see the same machine. Figures:
success rate (`check_answer` on the final answer), mean latency and the speed-up (ReAct's mean
over the planner's), and how many of the planner's grammar-constrained plans parsed and
validated (`grammar_valid_rate`: 1.0 by construction when the backend enforces grammars).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from agentflow.backends import LLMBackend
from planner._prompt import PlanExample
from planner._react import run_react
from planner._run import PlannerOptions, compile_and_run
from planner.taskset import PLANNER_EXAMPLES, PlannerTask, check_answer, make_registry, spread_tasks

__all__ = ["TASKSET_TARGETS", "taskset_figures"]

TASKSET_TARGETS = {"grammar_valid_rate": ">= 1.0", "success_vs_react": ">= 1.0 (planner - react)", "speedup": ">= 1.5"}
TOOL_LATENCY_S = (0.2, 1.0)


async def taskset_figures(
    backend: LLMBackend,
    *,
    num_tasks: int | None = None,
    seed: int = 0,
    react_max_turns: int = 12,
    plan_max_tokens: int = 384,
    max_tokens: int = 128,
) -> dict[str, Any]:
    """Run the task set (`num_tasks` spread over it, else all) through both systems; the figures and per-task rows."""
    registry = make_registry(latency_s=TOOL_LATENCY_S, seed=seed)
    examples = [PlanExample(task=task, plan=plan) for task, plan in PLANNER_EXAMPLES]
    options = PlannerOptions(
        max_replans=1, examples=examples, plan_max_tokens=plan_max_tokens, join_max_tokens=max_tokens
    )
    tasks: Sequence[PlannerTask] = spread_tasks(num_tasks)
    await backend.start()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for task in tasks:
        planned = await compile_and_run(task.text, tools=registry, model=backend, options=options)
        reacted = await run_react(
            task.text, tools=registry, model=backend, max_turns=react_max_turns, max_tokens=max_tokens
        )
        rows.append(
            {
                "task_id": task.task_id,
                "task": task.text,
                "expected": task.answer,
                "lookups": task.lookups,
                "planner": _planner_row(task, planned),
                "react": {
                    "answer": reacted.answer,
                    "correct": check_answer(task, reacted.answer),
                    "wall_s": reacted.wall_s,
                    "turns": len(reacted.turns),
                    "reason": reacted.reason,
                },
            }
        )
    return {**_summary(rows), "bench_wall_s": time.perf_counter() - started, "tasks": rows}


def _planner_row(task: PlannerTask, result: Any) -> dict[str, Any]:
    rounds = result.rounds
    return {
        "answer": result.answer,
        "correct": check_answer(task, result.answer),
        "wall_s": result.wall_s,
        "first_tool_start_s": result.first_tool_start_s,
        "plans": len(rounds),
        "grammar_plans": sum(1 for r in rounds if r.grammar),
        "grammar_plans_valid": sum(1 for r in rounds if r.grammar and r.error is None),
        "plan_errors": [str(r.error) for r in rounds if r.error is not None][:3],
        "steps": sum(len(r.nodes) for r in rounds),
        "reason": result.reason,
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"num_tasks": 0}
    planner_s = statistics.fmean(r["planner"]["wall_s"] for r in rows)
    react_s = statistics.fmean(r["react"]["wall_s"] for r in rows)
    grammar_plans = sum(r["planner"]["grammar_plans"] for r in rows)
    planner_ok = sum(r["planner"]["correct"] for r in rows) / len(rows)
    react_ok = sum(r["react"]["correct"] for r in rows) / len(rows)
    return {
        "num_tasks": len(rows),
        "tool_latency_s": list(TOOL_LATENCY_S),
        "planner_success_rate": planner_ok,
        "react_success_rate": react_ok,
        "planner_latency_s_mean": planner_s,
        "react_latency_s_mean": react_s,
        "speedup_vs_react": react_s / planner_s if planner_s > 0 else None,
        "grammar_valid_rate": sum(r["planner"]["grammar_plans_valid"] for r in rows) / grammar_plans
        if grammar_plans
        else None,
        "plans_per_task": sum(r["planner"]["plans"] for r in rows) / len(rows),
        "react_turns_mean": statistics.fmean(r["react"]["turns"] for r in rows),
        "first_tool_start_s_mean": _mean_present(r["planner"]["first_tool_start_s"] for r in rows),
        "targets": TASKSET_TARGETS,
        "pass": {
            "grammar_valid_rate": grammar_plans > 0
            and sum(r["planner"]["grammar_plans_valid"] for r in rows) == grammar_plans,
            "success_vs_react": planner_ok >= react_ok,
            "speedup": react_s / planner_s >= 1.5 if planner_s > 0 else False,
        },
    }


def _mean_present(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None
