"""The ReAct baseline, the joiner's reply parsing, `agentflow run` plumbing and the public API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import planner
from agentflow.cli import build_parser
from agentflow.exceptions import UserError
from agentflow.testing import ScriptedLLM
from agentflow.tools import ToolRegistry
from planner import Finish, Replan, parse_join_output, run_react
from planner._cli import load_tools_module, planner_examples, run_command

# -- ReAct ---------------------------------------------------------------------------------------------


async def test_react_runs_one_call_per_turn(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(
        [
            'Thought: first a\nAction: lookup("a")',
            "Thought: then add\nAction: add(2, b=3.5)",
            "Thought: done\nFinal Answer: 5.5 and value of a",
        ]
    )
    result = await run_react("task", tools=registry, model=llm)
    assert result.ok and result.answer == "5.5 and value of a"
    assert [t.observation for t in result.turns] == ["value of a", "5.5", None]
    assert result.num_llm_calls == 3 and result.trace.max_concurrency() == 1
    assert llm.requests[1].messages[-1] == {"role": "user", "content": "Observation: value of a"}
    assert llm.requests[0].stop == ("Observation:",)


async def test_react_turns_errors_into_observations(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(
        [
            "I am not sure.",
            "Action: nosuch(1)",
            'Action: explode("bang")',
            "Action: anything($1)",
            "Final Answer: gave up",
        ]
    )
    result = await run_react("task", tools=registry, model=llm)
    observations = [t.observation for t in result.turns[:-1]]
    assert observations[0].startswith("Error: reply with")
    assert "unknown tool 'nosuch'" in observations[1]
    assert "bang" in observations[2]
    assert "references belong to plans" in observations[3]
    assert result.answer == "gave up"


async def test_react_stops_after_max_turns(registry: ToolRegistry) -> None:
    llm = ScriptedLLM(lambda request: "Action: now()")
    async with asyncio.timeout(10):
        result = await run_react("task", tools=registry, model=llm, max_turns=3)
    assert not result.ok and "3 turns" in (result.reason or "")


# -- joiner replies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"thought": "t", "action": "finish", "answer": "Lima"}', Finish(answer="Lima", thought="t")),
        ('Sure: {"action": "Replan", "reason": "missing Cairo"} ok', Replan(reason="missing Cairo")),
        ('{"answer": 42}', Finish(answer="42")),
        ("Thought: enough\nAction: Finish(Lima is larger)", Finish(answer="Lima is larger", thought="enough")),
        ('Thought: no\nAction: Replan("look up Cairo")', Replan(reason="look up Cairo", thought="no")),
        ("Action: finish: Paris", Finish(answer="Paris")),
        ("Lima has more people.", Finish(answer="Lima has more people.")),
        ("   ", Replan(reason="the joiner gave an empty reply")),
    ],
)
def test_joiner_replies_are_read_robustly(text: str, expected: object) -> None:
    assert parse_join_output(text) == expected


# -- agentflow run ---------------------------------------------------------------------------------------


def test_tools_module_from_a_name_or_a_path(tmp_path: Path) -> None:
    assert load_tools_module("planner.examples").population.name == "population"
    path = tmp_path / "my_tools.py"
    path.write_text(
        "from agentflow import tool\n"
        "PLANNER_EXAMPLES = [('Say hi', '1. hello(\"you\")\\n2. join()')]\n"
        "@tool\ndef hello(name: str) -> str:\n    '''Greet.'''\n    return 'hi ' + name\n"
    )
    module = load_tools_module(str(path))
    assert ToolRegistry.from_module(module).names() == ["hello"]
    (example,) = planner_examples(module) or []
    assert example.task == "Say hi"
    with pytest.raises(UserError, match="no such file"):
        load_tools_module(str(tmp_path / "missing.py"))
    with pytest.raises(UserError, match="cannot import"):
        load_tools_module("no_such_module_anywhere")


def test_run_command_on_a_scripted_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shout_tools.py"
    path.write_text(
        "from agentflow import tool\n@tool\ndef shout(text: str) -> str:\n    '''Upper.'''\n    return text.upper()\n"
    )
    llm = ScriptedLLM(['1. shout("a")\n2. shout("b")\n3. join()', "Action: Finish(A and B)"])
    assert run_command("shout a and b", tools=str(path), model=llm) == 0
    out = capsys.readouterr().out
    assert out.startswith('Plan:\n1. shout("a")') and "Timeline:" in out and out.rstrip().endswith("Answer: A and B")
    llm = ScriptedLLM(['1. shout("a")\n2. join()', '{"action": "finish", "answer": "A"}'])
    assert run_command("x", tools=str(path), model=llm, json_output=True) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == "A"
    failing = ScriptedLLM(lambda request: "no plan here")
    assert run_command("x", tools=str(path), model=failing, max_replans=0) == 1
    assert "No answer:" in capsys.readouterr().out


def test_cli_registers_run_and_bench_planner() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "do it", "--tools", "planner.examples", "--json", "--batch", "--no-grammar"])
    assert args.task == "do it" and args.json and args.batch and args.no_grammar
    args = parser.parse_args(["bench", "planner", "--no-engine", "--json", "out.json"])
    assert args.no_engine and str(args.json) == "out.json"


def test_public_api() -> None:
    assert sorted(planner.__all__) == sorted(
        [
            "DEFAULT_MAX_STEPS", "END_OF_PLAN", "Finish", "JoinDecision", "Observation", "Plan", "PlanExample",
            "PlanParser", "PlanRound", "PlanRunResult", "PlannerOptions", "ReactResult", "ReactTurn", "Replan",
            "build_grammar", "build_joiner_prompt", "build_planner_prompt", "build_react_prompt", "compile_and_run",
            "compile_and_run_sync", "default_examples", "format_plan", "format_step", "format_value", "join_schema",
            "parse_call", "parse_join_output", "parse_plan", "render_observations", "run_react",
        ]
    )  # fmt: skip
    for name in planner.__all__:
        assert hasattr(planner, name), name
