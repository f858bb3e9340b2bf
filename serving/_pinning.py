"""The pin lifecycle: KV blocks of a finished call kept for its program's next turn.

A pin is made when a call finishes and its metadata names the tool that runs next (its TTL from
`serving._decisions.choose_ttl`); it ends in one of five ways (`Release`): its program's next
request has been scheduled and holds the blocks itself (a hit, the hand-off), its TTL passes, the
memory is wanted (reclaimed, cheapest first), its program ends, or the knobs or a prefix-cache reset
drop every pin. `PinKeeper` does all of it over a `BlockPort` (`serving._vllm.KVPort` in the
engine), and checks the invariants the books must keep with the pool.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from serving._books import Pin, PinBook, ProgramState
from serving._decisions import Rank
from serving._estimators import DurationDistribution
from serving._metrics import ServingMetrics

__all__ = ["BlockPort", "HeldBackBlocks", "PinKeeper", "Release"]


class Release(enum.StrEnum):
    """Why a pin ended."""

    HIT = "hit"  # its program's next request holds the blocks now
    EXPIRED = "expired"
    RECLAIMED = "reclaimed"  # released for memory
    ENDED = "ended"  # its program ended, was cancelled, or ran its last turn
    OTHER = "other"  # pinning switched off, the prefix cache reset, a lower block limit


class BlockPort(Protocol):
    """What pinning needs of the KV pool (`serving._vllm.KVPort`)."""

    @property
    def num_blocks(self) -> int: ...

    def num_free(self) -> int: ...

    def take_for_pin(self, request: Any) -> list[Any]: ...

    def release(self, blocks: list[Any]) -> None: ...

    def allocate(self, count: int) -> list[Any]: ...

    def free(self, blocks: list[Any]) -> None: ...

    @staticmethod
    def block_id(block: Any) -> int: ...

    @staticmethod
    def ref_count(block: Any) -> int: ...

    @staticmethod
    def hash_of(block: Any) -> bytes: ...


class PinKeeper:
    """Every live pin, its blocks' one reference each, and what pins cost and saved."""

    def __init__(self, port: BlockPort, metrics: ServingMetrics, *, block_size: int) -> None:
        self.book = PinBook()
        self._port = port
        self._metrics = metrics
        self._block_size = block_size
        self._accounted_s: float | None = None  # pinned block-seconds are integrated up to here

    def __bool__(self) -> bool:
        return bool(self.book)

    def __len__(self) -> int:
        return len(self.book)

    @property
    def num_blocks(self) -> int:
        return self.book.num_blocks

    # -- making and ending pins ---------------------------------------------------------------------

    def pin(
        self,
        request: Any,
        *,
        program: ProgramState,
        turn: int,
        next_tool: str | None,
        rank: Rank,
        ttl_s: float,
        p_done: float,
        value_s: float,
        dist: DurationDistribution,
        now_s: float,
    ) -> Pin:
        """Keep a finished request's prefix-cached blocks for `ttl_s` (the caller forgets the request)."""
        blocks = self._port.take_for_pin(request)
        self.account(now_s)
        port = self._port
        pin = Pin(
            pin_id=self.book.new_id(),
            program_id=program.program_id,
            turn=turn,
            blocks=blocks,
            block_ids=frozenset(port.block_id(block) for block in blocks),
            hashes=tuple(port.hash_of(block) for block in blocks),
            rank=rank,  # the program's place in the queue order (its request's key is gone by now)
            num_tokens=len(blocks) * self._block_size,
            created_s=now_s,
            expires_s=now_s + ttl_s,
            next_tool=next_tool,
            value_s=value_s,
            dist=dist,
        )
        assert len(pin.block_ids) == pin.num_blocks, "a pin holds each of its blocks once"
        self.book.add(pin)
        program.pins_created += 1
        self._metrics.record_pin(
            program_id=program.program_id,
            turn=turn,
            next_tool=next_tool,
            num_blocks=pin.num_blocks,
            ttl_s=ttl_s,
            p_done=p_done,
        )
        self._metrics.pinned_blocks_peak = max(self._metrics.pinned_blocks_peak, self.book.num_blocks)
        return pin

    def release(self, pins: Iterable[Pin], why: Release, now_s: float) -> int:
        """End these pins (those still live): their blocks go back to the pool's LRU, still hashed."""
        pins = list(pins)
        if not pins:
            return 0
        self.account(now_s)
        released = 0
        for pin in pins:
            if self.book.remove(pin):
                self._port.release(pin.blocks)
                self._metrics.count_release(why.value)
                released += 1
        return released

    def release_program(self, program_id: str, now_s: float) -> None:
        self.release(self.book.of_program(program_id), Release.ENDED, now_s)

    def release_all(self, why: Release, now_s: float) -> None:
        self.release(list(self.book), why, now_s)

    def hand_off(self, pin_ids: Iterable[int], *, num_cached_tokens: int, program: ProgramState, now_s: float) -> bool:
        """The program's next request was scheduled and references the blocks it reused: its pins let go.

        Returns whether the request reused a pinned block (a pin hit).
        """
        hits = [pin for pin_id in pin_ids if (pin := self.book.get(pin_id)) is not None]
        hit = bool(hits) and num_cached_tokens > 0
        if hit:
            self._metrics.pins_hit += len(hits)
            self._metrics.hit_tokens += num_cached_tokens
            program.pins_hit += len(hits)
        self.release(hits, Release.HIT, now_s)
        return hit

    def expire(self, now_s: float, pending: set[int]) -> None:
        """End pins past their TTL, except those a waiting request is about to reuse."""
        if self.book:
            self.release(self.book.expired(now_s, pending), Release.EXPIRED, now_s)

    def reclaim(self, *, want_free: int, candidates: list[Pin], cause: str, now_s: float) -> None:
        """Release `candidates` in order until the pool has `want_free` free blocks."""
        for pin in candidates:
            if self._port.num_free() >= want_free:
                return
            if self.release([pin], Release.RECLAIMED, now_s):
                self._metrics.reclaimed_for[cause] += 1

    def reclaim_for_demand(
        self,
        growth: list[tuple[Rank, int]],
        *,
        head_rank: Rank | None,
        head_demand: int,
        head_pins: set[int],
        pending: set[int],
        now_s: float,
    ) -> None:
        """Release pins, cheapest first, until this step's demand for blocks fits.

        `growth`: (rank, blocks) of each running request that needs blocks, oldest program first;
        then the head waiting request's demand (net of the pins it reuses, `head_pins`, which are
        never reclaimed for it). Each demand may take only pins of programs ranked after its own.
        """
        if self._port.num_free() >= sum(blocks for _, blocks in growth) + head_demand:
            return
        demand = 0
        for rank, blocks in growth:
            demand += blocks
            later = self.book.cheapest_first(now_s, pending, head_pins, ranked_after=rank)
            self.reclaim(want_free=demand, candidates=later, cause="growth", now_s=now_s)
        if head_demand and head_rank is not None:
            later = self.book.cheapest_first(now_s, pending, head_pins, ranked_after=head_rank)
            self.reclaim(want_free=demand + head_demand, candidates=later, cause="admission", now_s=now_s)

    def unstall(self, *, head_rank: Rank, keep: set[int], pending: set[int], now_s: float) -> None:
        """Nothing runs and the head does not fit beside the pins: free what stands in its way.

        Pins of later programs go, and so do pins whose waiting turn sits behind the head (a
        pending hand-off that cannot happen before the head runs). Pins of earlier programs that
        nobody waits for stay: their TTL bounds the wait. `keep`: the pins the head itself reuses.
        """
        stalling = [
            pin for pin in self.book if pin.pin_id not in keep and (pin.rank > head_rank or pin.pin_id in pending)
        ]
        self.release(stalling, Release.RECLAIMED, now_s)
        self._metrics.reclaimed_for["stall"] += len(stalling)

    def enforce_cap(self, cap_blocks: float, now_s: float) -> None:
        """Release the cheapest pins until the pinned blocks fit under `cap_blocks` (the cap shrank)."""
        if self.book.num_blocks <= cap_blocks:
            return
        for pin in self.book.cheapest_first(now_s, set(), set()):
            if self.book.num_blocks <= cap_blocks:
                return
            self.release([pin], Release.OTHER, now_s)

    # -- reading ---------------------------------------------------------------------------------------

    def next_expiry_s(self) -> float | None:
        return self.book.next_expiry_s()

    def account(self, now_s: float) -> None:
        """Integrate pinned block-seconds up to `now_s`."""
        if self._accounted_s is not None:
            self._metrics.pinned_block_s += self.book.num_blocks * max(0.0, now_s - self._accounted_s)
        self._accounted_s = now_s

    def check_invariants(self, *, cap_blocks: float) -> None:
        """The books agree with the pool (`AssertionError` if not).

        Each pin holds exactly one reference to each of its blocks (no block twice in a pin, and a
        block's reference count covers every pin holding it); the pinned-block count is the sum of
        the pins' blocks and never exceeds the cap.
        """
        holders: Counter[int] = Counter()
        refs: dict[int, int] = {}
        total = 0
        for pin in self.book:
            ids = [self._port.block_id(block) for block in pin.blocks]
            assert len(set(ids)) == len(ids) == len(pin.block_ids), f"pin {pin.pin_id} holds a block twice"
            holders.update(ids)
            for block in pin.blocks:
                refs[self._port.block_id(block)] = self._port.ref_count(block)
            total += pin.num_blocks
        assert total == self.book.num_blocks, f"pinned blocks {self.book.num_blocks} != the pins' {total}"
        for block_id, count in holders.items():
            assert refs[block_id] >= count, f"block {block_id}: {count} pins hold it, {refs[block_id]} references"
        assert total <= cap_blocks + 1e-9, f"{total} pinned blocks exceed the cap of {cap_blocks:g}"


class HeldBackBlocks:
    """Blocks taken out of the pool so that only `kv_block_limit` remain usable.

    Tests and benchmarks emulate a smaller KV cache on one engine this way. Only free blocks are
    taken: while requests or pins hold more than the limit allows, the pool shrinks as they let go.
    """

    def __init__(self, port: BlockPort) -> None:
        self._port = port
        self._blocks: list[Any] = []

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def hold(self, limit: int | None) -> None:
        """Hold back all but `limit` usable blocks (None: none)."""
        target = 0 if limit is None else max(0, self._port.num_blocks - limit)
        if len(self._blocks) > target:
            self._give_back(len(self._blocks) - target)
        missing = min(target - len(self._blocks), self._port.num_free())
        if missing > 0:
            self._blocks.extend(self._port.allocate(missing))

    def release_all(self) -> None:
        self._give_back(len(self._blocks))

    def _give_back(self, count: int) -> None:
        if count <= 0:
            return
        released, self._blocks = self._blocks[-count:], self._blocks[:-count]
        self._port.free(released)
