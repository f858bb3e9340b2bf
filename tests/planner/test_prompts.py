"""Planner, joiner and ReAct prompts for a fixed registry, snapshot-tested.

Regenerate after an intended change: `UPDATE_SNAPSHOTS=1 pytest tests/planner/test_prompts.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import planner.examples as examples_module
from agentflow.tools import ToolRegistry
from planner import (
    Observation,
    PlanExample,
    build_joiner_prompt,
    build_planner_prompt,
    build_react_prompt,
    default_examples,
    parse_plan,
    render_observations,
)
from planner._cli import planner_examples

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; UPDATE_SNAPSHOTS=1 regenerates it"


def _render(messages: tuple[dict[str, str], ...] | list[dict[str, str]]) -> str:
    return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)


@pytest.fixture
def examples_registry() -> ToolRegistry:
    return ToolRegistry.from_module(examples_module)


def test_planner_prompt_snapshot(examples_registry: ToolRegistry) -> None:
    messages = build_planner_prompt(
        "Which has more people, Lima or Cairo?", examples_registry, examples=planner_examples(examples_module)
    )
    _check("planner_prompt.txt", _render(messages))


def test_replan_prompt_snapshot(examples_registry: ToolRegistry) -> None:
    history = 'Steps so far and their results:\n1. population("Lima") -> 10092000\nThe plan was rejected: ...'
    messages = build_planner_prompt(
        "Which has more people, Lima or Cairo?", examples_registry, examples=[], history=history, first_step=2
    )
    _check("replan_prompt.txt", _render(messages))


def test_joiner_prompts_snapshot(examples_registry: ToolRegistry) -> None:
    plan = parse_plan(
        '1. population("Lima")\n2. population("Atlantis")\n3. largest(["Lima"], [$1])\n4. join()', examples_registry
    )
    from agentflow.ir import NodeState

    observations = render_observations(
        [
            Observation(node=plan.nodes[0], state=NodeState.DONE, output=10092000),
            Observation(node=plan.nodes[1], state=NodeState.FAILED, error="KeyError: no data for 'Atlantis'"),
            Observation(node=plan.nodes[2], state=NodeState.DONE, output="Lima"),
        ]
    )
    structured = build_joiner_prompt("Which is bigger?", observations, allow_replan=True, structured=True)
    text = build_joiner_prompt("Which is bigger?", observations, allow_replan=False, structured=False)
    _check("joiner_prompts.txt", _render(structured) + "----\n" + _render(text))


def test_react_prompt_snapshot(examples_registry: ToolRegistry) -> None:
    _check("react_prompt.txt", _render(build_react_prompt("Which has more people, Lima or Cairo?", examples_registry)))


def test_prompt_lists_every_tool_and_semantic_function(examples_registry: ToolRegistry) -> None:
    system = build_planner_prompt("x", examples_registry)[0]["content"]
    for callee in examples_registry:
        assert f"- {callee.name}(" in system
    assert "summarize(facts: str) -> str" in system  # postponed annotations rendered as written


def test_default_example_uses_the_registry(examples_registry: ToolRegistry) -> None:
    (example,) = default_examples(examples_registry)
    assert isinstance(example, PlanExample)
    parse_plan(example.plan, examples_registry)  # the synthetic example is itself a valid plan
