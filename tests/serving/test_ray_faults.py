"""Faults on a real local Ray cluster: a replica killed mid-run, every replica saturated."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from serving._ingress import ReplicaUnavailable

pytestmark = pytest.mark.engine

REPLICA_ENGINE: dict[str, Any] = {"kv_cache_bytes": 48 * 1024**2, "max_model_len": 1024, "max_num_seqs": 4}
_HANG_S = 180.0  # nothing may take longer than this: a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def replicas() -> Iterator[Any]:
    from serving._ray import ScaleOutOptions, start_replica_set
    from serving.engine import EngineConfig

    # One request at a time per replica, two more held for the deployment: saturation is easy to reach.
    options = ScaleOutOptions(
        engine=EngineConfig(**REPLICA_ENGINE),
        replicas=2,
        max_ongoing_requests=1,
        max_queued_requests=2,
        local_num_cpus=2,
    )
    replica_set = start_replica_set(options)
    try:
        yield replica_set
    finally:
        replica_set.close()


def request(program: str, turn: int, *, max_tokens: int, last: bool) -> Any:
    from serving._ray import replica_request

    prompt = [1000 + sum(map(ord, program)) % 500 + i for i in range(64)] + [2000 + turn]
    fields = {"program_id": program, "turn": turn, "is_last_turn": last}
    return replica_request(prompt=prompt, max_tokens=max_tokens, ignore_eos=True, extra_args=fields)


async def run(replica_set: Any, program: str, turn: int, *, max_tokens: int, last: bool = False) -> str:
    """The replica that served it; raises ReplicaUnavailable."""
    served = ""
    async for delta in replica_set.stream(request(program, turn, max_tokens=max_tokens, last=last)):
        served = delta.replica
    return served


async def test_saturated_replicas_push_back_instead_of_queueing_without_bound(replicas: Any) -> None:
    calls = [run(replicas, f"sat-{i}", 0, max_tokens=48, last=True) for i in range(10)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), _HANG_S)
    refused = [r for r in results if isinstance(r, ReplicaUnavailable)]
    served = [r for r in results if isinstance(r, str)]
    assert refused and "saturated" in str(refused[0])
    # 2 replicas x 1 running + 2 queued: at most 4 of the 10 were taken; the rest got an answer at once.
    assert 1 <= len(served) <= 4
    assert len(refused) + len(served) == 10


async def test_a_killed_replica_fails_its_requests_clearly_and_its_programs_move(replicas: Any) -> None:
    await asyncio.sleep(2.0)  # earlier tests' requests leave the replicas' load reports
    # One program per replica.
    home_a = await asyncio.wait_for(run(replicas, "crash-a", 0, max_tokens=2), _HANG_S)
    home_b = await asyncio.wait_for(run(replicas, "crash-b", 0, max_tokens=2), _HANG_S)
    assert home_a != home_b  # a new program goes where the room is
    victim = home_a
    in_flight = asyncio.ensure_future(run(replicas, "crash-a", 1, max_tokens=200))
    await asyncio.sleep(2.0)
    replicas.kill_replica(victim)
    with pytest.raises(ReplicaUnavailable, match="died"):
        await asyncio.wait_for(in_flight, _HANG_S)
    # Its program's next turn lands on a live replica (its context prefilled there), and is counted.
    moved_to = await asyncio.wait_for(run(replicas, "crash-a", 2, max_tokens=4), _HANG_S)
    assert moved_to != victim
    assert await asyncio.wait_for(run(replicas, "crash-b", 1, max_tokens=4), _HANG_S) == home_b
    assert replicas.routing()["affinity"]["rehomes"] >= 1
