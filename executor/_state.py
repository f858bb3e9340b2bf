"""The pure core of the executor: which nodes are ready, what a result or failure changes.

No event loop here. Every transition is a method that returns the nodes it made ready or
skipped, so the async shell only dispatches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentflow.ir import TERMINAL_STATES, CallNode, NodeState

__all__ = ["NodeRun", "RunState"]


@dataclass(slots=True)
class NodeRun:
    """Mutable run record of one node."""

    node: CallNode
    state: NodeState = NodeState.PENDING
    remaining: int = 0  # dependencies not yet done
    output: Any = None
    error: str | None = None  # why it failed, was skipped or cancelled
    exception: BaseException | None = None
    start_s: float | None = None  # seconds since the program started
    end_s: float | None = None
    attempts: int = 0
    blocked_by: str | None = None  # the failed dependency that caused a skip
    usage: dict[str, int] | None = None  # LLM calls: prompt, completion and prefix-cached tokens
    serving: dict[str, Any] | None = None  # LLM calls: what a program-aware engine did with it

    @property
    def duration_s(self) -> float:
        if self.start_s is None or self.end_s is None:
            return 0.0
        return self.end_s - self.start_s


@dataclass(slots=True)
class RunState:
    """States of every node of one program run."""

    runs: dict[str, NodeRun] = field(default_factory=dict)  # node id -> run record
    dependents: dict[str, list[str]] = field(default_factory=dict)  # node id -> nodes waiting on it
    outputs: dict[str, Any] = field(default_factory=dict)  # node id -> output, for done nodes
    num_terminal: int = 0

    def add(self, node: CallNode) -> tuple[bool, list[str]]:
        """Track a node whose dependencies are known; returns (ready now, nodes skipped)."""
        run = NodeRun(node)
        self.runs[node.id] = run
        self.dependents[node.id] = []
        remaining = 0
        for dep in node.deps:
            dep_run = self.runs[dep]
            if dep_run.state is NodeState.DONE:
                continue
            if dep_run.state in TERMINAL_STATES:
                return False, self._skip_from(node.id, dep)
            self.dependents[dep].append(node.id)
            remaining += 1
        run.remaining = remaining
        return remaining == 0, []

    def start(self, node_id: str, now_s: float) -> None:
        run = self.runs[node_id]
        assert run.state is NodeState.PENDING, f"{node_id} started twice"
        run.state = NodeState.RUNNING
        run.start_s = now_s

    def complete(self, node_id: str, output: Any, now_s: float) -> list[str]:
        """Record an output; returns the dependents that became ready."""
        run = self._finish(node_id, NodeState.DONE, now_s)
        run.output = output
        self.outputs[node_id] = output
        ready = []
        runs = self.runs
        for dependent in self.dependents[node_id]:
            dep_run = runs[dependent]
            if dep_run.state is NodeState.PENDING:
                dep_run.remaining -= 1
                if dep_run.remaining == 0:
                    ready.append(dependent)
        return ready

    def fail(self, node_id: str, error: str, now_s: float, *, exception: BaseException | None = None) -> list[str]:
        """Record a failure; returns every pending descendant, now skipped."""
        run = self._finish(node_id, NodeState.FAILED, now_s)
        run.error = error
        run.exception = exception
        return self._skip_descendants(node_id)

    def cancel(self, node_id: str, reason: str, now_s: float) -> list[str]:
        """Cancel one pending or running node; returns descendants, now cancelled too."""
        run = self._finish(node_id, NodeState.CANCELLED, now_s)
        run.error = reason
        return self._skip_descendants(node_id, state=NodeState.CANCELLED)

    def cancel_pending(self, reason: str) -> list[str]:
        """Cancel every node that has not started."""
        cancelled = [nid for nid, run in self.runs.items() if run.state is NodeState.PENDING]
        for node_id in cancelled:
            run = self.runs[node_id]
            run.state = NodeState.CANCELLED
            run.error = reason
            self.num_terminal += 1
        return cancelled

    @property
    def all_terminal(self) -> bool:
        return self.num_terminal == len(self.runs)

    def failures(self) -> list[NodeRun]:
        """Runs that did not finish: failed, skipped or cancelled, in insertion order."""
        return [r for r in self.runs.values() if r.state in TERMINAL_STATES and r.state is not NodeState.DONE]

    def durations_s(self) -> Mapping[str, float]:
        return {nid: run.duration_s for nid, run in self.runs.items()}

    # -- internals --------------------------------------------------------------------------------

    def _finish(self, node_id: str, state: NodeState, now_s: float) -> NodeRun:
        run = self.runs[node_id]
        assert run.state not in TERMINAL_STATES, f"{node_id} finished twice ({run.state} then {state})"
        run.state = state
        run.end_s = now_s
        self.num_terminal += 1
        return run

    def _skip_from(self, node_id: str, blocker: str) -> list[str]:
        run = self.runs[node_id]
        blocker_run = self.runs[blocker]
        run.state = NodeState.SKIPPED if blocker_run.state is not NodeState.CANCELLED else NodeState.CANCELLED
        run.blocked_by = blocker_run.blocked_by or blocker
        root = self.runs[run.blocked_by]
        run.error = f"dependency {run.blocked_by!r} {root.state.value}: {root.error}"
        self.num_terminal += 1
        return [node_id]

    def _skip_descendants(self, node_id: str, *, state: NodeState = NodeState.SKIPPED) -> list[str]:
        root = self.runs[node_id]
        reason = f"dependency {node_id!r} {root.state.value}: {root.error}"
        skipped: list[str] = []
        stack = list(self.dependents[node_id])
        while stack:
            dependent = stack.pop()
            run = self.runs[dependent]
            if run.state is not NodeState.PENDING:
                continue
            run.state = state
            run.error = reason
            run.blocked_by = node_id
            self.num_terminal += 1
            skipped.append(dependent)
            stack.extend(self.dependents[dependent])
        return skipped
