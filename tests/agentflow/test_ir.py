"""The IR: call nodes, their derived dependencies, graph building, order and critical path."""

from __future__ import annotations

import dataclasses

import pytest

from agentflow.exceptions import CycleError, GraphError, UnknownNodeError, UnknownToolError
from agentflow.ir import (
    TERMINAL_STATES,
    CallGraph,
    CallKind,
    CallNode,
    Concat,
    NodeState,
    ProgramFacts,
    Ref,
    iter_refs,
    resolve_value,
)


def node(node_id: str, *args: object, target: str = "t", duration_s: float | None = None, **kwargs: object) -> CallNode:
    return CallNode(
        id=node_id, kind=CallKind.TOOL, target=target, args=args, kwargs=kwargs, expected_duration_s=duration_s
    )


# -- nodes --------------------------------------------------------------------------------------------


def test_deps_come_from_nested_refs_in_first_seen_order() -> None:
    n = node(
        "9",
        Ref("3"),
        [Ref("1"), (Ref("2"), {"deep": [Ref("3")]})],
        text=Concat(parts=("weather in ", Ref("4"), " and ", Ref("1"))),
        options={"k": Ref("5")},
    )
    assert n.deps == ("3", "1", "2", "4", "5")


def test_literals_make_no_deps() -> None:
    assert node("1", "a", 2, [3.0], {"x": None}).deps == ()


def test_deps_cannot_be_passed_in() -> None:
    with pytest.raises(TypeError):
        CallNode(id="1", kind=CallKind.TOOL, target="t", deps=("2",))  # type: ignore[call-arg]


def test_self_reference_is_a_cycle() -> None:
    with pytest.raises(CycleError) as info:
        node("1", Ref("1"))
    assert info.value.cycle == ["1", "1"]
    with pytest.raises(CycleError):
        node("2", text=Concat(parts=("x", Ref("2"))))


def test_empty_id_is_rejected() -> None:
    with pytest.raises(GraphError, match="non-empty"):
        node("")


def test_nodes_are_frozen_values() -> None:
    n = node("1", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.target = "other"  # type: ignore[misc]
    assert n == node("1", 1)


def test_ref_and_states() -> None:
    assert str(Ref("7")) == "$7"
    assert Ref("7") == Ref("7") and hash(Ref("7")) == hash(Ref("7"))
    assert frozenset({NodeState.DONE, NodeState.FAILED, NodeState.SKIPPED, NodeState.CANCELLED}) == TERMINAL_STATES
    assert NodeState.PENDING not in TERMINAL_STATES and NodeState.RUNNING not in TERMINAL_STATES
    assert NodeState("done") is NodeState.DONE and CallKind("llm") is CallKind.LLM


def test_iter_refs_depth_first() -> None:
    value = {"a": [Ref("1"), Concat(parts=(Ref("2"), "x"))], "b": (Ref("3"),)}
    assert [r.node_id for r in iter_refs(value)] == ["1", "2", "3"]
    assert list(iter_refs("plain")) == []


def test_resolve_value() -> None:
    outputs = {"1": 10, "2": "Paris", "3": {"temp": 20}}
    value = {
        "n": Ref("1"),
        "nested": [Ref("2"), (Ref("1"), "lit")],
        "text": Concat(parts=("weather in ", Ref("2"), ": ", Ref("3"))),
        "plain": 5,
    }
    assert resolve_value(value, outputs) == {
        "n": 10,
        "nested": ["Paris", (10, "lit")],
        "text": "weather in Paris: {'temp': 20}",
        "plain": 5,
    }
    assert isinstance(resolve_value((Ref("1"),), outputs), tuple)
    with pytest.raises(KeyError):
        resolve_value(Ref("missing"), outputs)


# -- building -----------------------------------------------------------------------------------------


def test_add_in_streaming_order() -> None:
    graph = CallGraph()
    graph.add(node("1"))
    graph.add(node("2", Ref("1")))
    assert len(graph) == 2 and "2" in graph and "3" not in graph
    assert graph["2"].deps == ("1",)
    assert [n.id for n in graph] == ["1", "2"]
    assert graph.successors("1") == ["2"]


def test_add_rejects_a_reference_to_a_node_not_yet_added() -> None:
    graph = CallGraph()
    with pytest.raises(UnknownNodeError) as info:
        graph.add(node("2", Ref("1")))
    assert (info.value.node_id, info.value.referenced_by) == ("1", "2")
    assert len(graph) == 0


def test_add_rejects_duplicate_ids() -> None:
    graph = CallGraph()
    graph.add(node("1"))
    with pytest.raises(GraphError, match="duplicate node id '1'"):
        graph.add(node("1"))


def test_add_batch_accepts_any_order_and_returns_dependency_order() -> None:
    graph = CallGraph()
    batch = [node("3", Ref("2"), Ref("1")), node("2", Ref("1")), node("1"), node("4")]
    ordered = graph.add_batch(batch)
    assert [n.id for n in ordered] == ["1", "2", "3", "4"]
    assert graph.topological_order() == ["1", "2", "3", "4"]


def test_add_batch_can_reference_nodes_already_in_the_graph() -> None:
    graph = CallGraph()
    graph.add(node("1"))
    graph.add_batch([node("3", Ref("2")), node("2", Ref("1"))])
    assert graph.descendants("1") == {"2", "3"}


def test_add_batch_cycle_names_the_cycle_and_adds_nothing() -> None:
    graph = CallGraph()
    graph.add(node("0"))
    batch = [node("1", Ref("3")), node("2", Ref("1")), node("3", Ref("2"), Ref("0")), node("4")]
    with pytest.raises(CycleError) as info:
        graph.add_batch(batch)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and set(cycle) == {"1", "2", "3"} and len(cycle) == 4
    assert [n.id for n in graph] == ["0"]


def test_add_batch_unknown_reference_adds_nothing() -> None:
    graph = CallGraph()
    with pytest.raises(UnknownNodeError) as info:
        graph.add_batch([node("1"), node("2", Ref("9"))])
    assert info.value.node_id == "9"
    assert len(graph) == 0


def test_add_batch_duplicates() -> None:
    graph = CallGraph()
    with pytest.raises(GraphError, match=r"duplicate node ids: \['1'\]"):
        graph.add_batch([node("1"), node("1")])
    graph.add(node("1"))
    with pytest.raises(GraphError, match="duplicate node id '1'"):
        graph.add_batch([node("1")])


def test_from_nodes_checks_targets() -> None:
    facts = ProgramFacts(program_id="p", arrival_s=1.0, deadline_at_s=2.0)
    graph = CallGraph.from_nodes([node("2", Ref("1"), target="b"), node("1", target="a")], facts=facts)
    assert graph.facts is facts and len(graph) == 2
    with pytest.raises(UnknownToolError, match="unknown tool 'b'") as info:
        CallGraph.from_nodes([node("1", target="a"), node("2", target="b")], known_targets=["a"])
    assert info.value.name == "b"


# -- reading ------------------------------------------------------------------------------------------


def diamond() -> CallGraph:
    # 1 -> {2, 3} -> 4, and a separate 5
    return CallGraph.from_nodes(
        [
            node("1", duration_s=1.0),
            node("2", Ref("1"), duration_s=5.0),
            node("3", Ref("1"), duration_s=2.0),
            node("4", Ref("2"), Ref("3"), duration_s=1.0),
            node("5", duration_s=6.0),
        ]
    )


def test_topological_order_breaks_ties_by_insertion() -> None:
    graph = CallGraph.from_nodes([node("b"), node("a"), node("c", Ref("a")), node("d", Ref("b"))])
    assert graph.topological_order() == ["b", "a", "c", "d"]


def test_critical_path_from_expected_durations() -> None:
    path, length = diamond().critical_path()
    assert path == ["1", "2", "4"] and length == pytest.approx(7.0)


def test_critical_path_from_measured_durations() -> None:
    path, length = diamond().critical_path({"1": 1.0, "2": 1.0, "3": 3.0, "4": 1.0, "5": 1.0})
    assert path == ["1", "3", "4"] and length == pytest.approx(5.0)
    path, length = diamond().critical_path({"5": 9.0})  # unknown durations count as 0
    assert path == ["5"] and length == pytest.approx(9.0)


def test_critical_path_of_an_empty_graph() -> None:
    assert CallGraph().critical_path() == ([], 0.0)


def test_nx_graph_is_a_read_only_view() -> None:
    view = diamond().nx_graph
    assert set(view.edges) == {("1", "2"), ("1", "3"), ("2", "4"), ("3", "4")}
    with pytest.raises(Exception):  # noqa: B017 - networkx raises its own frozen-graph error
        view.add_edge("4", "1")


def test_render() -> None:
    graph = CallGraph()
    graph.add(node("1", "Paris", target="weather"))
    graph.add(node("2", Ref("1"), text=Concat(parts=("in ", Ref("1"))), long="x" * 100, target="summarize"))
    lines = graph.render().splitlines()
    assert lines[0] == "[1] tool weather('Paris')"
    assert lines[1].startswith('[2] tool summarize($1, text="in $1", long=\'xxx')
    assert "...," not in lines[1] and lines[1].endswith("  <- 1")
    assert "..." in lines[1]


def test_a_node_with_another_expected_duration_is_a_copy() -> None:
    node = CallNode(
        id="2", kind=CallKind.TOOL, target="t", args=(Ref("1"),), kwargs={"x": [Ref("0")]}, label="2. t($1)"
    )
    timed = node.with_expected_duration(expected_duration_s=1.5)
    assert timed.expected_duration_s == 1.5 and node.expected_duration_s is None
    assert (timed.id, timed.target, timed.args, timed.kwargs, timed.deps, timed.label) == (
        node.id,
        node.target,
        node.args,
        node.kwargs,
        node.deps,
        node.label,
    )
    again = CallNode(
        id="2",
        kind=CallKind.TOOL,
        target="t",
        args=(Ref("1"),),
        kwargs={"x": [Ref("0")]},
        label="2. t($1)",
        expected_duration_s=1.5,
    )
    assert timed == again
