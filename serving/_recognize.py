"""Which program a request without program fields belongs to: its session, then its prompt chain. Pure.

The scheduler asks `ProgramRecognizer.recognize` about every request that carries no program
fields, tells it about every request that finished (`finished`), and reads from it how long a
recognised program's next turn is likely to take to come, if it comes (`outlook`). The prompt
chains and the gap model are `serving._chains`; this class keeps them, names the programs it
finds, and remembers which program each recent request went to (`attributions`).

A request that continues nothing starts a program of its own when it has a session id, or when
most finished turns have been continued lately (`p_next >= TRACK_NEW_CHAINS_P_NEXT`); otherwise
it stays plain, scheduled as vLLM would, and becomes its program's first turn only if a later
request continues it (or the scheduler pins it: `adopt`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.metadata import MAX_NAME_CHARS
from serving._chains import ChainIndex, GapModel, Link
from serving._estimators import DurationDistribution

__all__ = ["TRACK_NEW_CHAINS_P_NEXT", "ProgramRecognizer", "Recognized"]

TRACK_NEW_CHAINS_P_NEXT = 0.5  # a request that continues nothing starts a program once most turns are continued
_MAX_ATTRIBUTIONS = 4096  # recent requests' programs, for a client checking the attribution


@dataclass(frozen=True, slots=True)
class Recognized:
    program_id: str
    turn: int
    session: str | None  # a digest of its session id
    arrival_s: float  # unix: when the program's first request arrived


class ProgramRecognizer:
    """Sessions, prompt chains, the gaps between turns, and the programs they make."""

    def __init__(self, *, horizon_s: float, window: int, min_samples: int) -> None:
        self.chains = ChainIndex(horizon_s=horizon_s)
        self.gaps = GapModel(window=window, min_samples=min_samples)
        self._num_programs = 0
        self._attributions: OrderedDict[str, str | None] = OrderedDict()  # request id -> program (None: plain)

    # -- requests ----------------------------------------------------------------------------------------

    @staticmethod
    def session_key(session_id: Any) -> str | None:
        """A digest of a request's session id; None for none, an empty one or one too long to be an id."""
        if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_NAME_CHARS:
            return None  # the server refuses these with a 400; an embedded caller's is ignored
        return hashlib.blake2b(session_id.encode("utf-8", "replace"), digest_size=8).hexdigest()

    def recognize(
        self,
        *,
        session: str | None,
        hashes: Sequence[bytes],
        prompt: Sequence[int],
        block_size: int,
        arrival_s: float,
        now_s: float,
        by_chain: bool,
    ) -> Recognized | None:
        """Its program: the one whose finished turn it continues, else a new one; None: a plain request.

        Without a session, only `by_chain` recognises anything.
        """
        if session is None and not by_chain:
            return None
        match = self.chains.find(hashes, prompt, block_size=block_size, session=session)
        if match is not None:
            link = match.link
            if self.chains.claim(link):
                self.gaps.observe_gap(session, now_s - link.finished_s)
            program_id = self.adopt(link)
            return Recognized(program_id, link.turn + 1, session, link.program_arrival_s)
        if session is None and self.gaps.p_next(None) < TRACK_NEW_CHAINS_P_NEXT:
            return None  # most requests are never continued: this one is scheduled as vLLM would
        return Recognized(self._new_program_id(session), 0, session, arrival_s)

    def finished(
        self,
        *,
        request_id: str,
        program: Recognized | None,
        hashes: Sequence[bytes],
        prompt: Sequence[int],
        output: Sequence[int],
        block_size: int,
        arrival_s: float,
        now_s: float,
    ) -> Link | None:
        """A request finished: index it for the next turn (`program`: what it was recognised as, None: plain)."""
        return self.chains.add(
            request_id=request_id,
            program_id=program.program_id if program is not None else None,
            session=program.session if program is not None else None,
            turn=program.turn if program is not None else 0,
            program_arrival_s=program.arrival_s if program is not None else arrival_s,
            hashes=hashes,
            prompt=prompt,
            output=output,
            block_size=block_size,
            now_s=now_s,
        )

    def adopt(self, link: Link) -> str:
        """The program of a finished turn; a plain one becomes a new program's first turn (and is attributed so)."""
        if link.program_id is None:
            link.program_id = self._new_program_id(link.session)
            self.attribute(link.request_id, link.program_id)
        return link.program_id

    def attribute(self, request_id: str, program_id: str | None) -> None:
        self._attributions[request_id] = program_id
        self._attributions.move_to_end(request_id)
        while len(self._attributions) > _MAX_ATTRIBUTIONS:
            self._attributions.popitem(last=False)

    # -- what the scheduler reads ------------------------------------------------------------------------

    def outlook(self, session: str | None) -> tuple[DurationDistribution, float] | None:
        """The gap distribution and P(a next turn comes) of a recognised program; None: not learned yet."""
        dist = self.gaps.distribution(session)
        return None if dist is None else (dist, self.gaps.p_next(session))

    def tracks_new_chains(self) -> bool:
        """Whether a plain finished turn is likely enough continued to be pinned as a program's first."""
        return self.gaps.p_next(None) >= TRACK_NEW_CHAINS_P_NEXT

    @property
    def attributions(self) -> dict[str, str | None]:
        return dict(self._attributions)

    def snapshot(self) -> dict[str, Any]:
        return {**self.gaps.snapshot(), "links": len(self.chains)}

    # -- upkeep ------------------------------------------------------------------------------------------

    def expire(self, now_s: float) -> None:
        """Drop links past the horizon; each that no next turn continued teaches P(next turn)."""
        for link in self.chains.expire(now_s):
            self.gaps.observe_no_next(link.session)

    def forget_program(self, program_id: str) -> None:
        self.chains.forget_program(program_id)

    def _new_program_id(self, session: str | None) -> str:
        self._num_programs += 1
        n = self._num_programs
        return f"~session-{session}-{n}" if session is not None else f"~chain-{n}"
