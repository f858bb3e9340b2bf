"""Random DAGs through the executor: every invariant of a run holds, whatever the shape and failures."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from agentflow.ir import CallKind, CallNode, NodeState, Ref
from agentflow.program import Program
from agentflow.tools import tool

NUM_NODES = 150
FAIL_MARK = -1  # a node whose `own` argument is this raises


def random_dag(seed: int) -> tuple[list[CallNode], dict[str, list[str]], set[str]]:
    """Nodes in shuffled order, each node's deps, and the nodes that fail on their own."""
    rng = random.Random(seed)
    nodes, deps, failing = [], {}, set()
    for i in range(NUM_NODES):
        nid = f"n{i}"
        parents = rng.sample(range(i), k=min(i, rng.choice([0, 0, 1, 1, 2, 3])))
        deps[nid] = [f"n{p}" for p in parents]
        fails = rng.random() < 0.05
        if fails:
            failing.add(nid)
        target = rng.choice(["async_step", "sync_step"])
        nodes.append(
            CallNode(
                id=nid,
                kind=CallKind.TOOL,
                target=target,
                kwargs={"own": FAIL_MARK if fails else i, "inputs": [Ref(d) for d in deps[nid]], "ms": rng.random()},
            )
        )
    rng.shuffle(nodes)
    return nodes, deps, failing


@pytest.mark.parametrize(("seed", "max_parallel"), [(1, 64), (2, 4), (3, 1), (4, 16)])
async def test_random_dag_invariants(seed: int, max_parallel: int) -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, peak

    def enter() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    def value(own: int, inputs: list[int]) -> int:
        if own == FAIL_MARK:
            raise RuntimeError("planned failure")
        return own + sum(inputs)

    @tool
    async def async_step(own: int, inputs: list[int], ms: float) -> int:
        enter()
        try:
            await asyncio.sleep(ms / 1000)
            return value(own, inputs)
        finally:
            leave()

    @tool
    def sync_step(own: int, inputs: list[int], ms: float) -> int:
        enter()
        try:
            return value(own, inputs)
        finally:
            leave()

    nodes, deps, failing = random_dag(seed)
    async with asyncio.timeout(10), Program(tools=[async_step, sync_step], max_parallel=max_parallel) as p:
        p.submit_batch(nodes)
    result = p.result
    records: dict[str, Any] = {r.node_id: r for r in result.trace.records}

    expected: dict[str, int] = {}
    for i in range(NUM_NODES):  # ids were drawn in dependency order
        nid = f"n{i}"
        blocked = nid in failing or any(d not in expected for d in deps[nid])
        if not blocked:
            expected[nid] = i + sum(expected[d] for d in deps[nid])
    assert result.outputs == expected
    assert running[1] <= max_parallel
    for nid, record in records.items():
        assert record.state in (NodeState.DONE, NodeState.FAILED, NodeState.SKIPPED)
        if record.state is NodeState.FAILED:
            assert nid in failing and record.error == "ToolError: RuntimeError: planned failure"
        if record.state is NodeState.SKIPPED:
            assert record.start_s is None
            root = record.error.split("'")[1]
            assert records[root].state is NodeState.FAILED
        if record.start_s is not None:
            for dep in deps[nid]:
                assert records[dep].end_s <= record.start_s
