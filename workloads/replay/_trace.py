"""Agent traces: the file format, loading, and scaling a trace to fit a small model.

A trace is JSON Lines (optionally gzipped), one program per line:

```json
{"program_id": "astropy__astropy-12907", "source": "swebench-lite/mini-swe-agent/deepseek-chat",
 "turns": [{"input_tokens": 1714, "cached_tokens": 320, "output_tokens": 84,
            "llm_s": null, "tool": "find", "tool_s": 0.116}, ...]}
```

One turn is one LLM call: its prompt length (`input_tokens`), the part the provider served from
its prefix cache (`cached_tokens`), its output length (`output_tokens`), how long it took
(`llm_s`, null when unknown), and the tool that ran on its output (`tool`: the first word of the
bash command for mini-swe-agent) with the pause that tool caused (`tool_s`, null after the last
call). Figures only: no text.

Replaying a 22k-token-per-call trace on a 135M model with a 4,096-token context needs scaling
(`TraceScaling`, applied by `scale_trace`):

- the first `max_programs` programs (file order), the first `max_turns` turns of each;
- every token count divided by `token_divisor` (k), rounded, at least 1 token;
- each turn's prompt grows as it did in the trace: turn i's prompt = turn i-1's prompt + turn i-1's
  output + the tool's output, the tool's output being `input_i - input_{i-1} - output_{i-1}`
  (scaled; clamped to >= 1 token where the agent had trimmed its history);
- the system prompt every program shares (the first turn's provider-cached tokens, the median
  over the programs) becomes a shared prefix of the same scaled length;
- a program stops early where its context would pass `max_context_tokens` (the model's limit);
- tool pauses multiplied by `tool_time_scale` (1.0: slept as recorded).
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = [
    "DEFAULT_TRACE_PATH",
    "ScaledProgram",
    "ScaledTurn",
    "TraceProgram",
    "TraceScaling",
    "TraceTurn",
    "dump_trace",
    "load_trace",
    "scale_trace",
]

# 99 real mini-swe-agent runs on SWE-bench Lite (deepseek-chat), shipped with the package.
DEFAULT_TRACE_PATH = Path(__file__).parent / "data" / "swebench_lite_msa_traces.jsonl.gz"


# -- the format --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceTurn:
    """One recorded LLM call and the tool pause after it."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    llm_s: float | None = None
    tool: str | None = None  # the tool run on this call's output; None after the last call
    tool_s: float | None = None  # that tool's pause, seconds

    def __post_init__(self) -> None:
        if self.input_tokens < 1 or self.output_tokens < 0 or self.cached_tokens < 0:
            raise ValueError(
                f"token counts must be input >= 1, output >= 0, cached >= 0 "
                f"(got {self.input_tokens}, {self.output_tokens}, {self.cached_tokens})"
            )
        if self.tool_s is not None and not (self.tool_s >= 0 and math.isfinite(self.tool_s)):
            raise ValueError(f"tool_s must be a finite number >= 0, got {self.tool_s}")
        if self.llm_s is not None and not (self.llm_s >= 0 and math.isfinite(self.llm_s)):
            raise ValueError(f"llm_s must be a finite number >= 0, got {self.llm_s}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceProgram:
    """One recorded agent run: its LLM calls in order."""

    program_id: str
    turns: tuple[TraceTurn, ...]
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError(f"program {self.program_id!r} has no turns")

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"program_id": self.program_id}
        if self.source is not None:
            head["source"] = self.source
        return {**head, "turns": [asdict(turn) for turn in self.turns]}


def load_trace(path: Path | str) -> list[TraceProgram]:
    """Read a trace file (`.jsonl` or `.jsonl.gz`). Blank lines are skipped.

    Raises:
        UserError: the file is missing or a line is not a valid program (its line number is named).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"trace file {path} does not exist")
    programs = [_parse_program(line, path, number) for number, line in _lines(path) if line.strip()]
    if not programs:
        raise UserError(f"trace file {path} holds no programs")
    return programs


def dump_trace(programs: Iterable[TraceProgram], path: Path | str) -> Path:
    """Write programs as a trace file (gzipped when the name ends in `.gz`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(program.to_json()) + "\n" for program in programs)
    if path.suffix == ".gz":
        # mtime=0: the same trace gives the same bytes.
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from enumerate(f, start=1)


def _parse_program(line: str, path: Path, number: int) -> TraceProgram:
    where = f"{path}:{number}"
    try:
        raw = json.loads(line)
        if not isinstance(raw, dict) or not isinstance(raw.get("turns"), list):
            raise ValueError("expected an object with a 'turns' list")
        turns = tuple(_parse_turn(turn) for turn in raw["turns"])
        return TraceProgram(
            program_id=str(raw.get("program_id", f"line-{number}")), turns=turns, source=raw.get("source")
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{where}: not a trace program: {exc}") from exc


def _parse_turn(raw: Any) -> TraceTurn:
    if not isinstance(raw, dict):
        raise ValueError(f"a turn must be an object, got {type(raw).__name__}")
    return TraceTurn(
        input_tokens=int(raw["input_tokens"]),
        output_tokens=int(raw["output_tokens"]),
        cached_tokens=int(raw.get("cached_tokens") or 0),
        llm_s=_float_or_none(raw.get("llm_s")),
        tool=None if raw.get("tool") is None else str(raw["tool"]),
        tool_s=_float_or_none(raw.get("tool_s")),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# -- scaling -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceScaling:
    """How a recorded trace is shrunk to fit the replaying model (see the module docstring)."""

    token_divisor: float = 8.0  # k: every token count divided by this
    max_turns: int | None = None  # first N turns of each program; None: all
    max_programs: int | None = None  # first M programs; None: all
    max_context_tokens: int | None = None  # a program ends before its context passes this
    tool_time_scale: float = 1.0  # tool pauses multiplied by this
    shared_prefix: bool = True  # model the system prompt all programs share

    def __post_init__(self) -> None:
        if not self.token_divisor > 0:
            raise UserError(f"token_divisor must be > 0, got {self.token_divisor}")
        for name in ("max_turns", "max_programs", "max_context_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if not self.tool_time_scale >= 0:
            raise UserError(f"tool_time_scale must be >= 0, got {self.tool_time_scale}")

    def describe(self) -> str:
        """One line for reports: what was done to the recorded trace."""
        parts = [f"token counts / {self.token_divisor:g}"]
        if self.max_turns is not None:
            parts.append(f"first {self.max_turns} turns")
        if self.max_programs is not None:
            parts.append(f"first {self.max_programs} programs")
        if self.max_context_tokens is not None:
            parts.append(f"programs end before {self.max_context_tokens} context tokens")
        parts.append(f"tool pauses x {self.tool_time_scale:g}")
        if self.shared_prefix:
            parts.append("shared system prefix")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaledTurn:
    """One LLM call of a replayed program, in replay units."""

    new_prompt_tokens: int  # appended to the context before this call (turn 0: the task prompt)
    output_tokens: int  # forced: ignore_eos + max_tokens
    tool: str | None  # the tool that runs after this call; None after the last
    tool_s: float  # its pause, already scaled; 0 after the last call


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaledProgram:
    """A program ready to replay: its turns and the prefix it shares with every other program."""

    program_id: str
    shared_prefix_tokens: int
    turns: tuple[ScaledTurn, ...]
    num_clamped_turns: int = 0  # turns whose recorded history shrank (trimmed by the agent)
    cut_by_context: bool = False  # ended early to fit max_context_tokens

    @property
    def context_tokens(self) -> int:
        """Tokens in the last call's context once it finished (prompt + output)."""
        return self.shared_prefix_tokens + sum(t.new_prompt_tokens + t.output_tokens for t in self.turns)

    def prompt_tokens(self, turn: int) -> int:
        """Length of turn `turn`'s prompt."""
        before = self.turns[:turn]
        return (
            self.shared_prefix_tokens
            + sum(t.new_prompt_tokens + t.output_tokens for t in before)
            + self.turns[turn].new_prompt_tokens
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ScaledProgram:
        turns = tuple(ScaledTurn(**turn) for turn in raw["turns"])
        return cls(**{**raw, "turns": turns})


def scale_trace(programs: Sequence[TraceProgram], scaling: TraceScaling) -> list[ScaledProgram]:
    """Shrink recorded programs to replay units (see the module docstring for every rule)."""
    chosen = list(programs[: scaling.max_programs] if scaling.max_programs is not None else programs)
    prefix = _shared_prefix_tokens(chosen, scaling) if scaling.shared_prefix else 0
    return [_scale_program(program, scaling, prefix) for program in chosen]


def _shared_prefix_tokens(programs: Sequence[TraceProgram], scaling: TraceScaling) -> int:
    # The provider served the system prompt from its cache on (nearly) every first call: the
    # median first-call hit is the prompt all programs share (a few cold calls hit 0). Never
    # the whole first prompt.
    if not programs:
        return 0
    cached = statistics.median_low([p.turns[0].cached_tokens for p in programs])
    smallest_first = min(p.turns[0].input_tokens for p in programs)
    return _scale(min(cached, smallest_first - 1), scaling.token_divisor, minimum=0)


def _scale_program(program: TraceProgram, scaling: TraceScaling, prefix: int) -> ScaledProgram:
    turns = program.turns[: scaling.max_turns] if scaling.max_turns is not None else program.turns
    scaled: list[ScaledTurn] = []
    context = prefix
    clamped = 0
    cut = False
    for index, turn in enumerate(turns):
        new_prompt, was_clamped = _new_prompt_tokens(turns, index, scaling, prefix)
        output = _scale(turn.output_tokens, scaling.token_divisor, minimum=1)
        if scaling.max_context_tokens is not None and context + new_prompt + output > scaling.max_context_tokens:
            cut = True
            break
        clamped += was_clamped
        context += new_prompt + output
        scaled.append(
            ScaledTurn(
                new_prompt_tokens=new_prompt,
                output_tokens=output,
                tool=turn.tool,
                tool_s=(turn.tool_s or 0.0) * scaling.tool_time_scale,
            )
        )
    if not scaled:
        raise UserError(
            f"program {program.program_id!r}: its first call does not fit in "
            f"{scaling.max_context_tokens} tokens after scaling; raise token_divisor"
        )
    # The kept last call is the program's last: no tool runs after it.
    last = scaled[-1]
    scaled[-1] = ScaledTurn(
        new_prompt_tokens=last.new_prompt_tokens, output_tokens=last.output_tokens, tool=None, tool_s=0.0
    )
    return ScaledProgram(
        program_id=program.program_id,
        shared_prefix_tokens=prefix,
        turns=tuple(scaled),
        num_clamped_turns=clamped,
        cut_by_context=cut,
    )


def _new_prompt_tokens(turns: Sequence[TraceTurn], index: int, scaling: TraceScaling, prefix: int) -> tuple[int, bool]:
    """Scaled tokens appended before call `index`, and whether the recorded growth was negative."""
    turn = turns[index]
    if index == 0:
        return max(1, _scale(turn.input_tokens, scaling.token_divisor, minimum=1) - prefix), False
    previous = turns[index - 1]
    grown = turn.input_tokens - previous.input_tokens - previous.output_tokens
    return _scale(max(grown, 1), scaling.token_divisor, minimum=1), grown < 1


def _scale(tokens: int, divisor: float, *, minimum: int) -> int:
    return max(minimum, round(tokens / divisor))
