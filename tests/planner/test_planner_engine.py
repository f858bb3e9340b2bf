"""The planner on the real embedded engine: grammar-constrained plans always parse."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import planner.examples as examples_module
from agentflow.tools import ToolRegistry
from planner import PlannerOptions, compile_and_run
from planner._bench import plan_validity, validity_tasks
from planner._cli import planner_examples, run_command
from serving import EmbeddedBackend
from serving.engine import EmbeddedEngine

pytestmark = pytest.mark.engine

NUM_TASKS = 24


@pytest.fixture
def backend(engine: EmbeddedEngine, engine_options: dict[str, Any]) -> EmbeddedBackend:
    return EmbeddedBackend(**engine_options)  # the session's engine: same options, same engine


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry.from_module(examples_module)


async def test_every_grammar_constrained_plan_parses(backend: EmbeddedBackend, registry: ToolRegistry) -> None:
    tasks = validity_tasks(NUM_TASKS, seed=0)
    assert len(set(tasks)) == NUM_TASKS
    report = await plan_validity(
        backend, registry, tasks, grammar=True, examples=planner_examples(examples_module), max_tokens=160
    )
    assert report.num_tasks == NUM_TASKS
    assert report.rate == 1.0, report.errors


async def test_compile_and_run_on_the_embedded_model(
    backend: EmbeddedBackend, registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFLOW_EXAMPLE_LATENCY_S", "0.05")
    options = PlannerOptions(max_replans=1, examples=planner_examples(examples_module), plan_max_tokens=160)
    async with asyncio.timeout(300):
        result = await compile_and_run(
            "Which has more people, Lima or Cairo?", tools=registry, model=backend, options=options
        )
    assert result.rounds[0].grammar and result.rounds[0].error is None
    assert result.rounds[0].nodes  # the plan had steps, and they ran
    assert result.trace.records and result.first_tool_start_s is not None
    assert result.ok and result.answer  # the joiner's schema forces an answer on the last round at the latest


def test_agentflow_run_prints_plan_timeline_and_answer(
    backend: EmbeddedBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTFLOW_EXAMPLE_LATENCY_S", "0.05")
    code = run_command("What is the population density of Paris?", tools="planner.examples", model=backend)
    out = capsys.readouterr().out
    assert "Plan (grammar):" in out and "1. " in out and "Timeline:" in out
    assert ("Answer: " in out) == (code == 0)
    run_command("What is the population of Oslo?", tools="planner.examples", model=backend, json_output=True)
    data = json.loads(capsys.readouterr().out)
    assert data["rounds"][0]["grammar"] is True and data["trace"]["records"]


async def test_the_task_set_runs_through_planner_and_react_side_by_side(backend: EmbeddedBackend) -> None:
    from planner._bench_tasks import taskset_figures

    async with asyncio.timeout(600):
        figures = await taskset_figures(
            backend, num_tasks=1, seed=0, react_max_turns=1, plan_max_tokens=128, max_tokens=32
        )
    assert figures["num_tasks"] == 1 and len(figures["tasks"]) == 1
    (row,) = figures["tasks"]
    assert row["planner"]["grammar_plans"] >= 1  # the embedded engine enforces the plan grammar
    assert row["planner"]["wall_s"] > 0 and row["react"]["wall_s"] > 0
    assert isinstance(row["planner"]["correct"], bool) and isinstance(row["react"]["correct"], bool)
    assert figures["speedup_vs_react"] == pytest.approx(
        figures["react_latency_s_mean"] / figures["planner_latency_s_mean"]
    )
