"""IR nodes -> plan text in the canonical form the grammar admits (the parser's inverse).

Canonical: double-quoted strings (backslash escapes for quotes, backslashes, newlines, tabs and other
control characters), references inside strings as `${N}`, `", "` between items, `key=value`
without spaces, one call per line, `N. join()` last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agentflow.ir import CallNode, Concat, Ref

__all__ = ["format_plan", "format_step", "format_value"]

# A literal `$` must not be read as (or run into) a reference: the grammar admits `$` only before
# a character that cannot continue one.
_BAD_DOLLAR = re.compile(r'\$(?=[0-9{$"\\\x00-\x1f]|\Z)')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def format_value(value: Any) -> str:
    """One argument as plan text."""
    if isinstance(value, Ref):
        return f"${value.node_id}"
    if isinstance(value, Concat):
        return '"' + "".join(_quote_part(p) if isinstance(p, str) else f"${{{p.node_id}}}" for p in value.parts) + '"'
    if isinstance(value, str):
        return '"' + _quote_part(value) + '"'
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no literal form in a plan")
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, tuple):
        if len(value) == 1:
            return f"({format_value(value[0])},)"
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"{type(value).__name__} values have no literal form in a plan")


def format_step(node: CallNode) -> str:
    """`N. target(args)` for one node (its id must be a step number)."""
    items = [format_value(a) for a in node.args]
    items += [f"{k}={format_value(v)}" for k, v in node.kwargs.items()]
    return f"{node.id}. {node.target}({', '.join(items)})"


def format_plan(nodes: Iterable[CallNode], *, thoughts: Mapping[str, str] | None = None) -> str:
    """A whole plan ending with `N. join()`; `thoughts` maps a step id to a `Thought:` line before it."""
    lines: list[str] = []
    last = 0
    for node in nodes:
        if thoughts and node.id in thoughts:
            lines.append(f"Thought: {thoughts[node.id]}")
        lines.append(format_step(node))
        last = int(node.id)
    lines.append(f"{last + 1}. join()")
    return "\n".join(lines)


def _quote_part(text: str) -> str:
    if _BAD_DOLLAR.search(text):
        raise ValueError(f"{text!r}: a literal `$` before a digit, `{{`, `$`, a quote or the end has no plan form")
    out = []
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
