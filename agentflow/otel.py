"""OpenTelemetry traces of agentflow programs, following the GenAI semantic conventions. Off by default.

```python
import agentflow
agentflow.instrument()                   # spans go to the global TracerProvider (or pass one)
```

or, with no code at all, the standard environment: `OTEL_TRACES_EXPORTER=console` or `otlp`
(with `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`);
`OTEL_SDK_DISABLED=true` keeps it off. Needs the extra: `pip install 'agentflow[otel]'`.

Every program is an `invoke_agent` span; every call a child span of it, `execute_tool <name>`
or `chat <model>`, linked to the spans of the calls it depends on (the DAG's edges), with the
GenAI attributes (operation, tool name and call id, model, token usage, `error.type`) and, on
LLM calls served by agentflow's engine, what the scheduler did (`agentflow.serving.*`: queueing
delay, cached tokens, pin hit). When off, nothing is imported, recorded or exported: a program
checks one module variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentflow.exceptions import UserError

if TYPE_CHECKING:
    from agentflow._otel import ProgramSpans

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_INSTALL_HINT = "OpenTelemetry is not installed: pip install 'agentflow[otel]'"

_tracer: Any = None  # an opentelemetry Tracer while instrumented
_environment_read = False


def instrument(*, tracer_provider: Any = None) -> None:
    """Trace every program from now on: to `tracer_provider`, else to OpenTelemetry's global one.

    Raises:
        UserError: the `otel` extra is not installed (the message names it).
    """
    global _tracer
    try:
        from agentflow._otel import make_tracer
    except ImportError as exc:
        raise UserError(f"{_INSTALL_HINT} ({exc})") from None
    _tracer = make_tracer(tracer_provider)


def uninstrument() -> None:
    """Stop tracing programs (spans already started still end)."""
    global _tracer
    _tracer = None


def is_instrumented() -> bool:
    return _tracer is not None


def program_spans(program_id: str, *, model_name: Callable[[], str]) -> ProgramSpans | None:
    """The spans of a program that is starting, when tracing is on (the runtime calls this; users need not)."""
    _instrument_from_environment()
    if _tracer is None:
        return None
    from agentflow._otel import ProgramSpans

    return ProgramSpans(_tracer, program_id=program_id, model_name=model_name)


def _instrument_from_environment() -> None:
    """`OTEL_TRACES_EXPORTER` names an exporter (and the SDK is not disabled): instrument, once per process."""
    global _environment_read
    if _environment_read:
        return
    _environment_read = True
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if _tracer is None and exporters and exporters != "none" and not disabled:
        try:
            from agentflow._otel import provider_from_environment
        except ImportError:
            import warnings

            warnings.warn(f"OTEL_TRACES_EXPORTER is set, but {_INSTALL_HINT}", RuntimeWarning, stacklevel=3)
            return
        instrument(tracer_provider=provider_from_environment(exporters))
