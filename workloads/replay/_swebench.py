r"""mini-swe-agent trajectories -> agentflow traces (`workloads.replay._trace` format).

Accepted input: the JSON mini-swe-agent saves per instance (`<instance>.traj.json`; the
`mini-extra swebench` output directory holds one per instance, found recursively):

```json
{"info": {"exit_status": "Submitted", "config": {"model": {"model_name": "..."}}, ...},
 "messages": [{"role": "system", "content": "..."},
              {"role": "user", "content": "..."},
              {"role": "assistant", "content": "... ```bash\nls\n``` ...",
               "extra": {"response": {"usage": {"prompt_tokens": 1714, "completion_tokens": 84,
                                                  "prompt_tokens_details": {"cached_tokens": 320}}},
                         "actions": [{"command": "ls"}], "timestamp": 1718000000.5}},
              {"role": "user", "content": "<returncode>0</returncode>...", "extra": {"timestamp": 1718000000.7}},
              ...],
 "trajectory_format": "mini-swe-agent-1.1"}
```

Tolerated variants: v1 trajectories (no `extra`: token counts are estimated from the text,
times are unknown), `content` as a list of text parts, tool calls instead of a bash block
(`tool_calls[0].function.arguments` with a `command`), Anthropic-style usage
(`input_tokens`/`output_tokens`/`cache_read_input_tokens`), a top-level `instance_id`, and a
bare list of messages. Each assistant message is one LLM call:

- `input_tokens`, `output_tokens`, `cached_tokens`: the provider's usage when recorded; otherwise
  estimated as characters / `chars_per_token` over the messages before it (its prompt) and its
  own text (its output), 0 cached;
- `tool`: the first word of the bash command it issued (`None` when it issued none);
- `llm_s`: its timestamp minus the previous message's (v2 timestamps), else null;
- `tool_s`: the next observation's timestamp minus its own, else null.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError
from workloads.replay._trace import TraceProgram, TraceTurn, dump_trace

__all__ = ["ConversionReport", "convert_paths", "convert_trajectory", "find_trajectories"]

_COMMAND_BLOCK = re.compile(r"```(?:bash|sh|mswea_bash_command)?[ \t]*\n(.*?)\n?```", re.DOTALL)
_MESSAGE_OVERHEAD_TOKENS = 4  # role and separators a chat template adds per message


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversionReport:
    out_path: Path
    num_programs: int
    num_calls: int
    num_estimated_calls: int  # calls whose token counts were estimated from text
    skipped: tuple[tuple[str, str], ...]  # (file, reason)


def find_trajectories(paths: Iterable[Path | str]) -> list[Path]:
    """The trajectory files named, or found under the directories named (`*.traj.json`, else `*.json`)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            matches = sorted(path.rglob("*.traj.json")) or sorted(path.rglob("*.json"))
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} is neither a file nor a directory")
    return found


def convert_paths(
    paths: Iterable[Path | str],
    out_path: Path | str,
    *,
    chars_per_token: float = 4.0,
    source: str | None = None,
) -> ConversionReport:
    """Convert every trajectory found to one trace file; unreadable ones are skipped with the reason."""
    programs: list[TraceProgram] = []
    skipped: list[tuple[str, str]] = []
    estimated = 0
    for path in find_trajectories(paths):
        try:
            data = json.loads(path.read_text())
            program, num_estimated = convert_trajectory(
                data, program_id=_program_id(data, path), chars_per_token=chars_per_token, source=source
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
            continue
        programs.append(program)
        estimated += num_estimated
    if not programs:
        raise UserError("no trajectory could be converted" + (f": {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    out = dump_trace(programs, out_path)
    return ConversionReport(
        out_path=out,
        num_programs=len(programs),
        num_calls=sum(len(p.turns) for p in programs),
        num_estimated_calls=estimated,
        skipped=tuple(skipped),
    )


def convert_trajectory(
    data: Any, *, program_id: str, chars_per_token: float = 4.0, source: str | None = None
) -> tuple[TraceProgram, int]:
    """One trajectory -> one trace program, and how many of its calls had estimated token counts.

    Raises:
        ValueError: no messages, or no assistant message.
    """
    if not chars_per_token > 0:
        raise UserError(f"chars_per_token must be > 0, got {chars_per_token}")
    messages = _messages(data)
    count = _token_estimator(chars_per_token)
    turns: list[TraceTurn] = []
    estimated = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        turn, was_estimated = _turn(messages, index, count)
        turns.append(turn)
        estimated += was_estimated
    if not turns:
        raise ValueError("the trajectory has no assistant message")
    return TraceProgram(program_id=program_id, turns=tuple(turns), source=source or _source(data)), estimated


# -- one call ------------------------------------------------------------------------------------------


def _turn(messages: Sequence[dict[str, Any]], index: int, count: Callable[[str], int]) -> tuple[TraceTurn, bool]:
    message = messages[index]
    usage = _usage(message)
    prompt_estimate = sum(count(_text(m)) + _MESSAGE_OVERHEAD_TOKENS for m in messages[:index])
    output_estimate = count(_text(message))
    input_tokens = _int(usage, "prompt_tokens", "input_tokens")
    output_tokens = _int(usage, "completion_tokens", "output_tokens")
    cached = _cached_tokens(usage)
    command = _command(message)
    turn = TraceTurn(
        input_tokens=max(1, input_tokens if input_tokens is not None else prompt_estimate),
        output_tokens=max(0, output_tokens if output_tokens is not None else output_estimate),
        cached_tokens=max(0, cached or 0),
        llm_s=_elapsed(messages[index - 1] if index else None, message),
        tool=command.split()[0] if command and command.split() else None,
        tool_s=_elapsed(message, _next_observation(messages, index)),
    )
    return turn, input_tokens is None or output_tokens is None


def _messages(data: Any) -> list[dict[str, Any]]:
    raw = data.get("messages", data.get("history")) if isinstance(data, dict) else data
    if not isinstance(raw, list) or not raw:
        raise ValueError("no 'messages' list")
    return [m for m in raw if isinstance(m, dict)]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # multimodal / response-API parts
        content = "".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    text = content if isinstance(content, str) else ""
    for call in message.get("tool_calls") or ():
        function = call.get("function", {}) if isinstance(call, dict) else {}
        text += str(function.get("arguments", ""))
    return text


def _extra(message: dict[str, Any]) -> dict[str, Any]:
    extra = message.get("extra")
    return extra if isinstance(extra, dict) else {}


def _usage(message: dict[str, Any]) -> dict[str, Any]:
    extra = _extra(message)
    response = extra.get("response")
    for holder in (response, extra, message):
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict):
            return usage
    return {}


def _int(mapping: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def _cached_tokens(usage: dict[str, Any]) -> int | None:
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and (cached := _int(details, "cached_tokens")) is not None:
        return cached
    return _int(usage, "cache_read_input_tokens", "prompt_cache_hit_tokens", "cached_tokens")


def _command(message: dict[str, Any]) -> str | None:
    actions = _extra(message).get("actions")
    if isinstance(actions, list) and actions and isinstance(actions[0], dict) and actions[0].get("command"):
        return str(actions[0]["command"]).strip()
    for call in message.get("tool_calls") or ():
        arguments = call.get("function", {}).get("arguments") if isinstance(call, dict) else None
        command = _command_argument(arguments)
        if command:
            return command
    content = message.get("content")
    match = _COMMAND_BLOCK.search(content) if isinstance(content, str) else None
    return match.group(1).strip() if match else None


def _command_argument(arguments: Any) -> str | None:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if isinstance(arguments, dict) and arguments.get("command"):
        return str(arguments["command"]).strip()
    return None


def _next_observation(messages: Sequence[dict[str, Any]], index: int) -> dict[str, Any] | None:
    following = messages[index + 1] if index + 1 < len(messages) else None
    return following if following is not None and following.get("role") in ("user", "tool") else None


def _elapsed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    if before is None or after is None:
        return None
    start, end = _timestamp(before), _timestamp(after)
    if start is None or end is None or end < start:
        return None
    return round(end - start, 3)


def _timestamp(message: dict[str, Any]) -> float | None:
    value = _extra(message).get("timestamp", message.get("timestamp"))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- identity -----------------------------------------------------------------------------------------


def _program_id(data: Any, path: Path) -> str:
    for holder in (data if isinstance(data, dict) else {}, _child(data, "info")):
        if isinstance(holder.get("instance_id"), str):
            return str(holder["instance_id"])
    name = path.name
    for suffix in (".traj.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _source(data: Any) -> str:
    name = _child(_child(_child(data, "info"), "config"), "model").get("model_name")
    return f"mini-swe-agent/{name}" if isinstance(name, str) else "mini-swe-agent"


def _child(holder: Any, key: str) -> dict[str, Any]:
    """`holder[key]` when both are mappings, else an empty one: trajectories vary in shape."""
    value = holder.get(key) if isinstance(holder, dict) else None
    return value if isinstance(value, dict) else {}


def _token_estimator(chars_per_token: float) -> Callable[[str], int]:
    return lambda text: math.ceil(len(text) / chars_per_token) if text else 0
