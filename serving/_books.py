"""The scheduler's books: pinned KV blocks and the programs it has seen. Pure bookkeeping.

Blocks are held as opaque objects (the engine's); only their ids and prefix-cache hashes are read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.metadata import ProgramMetadata
from serving._decisions import Rank
from serving._estimators import DurationDistribution

__all__ = ["Pin", "PinBook", "ProgramState", "ProgramTable", "matched_blocks"]


@dataclass(slots=True, kw_only=True)
class Pin:
    """KV blocks of one finished call kept for its program's next turn."""

    pin_id: int
    program_id: str
    turn: int
    blocks: list[Any]  # the engine's block objects, in allocation order; one reference each
    block_ids: frozenset[int]
    hashes: tuple[bytes, ...]  # each block's prefix-cache hash: a later prompt reuses a leading run of them
    rank: Rank = (0, 0.0, 0.0)  # its program's place in the queue order (`rank_of` its key)
    num_tokens: int
    created_s: float  # monotonic
    expires_s: float  # monotonic
    next_tool: str | None
    value_s: float  # what the pin saves if used
    dist: DurationDistribution

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def value_density(self, now_s: float, handoff_pending: bool) -> float:
        """Expected seconds saved per block held: the reclaim order (lowest first)."""
        if handoff_pending:
            return self.value_s / max(1, self.num_blocks) * 2.0  # its next turn is waiting: certain
        p = self.dist.remaining(now_s - self.created_s, max(0.0, self.expires_s - now_s))
        return p * self.value_s / max(1, self.num_blocks)


def matched_blocks(pin_hashes: Sequence[bytes], request_hashes: Sequence[bytes]) -> int:
    """How many leading blocks of a pin a prompt with these block hashes reuses."""
    count = 0
    for pinned, wanted in zip(pin_hashes, request_hashes, strict=False):
        if pinned != wanted:
            break
        count += 1
    return count


class PinBook:
    """Every live pin, by program."""

    def __init__(self) -> None:
        self._by_program: dict[str, list[Pin]] = {}  # program id -> its pins, oldest first
        self._by_id: dict[int, Pin] = {}  # pin id -> pin
        self._next_id = 0
        self.num_blocks = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __bool__(self) -> bool:
        return bool(self._by_program)

    def __iter__(self) -> Iterator[Pin]:
        for pins in self._by_program.values():
            yield from pins

    def programs(self) -> set[str]:
        return set(self._by_program)

    def holds(self, program_id: str) -> bool:
        return program_id in self._by_program

    def new_id(self) -> int:
        """An id no pin of this book has had."""
        self._next_id += 1
        return self._next_id - 1

    def add(self, pin: Pin) -> None:
        assert pin.pin_id not in self._by_id, f"pin {pin.pin_id} added twice"
        self._by_program.setdefault(pin.program_id, []).append(pin)
        self._by_id[pin.pin_id] = pin
        self.num_blocks += pin.num_blocks

    def get(self, pin_id: int) -> Pin | None:
        return self._by_id.get(pin_id)

    def remove(self, pin: Pin) -> bool:
        """Take the pin out of the book; False if it was not in it (released already)."""
        if self._by_id.get(pin.pin_id) is not pin:
            return False
        pins = self._by_program[pin.program_id]
        pins.remove(pin)
        if not pins:
            del self._by_program[pin.program_id]
        del self._by_id[pin.pin_id]
        self.num_blocks -= pin.num_blocks
        return True

    def of_program(self, program_id: str) -> list[Pin]:
        return list(self._by_program.get(program_id, ()))

    def matching(self, program_id: str, request_hashes: Sequence[bytes]) -> dict[int, int]:
        """Which pins a new request of the program reuses: pin id -> blocks of it reused.

        Parallel branches of a program may hold pins with a common prefix; a request counts as
        extending the ones it matches furthest.
        """
        lengths = {p.pin_id: matched_blocks(p.hashes, request_hashes) for p in self._by_program.get(program_id, ())}
        best = max(lengths.values(), default=0)
        return {pin_id: n for pin_id, n in lengths.items() if n > 0 and n == best}

    def expired(self, now_s: float, pending: set[int]) -> list[Pin]:
        """Pins past their TTL that no waiting request is about to reuse (those are pending hand-offs)."""
        return [pin for pin in self._by_id.values() if pin.expires_s <= now_s and pin.pin_id not in pending]

    def next_expiry_s(self) -> float | None:
        return min((pin.expires_s for pin in self), default=None)

    def cheapest_first(
        self,
        now_s: float,
        pending: set[int],
        exclude: set[int],
        *,
        ranked_after: Rank | None = None,
    ) -> list[Pin]:
        """Pins in reclaim order; with `ranked_after`, only those of programs that come later in the queue."""
        candidates = [
            pin
            for pin in self._by_id.values()
            if pin.pin_id not in exclude and (ranked_after is None or pin.rank > ranked_after)
        ]
        return sorted(candidates, key=lambda p: p.value_density(now_s, p.pin_id in pending))


@dataclass(slots=True, kw_only=True)
class ProgramState:
    program_id: str
    arrival_s: float  # unix: the metadata's program arrival, else the first request's arrival
    last_active_s: float  # monotonic
    num_requests: int = 0
    queue_delay_s: float = 0.0
    max_queue_delay_s: float = 0.0
    cached_tokens: int = 0
    prompt_tokens: int = 0
    pins_created: int = 0
    pins_hit: int = 0
    ended: bool = False
    last_prompt_tokens: int = 0
    growth_tokens: float | None = None  # EWMA of how much its prompt grows per turn (output + tool output)

    def observe_prompt(self, num_prompt_tokens: int) -> None:
        """A new request's prompt: learn the per-turn growth from the previous one."""
        if self.last_prompt_tokens and num_prompt_tokens > self.last_prompt_tokens:
            delta = float(num_prompt_tokens - self.last_prompt_tokens)
            self.growth_tokens = delta if self.growth_tokens is None else 0.5 * self.growth_tokens + 0.5 * delta
        self.last_prompt_tokens = num_prompt_tokens

    def summary(self) -> dict[str, Any]:
        return {
            "program_id": self.program_id,
            "requests": self.num_requests,
            "queue_delay_s": round(self.queue_delay_s, 6),
            "max_queue_delay_s": round(self.max_queue_delay_s, 6),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "pins_created": self.pins_created,
            "pins_hit": self.pins_hit,
        }


class ProgramTable:
    """Programs the scheduler has seen and not yet forgotten."""

    def __init__(self, *, recent: int = 256) -> None:
        self._programs: dict[str, ProgramState] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=recent)  # summaries of forgotten programs

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, program_id: str) -> ProgramState | None:
        return self._programs.get(program_id)

    def touch(self, metadata: ProgramMetadata, *, now_s: float, arrival_s: float) -> ProgramState:
        """The program's state, made on its first request.

        Its arrival is the time the engine first saw it (`arrival_s`, unix): a client-sent
        `program_arrival_s` can move that later, never earlier, so no client jumps the queue by
        claiming an old arrival.
        """
        state = self._programs.get(metadata.program_id)
        if state is None:
            claimed = metadata.program_arrival_s
            first = arrival_s if claimed is None else max(claimed, arrival_s)
            state = self._programs[metadata.program_id] = ProgramState(
                program_id=metadata.program_id, arrival_s=first, last_active_s=now_s
            )
        state.last_active_s = now_s
        state.ended = False
        return state

    def forget(self, program_id: str) -> dict[str, Any] | None:
        state = self._programs.pop(program_id, None)
        if state is None:
            return None
        summary = state.summary()
        self.finished.append(summary)
        return summary

    def stale(self, now_s: float, live: set[str], pinned: set[str], idle_s: float) -> list[str]:
        """Programs with nothing live or pinned that ended or went idle."""
        return [
            pid
            for pid, state in self._programs.items()
            if pid not in live and pid not in pinned and (state.ended or now_s - state.last_active_s > idle_s)
        ]

    def snapshot(self, limit: int = 64) -> dict[str, Any]:
        live = [state.summary() for state in list(self._programs.values())[-limit:]]
        return {"tracked": len(self._programs), "active": live, "recent_finished": list(self.finished)[-limit:]}
