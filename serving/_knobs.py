"""The program-aware scheduler's knobs: one model, validated in one place.

Every layer names them the same way: `EngineConfig(scheduler_knobs={...})`, `agentflow serve
--scheduler-knobs '{...}'`, `EmbeddedEngine.configure_scheduler(**knobs)`, the server's
`POST /agentflow/configure`, and vLLM's `--additional-config '{"agentflow_scheduler_knobs": {...}}'`.
A change that fails validation changes nothing. Numbers must be finite and within the bounds on
`SchedulerKnobs`; `kv_block_limit` must leave room for one request of `max_model_len` tokens.

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
- `identify_by_fields` (True), `identify_by_session` (True), `identify_by_chain` (True): how a
  request is known to belong to a program, in this order: agentflow's program fields; a session
  id (`x-session-id`, `x-dynamo-session-id`, the body's `session_id`, `prompt_cache_key`, `user`);
  its prompt extending a recently finished request's prompt and output (`serving._chains`).
  Programs known by a session or a chain are pinned by the learned gap between their turns.
- `chain_horizon_s` (120): a finished request no next turn has extended within this long counts
  as a program's last (it teaches the scheduler how often turns are continued at all).
- `kv_block_limit` (None): cap the usable KV blocks at runtime by holding the rest back
  (tests and benchmarks emulate a smaller cache without a second engine); must stay above
  `max_model_len / block_size`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.exceptions import UserError
from agentflow.metadata import describe_validation

__all__ = ["EngineLimits", "SchedulerKnobs", "parse_knobs"]

_HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What the engine a knob change is checked against can hold."""

    max_model_len: int  # tokens
    block_size: int  # tokens per KV block

    @property
    def min_kv_blocks(self) -> int:
        """The smallest `kv_block_limit` that still holds one full-length request (and its next token)."""
        return math.ceil((self.max_model_len + 1) / self.block_size)


class SchedulerKnobs(BaseModel):
    """The scheduler's public knobs (this module's docstring says what each does).

    Strict: booleans are JSON booleans, integers are integers, every number finite and within the
    bounds below (generous for any real deployment, small enough that no arithmetic on them overflows).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True  # False: every request is scheduled exactly as stock vLLM, metadata or not
    program_fcfs: bool = True  # order waiting requests by their program's first arrival
    pinning: bool = True  # keep a finished call's KV while its tool runs
    urgency: bool = True  # deadline programs by latest start time
    fixed_ttl_s: float | None = Field(default=None, ge=0, le=_HOUR_S, allow_inf_nan=False)  # instead of the cost model
    tau_max_s: float = Field(default=30.0, gt=0, le=_HOUR_S, allow_inf_nan=False)  # longest TTL the model may choose
    handoff_slack_s: float = Field(default=0.05, ge=0, le=60, allow_inf_nan=False)  # added to tau: tool end -> request
    # lambda(u) = w * u / (1 - u + 0.05), 1/s
    memory_price_weight: float = Field(default=0.05, ge=0, le=1000, allow_inf_nan=False)
    max_pinned_fraction: float = Field(default=0.9, gt=0, le=1, allow_inf_nan=False)  # of the usable KV blocks
    min_tool_samples: int = Field(default=5, ge=1, le=10_000)
    tool_window: int = Field(default=256, ge=1, le=100_000)  # recent durations kept per tool
    program_idle_gc_s: float = Field(default=600.0, gt=0, le=7 * 24 * _HOUR_S, allow_inf_nan=False)
    identify_by_fields: bool = True  # agentflow's program fields
    identify_by_session: bool = True  # a session id sent with the request
    identify_by_chain: bool = True  # the prompt extends a recently finished request's prompt + output
    chain_horizon_s: float = Field(default=120.0, gt=0, le=7 * 24 * _HOUR_S, allow_inf_nan=False)
    kv_block_limit: int | None = Field(default=None, ge=1, le=1_000_000_000)  # usable KV blocks (a smaller cache)
    # Admission control: a program with nothing resident (no pin, nothing running) is admitted only
    # if, beside it, older resident programs keep room for this many turns of their context growth.
    # 0: admit whatever fits now (vLLM's rule), so younger programs' pins get reclaimed as older ones grow.
    reserve_turns: float = Field(default=8.0, ge=0, le=1000, allow_inf_nan=False)


def parse_knobs(
    base: SchedulerKnobs | None, updates: Mapping[str, Any], *, limits: EngineLimits | None = None
) -> SchedulerKnobs:
    """`base` with `updates` applied, checked against the engine's `limits` when given.

    Raises:
        UserError: naming every bad knob; nothing changes (the knobs are a new frozen object).
    """
    if not isinstance(updates, Mapping):
        raise UserError(f"scheduler knobs must be a JSON object, got {type(updates).__name__}")
    merged = {**(base.model_dump() if base is not None else {}), **dict(updates)}
    try:
        knobs = SchedulerKnobs.model_validate(merged)
    except ValidationError as exc:
        raise UserError("bad scheduler knobs: " + describe_validation(exc)) from None
    if limits is not None and knobs.kv_block_limit is not None and knobs.kv_block_limit < limits.min_kv_blocks:
        raise UserError(
            f"bad scheduler knobs: kv_block_limit: {knobs.kv_block_limit} blocks cannot hold one request of "
            f"max_model_len {limits.max_model_len}: at least {limits.min_kv_blocks} blocks "
            f"of {limits.block_size} tokens"
        )
    return knobs
