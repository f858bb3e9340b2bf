"""Admission control: which cold program requests wait this step. Pure.

A request is cold when its program has nothing resident (no pin, no running request): admitting
it takes fresh blocks that older resident programs will want as their contexts grow, and once they
want them, the youngest programs' pins are reclaimed and their contexts re-prefilled later. So a
cold request is admitted only if, beside what is queued ahead of it, older resident programs keep
room for `reserve_turns` turns of their growth (`serving._decisions.cold_fits`). The first cold
request that does not fit waits, and so does every cold one behind it (FCFS among programs);
plain requests and warm ones (their program is resident) never wait here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from serving._decisions import AdmissionCandidate, Rank, cold_fits, growth_reserve_blocks

__all__ = ["QueuedRequest", "ResidentProgram", "requests_to_hold"]


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A waiting request, in queue order, as admission control sees it."""

    program_id: str | None  # None: a request without metadata
    rank: Rank
    growth_tokens: float | None  # its program's learned growth per turn


@dataclass(frozen=True, slots=True)
class ResidentProgram:
    """A program with KV in the pool (pinned or running)."""

    rank: Rank
    growth_tokens: float | None


def requests_to_hold(
    queue: Sequence[QueuedRequest],
    *,
    resident: Mapping[str, ResidentProgram],
    free_blocks: int,
    block_size: int,
    reserve_turns: float,
    new_blocks: Callable[[int], int],
    yielding_blocks: Callable[[Rank], int],
) -> list[int]:
    """Indices into `queue` of the cold requests that must wait this step.

    `new_blocks(i)`: blocks admitting `queue[i]` allocates now (its prompt less its prefix-cache
    hits); `yielding_blocks(rank)`: blocks programs ranked after `rank` hold (their pins are
    reclaimed and their running requests preempted for it).
    """
    waiting_programs = {q.program_id for q in queue if q.program_id is not None}
    spent = 0
    held: list[int] = []
    for index, queued in enumerate(queue):
        if queued.program_id is None or queued.program_id in resident:
            spent += new_blocks(index)  # plain or warm: vLLM admits it ahead if it fits
            continue
        if held:
            held.append(index)
            continue
        candidate = AdmissionCandidate(
            new_blocks=new_blocks(index),
            own_reserve=growth_reserve_blocks(queued.growth_tokens, block_size=block_size, turns=reserve_turns),
            reserve_before=sum(
                growth_reserve_blocks(program.growth_tokens, block_size=block_size, turns=reserve_turns)
                for program_id, program in resident.items()
                if program.rank < queued.rank and program_id not in waiting_programs
            ),
            reclaimable=yielding_blocks(queued.rank),
        )
        if cold_fits(free_blocks=free_blocks, spent_blocks=spent, candidate=candidate):
            spent += candidate.new_blocks
        else:
            held.append(index)
    return held
