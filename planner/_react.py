"""The sequential baseline: ReAct, one tool call per LLM turn, for comparison with the planner.

Each turn the LLM sees the task and every earlier Thought/Action/Observation and writes one
`Action: tool(arguments)` (or `Final Answer: ...`); the call runs, its result comes back as the
next `Observation:`. Calls go through the same `Program` and executor as compiled plans, so
traces compare like for like.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentflow.backends import LLMBackend, LLMRequest, resolve_backend
from agentflow.exceptions import CallFailedError, PlanError, UserError
from agentflow.program import Program
from agentflow.tools import ToolRegistry
from executor import RunResult, Trace

from ._parse import parse_call
from ._prompt import _tool_list

__all__ = ["ReactResult", "ReactTurn", "build_react_prompt", "run_react"]

_FINAL = re.compile(r"final answer\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_ACTION = re.compile(r"^\s*action\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_MAX_OBSERVATION_CHARS = 400

_INSTRUCTIONS = """\
Solve the task with these tools, one tool call per reply.

Tools:
{tools}

Reply with:
Thought: <what to do next>
Action: tool(arguments)
Arguments are Python literals. The result comes back as `Observation: ...`.
When you know the answer, reply with:
Thought: <why>
Final Answer: <the answer>"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactTurn:
    """One LLM reply and the observation it led to."""

    reply: str
    node_id: str | None  # the call it made, if any
    observation: str | None


@dataclass(frozen=True, kw_only=True)
class ReactResult:
    task: str
    answer: str | None
    reason: str | None  # why there is no answer
    turns: tuple[ReactTurn, ...]
    run: RunResult
    wall_s: float
    first_tool_start_s: float | None

    @property
    def ok(self) -> bool:
        return self.answer is not None

    @property
    def trace(self) -> Trace:
        return self.run.trace

    @property
    def num_llm_calls(self) -> int:
        return len(self.turns)


def build_react_prompt(task: str, registry: ToolRegistry) -> list[dict[str, str]]:
    """The first messages of a ReAct conversation."""
    return [
        {"role": "system", "content": _INSTRUCTIONS.format(tools=_tool_list(registry))},
        {"role": "user", "content": f"Task: {task}"},
    ]


async def run_react(
    task: str,
    *,
    tools: ToolRegistry | Iterable[Any],
    model: str | LLMBackend | None = None,
    max_turns: int = 12,
    max_tokens: int = 192,
    program_id: str | None = None,
) -> ReactResult:
    """Answer `task` one tool call per LLM turn; a failed result after `max_turns` turns."""
    if max_turns < 1:
        raise UserError(f"max_turns must be >= 1, got {max_turns}")
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    backend = resolve_backend(model)
    await backend.start()  # load the model now, so the run's timings do not include it
    messages = build_react_prompt(task, registry)
    turns: list[ReactTurn] = []
    answer: str | None = None
    async with Program(program_id=program_id, model=backend, tools=registry) as program:
        t0 = time.perf_counter()
        for turn in range(max_turns):
            reply = (await backend.complete(_request(messages, max_tokens, program))).text
            final = _FINAL.search(reply)
            if final is not None:
                answer = final.group(1).strip()
                turns.append(ReactTurn(reply=reply, node_id=None, observation=None))
                break
            node_id, observation = await _act(reply, registry, program, str(turn + 1))
            turns.append(ReactTurn(reply=reply, node_id=node_id, observation=observation))
            messages += [
                {"role": "assistant", "content": reply.strip()},
                {"role": "user", "content": f"Observation: {observation}"},
            ]
        wall_s = time.perf_counter() - t0
    run = program.result
    starts = [r.start_s for r in run.trace.records if r.start_s is not None]
    return ReactResult(
        task=task,
        answer=answer,
        reason=None if answer is not None else f"no final answer after {max_turns} turns",
        turns=tuple(turns),
        run=run,
        wall_s=wall_s,
        first_tool_start_s=min(starts, default=None),
    )


def _request(messages: list[dict[str, str]], max_tokens: int, program: Program) -> LLMRequest:
    return LLMRequest(
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=0.0,
        stop=("Observation:",),
        metadata=program.llm_metadata(),
    )


async def _act(reply: str, registry: ToolRegistry, program: Program, node_id: str) -> tuple[str | None, str]:
    """Run the reply's action; the observation is its result or the error, never an exception."""
    match = _ACTION.search(reply)
    if match is None:
        return None, "Error: reply with `Action: tool(arguments)` or `Final Answer: ...`"
    try:
        node = parse_call(match.group(1), registry, node_id=node_id, label=f"{node_id}. {match.group(1)}")
    except PlanError as exc:
        return None, f"Error: {exc.message}"
    if node.deps:
        return None, "Error: write the values themselves; $N references belong to plans"
    program.submit(node)
    try:
        value = await program.future(node.id)
    except CallFailedError as exc:
        return node.id, f"Error: {exc.reason}"
    text = value if isinstance(value, str) else repr(value)
    return node.id, text if len(text) <= _MAX_OBSERVATION_CHARS else text[: _MAX_OBSERVATION_CHARS - 3] + "..."
