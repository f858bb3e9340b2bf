"""`agentflow bench planner`: the planner+executor against the sequential ReAct baseline.

Figures:
- `speedup_vs_sequential`, `first_tool_start_s_stream`, `first_tool_start_s_batch`: measured on
  a SCRIPTED backend that replays fixed plans (and fixed ReAct turns) at a modelled token rate,
  because the embedded 135M model plans too poorly for a latency comparison to mean anything.
  Tasks are 4-8 independent lookups then a combine; tools take 0.2-1 s (seeded). Planner and
  ReAct run the same tasks, tools and backend model, in the same process run.
- `plan_valid_rate_grammar`, `plan_valid_rate_prompt_only`: fraction of plans from the real
  model (`--model`, default `embedded`) that parse and validate, with and without the grammar,
  on the task set (`planner.taskset`: 43 tasks with exact answers).
- `taskset`: the task set run through planner+executor and through ReAct on the real model, one
  task at a time, tools waiting 0.2-1 s: success rates, mean latencies, the real speed-up, the
  grammar-valid plan rate (`planner._bench_tasks`).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.backends import LLMBackend, LLMRequest, resolve_backend
from agentflow.exceptions import PlanError
from agentflow.testing import ScriptedLLM
from agentflow.tools import Tool, ToolRegistry, tool

from ._format import format_value
from ._parse import parse_plan
from ._prompt import PlanExample, build_planner_prompt
from ._react import run_react
from ._run import PlannerOptions, compile_and_run

__all__ = ["run_planner_bench"]

SPEEDUP_TARGET = 3.0
_SCRIPTED_LOOKUPS = (4, 5, 6, 7, 8, 4, 5, 6, 7, 8)  # independent lookups per scripted task (mean 6)


# -- scripted tasks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Task:
    text: str
    metric: str  # the lookup tool
    cities: tuple[str, ...]
    values: tuple[float, ...]
    answer: str

    def plan(self) -> str:
        # LLMCompiler's own few-shot plans: the steps, then a thought, then join().
        k = len(self.cities)
        lines = [f"{i}. {self.metric}({format_value(city)})" for i, city in enumerate(self.cities, start=1)]
        refs = ", ".join(f"${i}" for i in range(1, k + 1))
        lines.append(f"{k + 1}. largest({format_value(list(self.cities))}, [{refs}])")
        lines.append("Thought: the comparison will answer the question.")
        lines.append(f"{k + 2}. join()")
        return "\n".join(lines)

    def joiner(self) -> str:
        return f'{{"thought": "The comparison gives the answer.", "action": "finish", "answer": "{self.answer}"}}'

    def react_turn(self, num_observations: int) -> str:
        k = len(self.cities)
        if num_observations < k:
            city = self.cities[num_observations]
            return f"Thought: I still need the {self.metric} of {city}.\nAction: {self.metric}({format_value(city)})"
        if num_observations == k:
            names, values = format_value(list(self.cities)), format_value(list(self.values))
            return f"Thought: I have every value; compare them.\nAction: largest({names}, {values})"
        return f"Thought: The comparison gives the answer.\nFinal Answer: {self.answer}"


def _scripted_tools(seed: int) -> tuple[ToolRegistry, dict[str, dict[str, float]]]:
    """Lookups over the example data with seeded 0.2-1 s latencies, and a combine step."""
    from planner.examples import CITIES

    def latency_s(name: str, key: str) -> float:
        return random.Random(f"{seed}:{name}:{key}").uniform(0.2, 1.0)

    data = {
        "population": {city: float(row[1]) for city, row in CITIES.items()},
        "area_km2": {city: row[2] for city, row in CITIES.items()},
    }

    def lookup_tool(metric: str) -> Tool[Any, Any]:
        async def lookup(city: str) -> float:
            await asyncio.sleep(latency_s(metric, city))
            return data[metric][city]

        lookup.__doc__ = f"The {metric} of a city."
        return tool(name=metric)(lookup)

    @tool
    async def largest(names: list[str], values: list[float]) -> str:
        """The name whose value is largest."""
        await asyncio.sleep(latency_s("largest", ",".join(names)))
        return max(zip(values, names, strict=True))[1]

    return ToolRegistry([lookup_tool("population"), lookup_tool("area_km2"), largest]), data


def _scripted_tasks(data: dict[str, dict[str, float]], seed: int) -> list[_Task]:
    rng = random.Random(seed)
    tasks = []
    for i, k in enumerate(_SCRIPTED_LOOKUPS):
        metric = "population" if i % 2 == 0 else "area_km2"
        cities = tuple(rng.sample(sorted(data[metric]), k))
        values = tuple(data[metric][c] for c in cities)
        answer = max(zip(values, cities, strict=True))[1]
        what = "the most people" if metric == "population" else "the largest area"
        tasks.append(
            _Task(
                text=f"Which of {', '.join(cities)} has {what}?",
                metric=metric,
                cities=cities,
                values=values,
                answer=answer,
            )
        )
    return tasks


def _task_of(request: LLMRequest, tasks: dict[str, _Task]) -> _Task:
    for message in request.messages or ():
        for line in message["content"].splitlines():
            if line.startswith("Task: ") and line[6:] in tasks:
                return tasks[line[6:]]
    raise AssertionError("a bench request names no known task")


def _replay_script(tasks: Sequence[_Task]) -> Callable[[LLMRequest], str]:
    by_text = {t.text: t for t in tasks}

    def reply(request: LLMRequest) -> str:
        task = _task_of(request, by_text)
        system = (request.messages or ({"content": ""},))[0]["content"]
        if system.startswith("You write plans"):
            return task.plan()
        if system.startswith("You read the results"):
            return task.joiner()
        observations = sum(1 for m in request.messages or () if m["content"].startswith("Observation:"))
        return task.react_turn(observations)

    return reply


async def _scripted_figures(seed: int) -> dict[str, Any]:
    registry, data = _scripted_tools(seed)
    tasks = _scripted_tasks(data, seed)
    # The latency model of a small hosted model: 0.3 s to first token plus prefill, 50 tokens/s.
    llm = ScriptedLLM(
        _replay_script(tasks), latency_s=0.3, prefill_tokens_per_s=5000.0, tokens_per_s=50.0, chars_per_token=4
    )
    options = PlannerOptions(max_replans=0)
    stream = await asyncio.gather(*(compile_and_run(t.text, tools=registry, model=llm, options=options) for t in tasks))
    batch_options = PlannerOptions(max_replans=0, stream=False)
    batch = await asyncio.gather(
        *(compile_and_run(t.text, tools=registry, model=llm, options=batch_options) for t in tasks)
    )
    react = await asyncio.gather(*(run_react(t.text, tools=registry, model=llm, max_turns=12) for t in tasks))
    correct = [r.answer == t.answer for r, t in zip(stream, tasks, strict=True)]
    correct_react = [r.answer == t.answer for r, t in zip(react, tasks, strict=True)]
    planner_s = statistics.fmean(r.wall_s for r in stream)
    react_s = statistics.fmean(r.wall_s for r in react)
    return {
        "backend": "scripted: replays fixed plans and ReAct turns at a modelled token rate (not a real model)",
        "latency_model": llm.latency_model(),
        "tool_latency_s": "seeded uniform 0.2-1.0 per call",
        "num_tasks": len(tasks),
        "lookups_per_task": list(_SCRIPTED_LOOKUPS),
        "planner_latency_s_mean": planner_s,
        "planner_batch_latency_s_mean": statistics.fmean(r.wall_s for r in batch),
        "sequential_latency_s_mean": react_s,
        "speedup_vs_sequential": react_s / planner_s,
        "speedup_per_task": [r.wall_s / p.wall_s for r, p in zip(react, stream, strict=True)],
        "first_tool_start_s_stream": statistics.fmean(_first(r.first_tool_start_s) for r in stream),
        "first_tool_start_s_batch": statistics.fmean(_first(r.first_tool_start_s) for r in batch),
        "planner_correct": sum(correct),
        "sequential_correct": sum(correct_react),
    }


def _first(value: float | None) -> float:
    return float("nan") if value is None else value


# -- the embedded model ---------------------------------------------------------------------------------

_TEMPLATES = (
    "What is the population of {a}?",
    "Which has more people, {a} or {b}?",
    "What is the population density of {a}?",
    "What is the total population of {a}, {b} and {c}?",
    "Which country is {a} in?",
    "Which is larger by area, {a} or {b}?",
    "What is the combined area of {a} and {b}?",
    "Which of {a}, {b} and {c} has the most people?",
)


def validity_tasks(num_tasks: int, seed: int = 0) -> list[str]:
    """Tasks over the example tools (`planner.examples`) for the plan validity figures."""
    from planner.examples import CITIES

    rng = random.Random(seed)
    cities = sorted(CITIES)
    out: list[str] = []
    while len(out) < num_tasks:  # distinct tasks, the templates in turn
        a, b, c = rng.sample(cities, 3)
        task = _TEMPLATES[len(out) % len(_TEMPLATES)].format(a=a, b=b, c=c)
        if task not in out:
            out.append(task)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidityReport:
    """How many of a set of generated plans parsed and validated."""

    num_valid: int
    num_tasks: int
    errors: tuple[str, ...]  # a few of the rejections, for the report
    mean_s: float  # mean time per plan

    @property
    def rate(self) -> float:
        return self.num_valid / self.num_tasks if self.num_tasks else 0.0


async def plan_validity(
    backend: LLMBackend,
    registry: ToolRegistry,
    tasks: Sequence[str],
    *,
    grammar: bool,
    examples: Sequence[PlanExample] | None = None,
    max_tokens: int = 192,
) -> ValidityReport:
    """Generate one plan per task (concurrently) and count those that parse and validate."""
    from ._grammar import build_grammar

    options = PlannerOptions()
    grammar_text = (
        build_grammar(registry, max_steps=options.max_steps, max_string_chars=options.max_string_chars)
        if grammar
        else None
    )

    async def one(task: str) -> tuple[bool, str, float]:
        request = LLMRequest(
            messages=build_planner_prompt(task, registry, examples=examples),
            max_tokens=max_tokens,
            grammar=grammar_text,
            stop=() if grammar else ("<END_OF_PLAN>",),
        )
        start = time.perf_counter()
        text = (await backend.complete(request)).text
        elapsed = time.perf_counter() - start
        try:
            parse_plan(text, registry)
        except PlanError as exc:
            return False, f"{task} -> {exc}", elapsed
        return True, "", elapsed

    results = await asyncio.gather(*(one(t) for t in tasks))
    return ValidityReport(
        num_valid=sum(ok for ok, _, _ in results),
        num_tasks=len(tasks),
        errors=tuple(err for ok, err, _ in results if not ok)[:5],
        mean_s=statistics.fmean(s for _, _, s in results) if results else 0.0,
    )


async def _engine_figures(model: str | None, num_tasks: int | None, seed: int) -> dict[str, Any]:
    from planner._bench_tasks import taskset_figures
    from planner.taskset import PLANNER_EXAMPLES, make_registry, spread_tasks

    backend = resolve_backend(model)
    examples = [PlanExample(task=task, plan=plan) for task, plan in PLANNER_EXAMPLES]
    tasks = [t.text for t in spread_tasks(num_tasks)]
    start = time.perf_counter()
    await backend.start()
    startup_s = time.perf_counter() - start
    registry = make_registry()  # plans only: the tools never run here
    with_grammar = await plan_validity(backend, registry, tasks, grammar=True, examples=examples, max_tokens=384)
    prompt_only = await plan_validity(backend, registry, tasks, grammar=False, examples=examples, max_tokens=384)
    return {
        "backend": backend.name,
        "model": model or "embedded",
        "engine_startup_s": startup_s,
        "num_tasks": len(tasks),
        "plan_valid_rate_grammar": with_grammar.rate,
        "plan_valid_rate_prompt_only": prompt_only.rate,
        "plan_s_mean_grammar": with_grammar.mean_s,
        "plan_s_mean_prompt_only": prompt_only.mean_s,
        "rejections_grammar": list(with_grammar.errors),
        "rejections_prompt_only": list(prompt_only.errors),
        "taskset": await taskset_figures(backend, num_tasks=num_tasks, seed=seed),
    }


def _mean_present(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


# -- entry point ------------------------------------------------------------------------------------------


def run_planner_bench(
    *, engine: bool = True, num_tasks: int | None = None, model: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """Every figure of the planner bench (the embedded part is skipped with `engine=False`)."""
    start = time.perf_counter()
    scripted = asyncio.run(_scripted_figures(seed))
    scripted["bench_wall_s"] = time.perf_counter() - start
    report: dict[str, Any] = {
        "speedup_vs_sequential": scripted["speedup_vs_sequential"],
        "first_tool_start_s_stream": scripted["first_tool_start_s_stream"],
        "first_tool_start_s_batch": scripted["first_tool_start_s_batch"],
        "latency_figures_backend": scripted["backend"],
        "plan_valid_rate_grammar": None,
        "plan_valid_rate_prompt_only": None,
        "targets": {"speedup_vs_sequential": f">= {SPEEDUP_TARGET}", "plan_valid_rate_grammar": "~1.0"},
        "scripted": scripted,
    }
    if engine:
        start = time.perf_counter()
        embedded = asyncio.run(_engine_figures(model, num_tasks, seed))
        embedded["bench_wall_s"] = time.perf_counter() - start
        report["plan_valid_rate_grammar"] = embedded["plan_valid_rate_grammar"]
        report["plan_valid_rate_prompt_only"] = embedded["plan_valid_rate_prompt_only"]
        taskset = embedded["taskset"]
        for key in ("planner_success_rate", "react_success_rate", "speedup_vs_react", "grammar_valid_rate"):
            report[f"real_model_{key}"] = taskset.get(key)
        report["embedded"] = embedded
    else:
        report["embedded"] = "skipped (--no-engine)"
    report["all_pass"] = scripted["speedup_vs_sequential"] >= SPEEDUP_TARGET
    return report
