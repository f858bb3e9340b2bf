"""The scheduler's knobs: one model, validated in one place."""

from __future__ import annotations

import pytest

from agentflow.exceptions import UserError
from serving._knobs import parse_knobs


def test_knobs_are_validated() -> None:
    knobs = parse_knobs(None, {"fixed_ttl_s": 2, "kv_block_limit": 40})
    assert knobs.fixed_ttl_s == 2.0 and knobs.kv_block_limit == 40
    assert parse_knobs(knobs, {"pinning": False}).fixed_ttl_s == 2.0
    with pytest.raises(UserError, match="bogus"):
        parse_knobs(None, {"bogus": 1})
    with pytest.raises(UserError, match="tau_max_s"):
        parse_knobs(None, {"tau_max_s": -1})
