"""Planner prompts, built from the tool registry: tool list, plan rules, few-shot examples.

Short on purpose: the default embedded model has a 2-4k token context and reads long
instructions poorly. A replan prompt adds the earlier plans, their observations and why
they did not finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.ir import CallNode, NodeState
from agentflow.tools import ToolRegistry

from ._format import format_value
from ._parse import signature_text

__all__ = ["Observation", "PlanExample", "build_planner_prompt", "default_examples", "render_observations"]

_MAX_OUTPUT_CHARS = 200  # an observation longer than this is cut in prompts

_RULES = """\
Plan format:
- One call per line: `N. tool(arguments)`, numbered from {first}.
- Arguments are Python literals ("text", 3, 2.5, [...], {{...}}) or $N, the result of step N.
- Only refer to earlier steps. Inside a string write ${{N}}.
- Calls that do not need each other's results run in parallel.
- An optional `Thought: ...` line may come before a step.
- The last line is `N. join()`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanExample:
    """A few-shot example: a task and a plan for it."""

    task: str
    plan: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What one executed step produced: its plan line and output, or why it has none."""

    node: CallNode
    state: NodeState
    output: Any = None
    error: str | None = None

    def render(self) -> str:
        line = self.node.label or f"{self.node.id}. {self.node.target}(...)"
        if self.state is NodeState.DONE:
            return f"{line} -> {_clip(_show(self.output))}"
        return f"{line} -> {self.state.value}: {_clip(self.error or 'no reason given')}"


def build_planner_prompt(
    task: str,
    registry: ToolRegistry,
    *,
    examples: Sequence[PlanExample] | None = None,
    history: str | None = None,
    first_step: int = 1,
) -> tuple[dict[str, str], ...]:
    """Chat messages asking for a plan; `history` (earlier plans and feedback) makes it a replan."""
    shots = list(examples) if examples is not None else default_examples(registry)
    system = "\n\n".join(
        part
        for part in (
            "You write plans that solve a task with these tools.",
            "Tools:\n" + _tool_list(registry),
            _RULES.format(first=first_step),
            _render_examples(shots),
        )
        if part
    )
    user = f"Task: {task}"
    if history:
        user += f"\n\n{history}\n\nWrite the new plan. Number its steps from {first_step}."
    return ({"role": "system", "content": system}, {"role": "user", "content": user})


def render_observations(observations: Iterable[Observation]) -> str:
    """One line per executed step: `N. tool(args) -> output` or `-> failed: reason`."""
    return "\n".join(obs.render() for obs in observations)


def default_examples(registry: ToolRegistry) -> list[PlanExample]:
    """One synthetic example using the first two tools, when the caller gives none."""
    callees = list(registry)[:2]
    if not callees:
        return []
    lines = []
    for i, callee in enumerate(callees, start=1):
        fields = callee.arguments_model.model_fields  # resolved types (signatures may hold strings)
        args = ", ".join(format_value(_placeholder(f.annotation)) for f in fields.values() if f.is_required())
        lines.append(f"{i}. {callee.name}({args})")
    lines.append(f"{len(callees) + 1}. join()")
    return [PlanExample(task="(an example of the format)", plan="\n".join(lines))]


def _tool_list(registry: ToolRegistry) -> str:
    lines = []
    for callee in registry:
        description = " ".join((callee.description or "").split())
        lines.append(f"- {signature_text(callee)}: {description}" if description else f"- {signature_text(callee)}")
    return "\n".join(lines)


def _render_examples(examples: Sequence[PlanExample]) -> str:
    if not examples:
        return ""
    blocks = [f"Task: {ex.task}\n{ex.plan.strip()}" for ex in examples]
    title = "Example:" if len(blocks) == 1 else "Examples:"
    return title + "\n" + "\n\n".join(blocks)


def _placeholder(annotation: Any) -> Any:
    """A value of roughly the annotated type, for a synthetic example."""
    simple: Mapping[Any, Any] = {str: "text", int: 1, float: 1.5, bool: True, list: [], dict: {}}
    if annotation in simple:
        return simple[annotation]
    origin = getattr(annotation, "__origin__", None)
    return simple.get(origin, "text")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_OUTPUT_CHARS else text[: _MAX_OUTPUT_CHARS - 3] + "..."
