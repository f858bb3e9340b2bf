"""The program-aware scheduler's control plane: one protocol, typed commands, one class name.

Everything outside the scheduler that talks to it goes through `SchedulerControl`: the embedded
engine calls it on its engine thread; `agentflow serve` sends a `ControlCommand` over vLLM's
utility-call channel to the engine-core process, where `apply` runs it. A scheduler without these
methods (vLLM's stock one) is simply not a `SchedulerControl`: callers check with `isinstance`,
never by looking a method up by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agentflow.metadata import MAX_NAME_CHARS

__all__ = [
    "PROGRAM_AWARE_SCHEDULER",
    "Configure",
    "ControlCommand",
    "EndProgram",
    "GetMetrics",
    "SchedulerControl",
    "ToolDuration",
    "parse_command",
]

# The one name of agentflow's scheduler, as vLLM's `scheduler_cls` takes it (module path, class).
PROGRAM_AWARE_SCHEDULER = "serving._scheduler.ProgramAwareScheduler"


@runtime_checkable
class SchedulerControl(Protocol):
    """What the runtime, the engine and the server may ask of the program-aware scheduler.

    Call it on the thread that owns the scheduler (between two engine steps).
    """

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """A tool's real duration, for the predictor."""
        ...

    def end_program(self, program_id: str) -> dict[str, Any]:
        """Release the program's pins; its summary."""
        ...

    def agentflow_metrics(self) -> dict[str, Any]:
        """Pins, requests, prefix cache per turn, queueing, predictor, KV pool, knobs."""
        ...

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs; all of them after. Raises `UserError` and changes nothing on a bad one."""
        ...

    def next_wakeup_s(self) -> float | None:
        """Seconds until the scheduler wants a tick while the engine is idle (a pin expires); None: never."""
        ...

    def tick(self) -> None:
        """Housekeeping while no request runs: expire pins, forget idle programs."""
        ...

    def pop_request_facts(self, request_id: str) -> dict[str, Any] | None:
        """What the scheduler did with a finished program request (queueing delay, cached tokens, pin hit); once."""
        ...


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def apply(self, control: SchedulerControl) -> Any:
        raise NotImplementedError


class GetMetrics(_Command):
    """`GET /agentflow/metrics`."""

    kind: Literal["metrics"] = "metrics"

    def apply(self, control: SchedulerControl) -> Any:
        control.tick()  # expire what is due first: the counters then say what holds now
        return control.agentflow_metrics()


class EndProgram(_Command):
    """`POST /agentflow/end_program {"program_id"}`."""

    kind: Literal["end_program"] = "end_program"
    program_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)

    def apply(self, control: SchedulerControl) -> Any:
        return control.end_program(self.program_id)


class ToolDuration(_Command):
    """`POST /agentflow/tool_duration {"tool", "duration_s"}`."""

    kind: Literal["tool_duration"] = "tool_duration"
    tool: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    duration_s: float = Field(ge=0, allow_inf_nan=False)

    def apply(self, control: SchedulerControl) -> Any:
        control.observe_tool_duration(self.tool, self.duration_s)
        return {"ok": True}


class Configure(_Command):
    """`POST /agentflow/configure {knob: value, ...}` (the knobs are checked by the scheduler)."""

    kind: Literal["configure"] = "configure"
    knobs: dict[str, Any] = Field(default_factory=dict)

    def apply(self, control: SchedulerControl) -> Any:
        return control.configure(**self.knobs)


ControlCommand = Annotated[GetMetrics | EndProgram | ToolDuration | Configure, Field(discriminator="kind")]
_COMMANDS: TypeAdapter[GetMetrics | EndProgram | ToolDuration | Configure] = TypeAdapter(ControlCommand)


def parse_command(payload: Any) -> GetMetrics | EndProgram | ToolDuration | Configure:
    """A command from its JSON form (`model_dump()`), as it crosses a process boundary.

    Raises:
        pydantic.ValidationError: not a command, or a malformed one.
    """
    return _COMMANDS.validate_python(payload)
