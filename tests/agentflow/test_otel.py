"""OpenTelemetry: a span per program and per call (GenAI conventions), the DAG as links, off by default."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import agentflow
from agentflow import Program, semantic_function, tool
from agentflow.exceptions import UserError
from agentflow.testing import ScriptedLLM

REPO = Path(__file__).resolve().parents[2]
HANG_S = 10


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agentflow.instrument(tracer_provider=provider)
    yield exporter
    agentflow.otel.uninstrument()


@tool
async def fetch(url: str) -> str:
    """Fetch a page."""
    await asyncio.sleep(0.01)
    return f"page of {url}"


@tool
def fail(text: str) -> str:
    """Always fails."""
    raise ValueError("bad page")


@semantic_function(max_tokens=8)
def summarize(a: str, b: str) -> str:
    """Summarize {a} and {b}."""


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_a_program_is_a_span_tree_whose_links_are_the_dag(spans: InMemorySpanExporter) -> None:
    llm = ScriptedLLM(lambda request: "two pages, one summary")
    async with asyncio.timeout(HANG_S), Program(model=llm, program_id="traced") as p:
        a, b = fetch("a"), fetch("b")
        await summarize(a, b)
    found = spans.get_finished_spans()
    assert len(found) == 4
    program = _by_name(found)["invoke_agent traced"]
    assert program.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert program.attributes["gen_ai.agent.id"] == "traced" and program.attributes["agentflow.program.calls"] == 3
    tools = [s for s in found if s.name == "execute_tool fetch"]
    chat = _by_name(found)["chat scripted"]
    assert len(tools) == 2
    for span in (*tools, chat):
        assert span.parent is not None and span.parent.span_id == program.context.span_id
        assert span.context.trace_id == program.context.trace_id
    for span in tools:
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.tool.name"] == "fetch" and span.attributes["gen_ai.tool.type"] == "function"
        assert span.kind is SpanKind.INTERNAL
    assert chat.kind is SpanKind.CLIENT and chat.attributes["gen_ai.request.model"] == "scripted"
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    # The DAG's edges: the LLM call links to both fetches it read.
    assert {link.context.span_id for link in chat.links} == {t.context.span_id for t in tools}
    assert p.result.ok


async def test_a_failed_call_is_an_error_span_and_its_program_says_so(spans: InMemorySpanExporter) -> None:
    async with asyncio.timeout(HANG_S), Program(program_id="failing"):
        fail("x")
    found = _by_name(spans.get_finished_spans())
    span = found["execute_tool fail"]
    assert span.status.status_code is StatusCode.ERROR and "bad page" in (span.status.description or "")
    assert span.attributes["error.type"] == "ValueError" and span.attributes["agentflow.node.state"] == "failed"
    assert found["invoke_agent failing"].attributes["agentflow.program.failures"] == 1


async def test_a_cancelled_program_ends_its_span_with_an_error() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agentflow.instrument(tracer_provider=provider)
    try:

        async def run() -> None:
            async with Program(program_id="cancelled"):
                await fetch("slow")
                await asyncio.sleep(10)

        task = asyncio.ensure_future(run())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        agentflow.otel.uninstrument()
    program = _by_name(exporter.get_finished_spans())["invoke_agent cancelled"]
    assert program.status.status_code is StatusCode.ERROR


async def test_off_by_default_records_nothing() -> None:
    assert not agentflow.otel.is_instrumented()
    async with Program() as p:
        await fetch("x")
    assert p._spans is None


def test_importing_agentflow_imports_no_opentelemetry_and_a_program_records_nothing() -> None:
    code = (
        "import sys, asyncio, agentflow\n"
        "from agentflow import Program, tool\n"
        "@tool\n"
        "def f() -> int:\n"
        "    return 1\n"
        "async def main():\n"
        "    async with Program() as p:\n"
        "        await f()\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'opentelemetry was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_instrument_without_the_extra_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"  # as if not installed
        "import agentflow\n"
        "from agentflow.exceptions import UserError\n"
        "try:\n"
        "    agentflow.instrument()\n"
        "except UserError as exc:\n"
        "    assert \"pip install 'agentflow[otel]'\" in str(exc), exc\n"
        "else:\n"
        "    sys.exit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert issubclass(UserError, agentflow.AgentflowError)


def test_the_standard_environment_turns_it_on() -> None:
    code = (
        "import asyncio\n"
        "from agentflow import Program, tool\n"
        "@tool\n"
        "def f() -> int:\n"
        "    return 1\n"
        "async def main():\n"
        "    async with Program(program_id='from-env') as p:\n"
        "        await f()\n"
        "asyncio.run(main())\n"
        "from opentelemetry import trace\n"
        "trace.get_tracer_provider().force_flush()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "agentflow-test"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "invoke_agent from-env"' in result.stdout and '"name": "execute_tool f"' in result.stdout
