"""How many of the agents' turns the server put in the right program. Pure.

The ground truth is which agent sent each request (its proxy saw the response id); the server's
answer is `attributions` in `GET /agentflow/metrics` (response id -> program id, or null for a
request it scheduled as a plain one). A program stands for at most one agent: programs are matched
to agents greedily by how many turns they share, largest first, so an agent split over several
programs is right only for the part in its matched program, and two agents merged into one
program are wrong for the one with fewer turns there. Accuracy = turns in their agent's matched
program / all turns (an unattributed turn, or one the server no longer lists, is wrong).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentAttribution", "AttributionReport", "score_attribution"]


@dataclass(frozen=True, slots=True)
class AgentAttribution:
    agent: str
    turns: int
    correct: int  # turns in the program matched to this agent
    program: str | None  # that program
    unattributed: int  # turns the server scheduled as plain requests (null)
    missing: int  # turns whose id the server does not list (not seen, or pushed out of its window)
    programs: int  # distinct programs its turns were given


@dataclass(frozen=True, slots=True)
class AttributionReport:
    agents: list[AgentAttribution] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return sum(a.turns for a in self.agents)

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.agents)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.turns if self.turns else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 4) if self.accuracy is not None else None,
            "turns": self.turns,
            "correct": self.correct,
            "unattributed": sum(a.unattributed for a in self.agents),
            "missing": sum(a.missing for a in self.agents),
            "agents_split": sum(1 for a in self.agents if a.programs > 1),
            "per_agent": [
                {
                    "agent": a.agent,
                    "turns": a.turns,
                    "correct": a.correct,
                    "program": a.program,
                    "unattributed": a.unattributed,
                    "missing": a.missing,
                    "programs": a.programs,
                }
                for a in self.agents
            ],
        }


def score_attribution(
    turns_by_agent: Mapping[str, Sequence[str]], attributions: Mapping[str, str | None]
) -> AttributionReport:
    """Score the server's `attributions` against the response ids each agent's proxy recorded."""
    counts: dict[str, Counter[str]] = {}
    unattributed: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    for agent, ids in turns_by_agent.items():
        counts[agent] = Counter()
        for request_id in ids:
            if request_id not in attributions:
                missing[agent] += 1
            elif (program := attributions[request_id]) is None:
                unattributed[agent] += 1
            else:
                counts[agent][program] += 1
    pairs = sorted(
        ((n, agent, program) for agent, per in counts.items() for program, n in per.items()),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    matched: dict[str, tuple[str, int]] = {}
    taken: set[str] = set()
    for n, agent, program in pairs:
        if agent in matched or program in taken:
            continue
        matched[agent] = (program, n)
        taken.add(program)
    agents = [
        AgentAttribution(
            agent=agent,
            turns=len(ids),
            correct=matched.get(agent, (None, 0))[1],
            program=matched.get(agent, (None, 0))[0],
            unattributed=unattributed[agent],
            missing=missing[agent],
            programs=len(counts[agent]),
        )
        for agent, ids in turns_by_agent.items()
    ]
    return AttributionReport(agents=agents)
