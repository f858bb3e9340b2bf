"""Programs of clients that send no metadata: prompt chains and the gaps between their turns. Pure.

An agent's next turn sends the previous turn's prompt, then that turn's output, then the tool's
output. vLLM already hashes every full KV block of a request (`request.block_hashes`, a chain:
block i's hash covers every token up to the end of block i), so the engine can tell a turn from a
new conversation without any help:

- `ChainIndex` keeps a `Link` for each recently finished request: its block hashes (prompt and
  output), where its prompt's last full block is (the *boundary*), the prompt's tokens after it
  and its output's first tokens. A new request *continues* a link when its leading full blocks
  cover the link's prompt up to the boundary (one hash compare), its next tokens are the rest of
  that prompt, and then come the link's first output tokens (`OUTPUT_TOKENS_CHECKED`; the rest of
  an output may be re-tokenized differently by a chat template). A request identical to a
  finished one (two programs with the same system prompt and first message) continues nothing:
  it starts its own chain.
- A *re-ask* continues a link too, ranked below any continuation: an agent that throws away a
  reply it could not use (mini-swe-agent 2.x on a format error) sends the same messages plus a new
  user message, without the reply. Such a prompt repeats the link's prompt except its last few
  tokens (the chat template's generation prompt, `REASK_SLACK` at most) and is longer. Only a
  link already known to be a program's turn can be re-asked: a plain request with a short last
  message would otherwise make every later request with the same system prompt its "re-ask".
  Links are indexed a second time by the last full block before those tokens for it.
- The deepest match wins; among equal ones a link no continuation has claimed yet, then the
  oldest. Programs whose prompts are identical so far are told apart as soon as they differ.
- Links are partitioned by session id (`x-session-id`, `user`, ...): a session's requests only
  continue its own links; a session id reused for unrelated conversations yields separate chains.
- `GapModel` learns from claims and expiries: how long after a turn ends the next one arrives (the
  tool's time, per session where it has samples, all sessions otherwise) and the probability that
  a next turn comes at all (a link unclaimed after `horizon_s` counts as "no next turn"), so
  single-turn traffic, which never continues, is never pinned.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving._estimators import DurationDistribution, ToolDurationPredictor

__all__ = ["OUTPUT_TOKENS_CHECKED", "REASK_SLACK", "ChainIndex", "ChainMatch", "GapModel", "Link"]

OUTPUT_TOKENS_CHECKED = 8  # a continuation repeats this many of the link's first output tokens (fewer if it made fewer)
REASK_SLACK = 8  # a re-ask may differ in this many of the link's last prompt tokens (its generation prompt)

_GLOBAL = ""  # outcomes of every session
_NO_SESSION = "\x00"  # the gap predictor's key for requests without a session (no session id is this)


@dataclass(slots=True, kw_only=True)
class Link:
    """A finished request that a later prompt may extend."""

    link_id: int
    request_id: str  # the finished request's
    program_id: str | None  # the program it belonged to; None: a plain request (a program only if continued)
    session: str | None
    turn: int  # its turn within its program (0: the first)
    program_arrival_s: float  # unix: when its program's first request arrived
    hashes: tuple[bytes, ...]  # full blocks of its prompt and output
    prompt_blocks: int  # how many of them are its prompt's alone
    tail: tuple[int, ...]  # its prompt's tokens after the boundary, then its first output tokens
    stable_blocks: int  # full blocks before its last REASK_SLACK prompt tokens (0: no re-ask can match)
    reask_tail: tuple[int, ...]  # its prompt's tokens after them, up to its last REASK_SLACK
    num_prompt_tokens: int
    num_tokens: int  # prompt + output
    finished_s: float  # monotonic
    claimed: bool = False

    @property
    def boundary(self) -> bytes:
        return self.hashes[self.prompt_blocks - 1]

    def index_keys(self) -> list[tuple[bytes, bool]]:
        """Where the index files it: (block hash, as a re-ask)."""
        keys = [(self.boundary, False)]
        if self.stable_blocks:
            keys.append((self.hashes[self.stable_blocks - 1], True))
        return keys


@dataclass(frozen=True, slots=True)
class ChainMatch:
    link: Link
    depth: int  # leading blocks the new request shares with the link
    reask: bool = False  # the link's prompt again without its reply (see the module doc)


class ChainIndex:
    """Recently finished requests by the hash of their prompt's last full block."""

    def __init__(self, *, horizon_s: float, max_links: int = 4096) -> None:
        self.horizon_s = horizon_s
        self._max_links = max_links
        self._links: OrderedDict[int, Link] = OrderedDict()  # oldest first
        self._by_boundary: dict[bytes, list[tuple[Link, bool]]] = {}  # block hash -> (link, as a re-ask)
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._links)

    def add(
        self,
        *,
        request_id: str,
        program_id: str | None,
        session: str | None,
        turn: int,
        program_arrival_s: float,
        hashes: Sequence[bytes],
        prompt: Sequence[int],
        output: Sequence[int],
        block_size: int,
        now_s: float,
    ) -> Link | None:
        """Index a finished request; None if its prompt does not fill one block (nothing to chain on)."""
        prompt_blocks = min(len(prompt) // block_size, len(hashes))
        if prompt_blocks == 0:
            return None
        tail = (*prompt[prompt_blocks * block_size :], *output[:OUTPUT_TOKENS_CHECKED])
        stable_blocks = min(max(0, len(prompt) - REASK_SLACK) // block_size, prompt_blocks)
        link = Link(
            link_id=self._next_id,
            request_id=request_id,
            program_id=program_id,
            session=session,
            turn=turn,
            program_arrival_s=program_arrival_s,
            hashes=tuple(hashes),
            prompt_blocks=prompt_blocks,
            tail=tail,
            stable_blocks=stable_blocks,
            reask_tail=tuple(prompt[stable_blocks * block_size : max(0, len(prompt) - REASK_SLACK)]),
            num_prompt_tokens=len(prompt),
            num_tokens=len(prompt) + len(output),
            finished_s=now_s,
        )
        self._next_id += 1
        self._links[link.link_id] = link
        for key, reask in link.index_keys():
            self._by_boundary.setdefault(key, []).append((link, reask))
        while len(self._links) > self._max_links:
            self._drop(next(iter(self._links.values())))
        return link

    def find(
        self, hashes: Sequence[bytes], prompt: Sequence[int], *, block_size: int, session: str | None
    ) -> ChainMatch | None:
        """The link a new request (its full blocks' hashes, its prompt) continues, if any (see the module doc)."""
        best: ChainMatch | None = None
        for i, block_hash in enumerate(hashes):
            for link, reask in self._by_boundary.get(block_hash, ()):
                if link.session != session or len(prompt) <= link.num_prompt_tokens:
                    continue  # another session's, or the same prompt again (a new program's first turn)
                if not (_reasks(link, prompt, i, block_size) if reask else _continues(link, prompt, i, block_size)):
                    continue
                depth = i + 1 + _shared(link.hashes, hashes, start=i + 1)
                match = ChainMatch(link, depth, reask=reask)
                if best is None or _better(match, best):
                    best = match
        return best

    def claim(self, link: Link) -> bool:
        """A request continues `link`; True if it is the first to (a later one is a branch or a retry)."""
        first = not link.claimed
        link.claimed = True
        return first

    def expire(self, now_s: float) -> list[Link]:
        """Drop links older than the horizon; the unclaimed ones (no next turn came) are returned."""
        unclaimed: list[Link] = []
        while self._links:
            link = next(iter(self._links.values()))
            if now_s - link.finished_s < self.horizon_s:
                break
            self._drop(link)
            if not link.claimed:
                unclaimed.append(link)
        return unclaimed

    def forget_program(self, program_id: str) -> None:
        """The program ended: its links continue nothing more."""
        for link in [link for link in self._links.values() if link.program_id == program_id]:
            self._drop(link)

    def _drop(self, link: Link) -> None:
        self._links.pop(link.link_id, None)
        for key, _ in link.index_keys():
            peers = self._by_boundary.get(key)
            if peers is not None:
                peers[:] = [entry for entry in peers if entry[0] is not link]
                if not peers:
                    del self._by_boundary[key]


def _continues(link: Link, prompt: Sequence[int], i: int, block_size: int) -> bool:
    """Its blocks end at the link's boundary; then the rest of the link's prompt and its first output tokens."""
    return link.prompt_blocks == i + 1 and _starts_with(prompt, link.tail, link.prompt_blocks * block_size)


def _reasks(link: Link, prompt: Sequence[int], i: int, block_size: int) -> bool:
    """The link's prompt up to its last REASK_SLACK tokens (then something else: a new message)."""
    if link.program_id is None:
        return False  # a plain request: a shared system prompt and a short message look the same
    return link.stable_blocks == i + 1 and _starts_with(prompt, link.reask_tail, link.stable_blocks * block_size)


def _starts_with(prompt: Sequence[int], tail: Sequence[int], start: int) -> bool:
    end = start + len(tail)
    return end <= len(prompt) and all(prompt[start + i] == token for i, token in enumerate(tail))


def _shared(link_hashes: Sequence[bytes], hashes: Sequence[bytes], *, start: int) -> int:
    count = 0
    for mine, theirs in zip(link_hashes[start:], hashes[start:], strict=False):
        if mine != theirs:
            break
        count += 1
    return count


def _better(match: ChainMatch, best: ChainMatch) -> bool:
    """A continuation before a re-ask; then the deepest; then an unclaimed link; then the oldest."""
    if match.reask != best.reask:
        return not match.reask
    if match.depth != best.depth:
        return match.depth > best.depth
    if match.link.claimed != best.link.claimed:
        return not match.link.claimed
    return match.link.finished_s < best.link.finished_s


class GapModel:
    """Time from a turn's end to its program's next request, and whether one comes at all.

    `p_next` is the share of recent finished turns that were continued within the horizon, with
    a pessimistic prior (`prior_next` of `prior_weight` pseudo-turns) so that a fresh engine does
    not treat its first requests as agent turns. Per session once it has `min_samples` outcomes.
    """

    def __init__(
        self, *, window: int = 256, min_samples: int = 5, prior_next: float = 0.25, prior_weight: float = 4.0
    ) -> None:
        self.min_samples = min_samples
        self._gaps = ToolDurationPredictor(window=window, min_samples=min_samples)
        self._window = window
        self._outcomes: dict[str, deque[bool]] = {}  # session ("" = all) -> recent: continued?
        self._prior = (prior_next * prior_weight, prior_weight)

    @property
    def num_gaps(self) -> int:
        return self._gaps.num_observed

    def observe_gap(self, session: str | None, gap_s: float) -> None:
        """A turn was continued `gap_s` after it ended."""
        if not math.isfinite(gap_s) or gap_s < 0:
            return
        self._gaps.observe(session if session is not None else _NO_SESSION, gap_s)  # feeds the global samples too
        self._outcome(session, True)

    def observe_no_next(self, session: str | None) -> None:
        """A turn was never continued within the horizon."""
        self._outcome(session, False)

    def p_next(self, session: str | None) -> float:
        """P(a finished turn gets a next turn)."""
        outcomes = self._outcomes.get(session) if session is not None else None
        if outcomes is None or len(outcomes) < self.min_samples:
            outcomes = self._outcomes.get(_GLOBAL)
        hits, weight = self._prior
        if outcomes:
            hits += sum(outcomes)
            weight += len(outcomes)
        return hits / weight

    def distribution(self, session: str | None) -> DurationDistribution | None:
        """The gap distribution; None until `min_samples` gaps have been seen anywhere."""
        if self._gaps.num_observed < self.min_samples:
            return None
        return self._gaps.distribution(session)  # the session's own samples, else every gap seen

    def snapshot(self) -> dict[str, Any]:
        dist = self.distribution(None)
        return {
            "gaps_observed": self._gaps.num_observed,
            "p_next": round(self.p_next(None), 4),
            "gap_p50_s": round(dist.quantile(0.5), 4) if dist is not None else None,
            "gap_p90_s": round(dist.quantile(0.9), 4) if dist is not None else None,
            "sessions": len(self._outcomes) - (1 if _GLOBAL in self._outcomes else 0),
        }

    def _outcome(self, session: str | None, continued: bool) -> None:
        keys = [_GLOBAL] if session is None else [_GLOBAL, session]
        for key in keys:
            outcomes = self._outcomes.get(key)
            if outcomes is None:
                if len(self._outcomes) >= 4096:  # bound the table against unbounded session ids
                    continue
                outcomes = self._outcomes[key] = deque(maxlen=self._window)
            outcomes.append(continued)
