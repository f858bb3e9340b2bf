"""The joiner: after a plan ran, one LLM call decides `Finish(answer)` or `Replan(reason)`.

Where the backend enforces constraints the reply is JSON under a schema (on the last allowed
round the schema only admits finish); elsewhere the prompt teaches the LLMCompiler text form
(`Thought: ...` / `Action: Finish(...)` or `Action: Replan(...)`), and `parse_join_output` reads
either form, falling back to the whole reply as the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Finish", "JoinDecision", "Replan", "build_joiner_prompt", "join_schema", "parse_join_output"]

_MAX_THOUGHT_CHARS = 200
_MAX_ANSWER_CHARS = 400
_ACTION = re.compile(r"\b(finish|replan)\s*\((.*)\)", re.IGNORECASE | re.DOTALL)
_BARE_ACTION = re.compile(r"action\s*:\s*(finish|replan)\b\s*:?\s*(.*)", re.IGNORECASE | re.DOTALL)
_THOUGHT = re.compile(r"thought\s*:\s*(.*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """The results answer the task."""

    answer: str
    thought: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Replan:
    """The results do not answer the task yet; plan again."""

    reason: str
    thought: str = ""


JoinDecision = Finish | Replan


def join_schema(*, allow_replan: bool) -> dict[str, Any]:
    """JSON schema of the joiner's reply (finish only when no replan is left)."""
    thought = {"type": "string", "maxLength": _MAX_THOUGHT_CHARS}
    finish = {
        "type": "object",
        "properties": {
            "thought": thought,
            "action": {"const": "finish"},
            "answer": {"type": "string", "minLength": 1, "maxLength": _MAX_ANSWER_CHARS},
        },
        "required": ["thought", "action", "answer"],
        "additionalProperties": False,
    }
    if not allow_replan:
        return finish
    replan = {
        "type": "object",
        "properties": {
            "thought": thought,
            "action": {"const": "replan"},
            "reason": {"type": "string", "minLength": 1, "maxLength": _MAX_THOUGHT_CHARS},
        },
        "required": ["thought", "action", "reason"],
        "additionalProperties": False,
    }
    return {"anyOf": [finish, replan]}


def build_joiner_prompt(
    task: str, observations: str, *, allow_replan: bool, structured: bool
) -> tuple[dict[str, str], ...]:
    """Chat messages asking whether the observations answer the task."""
    system = "You read the results of a plan and give the final answer to the task."
    if structured:
        form = '{"thought": "...", "action": "finish", "answer": "..."}'
        if allow_replan:
            form += '\nor, if results are missing or failed:\n{"thought": "...", "action": "replan", "reason": "..."}'
    else:
        form = "Thought: <one sentence>\nAction: Finish(<the answer>)"
        if allow_replan:
            form += "\nor, if results are missing or failed:\nThought: <one sentence>\nAction: Replan(<what to change>)"
    last = "" if allow_replan else "\nNo more plans can be made: answer as well as you can."
    user = f"Task: {task}\n\nResults:\n{observations or '(no steps ran)'}\n\nReply as:\n{form}{last}"
    return ({"role": "system", "content": system}, {"role": "user", "content": user})


def parse_join_output(text: str) -> JoinDecision:
    """Read a joiner reply in JSON or text form; unreadable non-empty text is taken as the answer."""
    stripped = text.strip()
    decision = _from_json(stripped) or _from_text(stripped)
    if decision is not None:
        return decision
    if stripped:
        return Finish(answer=stripped)
    return Replan(reason="the joiner gave an empty reply")


def _from_json(text: str) -> JoinDecision | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    thought = _text(data.get("thought"))
    action = _text(data.get("action")).lower()
    if "replan" in action:
        return Replan(reason=_text(data.get("reason") or data.get("answer")) or "no reason given", thought=thought)
    if "finish" in action or "answer" in data:
        return Finish(answer=_text(data.get("answer")), thought=thought)
    return None


def _from_text(text: str) -> JoinDecision | None:
    thought_match = _THOUGHT.search(text)
    thought = thought_match.group(1).strip() if thought_match else ""
    match = _ACTION.search(text) or _BARE_ACTION.search(text)
    if match is None:
        return None
    kind, body = match.group(1).lower(), _unquote(match.group(2).strip())
    if kind == "replan":
        return Replan(reason=body or "no reason given", thought=thought)
    return Finish(answer=body, thought=thought)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)
