"""The scheduler's books: pinned blocks and programs; and its counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from agentflow.metadata import ProgramMetadata
from serving._books import Pin, PinBook, ProgramState, ProgramTable
from serving._estimators import TRACE_PRIOR
from serving._metrics import ServingMetrics


def _fields(**kw: Any) -> ProgramMetadata:
    return ProgramMetadata(program_id=kw.pop("program_id", "p"), **kw)


@dataclass
class FakeBlock:
    block_id: int


def _pin(book: PinBook, program: str, ids: list[int], *, created: float = 0.0, ttl: float = 1.0, value: float = 1.0):
    pin = Pin(
        pin_id=book.new_id(),
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
    book.add(pin)
    return pin


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
    assert book.remove(shared) and book.remove(a1)
    assert not book.remove(a1)  # twice is harmless
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
    late = ProgramTable().touch(_fields(program_id="late", program_arrival_s=12.0), now_s=0.0, arrival_s=9.0)
    # A claimed arrival can move a program later, never earlier than the engine first saw it.
    assert a.arrival_s == 9.0 and late.arrival_s == 12.0 and table.get("b").arrival_s == 9.0  # type: ignore[union-attr]
    a.ended = True
    assert table.stale(1.0, live=set(), pinned=set(), idle_s=600) == ["a"]
    assert table.stale(1.0, live={"a"}, pinned=set(), idle_s=600) == []
    assert table.stale(700.0, live=set(), pinned={"a"}, idle_s=600) == ["b"]
    assert table.forget("a") is not None and table.forget("a") is None
    assert len(table) == 1 and table.snapshot()["recent_finished"][0]["program_id"] == "a"


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
