"""The program-aware scheduler on the real engine: pinning, hand-off, expiry, reclaim, order, faults.

Every test runs on the session engine (its scheduler is `ProgramAwareScheduler`); memory pressure
comes from the `kv_block_limit` knob, which holds most of the pool back at runtime.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _serving_workloads import metadata, plain_burst_requests, submit_together, token_prompt

from agentflow import Program, semantic_function, tool
from agentflow.backends.embedded import EmbeddedBackend
from agentflow.exceptions import MetadataError, UserError
from serving import _vllm
from serving._policy import PolicyKnobs
from serving.engine import EmbeddedEngine

pytestmark = pytest.mark.engine

DEFAULT_KNOBS = PolicyKnobs().model_dump()
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
    await engine.configure_scheduler(kv_block_limit=40, fixed_ttl_s=600)  # outlives the fillers on a slow box
    now = time.time()
    pinned_prompt = token_prompt(10 * BLOCK, key("pinned"))
    plain_prompt = token_prompt(10 * BLOCK, key("plain"))
    pinned_1 = await turn(engine, pinned_prompt, extra_args=metadata(f"{RUN}-pinned", 0, arrival_s=now))
    plain_1 = await turn(engine, plain_prompt)  # the same program without metadata: stock vLLM
    assert (await metrics(engine))["pins"]["blocks_pinned"] == 10
    for i in range(3):  # other work that needs most of the 40 blocks: the LRU evicts everything unpinned
        await turn(engine, token_prompt(22 * BLOCK, key(f"filler{i}")), max_tokens=4)
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


async def test_cost_model_pins_for_about_a_tool_pause_when_memory_is_free(serving: EmbeddedEngine) -> None:
    engine = serving
    program = f"{RUN}-ttl"
    tool = f"tool-{RUN}"  # never observed: the global distribution (or the prior) decides
    await turn(
        engine,
        token_prompt(4 * BLOCK, key("ttl")),
        extra_args=metadata(program, 0, arrival_s=time.time(), next_tool=tool),
    )
    [pin] = [p for p in (await metrics(engine))["recent_pins"] if p["program_id"] == program]
    # Earlier tests in the session may have taught the predictor short tools, so no fixed floor:
    # the TTL covers most of the expected pause (P(done) >= 0.9), capped by tau_max + slack.
    assert 0 < pin["ttl_s"] <= 30 + 0.05
    assert pin["p_tool_done"] >= 0.9 and pin["num_blocks"] == 4
    assert pin["next_tool"] == tool
    await engine.end_program(program)


async def test_pins_are_reclaimed_under_pressure_instead_of_stalling(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=40, fixed_ttl_s=600)
    before = await metrics(engine)
    now = time.time()
    young = metadata(f"{RUN}-rc-young", 0, arrival_s=now)
    await turn(engine, token_prompt(10 * BLOCK, key("reclaim")), extra_args=young)
    assert (await metrics(engine))["pins"]["blocks_pinned"] == 10
    # 35 blocks do not fit beside the pin (30 free). An older program outranks the pin's: the pin
    # goes (long before its TTL), the request runs.
    old = metadata(f"{RUN}-rc-old", 0, arrival_s=now - 100, last=True)
    big = await asyncio.wait_for(
        turn(engine, token_prompt(35 * BLOCK, key("big")), max_tokens=4, extra_args=old), timeout=900
    )
    assert big.finish_reason == "length"
    after = await metrics(engine)
    assert after["pins"]["reclaimed"] == before["pins"]["reclaimed"] + 1
    assert after["pins"]["active"] == 0


async def test_a_cold_younger_program_waits_for_room_beside_an_older_resident_one(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=40, fixed_ttl_s=600)
    now = time.time()
    older = f"{RUN}-resident"
    await turn(engine, token_prompt(10 * BLOCK, key("resident")), extra_args=metadata(older, 0, arrival_s=now - 100))
    before = await metrics(engine)
    # 26 blocks fit beside the 10-block pin (30 free), so vLLM alone would admit it; not beside the
    # older program's growth reserve (8 turns x 2 blocks + 1) plus its own: admission control holds it.
    younger = asyncio.ensure_future(
        turn(
            engine,
            token_prompt(25 * BLOCK, key("cold")),
            max_tokens=4,
            extra_args=metadata(f"{RUN}-cold", 0, arrival_s=now, last=True),
        )
    )
    held_before = before["requests"]["held_by_admission_control"]
    for _ in range(600):
        if (await metrics(engine))["requests"]["held_by_admission_control"] > held_before:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert not younger.done()
    assert (await metrics(engine))["pins"]["active"] == before["pins"]["active"]  # the older pin stays
    await engine.end_program(older)  # room again: the held request runs
    result = await asyncio.wait_for(younger, timeout=900)
    assert result.finish_reason == "length"
    after = await metrics(engine)
    assert after["requests"]["held_by_admission_control"] == held_before + 1
    assert after["pins"]["reclaimed"] == before["pins"]["reclaimed"]


async def test_a_younger_request_waits_for_an_older_programs_pin_to_expire(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=40, fixed_ttl_s=1.5)
    before = await metrics(engine)
    now = time.time()
    await turn(
        engine, token_prompt(10 * BLOCK, key("elder")), extra_args=metadata(f"{RUN}-elder", 0, arrival_s=now - 100)
    )
    started = time.monotonic()
    # A plain request arriving now is younger than the pinned program: it waits for the TTL, no longer.
    big = await asyncio.wait_for(turn(engine, token_prompt(35 * BLOCK, key("younger")), max_tokens=4), timeout=900)
    waited_s = time.monotonic() - started
    assert big.finish_reason == "length"
    after = await metrics(engine)
    assert after["pins"]["expired"] == before["pins"]["expired"] + 1
    assert after["pins"]["reclaimed"] == before["pins"]["reclaimed"]
    assert waited_s > 1.0  # it did wait for the TTL (and was not stuck: it finished)


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


# -- order --------------------------------------------------------------------------------------------


async def _admission_order(engine: EmbeddedEngine, programs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Queue `programs` behind a running request that leaves room for one at a time; their admission order."""
    blocker = engine.generate(prompt=token_prompt(19 * BLOCK, key("blocker")), max_tokens=48, ignore_eos=True)
    await blocker.__anext__()  # prefilled and decoding: it holds the pool
    waiting = [
        asyncio.ensure_future(turn(engine, token_prompt(19 * BLOCK, key(name)), max_tokens=4, extra_args=extra))
        for name, extra in programs
    ]
    async for _ in blocker:
        pass
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=900)
    names = {extra["program_id"] for _, extra in programs}
    return [a["program_id"] for a in (await metrics(engine))["admissions"] if a["program_id"] in names]


async def test_program_fcfs_admits_by_program_arrival(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=24)
    t0 = time.time() - 100
    programs = [  # submitted A, B, C; programs began B, C, A
        (name, metadata(f"{RUN}-fcfs-{name}", 3, arrival_s=t0 + offset, last=True))
        for name, offset in (("A", 30.0), ("B", 10.0), ("C", 20.0))
    ]
    order = await _admission_order(engine, programs)
    assert order == [f"{RUN}-fcfs-B", f"{RUN}-fcfs-C", f"{RUN}-fcfs-A"]


async def test_urgency_admits_the_least_slack_first(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=24)
    now = time.time()
    programs = [  # submitted and begun far, mid, near, path: FCFS would keep that order
        (
            name,
            metadata(f"{RUN}-urg-{name}", 0, arrival_s=now - 50 + i, last=True, deadline_s=now + d, critical_path_s=c),
        )
        for i, (name, d, c) in enumerate(
            (("far", 1000.0, None), ("mid", 200.0, None), ("near", 20.0, None), ("path", 200.0, 150.0))
        )
    ]
    order = await _admission_order(engine, programs)
    # "path" has 200 s left but a 150 s critical path ahead: its own share of the slack is the smallest.
    assert order == [f"{RUN}-urg-{n}" for n in ("path", "near", "mid", "far")]


async def test_preemption_takes_the_youngest_program(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=32)
    t0 = time.time() - 100
    finished: list[str] = []

    async def run(name: str, arrival_s: float, started: asyncio.Event | None = None) -> None:
        stream = engine.generate(
            prompt=token_prompt(15 * BLOCK, key(name)),
            max_tokens=100,
            ignore_eos=True,
            extra_args=metadata(f"{RUN}-{name}", 0, arrival_s=arrival_s, last=True),
        )
        async for _ in stream:
            if started is not None:
                started.set()
        finished.append(name)

    # The young program reaches the engine first and runs; the old one joins it. Both fit at first
    # (30 of 32 blocks), then outgrow the pool: one is preempted. Stock FCFS would preempt the one
    # admitted last (the old program); program FCFS preempts the young one.
    young_started = asyncio.Event()
    young = asyncio.ensure_future(run("young", t0 + 50, young_started))
    await young_started.wait()
    old = asyncio.ensure_future(run("old", t0))
    await asyncio.wait_for(asyncio.gather(young, old), timeout=900)
    assert finished == ["old", "young"]


# -- no metadata = stock vLLM ---------------------------------------------------------------------------

_STOCK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {tests_dir!r})
    from _serving_workloads import plain_burst_requests, submit_together
    from serving.engine import EmbeddedEngine, EngineConfig

    async def main():
        engine = EmbeddedEngine(EngineConfig(scheduler_cls=None, kv_cache_bytes={kv_bytes}, **{options!r}))
        await engine.astart()
        blocks = await engine.call_in_engine(
            lambda: engine.scheduler.kv_cache_manager.block_pool.num_gpu_blocks - 1)
        finished = await submit_together(engine, plain_burst_requests({salt!r}))
        print(json.dumps({{"blocks": blocks, "finished": finished}}))
        engine.shutdown()

    asyncio.run(main())
    """
)
_BYTES_PER_BLOCK = 32 * 23_040  # SmolLM2-135M bf16: 30 layers x 3 KV heads x 64 dims x 2 x 2 bytes per token


async def test_requests_without_metadata_are_scheduled_exactly_as_stock_vllm(
    serving: EmbeddedEngine, engine_options: dict[str, Any]
) -> None:
    engine = serving
    usable = 64
    options = {k: v for k, v in engine_options.items() if k != "kv_cache_bytes"}
    script = _STOCK_SCRIPT.format(
        tests_dir=str(Path(__file__).parent), kv_bytes=(usable + 1) * _BYTES_PER_BLOCK, options=options, salt=RUN
    )
    stock = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        await engine.configure_scheduler(kv_block_limit=usable)
        ours = await asyncio.wait_for(submit_together(engine, plain_burst_requests(RUN)), timeout=900)
        out, err = await asyncio.to_thread(stock.communicate, timeout=900)
    finally:
        if stock.poll() is None:
            stock.kill()
    assert stock.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["blocks"] == usable
    assert [i for i, _ in ours] == [i for i, _ in result["finished"]]  # same finish order under preemption
    assert {i: list(t) for i, t in ours} == {i: t for i, t in result["finished"]}  # same tokens


# -- bad input and faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra_args",
    [
        {"program_id": 7},
        {"program_id": "p", "turn": "2"},
        {"program_id": "p", "next_tool_duration_s": -1.0},
        {"program_id": "p", "deadline_s": -5},
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


async def test_malformed_metadata_that_reaches_the_scheduler_is_ignored(serving: EmbeddedEngine) -> None:
    engine = serving
    before = (await metrics(engine))["requests"]["metadata_rejected"]
    driver = engine._driver
    assert driver is not None
    params = _vllm.make_sampling_params(
        max_tokens=3,
        temperature=0.0,
        stop=(),
        ignore_eos=True,
        grammar=None,
        json_schema=None,
        extra_args={"program_id": "p", "turn": -3},
    )
    # Past the edge's validation, straight into the engine: the scheduler must not crash on it.
    await engine.call_in_engine(
        lambda: _vllm.add_request(driver.engine, request_id=key("raw"), prompt=[5000] * 40, params=params)
    )
    for _ in range(200):
        if await engine.num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert (await metrics(engine))["requests"]["metadata_rejected"] == before + 1
    assert (await engine.complete(prompt="Hello", max_tokens=2)).num_completion_tokens == 2


async def test_bad_knobs_are_user_errors(serving: EmbeddedEngine) -> None:
    with pytest.raises(UserError, match="bogus"):
        await serving.configure_scheduler(bogus=True)


async def test_concurrent_requests_of_one_program_keep_their_pins(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(fixed_ttl_s=600, kv_block_limit=120)
    free_before = await engine.num_free_blocks()
    program, now = f"{RUN}-branches", time.time()
    shared = token_prompt(4 * BLOCK, key("shared"))
    prompts = [shared + token_prompt(3 * BLOCK, key(f"branch{i}")) for i in range(3)]
    firsts = await asyncio.gather(
        *(
            turn(engine, p, extra_args=metadata(program, i, arrival_s=now, next_tool=f"tool{i}"))
            for i, p in enumerate(prompts)
        )
    )
    pinned = await metrics(engine)
    assert pinned["pins"]["active"] == 3  # one per branch; the shared prefix is referenced by all three
    seconds = await asyncio.gather(
        *(
            turn(
                engine,
                p + list(f.token_ids) + [777] * 10,
                extra_args=metadata(program, 3 + i, arrival_s=now, last=i == 2),
            )
            for i, (p, f) in enumerate(zip(prompts, firsts, strict=True))
        )
    )
    assert all(s.num_cached_tokens >= 7 * BLOCK for s in seconds)
    after = await metrics(engine)
    assert after["pins"]["hit"] - pinned["pins"]["hit"] == 3
    await engine.end_program(program)
    assert (await metrics(engine))["pins"]["active"] == 0
    assert await engine.num_free_blocks() == free_before


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
    await engine.configure_scheduler(kv_block_limit=64)
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


async def test_soak_200_programs_under_pressure_with_random_cancels(serving: EmbeddedEngine) -> None:
    engine = serving
    await engine.configure_scheduler(kv_block_limit=48)
    free_before = await engine.num_free_blocks()
    rng = random.Random(7)
    limit = asyncio.Semaphore(24)
    outcomes: list[str] = []

    async def program(i: int) -> None:
        program_id, now = f"{RUN}-soak-{i}", time.time()
        prompt = token_prompt(64 + rng.randrange(32), key(f"soak{i}"))
        turns = 2 + i % 2
        try:
            for t in range(turns):
                last = t == turns - 1
                result = await turn(
                    engine, prompt, max_tokens=4, extra_args=metadata(program_id, t, arrival_s=now, last=last)
                )
                if not last:
                    await asyncio.sleep(rng.random() * 0.03)  # the tool
                    prompt = prompt + list(result.token_ids) + token_prompt(16, key(f"soak{i}t{t}"))
            outcomes.append("done")
        finally:
            engine.post_end_program(program_id)

    async def guarded(i: int) -> None:
        async with limit:
            task = asyncio.ensure_future(program(i))
            if rng.random() < 0.15:
                asyncio.get_running_loop().call_later(rng.random() * 0.5, task.cancel)
            try:
                await task
            except asyncio.CancelledError:
                outcomes.append("cancelled")

    await asyncio.wait_for(asyncio.gather(*(guarded(i) for i in range(200))), timeout=1800)
    assert len(outcomes) == 200 and outcomes.count("cancelled") > 0
    assert await engine.num_unfinished_requests() == 0
    assert await engine.num_free_blocks() == free_before
    snapshot = await metrics(engine)
    assert snapshot["pins"]["active"] == 0 and snapshot["pins"]["blocks_pinned"] == 0
    assert snapshot["pins"]["hit"] > 0
