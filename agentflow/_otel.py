"""The spans of one program (imported only when tracing is on: it imports OpenTelemetry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agentflow import __version__
from agentflow.ir import CallKind, NodeState

if TYPE_CHECKING:
    from executor import NodeRun, RunResult

__all__ = ["ProgramSpans", "make_tracer", "provider_from_environment"]

_SCOPE = "agentflow"


def make_tracer(tracer_provider: Any = None) -> trace.Tracer:
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    return provider.get_tracer(_SCOPE, __version__)


def provider_from_environment(exporters: str) -> Any:
    """An SDK TracerProvider exporting to what `OTEL_TRACES_EXPORTER` names (console, otlp), made global."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create())
    for name in (e.strip() for e in exporters.split(",")):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter() -> Any:
    import os

    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


class ProgramSpans:
    """An `ExecutorObserver` that makes the program's span and one child span per call.

    Each call's span links to the spans of the calls it depends on: the trace is the DAG.
    """

    def __init__(self, tracer: trace.Tracer, *, program_id: str, model_name: Callable[[], str]) -> None:
        self._tracer = tracer
        self._model_name = model_name
        self._program = tracer.start_span(
            f"invoke_agent {program_id}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.id": program_id,
                "gen_ai.agent.name": "agentflow.Program",
            },
        )
        self._context = trace.set_span_in_context(self._program)
        self._spans: dict[str, trace.Span] = {}  # node id -> its span (kept for the links of later calls)

    def on_node_start(self, program_id: str, run: NodeRun) -> None:
        node = run.node
        links = [Link(span.get_span_context()) for dep in node.deps if (span := self._spans.get(dep)) is not None]
        if node.kind is CallKind.LLM:
            name, kind = f"chat {self._model_name()}", SpanKind.CLIENT
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": self._model_name(),
                "gen_ai.provider.name": _provider(self._model_name()),
            }
        else:
            name, kind = f"execute_tool {node.target}", SpanKind.INTERNAL
            attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.type": "function"}
        attributes.update({"gen_ai.tool.name" if node.kind is CallKind.TOOL else "agentflow.function": node.target})
        attributes.update({"gen_ai.tool.call.id": node.id, "agentflow.node.id": node.id})
        self._spans[node.id] = self._tracer.start_span(
            name, context=self._context, kind=kind, links=links, attributes=attributes
        )

    def on_node_end(self, program_id: str, run: NodeRun) -> None:
        span = self._spans.get(run.node.id)
        if span is None:  # cancelled before it started: no span
            return
        span.set_attribute("agentflow.node.state", run.state.value)
        span.set_attribute("agentflow.node.attempts", run.attempts)
        if run.usage:
            _set_usage(span, run.usage)
        if run.serving:
            for key, value in run.serving.items():
                if isinstance(value, bool | int | float | str):
                    span.set_attribute(f"agentflow.serving.{key}", value)
        if run.state is not NodeState.DONE:
            span.set_attribute("error.type", _error_type(run))
            span.set_status(Status(StatusCode.ERROR, run.error or run.state.value))
        span.end()

    def close(self, result: RunResult | None, error: BaseException | None = None) -> None:
        """The program ended (with its result) or failed to (with `error`)."""
        if result is not None:
            self._program.set_attribute("agentflow.program.calls", len(result.states))
            self._program.set_attribute("agentflow.program.failures", len(result.failures))
        if error is not None:
            self._program.set_attribute("error.type", type(error).__name__)
            self._program.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        self._program.end()


def _set_usage(span: trace.Span, usage: dict[str, int]) -> None:
    if "prompt_tokens" in usage:
        span.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
    if "completion_tokens" in usage:
        span.set_attribute("gen_ai.usage.output_tokens", usage["completion_tokens"])
    if "cached_tokens" in usage:
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage["cached_tokens"])


def _error_type(run: NodeRun) -> str:
    if run.exception is not None:
        return type(run.exception).__name__
    if run.state is NodeState.CANCELLED:
        return "cancelled"
    return "skipped" if run.state is NodeState.SKIPPED else (run.error or "error").split(":")[0]


def _provider(model_name: str) -> str:
    """The GenAI provider a model string names: `embedded` and `vllm:` are vLLM."""
    scheme, _, rest = model_name.partition(":")
    if scheme in ("embedded", "vllm"):
        return "vllm"
    if scheme == "litellm":
        return rest.split("/", 1)[0] or "litellm"
    return scheme or "unknown"
