"""Smoke tests of the program-aware scheduler on the real engine: the paths the CPU harness cannot walk.

The scheduler's cases (pins, hand-off, expiry, reclaim, admission, order, soak) run on the CPU
harness (`test_scheduler_cpu.py`) in milliseconds; these few check that they hold on the real
engine too: a real prefix-cache hit, the idle engine waking up for an expiry, SDK programs (their
metadata, their cancellations, their deadlines) and `reset_prefix_cache`. Every test runs on the
session engine; memory pressure comes from the `kv_block_limit` knob.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _serving_workloads import metadata, token_prompt

from agentflow import Program, semantic_function, tool
from agentflow.exceptions import MetadataError, UserError
from executor import DurationEstimates
from serving import EmbeddedBackend
from serving._knobs import SchedulerKnobs
from serving.engine import EmbeddedEngine

pytestmark = pytest.mark.engine

# Chains off between tests: a test that teaches the session engine that turns continue would
# otherwise have other tests' plain requests pinned as programs' first turns. The chain tests switch them on.
DEFAULT_KNOBS = {**SchedulerKnobs().model_dump(), "identify_by_chain": False}
BLOCK = 32
RUN = uuid.uuid4().hex[:8]  # fresh prompts per session: nothing hits another run's cache


@pytest.fixture
async def serving(engine: EmbeddedEngine) -> AsyncIterator[EmbeddedEngine]:
    await engine.configure_scheduler(**DEFAULT_KNOBS)
    yield engine
    await engine.configure_scheduler(pinning=False)  # releases every pin
    await engine.configure_scheduler(**DEFAULT_KNOBS)  # and gives held-back blocks back


async def metrics(engine: EmbeddedEngine) -> dict[str, Any]:
    snapshot = await engine.agentflow_metrics()
    assert snapshot is not None
    return snapshot


def key(name: str) -> str:
    return f"{RUN}:{name}:{uuid.uuid4().hex[:6]}"


async def turn(engine: EmbeddedEngine, prompt: list[int], *, max_tokens: int = 8, **extra: Any) -> Any:
    return await engine.complete(prompt=prompt, max_tokens=max_tokens, ignore_eos=True, **extra)


# -- pinning ------------------------------------------------------------------------------------------


async def test_pinned_turn_two_hits_under_pressure_where_stock_gets_nothing(serving: EmbeddedEngine) -> None:
    engine = serving
    # 70 blocks: the least a limit may be with max_model_len 2048 is 65. The TTL outlives the fillers on a slow box.
    await engine.configure_scheduler(kv_block_limit=70, fixed_ttl_s=600)
    now = time.time()
    pinned_prompt = token_prompt(10 * BLOCK, key("pinned"))
    plain_prompt = token_prompt(10 * BLOCK, key("plain"))
    pinned_1 = await turn(engine, pinned_prompt, extra_args=metadata(f"{RUN}-pinned", 0, arrival_s=now))
    plain_1 = await turn(engine, plain_prompt)  # the same program without metadata (chains off): stock vLLM
    assert (await metrics(engine))["pins"]["blocks_pinned"] == 10
    for i in range(3):  # other work that needs most of the 60 free blocks: the LRU evicts everything unpinned
        await turn(engine, token_prompt(30 * BLOCK, key(f"filler{i}")), max_tokens=4)
    tool_output = token_prompt(40, key("tool"))
    pinned_2 = await turn(
        engine,
        pinned_prompt + list(pinned_1.token_ids) + tool_output,
        extra_args=metadata(f"{RUN}-pinned", 1, arrival_s=now, last=True),
    )
    plain_2 = await turn(engine, plain_prompt + list(plain_1.token_ids) + tool_output)
    assert pinned_2.num_cached_tokens >= 10 * BLOCK
    assert plain_2.num_cached_tokens == 0
    snapshot = await metrics(engine)
    assert snapshot["pins"]["hit"] >= 1 and snapshot["pins"]["active"] == 0
    assert snapshot["prefix_cache_by_turn"]["1"]["cached_tokens"] >= 10 * BLOCK


async def test_hand_off_releases_the_pin_once_the_next_turn_holds_the_blocks(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(fixed_ttl_s=600)
    before = await metrics(engine)
    now = time.time()
    program = f"{RUN}-handoff"
    prompt = token_prompt(8 * BLOCK + 5, key("handoff"))
    first = await turn(engine, prompt, extra_args=metadata(program, 0, arrival_s=now, next_tool="grep"))
    pinned = await metrics(engine)
    assert pinned["pins"]["active"] == before["pins"]["active"] + 1
    assert pinned["pins"]["blocks_pinned"] == 8  # full blocks only: the partial tail was freed at once
    second = await turn(
        engine, prompt + list(first.token_ids) + [1234] * 20, extra_args=metadata(program, 1, arrival_s=now)
    )
    assert second.num_cached_tokens >= 8 * BLOCK
    after = await metrics(engine)
    assert after["pins"]["hit"] == before["pins"]["hit"] + 1
    assert after["pins"]["hit_tokens"] - before["pins"]["hit_tokens"] == second.num_cached_tokens
    # Turn 1 pinned again (a tool follows it too); ending the program releases it.
    assert after["pins"]["active"] == before["pins"]["active"] + 1
    summary = await engine.end_program(program)
    assert summary is not None and summary["pins_created"] == 2 and summary["pins_hit"] == 1
    assert (await metrics(engine))["pins"]["active"] == before["pins"]["active"]


async def test_pin_expires_when_its_program_sends_nothing(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(fixed_ttl_s=1.0)
    free_before = await engine.num_free_blocks()
    before = await metrics(engine)
    await turn(
        engine, token_prompt(6 * BLOCK, key("expiry")), extra_args=metadata(f"{RUN}-exp", 0, arrival_s=time.time())
    )
    assert (await metrics(engine))["pins"]["active"] == before["pins"]["active"] + 1
    assert await engine.num_free_blocks() == free_before - 6
    await asyncio.sleep(3.0)  # nothing is sent meanwhile: the idle engine wakes up for the expiry on its own
    after = await metrics(engine)
    assert after["pins"]["expired"] == before["pins"]["expired"] + 1
    assert after["pins"]["active"] == before["pins"]["active"]
    # 6 blocks held ~1 s, not until this read 3 s later.
    assert after["pins"]["pinned_block_s"] - before["pins"]["pinned_block_s"] < 6 * 2.5
    assert await engine.num_free_blocks() == free_before


async def test_reset_prefix_cache_works_while_pins_exist(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(fixed_ttl_s=600, kv_block_limit=100)
    prompt = token_prompt(5 * BLOCK, key("reset"))
    first = await turn(engine, prompt, extra_args=metadata(f"{RUN}-reset", 0, arrival_s=time.time()))
    assert (await metrics(engine))["pins"]["active"] == 1
    assert await engine.reset_prefix_cache() is True
    snapshot = await metrics(engine)
    assert snapshot["pins"]["active"] == 0 and snapshot["kv"]["held_back_blocks"] > 0  # the limit still holds
    again = await turn(engine, prompt + list(first.token_ids))
    assert again.num_cached_tokens == 0  # the cache really was reset


# -- programs of clients that send nothing -----------------------------------------------------------------


async def plain_chain(engine: EmbeddedEngine, name: str, turns: int, *, gap_s: float = 0.2, **extra: Any) -> list[Any]:
    """A client without metadata: each prompt is the last one, its output and a tool's output."""
    prompt = token_prompt(4 * BLOCK, key(f"{name}:task"))
    results = []
    for i in range(turns):
        result = await turn(engine, prompt, max_tokens=BLOCK, **extra)
        results.append(result)
        await asyncio.sleep(gap_s)
        prompt = prompt + list(result.token_ids) + token_prompt(BLOCK, key(f"{name}:tool{i}"))
    return results


async def test_a_client_that_sends_nothing_is_recognised_by_its_prompt_chain(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(identify_by_chain=True, tau_max_s=5.0)
    before = await metrics(engine)
    runs = await asyncio.gather(*(plain_chain(engine, f"chain{i}", 4) for i in range(3)))
    after = await metrics(engine)
    assert after["requests"]["by_chain"] - before["requests"]["by_chain"] >= 3 * 3  # every later turn
    assert after["requests"]["with_metadata"] == before["requests"]["with_metadata"]
    assert after["turn_gaps"]["gaps_observed"] >= before["turn_gaps"]["gaps_observed"] + 9
    assert all(r.num_cached_tokens >= 4 * BLOCK for results in runs for r in results[1:])


async def test_a_session_id_identifies_a_program(serving: EmbeddedEngine) -> None:
    engine = serving
    before = (await metrics(engine))["requests"]
    await plain_chain(engine, "session", 3, session_id=f"{RUN}-session")
    after = (await metrics(engine))["requests"]
    assert after["by_session"] == before["by_session"] + 3 and after["by_chain"] == before["by_chain"]
    with pytest.raises(UserError):
        await engine.complete(prompt="Hello", max_tokens=2, session_id="x" * 10_000)


async def test_a_chain_client_that_disconnects_leaves_no_blocks_behind(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(identify_by_chain=True, tau_max_s=1.0)
    await plain_chain(engine, "teach", 3)  # enough continued turns that chains get pinned
    await engine.configure_scheduler(pinning=False)
    await engine.configure_scheduler(pinning=True)
    free_before = await engine.num_free_blocks()
    prompt = token_prompt(4 * BLOCK, key("gone"))
    first = await turn(engine, prompt, max_tokens=BLOCK)
    stream = engine.generate(
        prompt=prompt + list(first.token_ids) + token_prompt(BLOCK, key("gone:tool")), max_tokens=200, ignore_eos=True
    )
    async for chunk in stream:
        if chunk.token_ids:
            break  # the client goes away mid-stream
    await stream.aclose()
    await asyncio.sleep(2.5)  # past the longest TTL (tau_max_s + slack): the idle engine expires its pins
    assert (await metrics(engine))["pins"]["active"] == 0
    assert await engine.num_free_blocks() == free_before


# -- bad input and faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra_args",
    [
        {"program_id": 7},
        {"program_id": "p", "turn": "2"},
        {"program_id": "p", "next_tool_duration_s": -1.0},
        {"program_id": "p", "deadline_at_s": -5},
        {"program_id": "p", "tunr": 1},
        {"turn": 1},
    ],
)
async def test_malformed_metadata_is_a_typed_error_and_the_engine_goes_on(
    serving: EmbeddedEngine, extra_args: dict[str, Any]
) -> None:
    engine = serving
    with pytest.raises(MetadataError):
        await engine.complete(prompt="Hello", max_tokens=2, extra_args=extra_args)
    assert (await engine.complete(prompt="Hello", max_tokens=2)).num_completion_tokens == 2


@semantic_function(max_tokens=6)
def continue_list(items: str) -> str:
    """Continue this list with one more item: {items}"""


@tool
async def slow_echo(text: str) -> str:
    """Wait a little, then return the text with a suffix."""
    await asyncio.sleep(0.05)
    return text + ", pears"


async def test_no_blocks_leak_after_programs_end_or_are_cancelled(
    serving: EmbeddedEngine, engine_options: dict[str, Any]
) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=66)
    backend = EmbeddedBackend(**engine_options)
    assert backend.engine is engine
    free_before = await engine.num_free_blocks()
    observed_before = (await metrics(engine))["predictor"]["observed"]
    programs: dict[int, Program] = {}

    async def run(i: int) -> str:
        async with Program(model=backend, program_id=f"{RUN}-leak-{i}") as p:
            programs[i] = p
            first = continue_list(f"apples, plums, item {i}")
            second = continue_list(slow_echo(first))
            return await second

    tasks = [asyncio.ensure_future(run(i)) for i in range(8)]
    await asyncio.sleep(0.3)
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(r, asyncio.CancelledError) for r in results)
    assert any(isinstance(r, str) for r in results)
    await engine.call_in_engine(lambda: None)  # the cancelled programs' end_program posts ran first
    assert await engine.num_free_blocks() == free_before
    snapshot = await metrics(engine)
    assert snapshot["pins"]["active"] == 0
    assert snapshot["predictor"]["observed"] > observed_before  # slow_echo's real durations arrived
    done = next(programs[i] for i, r in enumerate(results) if isinstance(r, str))
    assert done.serving is not None and done.serving["requests"] == 2
    llm_records = [r for r in done.result.trace.records if r.target == "continue_list"]
    assert all(r.usage is not None and r.usage["prompt_tokens"] > 0 for r in llm_records)


# -- urgency from SDK programs ----------------------------------------------------------------------------


@semantic_function(max_tokens=4)
def draft(topic: str) -> str:
    """Write one line about {topic}."""


@tool(expected_duration_s=30.0)
async def compile_report(text: str) -> str:
    """A tool the runtime expects to take 30 s (it returns at once here)."""
    return text


async def test_a_deadline_program_overtakes_an_earlier_slack_program(
    serving: EmbeddedEngine, engine_options: dict[str, Any]
) -> None:
    engine = serving
    backend = EmbeddedBackend(**engine_options)
    assert backend.engine is engine
    estimates = DurationEstimates()  # nothing learned yet: the declared 30 s is the whole critical path

    async def program(name: str, deadline_in_s: float) -> None:
        async with Program(model=backend, program_id=f"{RUN}-{name}", deadline_in_s=deadline_in_s, estimates=estimates):
            await compile_report(draft(name))

    async with engine.paused():  # both first calls queue up; then the scheduler orders them
        slack = asyncio.ensure_future(program("slack", 3600.0))  # began first, an hour to spare
        while await engine.num_unfinished_requests() < 1:
            await asyncio.sleep(0.01)
        urgent = asyncio.ensure_future(program("urgent", 20.0))  # began later: 20 s for a 30 s path
        while await engine.num_unfinished_requests() < 2:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(slack, urgent), timeout=300)
    names = {f"{RUN}-slack", f"{RUN}-urgent"}
    order = [a["program_id"] for a in (await metrics(engine))["admissions"] if a["program_id"] in names]
    assert order == [f"{RUN}-urgent", f"{RUN}-slack"]
