"""Native tool calls in a model's text: Qwen2.5/Hermes `<tool_call>` blocks, or the bare JSON small models write.

```
I'll look both up.
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call>
<tool_call>
{"name": "get_weather", "arguments": {"city": "Rome"}}
</tool_call>
```

The tagged format is what vLLM's `hermes` tool parser reads. The quantized Qwen2.5-Coder models
of the catalog are prompted with it by their chat template, yet answer with the same JSON without
the tags, often in a ```json fence, one object or a list per call. With `bare_json=True` (tools
were offered) such an answer is read too: a JSON object with a `name` (and `arguments` or
`parameters`), a list of them, or several in a row. Prose with no call-shaped JSON is content.

This parser keeps what vLLM's drops: why something that looks like a call is not one. A last
tagged block cut off by the token limit (no closing tag) is still read, as vLLM does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agentflow.backends._protocol import ToolCall

__all__ = ["ParsedToolCalls", "parse_tool_calls"]

_START, _END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class ParsedToolCalls:
    content: str  # the text before the first call (the model's words to the user)
    calls: tuple[ToolCall, ...]
    error: str | None  # why a block is not a call (None: every block parsed, or there was none)


def parse_tool_calls(text: str, *, bare_json: bool = False) -> ParsedToolCalls:
    """The calls in `text`, its content, and what did not parse.

    `<tool_call>` blocks when there are any; else, with `bare_json`, call-shaped JSON (see the
    module doc); else the whole text is content.
    """
    if _START in text:
        return _tagged(text)
    if bare_json:
        return _bare(text)
    return ParsedToolCalls(content=text.strip(), calls=(), error=None)


def _tagged(text: str) -> ParsedToolCalls:
    calls: list[ToolCall] = []
    problems: list[str] = []
    for match in _BLOCK.finditer(text):
        body = match.group(1) if match.group(1) is not None else match.group(2)
        for payload in _block_payloads(body):
            index = len(calls) + len(problems)
            call, problem = _read_payload(payload, index) if isinstance(payload, dict) else (None, payload)
            if call is not None:
                calls.append(call)
            else:
                problems.append(f"tool call {index + 1}: {problem}")
    content = text[: text.index(_START)].strip()
    return ParsedToolCalls(content=content, calls=tuple(calls), error="; ".join(problems) or None)


def _bare(text: str) -> ParsedToolCalls:
    fence = _FENCE.search(text)
    region_start = fence.start() if fence is not None else _first_json_start(text)
    if region_start is None:
        return ParsedToolCalls(content=text.strip(), calls=(), error=None)
    body = fence.group(1) if fence is not None else text[region_start:]
    values, problem = _json_values(body)
    payloads = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls: list[ToolCall] = []
    problems: list[str] = []
    for payload in payloads:
        if not (isinstance(payload, dict) and ("name" in payload or "function" in payload)):
            continue  # JSON, but not call-shaped: the model's content
        call, why = _read_payload(payload, len(calls) + len(problems))
        if call is not None:
            calls.append(call)
        else:
            problems.append(f"tool call {len(calls) + len(problems) + 1}: {why}")
    if not calls and not problems:
        if problem is not None and '"name"' in body:  # a call was attempted but is not JSON
            return ParsedToolCalls(content="", calls=(), error=f"tool call 1: {problem}")
        return ParsedToolCalls(content=text.strip(), calls=(), error=None)
    return ParsedToolCalls(content=text[:region_start].strip(), calls=tuple(calls), error="; ".join(problems) or None)


def _first_json_start(text: str) -> int | None:
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return min(starts) if starts else None


def _json_values(body: str) -> tuple[list[Any], str | None]:
    """The JSON values written one after another in `body` (whitespace between); the first problem, if any."""
    values: list[Any] = []
    position = 0
    while True:
        while position < len(body) and body[position] in " \t\r\n,;":
            position += 1
        if position >= len(body) or body[position] not in "{[":
            return values, None
        try:
            value, position = _DECODER.raw_decode(body, position)
        except ValueError as exc:
            return values, f"not JSON ({exc}): {body[position : position + 120]!r}"
        values.append(value)


def _block_payloads(body: str) -> list[dict[str, Any] | str]:
    """The call objects in one `<tool_call>` block, or why it holds none (a str).

    One object is the format; small models also put a list of calls, or several objects one after
    another, in a single block (Qwen2.5-Coder does on BFCL's parallel questions): each is a call.
    """
    stripped = body.strip()
    values, problem = _json_values(stripped)
    if not values:
        return [problem or f"not JSON: {stripped[:120]!r}"]
    payloads: list[dict[str, Any] | str] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            payloads.append(item if isinstance(item, dict) else f"not a JSON object: {json.dumps(item)[:120]!r}")
    if problem is not None:
        payloads.append(problem)  # a call after the readable ones is cut off or malformed
    return payloads


def _read_payload(payload: dict[str, Any], index: int) -> tuple[ToolCall | None, str]:
    name = payload.get("name", payload.get("function"))
    if isinstance(name, dict):  # {"function": {"name": ..., "arguments": ...}} (OpenAI's shape)
        payload, name = name, name.get("name")
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
