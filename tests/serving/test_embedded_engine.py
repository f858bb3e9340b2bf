"""The embedded engine against the real vLLM engine and the default SmolLM2-135M model."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest

from agentflow.backends import LLMBackend, LLMRequest, ProgramMetadata
from agentflow.exceptions import EngineError, UserError
from serving import EmbeddedBackend
from serving.engine import EmbeddedEngine, GenerationChunk

pytestmark = pytest.mark.engine

# Asked plainly, greedy SmolLM2-135M answers "Paris" on some CPUs and drifts into French on others
# (bf16 kernels differ: AMX vs AVX-512); asked for one sentence, it answers "Paris" on both.
CAPITAL = [{"role": "user", "content": "What is the capital city of France? Answer in one sentence."}]


def _unique_prompt(num_words: int = 80) -> str:
    # A fresh first token keeps other tests' cached blocks out of the measurement.
    return f"{uuid.uuid4().hex} " + " ".join(f"word{i}" for i in range(num_words))


async def _collect(engine: EmbeddedEngine, **kwargs: Any) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(**kwargs)]


async def test_capital_of_france(engine: EmbeddedEngine) -> None:
    result = await engine.complete(prompt=engine.apply_chat_template(CAPITAL), max_tokens=32)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.num_completion_tokens == len(result.token_ids) > 0


async def test_stream_deltas_concatenate_to_full_text(engine: EmbeddedEngine) -> None:
    prompt = engine.apply_chat_template([{"role": "user", "content": "Name three colors."}])
    chunks = await _collect(engine, prompt=prompt, max_tokens=24)
    whole = await engine.complete(prompt=prompt, max_tokens=24)
    assert "".join(c.text for c in chunks) == whole.text
    assert sum(len(c.token_ids) for c in chunks) == whole.num_completion_tokens
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]


async def test_two_concurrent_generates_both_finish(engine: EmbeddedEngine) -> None:
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in ("Count to five.", "Say hi.")]
    results = await asyncio.gather(*(engine.complete(prompt=p, max_tokens=20) for p in prompts))
    assert [r.finish_reason in ("stop", "length") for r in results] == [True, True]
    assert all(r.text for r in results)


def test_callers_on_several_loops_in_threads(engine: EmbeddedEngine) -> None:
    prompt = engine.apply_chat_template(CAPITAL)
    texts: list[str] = []

    def on_own_loop() -> None:
        texts.append(asyncio.run(engine.complete(prompt=prompt, max_tokens=16)).text)

    threads = [threading.Thread(target=on_own_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(texts) == 3 and len(set(texts)) == 1  # greedy: same text on every loop


async def test_grammar_constrains_the_output(engine: EmbeddedEngine) -> None:
    prompt = engine.apply_chat_template([{"role": "user", "content": "Is Paris in France? Answer yes or no."}])
    result = await engine.complete(prompt=prompt, max_tokens=8, grammar='root ::= "yes" | "no"')
    assert result.text in ("yes", "no")


async def test_json_schema_constrains_the_output(engine: EmbeddedEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result = await engine.complete(prompt=engine.apply_chat_template(CAPITAL), max_tokens=40, json_schema=schema)
    assert isinstance(json.loads(result.text)["city"], str)


async def test_extra_args_reach_the_scheduler(engine: EmbeddedEngine) -> None:
    extra = {"program_id": f"p-{uuid.uuid4().hex[:8]}", "turn": 3}
    stream = engine.generate(prompt=_unique_prompt(), max_tokens=64, ignore_eos=True, extra_args=extra)
    await anext(stream)  # running now, and 63 tokens from finishing

    def seen_by_scheduler() -> list[Any]:
        return [r.sampling_params.extra_args for r in engine.scheduler.requests.values()]

    assert extra in await engine.call_in_engine(seen_by_scheduler)
    await stream.aclose()


async def test_cancelling_the_consumer_aborts_the_request(engine: EmbeddedEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(prompt=_unique_prompt(), max_tokens=1500, ignore_eos=True):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The abort was queued before the cancellation finished; commands run in order.
    assert await engine.num_unfinished_requests() == 0
    assert await engine.call_in_engine(lambda: len(engine.scheduler.requests)) == 0


async def test_second_call_hits_the_prefix_cache(engine: EmbeddedEngine) -> None:
    prompt = _unique_prompt()
    first = await engine.complete(prompt=prompt, max_tokens=4)
    second = await engine.complete(prompt=prompt, max_tokens=4)
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= 32  # at least one full block
    assert second.num_cached_tokens <= second.num_prompt_tokens


async def test_token_id_prompt(engine: EmbeddedEngine) -> None:
    token_ids = engine.tokenizer.encode(engine.apply_chat_template(CAPITAL))
    result = await engine.complete(prompt=token_ids, max_tokens=16)
    assert result.num_prompt_tokens == len(token_ids)
    assert "Paris" in result.text


async def test_stop_string_ends_the_text(engine: EmbeddedEngine) -> None:
    result = await engine.complete(prompt=engine.apply_chat_template(CAPITAL), max_tokens=32, stop=["Paris"])
    assert "Paris" not in result.text
    assert result.finish_reason == "stop"


async def test_a_rejected_request_fails_alone(engine: EmbeddedEngine) -> None:
    too_long = " ".join(["word"] * 3000)  # > max_model_len=2048 tokens
    with pytest.raises(EngineError, match="rejected"):
        await engine.complete(prompt=too_long, max_tokens=4)
    ok = await engine.complete(prompt=engine.apply_chat_template(CAPITAL), max_tokens=8)
    assert ok.text


async def test_duplicate_running_request_id_is_refused(engine: EmbeddedEngine) -> None:
    request_id = f"dup-{uuid.uuid4().hex}"
    stream = engine.generate(prompt=_unique_prompt(), max_tokens=64, ignore_eos=True, request_id=request_id)
    await anext(stream)
    with pytest.raises(UserError, match="already running"):
        await engine.complete(prompt="hi", max_tokens=2, request_id=request_id)
    await stream.aclose()


async def test_embedded_backend_shares_the_engine(engine: EmbeddedEngine, engine_options: dict[str, Any]) -> None:
    backend = EmbeddedBackend(**engine_options)
    assert isinstance(backend, LLMBackend)
    assert backend.engine is engine
    metadata = ProgramMetadata(program_id="p-backend", program_arrival_s=0.0, turn=0)
    request = LLMRequest(messages=tuple(CAPITAL), max_tokens=32, metadata=metadata)
    completion = await backend.complete(request)
    assert "Paris" in completion.text
    assert completion.prompt_tokens and completion.completion_tokens
    assert completion.cached_tokens is not None and completion.cached_tokens > 0  # earlier tests ran this prompt
    streamed = "".join([delta async for delta in backend.stream(request)])
    assert streamed == completion.text
    constrained = await backend.complete(LLMRequest(prompt="Answer: ", max_tokens=4, grammar='root ::= "A" | "B"'))
    assert constrained.text in ("A", "B")
    await backend.aclose()


async def test_requests_submitted_while_paused_start_in_one_step(engine: EmbeddedEngine) -> None:
    prompts = [[1000 + i, *range(2000 + 40 * i, 2000 + 40 * i + 40)] for i in range(4)]
    async with engine.paused():
        calls = [asyncio.create_task(engine.complete(prompt=p, max_tokens=4, ignore_eos=True)) for p in prompts]
        while await engine.num_unfinished_requests() < len(prompts):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # paused: however long we wait, nothing runs
        scheduler = engine.scheduler
        running, waiting = await engine.call_in_engine(lambda: (len(scheduler.running), len(scheduler.waiting)))
        assert (running, waiting) == (0, len(prompts))
        assert not any(call.done() for call in calls)
    counts = (0, len(prompts))
    for _ in range(100):  # the first poll may land before the first step after the resume
        counts = await engine.call_in_engine(lambda: (len(scheduler.running), len(scheduler.waiting)))
        if counts[0] or all(call.done() for call in calls):
            break
    assert counts == (len(prompts), 0)  # the first step admitted the whole batch
    results = await asyncio.gather(*calls)
    assert [r.num_completion_tokens for r in results] == [4] * len(prompts)


async def test_a_stock_scheduler_swaps_in_and_out_while_the_engine_is_idle(engine: EmbeddedEngine) -> None:
    ours = engine.scheduler
    stock = await engine.build_stock_scheduler()
    assert type(stock).__name__ == "Scheduler" and stock is not ours
    assert await engine.swap_scheduler(stock) is ours and engine.scheduler is stock
    try:
        prompt = [1000, *range(3000, 3100)]
        first = await engine.complete(prompt=prompt, max_tokens=4, ignore_eos=True)
        assert first.num_completion_tokens == 4
    finally:
        assert await engine.swap_scheduler(ours) is stock
    # Swapped in, a scheduler's prefix cache starts empty: the other one wrote over its blocks.
    again = await engine.complete(prompt=prompt, max_tokens=4, ignore_eos=True)
    assert again.num_cached_tokens == 0 and list(again.token_ids) == list(first.token_ids)
    in_flight = asyncio.create_task(engine.complete(prompt=prompt, max_tokens=64, ignore_eos=True))
    while await engine.num_unfinished_requests() == 0:
        await asyncio.sleep(0.001)
    with pytest.raises(UserError, match="no request"):
        await engine.swap_scheduler(stock)
    assert (await in_flight).num_completion_tokens == 64 and engine.scheduler is ours
