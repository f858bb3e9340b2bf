"""The one issuer of a program's LLM-call metadata, and owner of its turn counter."""

from __future__ import annotations

import itertools

from agentflow.ir import ProgramFacts
from agentflow.metadata import ProgramMetadata

__all__ = ["MetadataIssuer"]


class MetadataIssuer:
    """Issues the `ProgramMetadata` of each LLM call of one program, numbering its turns.

    The executor holds one per program and issues for the DAG's LLM calls; code that makes LLM
    calls of the program outside the DAG (the planner's plan and join calls, the ReAct loop)
    asks the program for metadata (`Program.llm_metadata`), so one program has one turn
    counter. A trace replay, which has no `Program`, makes one of its own per program.
    """

    def __init__(self, facts: ProgramFacts) -> None:
        self.facts = facts
        self._turns = itertools.count()
        self.num_issued = 0

    def issue(
        self,
        *,
        is_last_turn: bool = False,
        next_tool: str | None = None,
        next_tool_duration_s: float | None = None,
        critical_path_s: float | None = None,
    ) -> ProgramMetadata:
        """The next turn's metadata."""
        facts = self.facts
        self.num_issued += 1
        return ProgramMetadata(
            program_id=facts.program_id,
            program_arrival_s=facts.arrival_s,
            turn=next(self._turns),
            is_last_turn=is_last_turn,
            next_tool=next_tool,
            next_tool_duration_s=next_tool_duration_s,
            deadline_at_s=facts.deadline_at_s,
            critical_path_s=critical_path_s,
        )
