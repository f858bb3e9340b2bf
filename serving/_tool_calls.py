"""Native tool calls in a model's text: the `<tool_call>` blocks of Qwen2.5 and Hermes-style models.

```
I'll look both up.
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call>
<tool_call>
{"name": "get_weather", "arguments": {"city": "Rome"}}
</tool_call>
```

The format vLLM's `hermes` tool parser reads (what `agentflow serve --enable-auto-tool-choice`
uses); this parser keeps what vLLM's drops: why a block that looks like a call is not one. A
last block cut off by the token limit (no closing tag) is still read, as vLLM does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agentflow.backends import ToolCall

__all__ = ["ParsedToolCalls", "parse_tool_calls"]

_START, _END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedToolCalls:
    content: str  # the text before the first call (the model's words to the user)
    calls: tuple[ToolCall, ...]
    error: str | None  # why a block is not a call (None: every block parsed, or there was none)


def parse_tool_calls(text: str) -> ParsedToolCalls:
    """The calls in `text` (none when it has no `<tool_call>`), its content, and what did not parse."""
    if _START not in text:
        return ParsedToolCalls(content=text.strip(), calls=(), error=None)
    calls: list[ToolCall] = []
    problems: list[str] = []
    for index, match in enumerate(_BLOCK.finditer(text)):
        body = match.group(1) if match.group(1) is not None else match.group(2)
        call, problem = _read_call(body, index)
        if call is not None:
            calls.append(call)
        else:
            problems.append(f"tool call {index + 1}: {problem}")
    content = text[: text.index(_START)].strip()
    return ParsedToolCalls(content=content, calls=tuple(calls), error="; ".join(problems) or None)


def _read_call(body: str, index: int) -> tuple[ToolCall | None, str]:
    try:
        payload: Any = json.loads(body.strip())
    except ValueError as exc:
        return None, f"not JSON ({exc}): {body.strip()[:120]!r}"
    if not isinstance(payload, dict):
        return None, f"not a JSON object: {body.strip()[:120]!r}"
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return None, "no function name"
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):  # some models send the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            return None, f"{name}: arguments are not JSON ({exc})"
    if not isinstance(arguments, dict):
        return None, f"{name}: arguments must be a JSON object, got {type(arguments).__name__}"
    return ToolCall(id=f"call_{index}", name=name, arguments=arguments), ""
