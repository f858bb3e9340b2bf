"""The program-aware policy core, without an engine: metadata, predictor, prefill model, TTL, order, pins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from agentflow.backends._protocol import ProgramMetadata
from agentflow.exceptions import MetadataError, UserError
from serving._policy import (
    PROGRAM_KEYS,
    TRACE_PRIOR,
    AdmissionCandidate,
    DurationDistribution,
    PinBook,
    PolicyKnobs,
    PrefillTimeModel,
    ProgramFields,
    ProgramState,
    ProgramTable,
    ServingMetrics,
    ToolDurationPredictor,
    choose_ttl,
    cold_fits,
    growth_reserve_blocks,
    latest_start_s,
    memory_price_per_s,
    parse_knobs,
    parse_or_none,
    parse_program_metadata,
    queue_key,
)

KNOBS = PolicyKnobs()

# -- metadata -----------------------------------------------------------------------------------------


def test_runtime_metadata_round_trips_through_the_parser() -> None:
    meta = ProgramMetadata(
        program_id="p1",
        arrival_s=1_700_000_000.5,
        turn=3,
        is_last_turn=False,
        next_tool="grep",
        next_tool_duration_s=0.25,
        deadline_s=1_700_000_060.0,
        critical_path_s=12.5,
    )
    fields = parse_program_metadata(meta.to_extra_args())
    assert fields == ProgramFields(
        program_id="p1",
        program_arrival_s=1_700_000_000.5,
        turn=3,
        next_tool="grep",
        next_tool_duration_s=0.25,
        deadline_s=1_700_000_060.0,
        critical_path_s=12.5,
    )
    assert set(meta.to_extra_args()) <= PROGRAM_KEYS


@pytest.mark.parametrize("extra_args", [None, {}, {"kv_transfer_params": {"x": 1}}, {"my_logits_arg": 3}])
def test_no_program_fields_is_no_metadata(extra_args: dict[str, Any] | None) -> None:
    assert parse_program_metadata(extra_args) is None


def test_server_style_flags_and_ints_are_accepted() -> None:
    # vLLM's server types vllm_xargs values as str | int | float: true arrives as 1, 12 s as 12.
    fields = parse_program_metadata({"program_id": "p", "is_last_turn": 1, "deadline_s": 12, "session_id": "s"})
    assert fields is not None and fields.is_last_turn is True and fields.deadline_s == 12.0


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
        ({"program_id": "p", "deadline_s": 0}, "deadline_s"),
        ({"program_id": "p", "program_arrival_s": math.nan}, "program_arrival_s"),
        ({"program_id": "p", "is_last_turn": "yes"}, "is_last_turn"),
        ({"program_id": "p", "is_last_turn": 2}, "is_last_turn"),
        ({"program_id": "p", "next_tol": "grep"}, "next_tol"),
        ({"turn": 2}, "program_id"),
    ],
)
def test_malformed_metadata_is_a_typed_error(extra_args: dict[str, Any], needle: str) -> None:
    with pytest.raises(MetadataError, match=needle):
        parse_program_metadata(extra_args)
    assert parse_or_none(extra_args) == (None, True)


def test_metadata_error_is_a_user_error() -> None:
    assert issubclass(MetadataError, UserError)


def test_knobs_are_validated() -> None:
    knobs = parse_knobs(None, {"fixed_ttl_s": 2, "kv_block_limit": 40})
    assert knobs.fixed_ttl_s == 2.0 and knobs.kv_block_limit == 40
    assert parse_knobs(knobs, {"pinning": False}).fixed_ttl_s == 2.0
    with pytest.raises(UserError, match="bogus"):
        parse_knobs(None, {"bogus": 1})
    with pytest.raises(UserError, match="tau_max_s"):
        parse_knobs(None, {"tau_max_s": -1})


# -- durations ----------------------------------------------------------------------------------------


def test_prior_matches_the_trace_quantiles() -> None:
    assert TRACE_PRIOR.quantile(0.5) == pytest.approx(0.265, rel=1e-3)
    assert TRACE_PRIOR.quantile(0.9) == pytest.approx(0.447, rel=1e-3)
    assert TRACE_PRIOR.quantile(0.99) == pytest.approx(3.34, rel=1e-3)
    assert TRACE_PRIOR.cdf(0.0) == 0.0 and TRACE_PRIOR.cdf(1e6) == 1.0


def test_cdf_is_monotone_and_quantile_inverts_it() -> None:
    dist = DurationDistribution.from_samples([0.1, 0.2, 0.2, 0.5, 1.0, 3.0])
    xs = [0.01 * 1.2**i for i in range(60)]
    cdfs = [dist.cdf(x) for x in xs]
    assert cdfs == sorted(cdfs) and cdfs[0] == 0.0 and cdfs[-1] == 1.0
    for p in (0.2, 0.5, 0.8):
        assert dist.cdf(dist.quantile(p)) == pytest.approx(p, abs=1e-9)


def test_remaining_is_conditional_on_elapsed_time() -> None:
    dist = DurationDistribution.from_quantiles([(0.0, 0.1), (0.5, 1.0), (1.0, 10.0)])
    assert dist.remaining(0.0, 1.0) == pytest.approx(0.5)
    # Half already done by 1 s: of the rest, the share done by 10 s is all of it.
    assert dist.remaining(1.0, 9.0) == pytest.approx(1.0)
    assert 0.0 < dist.remaining(1.0, 1.0) < dist.remaining(1.0, 5.0) < 1.0


def test_predictor_cold_start_then_global_then_per_tool() -> None:
    predictor = ToolDurationPredictor(min_samples=5)
    assert predictor.distribution("cat") is TRACE_PRIOR
    # A hint rescales the prior's shape to the predicted median.
    assert predictor.distribution("cat", hint_s=2.0).quantile(0.5) == pytest.approx(2.0, rel=1e-6)
    for _ in range(5):
        predictor.observe("pip", 60.0)
    assert predictor.distribution("cat").quantile(0.5) == pytest.approx(60.0, rel=0.05)  # global now
    for _ in range(5):
        predictor.observe("cat", 0.1)
    assert predictor.distribution("cat").quantile(0.5) == pytest.approx(0.1, rel=0.05)  # its own
    assert predictor.distribution("pip").quantile(0.5) == pytest.approx(60.0, rel=0.05)
    assert predictor.distribution("cat", hint_s=5.0).quantile(0.5) == pytest.approx(0.1, rel=0.05)  # truth wins


def test_predictor_ignores_garbage_and_keeps_a_window() -> None:
    predictor = ToolDurationPredictor(window=4, min_samples=1)
    predictor.observe("t", -1.0)
    predictor.observe("t", math.nan)
    assert predictor.num_observed == 0
    for d in (100.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0, 1.0):
        predictor.observe("t", d)
    assert predictor.distribution("t").quantile(0.99) < 2.0  # the 100 s samples aged out
    assert predictor.snapshot()["tools"]["t"]["samples"] == 4


# -- prefill model --------------------------------------------------------------------------------


def test_prefill_model_starts_at_the_engine_notes_figures() -> None:
    model = PrefillTimeModel()
    assert model.prefill_s(2048) == pytest.approx(4.8, rel=0.25)
    assert model.prefill_s(4096) == pytest.approx(13.3, rel=0.25)
    assert model.prefill_s(0) == 0.0
    lengths = [1, 32, 256, 1024, 4096, 16384]
    times = [model.prefill_s(n) for n in lengths]
    assert times == sorted(times) and times[0] >= 0


def test_prefill_model_learns_a_faster_engine() -> None:
    model = PrefillTimeModel()
    before = model.prefill_s(2048)
    for i in range(400):  # a GPU-like engine: 100x faster prefill
        tokens = 256 * (1 + i % 16)
        model.observe_step(num_prefill_tokens=tokens, num_decode=i % 8, step_s=0.002 + tokens * 0.00002)
    assert model.num_steps == 400
    assert model.prefill_s(2048) < before / 10
    assert model.prefill_s(2048) == pytest.approx(0.002 + 2048 * 0.00002, rel=0.5)


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


def _fields(**kw: Any) -> ProgramFields:
    return ProgramFields(program_id=kw.pop("program_id", "p"), **kw)


def _key(fields: ProgramFields | None, *, arrival: float = 100.0, program_arrival: float | None = None, **kw: Any):
    return queue_key(
        arrival_s=arrival,
        user_priority=kw.pop("priority", 0),
        fields=fields,
        program_arrival_s=program_arrival,
        holds_pins=kw.pop("pins", False),
        latest_start=kw.pop("latest", None),
        knobs=kw.pop("knobs", KNOBS),
    )


def test_plain_requests_keep_vllm_order() -> None:
    assert _key(None, arrival=5.0) < _key(None, arrival=6.0)
    assert _key(None, arrival=6.0, priority=-1) < _key(None, arrival=5.0)


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


# -- pins, programs, metrics ---------------------------------------------------------------------


@dataclass
class FakeBlock:
    block_id: int


def _pin(book: PinBook, program: str, ids: list[int], *, created: float = 0.0, ttl: float = 1.0, value: float = 1.0):
    return book.add(
        program_id=program,
        turn=0,
        blocks=[FakeBlock(i) for i in ids],
        block_ids=frozenset(ids),
        hashes=tuple(f"h{i}".encode() for i in ids),
        num_tokens=32 * len(ids),
        created_s=created,
        expires_s=created + ttl,
        next_tool="cat",
        value_s=value,
        dist=TRACE_PRIOR,
    )


def test_pin_book_tracks_blocks_and_hits() -> None:
    book = PinBook()
    a1 = _pin(book, "a", [1, 2, 3])
    a2 = _pin(book, "a", [7, 8])
    _pin(book, "b", [4])
    assert len(book) == 3 and book.num_blocks == 6 and book.programs() == {"a", "b"}
    assert book.get(a1.pin_id) is a1

    def hashes(*ids: int) -> list[bytes]:
        return [f"h{i}".encode() for i in ids]

    assert book.matching("a", hashes(1, 2, 3, 9)) == {a1.pin_id: 3}  # extends a1's context
    assert book.matching("a", hashes(1, 2)) == {a1.pin_id: 2}  # diverged inside the pin
    assert book.matching("a", hashes(2, 3)) == {}  # only a leading run is reused
    assert book.matching("b", hashes(1, 2, 3)) == {}  # never another program's pins
    shared = _pin(book, "a", [1, 2, 11])  # a parallel branch sharing blocks 1 and 2 with a1
    assert book.matching("a", hashes(1, 2, 11, 12)) == {shared.pin_id: 3}
    book.remove(shared)
    book.remove(a1)
    book.remove(a1)  # twice is harmless
    assert book.num_blocks == 3 and book.of_program("a") == [a2] and book.get(a1.pin_id) is None


def test_expiry_waits_for_a_pending_hand_off() -> None:
    book = PinBook()
    a = _pin(book, "a", [1], ttl=1.0)
    b = _pin(book, "b", [2], ttl=1.0)
    _pin(book, "c", [3], ttl=5.0)
    assert book.expired(2.0, pending={a.pin_id}) == [b]
    assert book.next_expiry_s() == 1.0


def test_cheapest_pin_is_reclaimed_first() -> None:
    book = PinBook()
    big_cheap = _pin(book, "a", list(range(10)), value=1.0)
    small_dear = _pin(book, "b", [20], value=1.0)
    waiting = _pin(book, "c", list(range(30, 40)), value=1.0)
    # Per block: the big pin is worth a tenth of the small one; a pending hand-off counts as certain.
    assert book.cheapest_first(0.1, pending={waiting.pin_id}, exclude=set()) == [big_cheap, waiting, small_dear]
    assert big_cheap not in book.cheapest_first(0.1, pending=set(), exclude={big_cheap.pin_id})


def test_program_table_forgets_idle_and_ended_programs() -> None:
    table = ProgramTable()
    a = table.touch(_fields(program_id="a", program_arrival_s=5.0), now_s=0.0, arrival_s=9.0)
    table.touch(_fields(program_id="b"), now_s=0.0, arrival_s=9.0)
    assert a.arrival_s == 5.0 and table.get("b").arrival_s == 9.0  # type: ignore[union-attr]
    a.ended = True
    assert table.stale(1.0, live=set(), pinned=set(), idle_s=600) == ["a"]
    assert table.stale(1.0, live={"a"}, pinned=set(), idle_s=600) == []
    assert table.stale(700.0, live=set(), pinned={"a"}, idle_s=600) == ["b"]
    assert table.forget("a") is not None and table.forget("a") is None
    assert len(table) == 1 and table.snapshot()["recent_finished"][0]["program_id"] == "a"


def test_metrics_snapshot_counts_turns_and_queueing() -> None:
    metrics = ServingMetrics()
    metrics.record_admission(program_id="p", turn=0, prompt_tokens=100, cached_tokens=0, delay_s=0.5)
    metrics.record_admission(program_id="p", turn=1, prompt_tokens=200, cached_tokens=160, delay_s=0.1)
    metrics.pins_created, metrics.pins_hit = 2, 1
    snap = metrics.snapshot(active_pins=1, pinned_blocks=5)
    assert snap["prefix_cache_by_turn"]["1"] == {
        "requests": 1,
        "prompt_tokens": 200,
        "cached_tokens": 160,
        "hit_rate": 0.8,
    }
    assert snap["queueing"]["mean_delay_s"] == pytest.approx(0.3)
    assert snap["pins"]["hit_rate"] == 0.5 and snap["pins"]["blocks_pinned"] == 5
    assert [a["turn"] for a in snap["admissions"]] == [0, 1]


# -- admission control --------------------------------------------------------------------------------


def test_growth_reserve_uses_the_learned_growth_or_two_blocks() -> None:
    assert growth_reserve_blocks(None, block_size=32, turns=2) == 4 + 1
    assert growth_reserve_blocks(70.0, block_size=32, turns=2) == math.ceil(140 / 32) + 1
    assert growth_reserve_blocks(70.0, block_size=32, turns=0) == 0


def test_program_learns_its_per_turn_growth_from_its_prompts() -> None:
    state = ProgramState(program_id="p", arrival_s=0.0, last_active_s=0.0)
    state.observe_prompt(500)
    assert state.growth_tokens is None  # one prompt: nothing to compare
    state.observe_prompt(580)
    assert state.growth_tokens == 80
    state.observe_prompt(600)
    assert state.growth_tokens == 50  # EWMA, half and half
    state.observe_prompt(100)  # a shorter prompt (a new branch): no negative growth learned
    assert state.growth_tokens == 50


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
