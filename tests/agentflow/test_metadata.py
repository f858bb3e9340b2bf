"""The one program contract: `ProgramMetadata`, its wire form and its validation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentflow.exceptions import MetadataError, UserError
from agentflow.metadata import PROGRAM_KEYS, VLLM_RESERVED_KEYS, ProgramMetadata


def test_runtime_metadata_round_trips_through_the_parser() -> None:
    meta = ProgramMetadata(
        program_id="p1",
        program_arrival_s=1_700_000_000.5,
        turn=3,
        is_last_turn=False,
        next_tool="grep",
        next_tool_duration_s=0.25,
        deadline_at_s=1_700_000_060.0,
        critical_path_s=12.5,
    )
    assert ProgramMetadata.from_extra_args(meta.to_extra_args()) == meta
    assert set(meta.to_extra_args()) == PROGRAM_KEYS


@pytest.mark.parametrize("extra_args", [None, {}, {"kv_transfer_params": {"x": 1}}, {"my_logits_arg": 3}])
def test_no_program_fields_is_no_metadata(extra_args: dict[str, Any] | None) -> None:
    assert ProgramMetadata.from_extra_args(extra_args) is None


def test_server_style_flags_and_ints_are_accepted() -> None:
    # vLLM's server types vllm_xargs values as str | int | float: true arrives as 1, 12 s as 12.
    fields = ProgramMetadata.from_extra_args(
        {"program_id": "p", "is_last_turn": 1, "deadline_at_s": 12, "session_id": "s"}
    )
    assert fields is not None and fields.is_last_turn is True and fields.deadline_at_s == 12.0


@pytest.mark.parametrize(
    ("extra_args", "needle"),
    [
        ({"program_id": 5}, "program_id"),
        ({"program_id": ""}, "program_id"),
        ({"program_id": "p", "turn": "3"}, "turn"),
        ({"program_id": "p", "turn": 1.5}, "turn"),
        ({"program_id": "p", "turn": -1}, "turn"),
        ({"program_id": "p", "next_tool_duration_s": -0.1}, "next_tool_duration_s"),
        ({"program_id": "p", "critical_path_s": -3}, "critical_path_s"),
        ({"program_id": "p", "deadline_at_s": 0}, "deadline_at_s"),
        ({"program_id": "p", "deadline_s": 10.0}, "deadline_s"),  # relative deadlines never travel
        ({"program_id": "p", "next_tool_duration_s": math.inf}, "next_tool_duration_s"),
        ({"program_id": "x" * 513}, "program_id"),
        ({"program_id": "p", "program_arrival_s": math.nan}, "program_arrival_s"),
        ({"program_id": "p", "is_last_turn": "yes"}, "is_last_turn"),
        ({"program_id": "p", "is_last_turn": 2}, "is_last_turn"),
        ({"program_id": "p", "next_tol": "grep"}, "next_tol"),
        ({"turn": 2}, "program_id"),
    ],
)
def test_malformed_metadata_is_a_typed_error(extra_args: dict[str, Any], needle: str) -> None:
    with pytest.raises(MetadataError, match=needle):
        ProgramMetadata.from_extra_args(extra_args)


def test_metadata_error_is_a_user_error() -> None:
    assert issubclass(MetadataError, UserError)


def test_vllms_own_keys_are_never_program_fields() -> None:
    assert not VLLM_RESERVED_KEYS & PROGRAM_KEYS
    fields = ProgramMetadata.from_extra_args({"program_id": "p", "kv_transfer_params": {"x": 1}})
    assert fields == ProgramMetadata(program_id="p")


def test_unset_fields_stay_off_the_wire() -> None:
    assert ProgramMetadata(program_id="p", turn=2).to_extra_args() == {
        "program_id": "p",
        "turn": 2,
        "is_last_turn": False,
    }
