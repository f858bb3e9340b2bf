"""The executor's pure core: `RunState` transitions, with no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.ir import CallKind, CallNode, NodeState, Ref
from executor import RunState


def node(node_id: str, *deps: str) -> CallNode:
    return CallNode(id=node_id, kind=CallKind.TOOL, target="t", args=tuple(Ref(d) for d in deps))


def state_of(*nodes: CallNode) -> tuple[RunState, list[str]]:
    """A state with the nodes added in order, and the ones ready at once."""
    state = RunState()
    ready = [n.id for n in nodes if state.add(n)[0]]
    return state, ready


def states(state: RunState) -> dict[str, str]:
    return {nid: run.state.value for nid, run in state.runs.items()}


def test_add_reports_ready_nodes() -> None:
    state, ready = state_of(node("1"), node("2"), node("3", "1", "2"))
    assert ready == ["1", "2"]
    assert state.runs["3"].remaining == 2
    assert state.dependents == {"1": ["3"], "2": ["3"], "3": []}
    assert not state.all_terminal


def test_complete_makes_dependents_ready_when_their_last_input_is_done() -> None:
    state, _ = state_of(node("1"), node("2"), node("3", "1", "2"), node("4", "1"))
    state.start("1", 0.0)
    assert state.complete("1", "a", 1.0) == ["4"]  # 3 still waits for 2
    state.start("2", 0.5)
    assert state.complete("2", "b", 2.0) == ["3"]
    assert state.outputs == {"1": "a", "2": "b"}
    run = state.runs["1"]
    assert (run.state, run.output, run.start_s, run.end_s, run.duration_s) == (NodeState.DONE, "a", 0.0, 1.0, 1.0)


def test_adding_a_node_whose_deps_are_done_is_ready_at_once() -> None:
    state, _ = state_of(node("1"))
    state.start("1", 0.0)
    state.complete("1", 1, 0.1)
    ready, skipped = state.add(node("2", "1"))
    assert (ready, skipped) == (True, [])
    assert state.runs["2"].remaining == 0


def test_fail_skips_every_pending_descendant_with_the_reason() -> None:
    state, _ = state_of(node("1"), node("2", "1"), node("3", "2"), node("4", "3"), node("5"), node("6", "5", "3"))
    state.start("1", 0.0)
    skipped = state.fail("1", "ToolError: boom", 1.0)
    assert sorted(skipped) == ["2", "3", "4", "6"]
    assert states(state) == {
        "1": "failed",
        "2": "skipped",
        "3": "skipped",
        "4": "skipped",
        "5": "pending",
        "6": "skipped",
    }
    assert state.runs["1"].error == "ToolError: boom"
    for nid in ("2", "3", "4", "6"):
        assert state.runs[nid].error == "dependency '1' failed: ToolError: boom"
        assert state.runs[nid].blocked_by == "1"
    assert [r.node.id for r in state.failures()] == ["1", "2", "3", "4", "6"]
    assert state.num_terminal == 5 and not state.all_terminal


def test_fail_keeps_the_exception() -> None:
    state, _ = state_of(node("1"))
    state.start("1", 0.0)
    exc = ValueError("x")
    state.fail("1", "ToolError: ValueError: x", 1.0, exception=exc)
    assert state.runs["1"].exception is exc


def test_adding_a_node_whose_dep_already_failed_is_skipped_at_once() -> None:
    state, _ = state_of(node("1"), node("2"))
    state.start("1", 0.0)
    state.fail("1", "boom", 1.0)
    ready, skipped = state.add(node("3", "2", "1"))
    assert (ready, skipped) == (False, ["3"])
    run = state.runs["3"]
    assert run.state is NodeState.SKIPPED and run.blocked_by == "1"
    assert run.error == "dependency '1' failed: boom"
    # 2 finishing later must not revive the skipped node.
    state.start("2", 0.0)
    assert state.complete("2", "ok", 2.0) == []
    assert run.state is NodeState.SKIPPED


def test_adding_below_a_skipped_node_names_the_root_failure() -> None:
    state, _ = state_of(node("1"), node("2", "1"))
    state.start("1", 0.0)
    state.fail("1", "boom", 1.0)
    ready, skipped = state.add(node("3", "2"))
    assert (ready, skipped) == (False, ["3"])
    assert state.runs["3"].blocked_by == "1"
    assert state.runs["3"].error == "dependency '1' failed: boom"


def test_adding_below_a_cancelled_node_is_cancelled() -> None:
    state, _ = state_of(node("1"))
    state.start("1", 0.0)
    state.cancel("1", "program cancelled", 1.0)
    ready, skipped = state.add(node("2", "1"))
    assert (ready, skipped) == (False, ["2"])
    assert state.runs["2"].state is NodeState.CANCELLED
    assert state.runs["2"].error == "dependency '1' cancelled: program cancelled"


def test_cancel_a_running_node_cancels_its_descendants() -> None:
    state, _ = state_of(node("1"), node("2", "1"), node("3", "2"), node("4"))
    state.start("1", 0.0)
    assert sorted(state.cancel("1", "stop", 1.0)) == ["2", "3"]
    assert states(state) == {"1": "cancelled", "2": "cancelled", "3": "cancelled", "4": "pending"}
    assert state.runs["3"].error == "dependency '1' cancelled: stop"


def test_cancel_pending_leaves_running_and_finished_nodes() -> None:
    state, _ = state_of(node("1"), node("2"), node("3", "1"), node("4", "2"))
    state.start("1", 0.0)
    state.start("2", 0.0)
    state.complete("2", "ok", 1.0)
    cancelled = state.cancel_pending("program cancelled")
    assert cancelled == ["3", "4"]
    assert states(state) == {"1": "running", "2": "done", "3": "cancelled", "4": "cancelled"}
    assert state.runs["3"].error == "program cancelled"
    assert not state.all_terminal
    state.cancel("1", "program cancelled", 2.0)  # the running one, once its task stops
    assert state.all_terminal


def test_all_terminal_counts_every_outcome() -> None:
    state, _ = state_of(node("1"), node("2"), node("3", "2"), node("4"))
    for nid in ("1", "2", "4"):
        state.start(nid, 0.0)
    state.complete("1", 1, 1.0)
    state.fail("2", "boom", 1.0)  # skips 3
    assert not state.all_terminal
    state.cancel("4", "stop", 1.0)
    assert state.all_terminal
    assert state.num_terminal == 4
    assert [r.state for r in state.failures()] == [NodeState.FAILED, NodeState.SKIPPED, NodeState.CANCELLED]


def test_empty_state_is_terminal() -> None:
    assert RunState().all_terminal


def test_invariants_are_asserted() -> None:
    state, _ = state_of(node("1"))
    state.start("1", 0.0)
    with pytest.raises(AssertionError, match="started twice"):
        state.start("1", 0.0)
    state.complete("1", 1, 1.0)
    with pytest.raises(AssertionError, match="finished twice"):
        state.fail("1", "late", 2.0)


def test_durations() -> None:
    state, _ = state_of(node("1"), node("2"))
    state.start("1", 0.25)
    state.complete("1", 1, 1.0)
    assert state.durations_s() == {"1": 0.75, "2": 0.0}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_simulated_run_reaches_a_consistent_end(data: st.DataObject) -> None:
    """Drive `RunState` like the executor would, in random order: every node ends, and each end is right."""
    num_nodes = data.draw(st.integers(1, 25))
    deps = {
        f"n{i}": data.draw(st.lists(st.sampled_from([f"n{j}" for j in range(i)]), unique=True, max_size=3)) if i else []
        for i in range(num_nodes)
    }
    fails = data.draw(st.sets(st.sampled_from(sorted(deps))))
    state = RunState()
    ready: list[str] = []
    for nid, parents in deps.items():
        if state.add(node(nid, *parents))[0]:
            ready.append(nid)
    now_s = 0.0
    while ready:
        nid = ready.pop(data.draw(st.integers(0, len(ready) - 1)))
        now_s += 1.0
        state.start(nid, now_s)
        if nid in fails:
            state.fail(nid, "boom", now_s)
        else:
            ready.extend(state.complete(nid, nid, now_s))
    assert state.all_terminal
    for nid, parents in deps.items():
        run = state.runs[nid]
        blocked = nid in fails or any(state.runs[p].state is not NodeState.DONE for p in parents)
        if run.state is NodeState.DONE:
            assert not blocked and all(state.runs[p].end_s <= run.start_s for p in parents)  # type: ignore[operator]
        elif run.state is NodeState.FAILED:
            assert nid in fails
        else:
            assert run.state is NodeState.SKIPPED and run.start_s is None
            assert run.blocked_by in fails and state.runs[run.blocked_by].state is NodeState.FAILED
