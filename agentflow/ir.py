"""The one intermediate representation: a DAG of calls whose edges are semantic variables.

A node is a call (a tool call or an LLM call). An argument that is a `Ref` to another node is an
edge: the value that node produces flows into this one. Every program, whether written with the
SDK or compiled by the planner, becomes a `CallGraph`; the executor runs it and the serving layer
reads its program-level facts.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import networkx as nx

from agentflow.exceptions import CycleError, GraphError, UnknownNodeError, UnknownToolError

__all__ = [
    "TERMINAL_STATES",
    "CallGraph",
    "CallKind",
    "CallNode",
    "Concat",
    "NodeState",
    "ProgramFacts",
    "Ref",
    "iter_refs",
    "resolve_value",
]


class CallKind(enum.StrEnum):
    """What a node calls."""

    TOOL = "tool"
    LLM = "llm"


class NodeState(enum.StrEnum):
    """Lifecycle of a node. DONE, FAILED, SKIPPED and CANCELLED are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({NodeState.DONE, NodeState.FAILED, NodeState.SKIPPED, NodeState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Ref:
    """The output of another node: an edge of the graph (a semantic variable by reference)."""

    node_id: str

    def __str__(self) -> str:
        return f"${self.node_id}"


@dataclass(frozen=True, slots=True)
class Concat:
    """A string built from literal parts and references, e.g. `"weather in $1"`."""

    parts: tuple[str | Ref, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallNode:
    """One call in the graph.

    `args` and `kwargs` hold literals, `Ref`s and `Concat`s, nested in lists, tuples and dicts
    as deep as needed. `deps` is derived from them, in first-seen order.
    """

    id: str
    kind: CallKind
    target: str  # registered tool or semantic function name
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expected_duration_s: float | None = None  # a prediction, used for critical paths and urgency
    label: str | None = None  # where it came from, e.g. the plan line
    deps: tuple[str, ...] = field(init=False)

    def with_expected_duration(self, expected_duration_s: float | None) -> CallNode:
        """A copy of the node with another expected duration (its refs are not walked again)."""
        node = object.__new__(CallNode)
        for name in _NODE_SLOTS:
            object.__setattr__(node, name, getattr(self, name))
        object.__setattr__(node, "expected_duration_s", expected_duration_s)
        return node

    def __post_init__(self) -> None:
        if not self.id:
            raise GraphError("node id must be a non-empty string")
        seen = dict.fromkeys(ref.node_id for ref in iter_refs((self.args, self.kwargs)))
        if self.id in seen:
            raise CycleError([self.id, self.id])
        object.__setattr__(self, "deps", tuple(seen))


_NODE_SLOTS = tuple(f.name for f in fields(CallNode))


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every `Ref` inside a value, depth first."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, Concat):
        yield from (part for part in value.parts if isinstance(part, Ref))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_refs(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_refs(item)


def resolve_value(value: Any, outputs: Mapping[str, Any]) -> Any:
    """Replace every `Ref` in a value by the output it names."""
    if isinstance(value, Ref):
        return outputs[value.node_id]
    if isinstance(value, Concat):
        return "".join(p if isinstance(p, str) else _as_text(outputs[p.node_id]) for p in value.parts)
    if isinstance(value, list):
        return [resolve_value(v, outputs) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_value(v, outputs) for v in value)
    if isinstance(value, Mapping):
        return {k: resolve_value(v, outputs) for k, v in value.items()}
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramFacts:
    """Program-level facts the graph carries for the scheduler."""

    program_id: str
    arrival_s: float  # unix time the program started
    deadline_at_s: float | None = None  # unix time it must finish by


class CallGraph:
    """A DAG of `CallNode`s. Nodes are added in dependency order or validated as a batch."""

    def __init__(self, facts: ProgramFacts | None = None) -> None:
        self.facts = facts
        self._nodes: dict[str, CallNode] = {}  # node id -> node, in insertion order
        self._g: nx.DiGraph[str] = nx.DiGraph()

    @classmethod
    def from_nodes(
        cls,
        nodes: Iterable[CallNode],
        *,
        known_targets: Iterable[str] | None = None,
        facts: ProgramFacts | None = None,
    ) -> CallGraph:
        """Build and validate a whole graph; nodes may come in any order."""
        graph = cls(facts)
        graph.add_batch(nodes)
        if known_targets is not None:
            graph.check_targets(known_targets)
        return graph

    # -- building -------------------------------------------------------------------------------

    def add(self, node: CallNode) -> None:
        """Add a node whose dependencies are all in the graph already (streaming order)."""
        self._check_new_id(node)
        for dep in node.deps:
            if dep not in self._nodes:
                raise UnknownNodeError(dep, node.id)
        self._insert(node)

    def add_batch(self, nodes: Iterable[CallNode]) -> list[CallNode]:
        """Add nodes that may reference each other in any order; rejects cycles and dangling refs.

        Nothing is added unless the whole batch is valid. Returns the nodes in dependency order.
        """
        batch = list(nodes)
        ids = {n.id for n in batch}
        if len(ids) != len(batch):
            dupes = sorted({n.id for n in batch if sum(m.id == n.id for m in batch) > 1})
            raise GraphError(f"duplicate node ids: {dupes}")
        for node in batch:
            self._check_new_id(node)
            for dep in node.deps:
                if dep not in ids and dep not in self._nodes:
                    raise UnknownNodeError(dep, node.id)
        ordered = _dependency_order(batch)
        for node in ordered:
            self._insert(node)
        return ordered

    def check_targets(self, known_targets: Iterable[str]) -> None:
        """Raise `UnknownToolError` for the first node calling something not in `known_targets`."""
        known = set(known_targets)
        for node in self._nodes.values():
            if node.target not in known:
                raise UnknownToolError(node.target, sorted(known))

    def _check_new_id(self, node: CallNode) -> None:
        if node.id in self._nodes:
            raise GraphError(f"duplicate node id {node.id!r}")

    def _insert(self, node: CallNode) -> None:
        self._nodes[node.id] = node
        self._g.add_node(node.id)
        self._g.add_edges_from((dep, node.id) for dep in node.deps)

    # -- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[CallNode]:
        return iter(self._nodes.values())

    def __getitem__(self, node_id: str) -> CallNode:
        return self._nodes[node_id]

    @property
    def nx_graph(self) -> nx.DiGraph[str]:
        """A read-only view of the underlying networkx graph."""
        return self._g.copy(as_view=True)

    def successors(self, node_id: str) -> list[str]:
        """Nodes that consume this node's output."""
        return list(self._g.successors(node_id))

    def descendants(self, node_id: str) -> set[str]:
        """Every node that depends on this one, directly or not."""
        return nx.descendants(self._g, node_id)

    def topological_order(self) -> list[str]:
        """Node ids, every node after all of its dependencies (ties in insertion order)."""
        position = {node_id: i for i, node_id in enumerate(self._nodes)}
        return list(nx.lexicographical_topological_sort(self._g, key=position.__getitem__))

    def critical_path(self, durations_s: Mapping[str, float] | None = None) -> tuple[list[str], float]:
        """The longest path by duration and its length in seconds.

        Durations default to each node's `expected_duration_s` (0 when unknown).
        """
        weight = (
            durations_s
            if durations_s is not None
            else {n.id: n.expected_duration_s or 0.0 for n in self._nodes.values()}
        )
        finish: dict[str, float] = {}  # node id -> earliest finish time along any path
        best_parent: dict[str, str | None] = {}
        for node_id in nx.topological_sort(self._g):
            parents = list(self._g.predecessors(node_id))
            parent = max(parents, key=finish.__getitem__, default=None)
            start = finish[parent] if parent is not None else 0.0
            finish[node_id] = start + float(weight.get(node_id, 0.0))
            best_parent[node_id] = parent
        if not finish:
            return [], 0.0
        last = max(finish, key=finish.__getitem__)
        length = finish[last]
        path: list[str] = []
        end: str | None = last
        while end is not None:
            path.append(end)
            end = best_parent[end]
        return path[::-1], length

    def render(self) -> str:
        """The graph as text, one call per line with its dependencies."""
        lines = []
        for node in self._nodes.values():
            args = ", ".join(
                itertools.chain(
                    (_render_value(a) for a in node.args),
                    (f"{k}={_render_value(v)}" for k, v in node.kwargs.items()),
                )
            )
            deps = f"  <- {', '.join(node.deps)}" if node.deps else ""
            lines.append(f"[{node.id}] {node.kind.value:4} {node.target}({args}){deps}")
        return "\n".join(lines)


def _render_value(value: Any, limit: int = 40) -> str:
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, Concat):
        return '"' + "".join(p if isinstance(p, str) else str(p) for p in value.parts) + '"'
    if isinstance(value, (list, tuple)) and any(True for _ in iter_refs(value)):
        inner = ", ".join(_render_value(v, limit) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, Mapping) and any(True for _ in iter_refs(value)):
        return "{" + ", ".join(f"{k!r}: {_render_value(v, limit)}" for k, v in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dependency_order(nodes: list[CallNode]) -> list[CallNode]:
    """The batch with every node after its dependencies; `CycleError` if there is no such order."""
    batch_ids = {n.id for n in nodes}
    seen: set[str] = set()
    in_order = True
    for node in nodes:  # fast path: already in streaming order, so no cycle is possible
        if any(dep not in seen and dep in batch_ids for dep in node.deps):
            in_order = False
            break
        seen.add(node.id)
    if in_order:
        return nodes
    by_id = {n.id: n for n in nodes}
    g: nx.DiGraph[str] = nx.DiGraph()
    g.add_nodes_from(by_id)
    g.add_edges_from((dep, n.id) for n in nodes for dep in n.deps if dep in by_id)
    position = {n.id: i for i, n in enumerate(nodes)}
    try:
        return [by_id[i] for i in nx.lexicographical_topological_sort(g, key=position.__getitem__)]
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(g)
        raise CycleError([u for u, _ in cycle] + [cycle[0][0]]) from None
