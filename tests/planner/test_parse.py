"""The plan parser: the LLMCompiler form to IR nodes, and every bad input rejected with its line."""

from __future__ import annotations

import pytest

from agentflow.exceptions import PlanError
from agentflow.ir import CallKind, CallNode, Concat, Ref
from agentflow.tools import ToolRegistry
from planner import PlanParser, format_plan, parse_call, parse_plan


def test_parses_the_llmcompiler_form(registry: ToolRegistry) -> None:
    text = (
        "Thought: two lookups, then combine.\n"
        '1. lookup("a")\n'
        "2. lookup(key='b')\n"
        '3. pack([$1, ${2}], meta={"n": -2, "ok": True, "none": None, "t": (1, 2.5)})\n'
        "Thought: done\n"
        "4. join()<END_OF_PLAN>\n"
    )
    plan = parse_plan(text, registry)
    assert [n.id for n in plan.nodes] == ["1", "2", "3"]
    assert plan.thoughts == ("two lookups, then combine.", "done")
    first, second, third = plan.nodes
    assert first == CallNode(id="1", kind=CallKind.TOOL, target="lookup", args=("a",), label='1. lookup("a")')
    assert second.kwargs == {"key": "b"}
    assert third.args == ([Ref("1"), Ref("2")],)
    assert third.kwargs == {"meta": {"n": -2, "ok": True, "none": None, "t": (1, 2.5)}}
    assert third.deps == ("1", "2")


def test_references_inside_strings_become_concat(registry: ToolRegistry) -> None:
    plan = parse_plan('1. lookup("x")\n2. lookup("weather in $1, ${1}0 and $$ ok")\n3. lookup("$1")\njoin()', registry)
    assert plan.nodes[1].args == (Concat(("weather in ", Ref("1"), ", ", Ref("1"), "0 and $$ ok")),)
    assert plan.nodes[2].args == (Ref("1"),)  # a whole-string reference passes the value itself


def test_semantic_functions_are_llm_nodes(registry: ToolRegistry) -> None:
    plan = parse_plan('1. lookup("x")\n2. describe($1)\n3. join()', registry)
    assert [n.kind for n in plan.nodes] == [CallKind.TOOL, CallKind.LLM]


def test_code_fences_blank_lines_and_unnumbered_join_are_fine(registry: ToolRegistry) -> None:
    plan = parse_plan("```\n\n1) now()\n\n  join()\n```\nignored after join", registry)
    assert [n.target for n in plan.nodes] == ["now"]


def test_text_after_join_is_ignored(registry: ToolRegistry) -> None:
    parser = PlanParser(registry)
    assert [n.id for n in parser.feed("1. now()\n2. join()\n3. nonsense(\n")] == ["1"]
    assert parser.done
    assert parser.finish().nodes[0].target == "now"


def test_streaming_emits_each_node_when_its_line_completes(registry: ToolRegistry) -> None:
    parser = PlanParser(registry)
    assert parser.feed('1. lookup("a') == []
    assert parser.feed('")') == []
    emitted = parser.feed("\n2. now(")
    assert [n.id for n in emitted] == ["1"]
    assert [n.id for n in parser.feed(")\n3. join()")] == ["2"]
    assert parser.finish().nodes == parser.nodes


def test_replan_numbering_and_references_to_earlier_rounds(registry: ToolRegistry) -> None:
    plan = parse_plan(
        "4. pack([$1, $3])\n5. join()", registry, first_step=4, available={"1", "3"}, taken={"1", "2", "3"}
    )
    assert plan.nodes[0].deps == ("1", "3")
    with pytest.raises(PlanError, match="produced no value") as err:
        parse_plan("4. anything($2)\n5. join()", registry, first_step=4, available={"1", "3"}, taken={"1", "2", "3"})
    assert err.value.line_no == 1
    with pytest.raises(PlanError, match="continue after the earlier steps"):
        parse_plan("1. now()\n2. join()", registry, first_step=4, available={"1"}, taken={"1", "2", "3"})


def test_format_plan_round_trips(registry: ToolRegistry) -> None:
    text = '1. lookup("a \\"q\\" \\\\ \\n")\n2. add(1, c=-3)\n3. anything("in ${1}", y=[$2, {"k": (1,)}])\n4. join()'
    plan = parse_plan(text, registry)
    assert format_plan(plan.nodes) == text
    assert parse_plan(format_plan(plan.nodes), registry).nodes == plan.nodes


def test_parse_call_checks_the_registry(registry: ToolRegistry) -> None:
    node = parse_call("choose('fast', n=2)", registry, node_id="7")
    assert node.id == "7" and node.kwargs == {"n": 2}


# -- bad input: each raises PlanError carrying the line number and the line -----------------------------


@pytest.mark.parametrize(
    ("text", "line_no", "message"),
    [
        pytest.param("Sure! Here is the plan:\n1. now()\n2. join()", 1, "not a plan line", id="garbage-prose"),
        pytest.param('1. now()\n2. lookup("a"\n3. join()', 2, "cannot parse", id="unbalanced"),
        pytest.param('1. lookup("never closed)\n2. join()', 1, "cannot parse", id="unterminated-string"),
        pytest.param("1. now()\n2. lookup(", 2, "cannot parse", id="truncated-mid-call"),
        pytest.param('1. now()\n2. lookup("a")', 2, "without join", id="truncated-no-join"),
        pytest.param("", 1, "without join", id="empty"),
        pytest.param("1. now()\n<END_OF_PLAN>", 2, "without join", id="end-marker-without-join"),
        pytest.param("1. lookup($7)\n2. join()", 1, "later step", id="forward-ref"),
        pytest.param('1. now()\n2. lookup("at $7")\n3. join()', 2, "later step", id="forward-ref-in-string"),
        pytest.param("1. anything($2)\n2. anything($1)\n3. join()", 1, "cycle", id="cycle"),
        pytest.param("1. anything($1)\n2. join()", 1, "its own result", id="self-ref"),
        pytest.param("1. now()\n2. anything($0)\n3. join()", 2, "no step 0", id="ref-to-missing-step"),
        pytest.param("1. search('x')\n2. join()", 1, "unknown tool 'search'", id="unknown-tool"),
        pytest.param("1. add()\n2. join()", 1, "missing a required argument: 'a'", id="missing-arg"),
        pytest.param("1. add(1, 2, 3, 4)\n2. join()", 1, "too many positional", id="too-many"),
        pytest.param("1. add(1, d=2)\n2. join()", 1, "unexpected keyword", id="unknown-keyword"),
        pytest.param("1. add(1, a=2)\n2. join()", 1, "multiple values", id="duplicate-argument"),
        pytest.param("1. choose('medium')\n2. join()", 1, "bad arguments for choose", id="bad-literal-value"),
        pytest.param("1. lookup(key)\n2. join()", 1, "not a literal", id="bare-name"),
        pytest.param("1. lookup(open('x').read())\n2. join()", 1, "not a literal", id="code-is-not-a-literal"),
        pytest.param("1. lookup(f'{1}')\n2. join()", 1, "not a literal", id="f-string"),
        pytest.param("1. lookup(*['a'])\n2. join()", 1, "not allowed", id="star-args"),
        pytest.param("1. now()\n1. now()\n2. join()", 2, "numbered twice", id="duplicate-step"),
        pytest.param("2. now()\n1. now()\n3. join()", 2, "must increase", id="decreasing-steps"),
        pytest.param("1. os.system('rm')\n2. join()", 1, "one call", id="attribute-call"),
        pytest.param("1. join(1)\n2. join()", 1, "join() takes no arguments", id="join-with-args"),
        pytest.param("1. now() + now()\n2. join()", 1, "one call", id="expression"),
    ],
)
def test_bad_plans_raise_plan_error_with_the_line(
    registry: ToolRegistry, text: str, line_no: int, message: str
) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(text, registry)
    assert message in str(err.value) or (message == "cycle" and "cycle" in err.value.message)
    assert err.value.line_no == line_no
    assert err.value.line == text.split("\n")[line_no - 1]


def test_streaming_rejects_the_bad_line_before_it_is_emitted(registry: ToolRegistry) -> None:
    parser = PlanParser(registry)
    assert [n.id for n in parser.feed("1. now()\n")] == ["1"]
    with pytest.raises(PlanError) as err:
        parser.feed("2. lookup($7)\n")
    assert err.value.line_no == 2
    assert [n.id for n in parser.nodes] == ["1"]  # step 2 never became a node
    with pytest.raises(PlanError, match="earlier error"):
        parser.feed("3. now()\n")
