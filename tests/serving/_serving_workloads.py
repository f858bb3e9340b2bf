"""Workloads shared by the serving tests and the stock-vLLM subprocess they compare against."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from agentflow.metadata import ProgramMetadata

VOCAB = (1_000, 40_000)  # clear of special tokens, inside SmolLM2's 49,152


def token_prompt(num_tokens: int, key: str) -> list[int]:
    """The same token ids for the same key, in every process."""
    rng = random.Random(key)
    return [rng.randrange(*VOCAB) for _ in range(num_tokens)]


def metadata(
    program_id: str,
    turn: int,
    *,
    arrival_s: float,
    next_tool: str | None = "cat",
    last: bool = False,
    deadline_at_s: float | None = None,
    critical_path_s: float | None = None,
) -> dict[str, Any]:
    return ProgramMetadata(
        program_id=program_id,
        program_arrival_s=arrival_s,
        turn=turn,
        is_last_turn=last,
        next_tool=None if last else next_tool,
        deadline_at_s=deadline_at_s,
        critical_path_s=critical_path_s,
    ).to_extra_args()


async def submit_together(engine: Any, requests: list[dict[str, Any]]) -> list[tuple[int, tuple[int, ...]]]:
    """Run `engine.complete(**r)` for each request, all added to the engine between the same two steps.

    The engine thread is held in a call until every request is queued behind it, so batching
    does not depend on how fast this loop posts them. Returns (index, token ids) in finish order.
    """
    gate = threading.Event()
    held = asyncio.ensure_future(engine.call_in_engine(lambda: gate.wait(30)))
    await asyncio.sleep(0.05)  # the engine thread is now inside the call
    finished: list[tuple[int, tuple[int, ...]]] = []

    async def one(index: int, request: dict[str, Any]) -> None:
        result = await engine.complete(**request)
        finished.append((index, result.token_ids))

    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
    await asyncio.sleep(0.2)  # every generate() has posted its request
    gate.set()
    await held
    await asyncio.gather(*tasks)
    return finished


def plain_burst_requests(salt: str, *, num_requests: int = 10) -> list[dict[str, Any]]:
    """Requests without metadata whose KV needs outgrow a 64-block pool: queueing and preemption."""
    return [
        {
            "prompt": token_prompt(280 + 8 * i, f"{salt}:burst:{i}"),
            "max_tokens": 40,
            "ignore_eos": True,
        }
        for i in range(num_requests)
    ]
