"""The SDK end to end on the real embedded engine: the demo program and program metadata."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agentflow import CallKind, LLMRequest, Program, semantic_function, tool
from agentflow.demo import city_break, grounding
from serving import EmbeddedBackend
from serving.engine import EmbeddedEngine

pytestmark = pytest.mark.engine


@pytest.fixture
def backend(engine: EmbeddedEngine, engine_options: dict[str, Any]) -> EmbeddedBackend:
    # Same options as the session engine: the backend shares it instead of starting another.
    shared = EmbeddedBackend(**engine_options)
    assert shared.engine is engine
    return shared


async def test_demo_program_answers_with_parallel_llm_calls(backend: EmbeddedBackend) -> None:
    run = await city_break(cities=("Lisbon", "Oslo"), model=backend)
    assert not run["failures"]
    assert isinstance(run["answer"], str) and run["answer"].strip()
    assert all(isinstance(b, str) and b for b in run["briefs"].values())
    trace = run["trace"]
    briefs = [r for r in trace.records if r.target == "city_brief"]
    # The two briefs were running at the same time: their intervals overlap.
    first, second = sorted(briefs, key=lambda r: r.start_s)
    assert second.start_s < first.end_s
    assert trace.critical_path[-1] == next(r.node_id for r in trace.records if r.target == "recommend")


@tool
def lookup(city: str) -> str:
    """Return a fact about a city."""
    return {"Paris": "Paris is the capital of France."}.get(city, "unknown")


@semantic_function(max_tokens=16)
def answer(fact: str) -> str:
    """Using this fact: {fact} -- what is the capital of France? Answer with one word."""


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


async def test_program_metadata_reaches_the_scheduler(backend: EmbeddedBackend, engine: EmbeddedEngine) -> None:
    seen: list[dict[str, Any]] = []
    scheduler = engine.scheduler
    original_add = scheduler.add_request

    def spy(request: Any) -> None:
        seen.append(dict(request.sampling_params.extra_args or {}))
        original_add(request)

    await engine.call_in_engine(lambda: setattr(scheduler, "add_request", spy))
    try:
        async with Program(model=backend, program_id="meta-test", deadline_in_s=120) as p:
            loud = shout(answer(lookup("Paris")))
            text = await loud
    finally:
        await engine.call_in_engine(lambda: delattr(scheduler, "add_request"))
    assert "PARIS" in text
    assert [n.kind for n in p.graph] == [CallKind.TOOL, CallKind.LLM, CallKind.TOOL]
    [meta] = [m for m in seen if m.get("program_id") == "meta-test"]
    assert meta["turn"] == 0
    assert meta["next_tool"] == "shout"
    assert meta["deadline_at_s"] == pytest.approx(meta["program_arrival_s"] + 120)


async def test_llm_calls_carry_what_the_scheduler_did_into_the_trace_and_the_spans(backend: EmbeddedBackend) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import agentflow

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agentflow.instrument(tracer_provider=provider)
    try:
        async with Program(model=backend, program_id="serving-facts") as p:
            await shout(answer(lookup("Paris")))
    finally:
        agentflow.otel.uninstrument()
    [record] = [r for r in p.result.trace.records if r.target == "answer"]
    assert record.serving is not None and record.serving["queue_delay_s"] >= 0
    assert record.serving["cached_tokens"] == record.usage["cached_tokens"]  # type: ignore[index]
    assert record.serving["pin_hit"] is False  # its first turn: nothing was pinned for it yet
    [chat] = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert chat.attributes["gen_ai.provider.name"] == "vllm"
    assert chat.attributes["agentflow.serving.queue_delay_s"] >= 0 and "agentflow.serving.pin_hit" in chat.attributes
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0


# -- the default model: a grounded demo and native tool calls ---------------------------------------------


@pytest.fixture(scope="module")
def capable() -> EmbeddedBackend:
    """The catalog's default (Qwen2.5-Coder-0.5B) on an engine of its own; the session's tests run on the tiny one."""
    from serving.models import DEFAULT_MODEL

    return EmbeddedBackend(DEFAULT_MODEL, kv_cache_bytes=256 * 1024**2, max_model_len=4096, max_num_seqs=8)


async def test_the_demo_answer_names_the_top_city_and_cites_the_tools_figures(capable: EmbeddedBackend) -> None:
    run = await city_break(model=capable)
    assert not run["failures"]
    best = run["best"]
    assert run["ranking"][0].startswith(best)
    check = grounding(run["answer"], best, run["scores"][best], run["weather"][best])
    assert check.grounded, (run["answer"], check)


async def test_native_tool_calls_on_the_default_model(capable: EmbeddedBackend) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
    request = LLMRequest(
        messages=({"role": "user", "content": "What is the weather in Paris, in celsius?"},),
        max_tokens=64,
        tools=(weather,),
    )
    completion = await capable.complete(request)
    assert completion.tool_call_error is None
    assert [call.name for call in completion.tool_calls] == ["get_weather"]
    assert completion.tool_calls[0].arguments.get("city") == "Paris"
    assert completion.finish_reason == "tool_calls"
    # tool_choice="none": the same reply is only text.
    plain = await capable.complete(dataclasses.replace(request, tool_choice="none"))
    assert plain.tool_calls == () and plain.text
