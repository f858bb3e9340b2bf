"""The scheduler's decisions, pure: TTLs, queue order, admission."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentflow.metadata import ProgramMetadata
from serving._admission import QueuedRequest, ResidentProgram, requests_to_hold
from serving._decisions import (
    AdmissionCandidate,
    choose_ttl,
    cold_fits,
    growth_reserve_blocks,
    latest_start_s,
    memory_price_per_s,
    queue_key,
)
from serving._estimators import TRACE_PRIOR
from serving._knobs import SchedulerKnobs, parse_knobs

KNOBS = SchedulerKnobs()

# -- TTL ------------------------------------------------------------------------------------------


def test_ttl_covers_most_tool_pauses_when_memory_is_free() -> None:
    choice = choose_ttl(TRACE_PRIOR, reprefill_s=2.0, requeue_s=0.5, kv_usage=0.1, knobs=KNOBS)
    assert choice.ttl_s >= TRACE_PRIOR.quantile(0.9)
    assert choice.p_done >= 0.9


def test_ttl_shrinks_as_memory_pressure_rises() -> None:
    ttls = [
        choose_ttl(TRACE_PRIOR, reprefill_s=2.0, requeue_s=0.0, kv_usage=u, knobs=KNOBS).ttl_s
        for u in (0.1, 0.6, 0.9, 0.99)
    ]
    assert ttls == sorted(ttls, reverse=True)
    assert ttls[0] > ttls[-1]


def test_ttl_is_zero_when_pinning_cannot_pay() -> None:
    heavy = parse_knobs(None, {"memory_price_weight": 1000.0})
    assert choose_ttl(TRACE_PRIOR, reprefill_s=2.0, requeue_s=0.0, kv_usage=0.9, knobs=heavy).ttl_s == 0.0
    assert choose_ttl(TRACE_PRIOR, reprefill_s=0.0, requeue_s=0.0, kv_usage=0.1, knobs=KNOBS).ttl_s == 0.0


def test_ttl_follows_the_tool_and_respects_the_cap() -> None:
    slow = TRACE_PRIOR.scaled(20.0)  # a tool with a ~5 s median
    fast = choose_ttl(TRACE_PRIOR, reprefill_s=2.0, requeue_s=0.0, kv_usage=0.3, knobs=KNOBS).ttl_s
    slower = choose_ttl(slow, reprefill_s=2.0, requeue_s=0.0, kv_usage=0.3, knobs=KNOBS).ttl_s
    assert slower > fast
    capped = choose_ttl(slow, reprefill_s=2.0, requeue_s=0.0, kv_usage=0.3, knobs=parse_knobs(None, {"tau_max_s": 1}))
    assert capped.ttl_s <= 1.0 + KNOBS.handoff_slack_s


def test_fixed_ttl_overrides_the_cost_model() -> None:
    knobs = parse_knobs(None, {"fixed_ttl_s": 2.0})
    assert choose_ttl(TRACE_PRIOR, reprefill_s=0.0, requeue_s=0.0, kv_usage=0.99, knobs=knobs).ttl_s == 2.0


def test_memory_price_rises_with_usage() -> None:
    prices = [memory_price_per_s(u, 0.05) for u in (0.0, 0.5, 0.9, 1.0)]
    assert prices[0] == 0.0 and prices == sorted(prices)


# -- order ----------------------------------------------------------------------------------------


def _fields(**kw: Any) -> ProgramMetadata:
    return ProgramMetadata(program_id=kw.pop("program_id", "p"), **kw)


def _key(fields: ProgramMetadata | None, *, arrival: float = 100.0, program_arrival: float | None = None, **kw: Any):
    return queue_key(
        request_id=kw.pop("request_id", "r"),
        arrival_s=arrival,
        user_priority=kw.pop("priority", 0),
        metadata=fields,
        program_arrival_s=program_arrival,
        holds_pins=kw.pop("pins", False),
        latest_start=kw.pop("latest", None),
        knobs=kw.pop("knobs", KNOBS),
    )


def test_plain_requests_keep_vllm_order() -> None:
    assert _key(None, arrival=5.0) < _key(None, arrival=6.0)
    assert _key(None, arrival=6.0, priority=-1) < _key(None, arrival=5.0)
    # Equal priority and arrival: the request id decides, as in vLLM's `Request.__lt__`.
    assert _key(None, arrival=5.0, request_id="a") < _key(None, arrival=5.0, request_id="b")


def test_program_fcfs_by_first_arrival() -> None:
    young = _key(_fields(), arrival=100.0, program_arrival=90.0)
    old = _key(_fields(), arrival=101.0, program_arrival=10.0)
    plain_now = _key(None, arrival=100.5)
    assert old < plain_now and young < plain_now and old < young


def test_programs_holding_pins_go_first() -> None:
    pinned = _key(_fields(), program_arrival=99.0, pins=True)
    assert pinned < _key(_fields(), program_arrival=1.0) and pinned < _key(None, arrival=0.0)
    no_pinning = parse_knobs(None, {"pinning": False})
    assert _key(_fields(), program_arrival=99.0, pins=True, knobs=no_pinning)[0] == 1


def test_disabled_scheduler_orders_like_vllm() -> None:
    off = parse_knobs(None, {"enabled": False})
    assert _key(_fields(), arrival=7.0, program_arrival=1.0, pins=True, knobs=off) == _key(None, arrival=7.0)


def test_urgency_ranks_by_latest_start() -> None:
    now = 1000.0
    near = latest_start_s(now_s=now, deadline_s=now + 10, expected_s=1.0, critical_path_s=None)
    far = latest_start_s(now_s=now, deadline_s=now + 100, expected_s=1.0, critical_path_s=None)
    long_path = latest_start_s(now_s=now, deadline_s=now + 100, expected_s=1.0, critical_path_s=50.0)
    assert near == pytest.approx(now + 9.0)
    assert long_path < near < far  # 100 s over a 50 s path leaves this call only 2 s of budget
    assert _key(_fields(), program_arrival=500.0, latest=near) < _key(_fields(), program_arrival=1.0, latest=far)
    no_urgency = parse_knobs(None, {"urgency": False})
    assert _key(_fields(), program_arrival=1.0, latest=far, knobs=no_urgency)[2] == 1.0


# -- admission control --------------------------------------------------------------------------------


def test_growth_reserve_uses_the_learned_growth_or_two_blocks() -> None:
    assert growth_reserve_blocks(None, block_size=32, turns=2) == 4 + 1
    assert growth_reserve_blocks(70.0, block_size=32, turns=2) == math.ceil(140 / 32) + 1
    assert growth_reserve_blocks(70.0, block_size=32, turns=0) == 0


def test_a_cold_request_fits_only_beside_the_older_programs_reserve() -> None:
    candidate = AdmissionCandidate(new_blocks=30, own_reserve=5, reserve_before=10, reclaimable=0)
    assert cold_fits(free_blocks=45, spent_blocks=0, candidate=candidate)
    assert not cold_fits(free_blocks=44, spent_blocks=0, candidate=candidate)
    assert not cold_fits(free_blocks=45, spent_blocks=1, candidate=candidate)  # queued ahead of it


def test_what_younger_programs_hold_counts_as_room_for_an_older_cold_request() -> None:
    candidate = AdmissionCandidate(new_blocks=30, own_reserve=5, reserve_before=2, reclaimable=20)
    assert cold_fits(free_blocks=17, spent_blocks=0, candidate=candidate)
    assert not cold_fits(free_blocks=16, spent_blocks=0, candidate=candidate)


def test_the_oldest_program_needs_no_reserve_of_its_own() -> None:
    # Nothing older is resident: it grows into what younger programs hold.
    candidate = AdmissionCandidate(new_blocks=16, own_reserve=17, reserve_before=0, reclaimable=16)
    assert cold_fits(free_blocks=0, spent_blocks=0, candidate=candidate)
    assert not cold_fits(free_blocks=0, spent_blocks=1, candidate=candidate)


def test_admission_holds_the_first_cold_request_that_does_not_fit_and_every_cold_one_after() -> None:
    queue = [
        QueuedRequest(program_id=None, rank=(0, 5.0, 5.0), growth_tokens=None),  # plain: never held
        QueuedRequest(program_id="cold-a", rank=(0, 10.0, 10.0), growth_tokens=None),
        QueuedRequest(program_id="warm", rank=(0, 11.0, 11.0), growth_tokens=None),  # resident: never held
        QueuedRequest(program_id="cold-b", rank=(0, 12.0, 12.0), growth_tokens=None),
    ]
    # "old" is resident and not waiting: cold requests behind it keep its growth reserve free
    # (8 turns x 32 tokens = 8 blocks + 1); "warm" is waiting, so its growth is in the queue already.
    resident = {
        "old": ResidentProgram(rank=(0, 1.0, 1.0), growth_tokens=32.0),
        "warm": ResidentProgram(rank=(0, 2.0, 2.0), growth_tokens=32.0),
    }
    new_blocks = {0: 4, 1: 30, 2: 2, 3: 1}
    # cold-a: 4 ahead + 30 + its own reserve 17 + old's 9 = 60 > 40: held.
    held = requests_to_hold(
        queue,
        resident=resident,
        free_blocks=40,
        block_size=32,
        reserve_turns=8,
        new_blocks=new_blocks.__getitem__,
        yielding_blocks=lambda rank: 0,
    )
    assert held == [1, 3]  # cold-b would fit alone, but FCFS among programs keeps it behind cold-a
    roomy = requests_to_hold(
        queue,
        resident=resident,
        free_blocks=400,
        block_size=32,
        reserve_turns=8,
        new_blocks=new_blocks.__getitem__,
        yielding_blocks=lambda rank: 0,
    )
    assert roomy == []
