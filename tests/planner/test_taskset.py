"""The planner task set: at least 40 tasks with exact answers, tools over shipped data, a checker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from agentflow.testing import ScriptedLLM
from planner import build_grammar, compile_and_run, parse_plan
from planner.taskset import TASKS, WORLD, check_answer, make_registry, spread_tasks


def test_at_least_40_tasks_each_needing_2_to_8_lookups() -> None:
    assert len(TASKS) >= 40
    assert all(2 <= task.lookups <= 8 for task in TASKS)
    assert len({task.text for task in TASKS}) == len(TASKS) and len({t.task_id for t in TASKS}) == len(TASKS)
    assert {task.kind for task in TASKS} == {"name", "number"}


def test_answers_come_from_the_data() -> None:
    by_text = {task.text: task for task in TASKS}
    assert by_text["Which city has the most people: Paris and Rome?"].answer == "Rome"
    tokyo, paris = WORLD["cities"]["Tokyo"]["population"], WORLD["cities"]["Paris"]["population"]
    assert by_text["How many more people live in Tokyo than in Paris?"].answer == tokyo - paris
    assert by_text["How many days after France's national day in 2027 is Germany's?"].answer == 81  # Jul 14 -> Oct 3


@pytest.mark.parametrize(
    ("text", "answer", "ok"),
    [
        ("Which city has the most people: Paris and Rome?", "Rome, with 2,746,984 people.", True),
        ("Which city has the most people: Paris and Rome?", "Paris", False),
        ("Which city has the most people: Paris and Rome?", "Romeo", False),
        ("How many more people live in Tokyo than in Paris?", "11,991,384 more people.", True),
        ("How many more people live in Tokyo than in Paris?", "about 12 million", False),
        ("What is the population density of Paris, in people per square kilometre?", "19949.24 per km2", True),
        ("What is the population density of Paris, in people per square kilometre?", "about 19949", True),
        ("What is the population density of Paris, in people per square kilometre?", "19950", False),
    ],
)
def test_the_checker_reads_free_text(text: str, answer: str, ok: bool) -> None:
    task = next(t for t in TASKS if t.text == text)
    assert check_answer(task, answer) is ok
    assert check_answer(task, None) is False


async def test_the_tools_answer_and_take_their_seeded_latency() -> None:
    registry = make_registry(latency_s=(0.05, 0.1), seed=3)
    started = time.perf_counter()
    population = await registry.get("city_population").fn("tokyo")
    assert population == WORLD["cities"]["Tokyo"]["population"]
    assert 0.05 <= time.perf_counter() - started < 0.5
    assert registry.get("days_between").fn("2027-07-14", "2027-10-03") == 81
    with pytest.raises(KeyError, match="no city named 'Atlantis'"):
        await registry.get("city_population").fn("Atlantis")


async def test_a_right_plan_solves_a_task_and_plans_of_32_steps_fit_the_grammar() -> None:
    task = next(t for t in TASKS if t.lookups == 8 and t.kind == "number")
    cities = task.text.removeprefix("What is the total population of ").removesuffix("?").replace(" and ", ", ")
    names = [c.strip() for c in cities.split(",")]
    steps = [f'{i}. city_population("{name}")' for i, name in enumerate(names, start=1)]
    refs = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    plan = "\n".join([*steps, f"{len(names) + 1}. total([{refs}])", f"{len(names) + 2}. join()"])
    finish = json.dumps({"thought": "summed", "action": "finish", "answer": f"{task.answer:,}"})
    registry = make_registry()
    result = await asyncio.wait_for(
        compile_and_run(task.text, tools=registry, model=ScriptedLLM([plan, finish]), max_replans=0), 10
    )
    assert check_answer(task, result.answer)
    long_plan = "\n".join(f'{i}. city_population("Paris")' for i in range(1, 33)) + "\n33. join()"
    assert len(parse_plan(long_plan, registry).nodes) == 32
    assert "step32 ::=" in build_grammar(registry) and "step33 ::=" not in build_grammar(registry)


def test_a_spread_of_tasks_covers_every_kind_and_lookup_count() -> None:
    picked = spread_tasks(12)
    assert len(picked) == len(set(t.task_id for t in picked)) == 12
    kinds = {t.text.split(":")[0].split(" of ")[0][:24] for t in picked}
    assert len(kinds) >= 8  # the first 12 would be three kinds only
    assert min(t.lookups for t in picked) == 2 and max(t.lookups for t in picked) >= 5
    assert spread_tasks(None) == TASKS == spread_tasks(len(TASKS) + 5)
    with pytest.raises(ValueError, match="num_tasks"):
        spread_tasks(0)
