"""The scheduler's waiting queue against vLLM's own queues, and the CPU/GPU class choice (imports vLLM)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm")

from serving import _vllm  # noqa: E402
from serving._decisions import Key, plain_key  # noqa: E402
from serving._scheduler import ProgramAwareAsyncScheduler, ProgramAwareScheduler, ProgramQueue  # noqa: E402


@dataclass(eq=False)
class FakeRequest:
    request_id: str
    arrival_time: float
    priority: int = 0
    program: bool = field(default=False)

    def __lt__(self, other: FakeRequest) -> bool:  # vllm.v1.request.Request's order
        if self.priority != other.priority:
            return self.priority < other.priority
        if self.arrival_time != other.arrival_time:
            return self.arrival_time < other.arrival_time
        return self.request_id < other.request_id


def _plain_key(by_priority: bool) -> Any:
    def key(r: FakeRequest) -> Key:
        return plain_key(
            request_id=r.request_id, arrival_s=r.arrival_time, user_priority=r.priority if by_priority else 0
        )

    return key


def _drive(queue: Any, ops: list[tuple[str, Any]]) -> list[str]:
    popped: list[str] = []
    for op, arg in ops:
        if op == "add":
            queue.add_request(arg)
        elif op == "prepend":
            queue.prepend_request(arg)
        elif op == "prepend_many":
            queue.prepend_requests(arg)
        elif op == "pop" and queue:
            popped.append(queue.pop_request().request_id)
        elif op == "remove" and queue:
            victim = list(queue)[len(queue) // 2]
            queue.remove_requests([victim])
    while queue:
        popped.append(queue.pop_request().request_id)
    return popped


def _random_ops(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    clock = 0.0
    live: list[FakeRequest] = []
    for i in range(n):
        clock += rng.random()
        choice = rng.random()
        request = FakeRequest(f"r{i}", clock, priority=rng.randrange(3))
        if choice < 0.45:
            ops.append(("add", request))
            live.append(request)
        elif choice < 0.6 and live:
            ops.append(("prepend", FakeRequest(f"p{i}", rng.random() * clock, priority=rng.randrange(3))))
        elif choice < 0.7:
            batch = [FakeRequest(f"b{i}.{j}", rng.random() * clock, priority=rng.randrange(3)) for j in range(3)]
            ops.append(("prepend_many", batch))
        elif choice < 0.9:
            ops.append(("pop", None))
        else:
            ops.append(("remove", None))
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_plain_requests_keep_vllm_fcfs_order_exactly(seed: int) -> None:
    ops = _random_ops(random.Random(seed), 200)
    ours = ProgramQueue(_plain_key(False), lambda r: False, by_priority=False)
    stock = _vllm.fcfs_request_queue_class()()
    assert _drive(ours, ops) == _drive(stock, ops)


@pytest.mark.parametrize("seed", range(20))
def test_plain_requests_keep_vllm_priority_order(seed: int) -> None:
    ops = _random_ops(random.Random(seed), 200)
    ours = ProgramQueue(_plain_key(True), lambda r: False, by_priority=True)
    assert _drive(ours, ops) == _drive(_vllm.priority_request_queue_class()(), ops)


def test_program_requests_are_inserted_by_key() -> None:
    keys: dict[str, Key] = {
        "old": (1, 0, 10.0, 10.0, 50.0, "old"),
        "young": (1, 0, 40.0, 40.0, 49.0, "young"),
        "pinned": (0, 0, 45.0, 45.0, 51.0, "pinned"),
    }

    def key(r: FakeRequest) -> Key:
        return keys.get(r.request_id) or plain_key(request_id=r.request_id, arrival_s=r.arrival_time, user_priority=0)

    queue = ProgramQueue(key, lambda r: r.request_id in keys, by_priority=False)
    queue.any_program = lambda: True
    for request in (
        FakeRequest("plain-early", 5.0),
        FakeRequest("young", 49.0),
        FakeRequest("plain-late", 48.0),
        FakeRequest("old", 50.0),
        FakeRequest("pinned", 51.0),
    ):
        queue.add_request(request)
    assert [r.request_id for r in queue] == ["pinned", "plain-early", "old", "young", "plain-late"]
    # While program requests are live, one order holds: a preempted plain request goes back by its
    # arrival, not to the front past the pinned program's turn.
    queue.prepend_request(FakeRequest("preempted-plain", 1.0))
    assert [r.request_id for r in queue][:3] == ["pinned", "preempted-plain", "plain-early"]
    queue.any_program = lambda: False  # none live: vLLM's own rule, to the front
    queue.prepend_request(FakeRequest("preempted-again", 60.0))
    assert queue.peek_request().request_id == "preempted-again"


def test_one_name_builds_the_async_variant_on_async_engines() -> None:
    sync_config = SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=False))
    async_config = SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=True))
    assert type(ProgramAwareScheduler.__new__(ProgramAwareScheduler, vllm_config=sync_config)) is ProgramAwareScheduler
    built = ProgramAwareScheduler.__new__(ProgramAwareScheduler, vllm_config=async_config)
    assert type(built) is ProgramAwareAsyncScheduler
    scheduler_cls, async_scheduler_cls = _vllm.scheduler_base_classes()
    assert isinstance(built, ProgramAwareScheduler) and isinstance(built, async_scheduler_cls)
    # Our overrides come before vLLM's AsyncScheduler, which comes before its Scheduler.
    mro = ProgramAwareAsyncScheduler.__mro__
    assert mro.index(ProgramAwareScheduler) < mro.index(async_scheduler_cls) < mro.index(scheduler_cls)
