"""The program contract: what every LLM call of a program tells the engine that serves it.

One schema, defined here and nowhere else. The executor issues it (`executor.MetadataIssuer`,
which owns a program's turn counter); backends send it (`to_extra_args`: vLLM's
`SamplingParams.extra_args` in process, `vllm_xargs` over HTTP); the serving layer reads it back
with `from_extra_args`, the one validation both the embedded engine and `agentflow serve` run.

Times come in two kinds and their names say which: `..._at_s` and `program_arrival_s` are unix
times (seconds since the epoch), `..._s` alone is a duration. A program's deadline is
`deadline_in_s` seconds after it starts (`Program(deadline_in_s=...)`) and travels as the absolute
`deadline_at_s`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentflow.exceptions import MetadataError

__all__ = ["MAX_NAME_CHARS", "PROGRAM_KEYS", "VLLM_RESERVED_KEYS", "ProgramMetadata", "describe_validation"]

# Keys vLLM itself reads from `extra_args` (vllm/v1/request.py; `session_id` from its server):
# they share the channel with the program fields, so they are never program metadata and never
# "unknown fields", and a caller may not set them through agentflow.
VLLM_RESERVED_KEYS = frozenset({"kv_transfer_params", "ec_transfer_params", "kv_cache_report_mode", "session_id"})

MAX_NAME_CHARS = 512  # program ids and tool names: bounded, so a client cannot make the tables grow without end


class ProgramMetadata(BaseModel):
    """What the runtime knows about the program an LLM call belongs to.

    Field names are the wire names: `to_extra_args()` and `from_extra_args()` are exact inverses.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    program_id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    program_arrival_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # unix time it started
    turn: int = Field(default=0, ge=0)  # index of this LLM call within the program, from 0
    is_last_turn: bool = False  # no LLM call of the program depends on this one
    next_tool: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)  # consumes the output
    next_tool_duration_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # its expected duration
    deadline_at_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # unix time to finish by
    # Expected seconds from this call's start to the program's end along the DAG's longest
    # remaining chain (this call included): urgency apportions the time left along it.
    critical_path_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("is_last_turn", mode="before")
    @classmethod
    def _int_flag(cls, value: Any) -> Any:
        # vLLM's server types `vllm_xargs` values as str | int | float: JSON true arrives as 1.
        if type(value) is int and value in (0, 1):
            return bool(value)
        return value

    def to_extra_args(self) -> dict[str, Any]:
        """The flat JSON-safe mapping vLLM's `extra_args` and `vllm_xargs` take (unset fields left out)."""
        return self.model_dump(exclude_none=True)

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None) -> ProgramMetadata | None:
        """The program fields of a request's `extra_args`; None when it carries none.

        Once any program field is present, every key that is not vLLM's own must be a program
        field of the right type.

        Raises:
            MetadataError: wrong types, out-of-range or non-finite values, unknown fields, a
                missing program_id.
        """
        if not extra_args:
            return None
        if not isinstance(extra_args, Mapping):
            raise MetadataError(f"program metadata must be a JSON object, got {type(extra_args).__name__}")
        fields = {k: v for k, v in extra_args.items() if k not in VLLM_RESERVED_KEYS}
        if not PROGRAM_KEYS & fields.keys():
            return None
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise MetadataError("malformed program metadata: " + describe_validation(exc)) from None


PROGRAM_KEYS = frozenset(ProgramMetadata.model_fields)


def describe_validation(exc: ValidationError) -> str:
    """`field: problem; field: problem`, for error messages that name what was wrong."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "value"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
