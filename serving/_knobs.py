"""The program-aware scheduler's knobs: one model, validated in one place.

Every layer names them the same way: `EngineConfig(scheduler_knobs={...})`, `agentflow serve
--scheduler-knobs '{...}'`, `EmbeddedEngine.configure_scheduler(**knobs)`, the server's
`POST /agentflow/configure`, and vLLM's `--additional-config '{"agentflow_scheduler_knobs": {...}}'`.
A change that fails validation changes nothing.

- `enabled` (True): False schedules every request as stock vLLM (the "vllm" baseline on the
  same engine); pins are released.
- `program_fcfs` (True), `pinning` (True), `urgency` (True): the three mechanisms, separately.
  `pinning=False` with the rest on is vLLM's priority policy keyed by program arrival.
- `fixed_ttl_s` (None): pin for this long instead of the cost model (Continuum pins 2 s).
- `tau_max_s` (30), `handoff_slack_s` (0.05), `memory_price_weight` (0.05): the TTL cost model.
- `max_pinned_fraction` (0.9): pinned blocks never exceed this share of the usable pool.
- `min_tool_samples` (5), `tool_window` (256): the duration predictor.
- `program_idle_gc_s` (600): programs with nothing live are forgotten after this long.
- `reserve_turns` (8): admission control; a program with nothing resident is admitted only if
  older resident programs keep room for this many turns of their context growth (0: off).
- `kv_block_limit` (None): cap the usable KV blocks at runtime by holding the rest back
  (tests and benchmarks emulate a smaller cache without a second engine); must stay above
  `max_model_len / block_size`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.exceptions import UserError
from agentflow.metadata import describe_validation

__all__ = ["SchedulerKnobs", "parse_knobs"]


class SchedulerKnobs(BaseModel):
    """The scheduler's public knobs (this module's docstring says what each does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # False: every request is scheduled exactly as stock vLLM, metadata or not
    program_fcfs: bool = True  # order waiting requests by their program's first arrival
    pinning: bool = True  # keep a finished call's KV while its tool runs
    urgency: bool = True  # deadline programs by latest start time
    fixed_ttl_s: float | None = Field(default=None, ge=0)  # a fixed TTL instead of the cost model
    tau_max_s: float = Field(default=30.0, gt=0)  # longest TTL the cost model may choose
    handoff_slack_s: float = Field(default=0.05, ge=0)  # added to tau: tool end -> next request
    memory_price_weight: float = Field(default=0.05, ge=0)  # lambda(u) = w * u / (1 - u + 0.05), 1/s
    max_pinned_fraction: float = Field(default=0.9, gt=0, le=1)  # of the usable KV blocks
    min_tool_samples: int = Field(default=5, ge=1)
    tool_window: int = Field(default=256, ge=1)  # recent durations kept per tool
    program_idle_gc_s: float = Field(default=600.0, gt=0)  # forget programs idle this long
    kv_block_limit: int | None = Field(default=None, ge=1)  # usable KV blocks (emulates a smaller cache)
    # Admission control: a program with nothing resident (no pin, nothing running) is admitted only
    # if, beside it, older resident programs keep room for this many turns of their context growth.
    # 0: admit whatever fits now (vLLM's rule), so younger programs' pins get reclaimed as older ones grow.
    reserve_turns: float = Field(default=8.0, ge=0)


def parse_knobs(base: SchedulerKnobs | None, updates: Mapping[str, Any]) -> SchedulerKnobs:
    """`base` with `updates` applied. Raises UserError naming the bad knob."""
    merged = {**(base.model_dump() if base is not None else {}), **dict(updates)}
    try:
        return SchedulerKnobs.model_validate(merged)
    except ValidationError as exc:
        raise UserError("bad scheduler knobs: " + describe_validation(exc)) from None
