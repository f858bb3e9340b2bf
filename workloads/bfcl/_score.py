"""Scoring with BFCL's own checkers, entry by entry, as `bfcl_eval.eval_checker.eval_runner` does.

- AST categories: decode the text with BFCL's prompting decoder; a decode failure or a result
  not in function-calling form is invalid with the decoder's error; otherwise `ast_checker`.
- relevance categories: a valid, non-empty decoded call list counts as a call;
  `irrelevance`/`live_irrelevance` are correct when there is none, `live_relevance` when there is.
- multi-turn: every step's text decoded with the execute decoder (failed and empty steps are
  dropped, as BFCL does), then `multi_turn_checker`, which replays the calls on fresh backend
  instances next to the ground truth and compares states and responses after every turn.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from workloads.bfcl._data import BfclRecord, is_relevance
from workloads.bfcl._env import bfcl

__all__ = [
    "Score",
    "check_multi_turn",
    "decode_calls",
    "score_multi_turn",
    "score_single_turn",
    "score_single_turn_calls",
]

_CHECKER_MODEL = "agentflow"  # the AST checker only reads its (stand-in) model config


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """One entry's verdict, in BFCL's terms."""

    valid: bool
    error: str | None = None
    error_type: str | None = None
    undecodable: bool = False  # the output did not decode into calls (or the run failed)
    decoded: Any = None


def decode_calls(text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """BFCL's prompting decoder: `([{func: {param: value}}], None)` or `(None, error)`."""
    env = bfcl()
    try:
        return env.decode_ast(text, env.return_format_python, False), None
    except Exception as exc:  # BFCL's decoder raises whatever ast and its asserts raise
        return None, f"{type(exc).__name__}: {exc}"


def score_single_turn(record: BfclRecord, text: str) -> Score:
    """Score one single-turn answer text."""
    if is_relevance(record.category):
        return _score_relevance(record, text)
    return _score_ast(record, text)


def score_single_turn_calls(record: BfclRecord, calls: list[dict[str, Any]]) -> Score:
    """Score calls that were made (compiled mode) rather than text to decode: `[{func: {args}}]`."""
    env = bfcl()
    if is_relevance(record.category):
        has_call = not env.is_empty_output(calls)
        if has_call == ("irrelevance" not in record.category):
            return Score(valid=True, decoded=calls)
        error_type = "relevance_error:no_call" if not has_call else "irrelevance_error:call_made"
        return Score(valid=False, error=f"{len(calls)} call(s) made", error_type=error_type, decoded=calls)
    return _check_ast(record, calls)


def _score_relevance(record: BfclRecord, text: str) -> Score:
    env = bfcl()
    decoded, error = decode_calls(text)
    has_call = decoded is not None and not env.is_empty_output(decoded)
    wants_call = "irrelevance" not in record.category
    if has_call == wants_call:
        return Score(valid=True, decoded=decoded, undecodable=decoded is None)
    if wants_call:
        return Score(
            valid=False,
            error=f"Invalid syntax. Failed to decode AST when it should have. {error or 'empty call list'}",
            error_type="relevance_error:decoder_failed",
            undecodable=decoded is None,
            decoded=decoded,
        )
    return Score(
        valid=False,
        error="Valid syntax. Successfully decode AST when it should not.",
        error_type="irrelevance_error:decoder_success",
        decoded=decoded,
    )


def _score_ast(record: BfclRecord, text: str) -> Score:
    env = bfcl()
    decoded, error = decode_calls(text)
    if decoded is None:
        return Score(
            valid=False,
            error=f"Invalid syntax. Failed to decode AST. {error}",
            error_type="ast_decoder:decoder_failed",
            undecodable=True,
        )
    if not env.is_function_calling_format_output(decoded):
        return Score(
            valid=False,
            error="Did not output in the specified format.",
            error_type="ast_decoder:decoder_wrong_output_format",
            undecodable=True,
            decoded=repr(decoded),
        )
    return _check_ast(record, decoded)


def _check_ast(record: BfclRecord, decoded: list[dict[str, Any]]) -> Score:
    env = bfcl()
    result = env.ast_checker(
        list(record.functions_for_scoring),
        decoded,
        record.possible_answer,
        env.language_python,
        record.category,
        _CHECKER_MODEL,
    )
    if result["valid"]:
        return Score(valid=True, decoded=decoded)
    return Score(
        valid=False, error="; ".join(map(str, result["error"])), error_type=result["error_type"], decoded=decoded
    )


def score_multi_turn(record: BfclRecord, turns: list[list[str]], *, force_quit: bool = False) -> Score:
    """Score a multi-turn run: `turns[t]` holds the raw text of every step of turn t."""
    ground_truth: list[list[str]] = record.possible_answer
    if len(turns) != len(ground_truth):
        why = "forced to quit" if force_quit else "stopped early"
        return Score(
            valid=False,
            error=f"Model was {why}: {len(turns)} turns answered, {len(ground_truth)} in the ground truth.",
            error_type="multi_turn:force_terminated",
        )
    return check_multi_turn(record, [_decode_steps(steps) for steps in turns])


def check_multi_turn(record: BfclRecord, decoded_turns: list[list[list[str]]]) -> Score:
    """`multi_turn_checker` on decoded calls: `decoded_turns[t][step]` is a list of call strings."""
    env = bfcl()
    ground_truth: list[list[str]] = record.possible_answer
    run_name = f"agentflow_{uuid.uuid4().hex[:12]}"  # the checker caches backends per (name, id)
    try:
        result = env.multi_turn_checker(decoded_turns, ground_truth, dict(record.entry), record.category, run_name)
    finally:
        _forget_instances(run_name)
    if result.get("valid"):
        return Score(valid=True, decoded=decoded_turns)
    return Score(
        valid=False,
        error=str(result.get("error_message", result.get("error", "invalid"))),
        error_type=result.get("error_type"),
        decoded=decoded_turns,
        undecodable=not any(decoded_turns),
    )


def _decode_steps(steps: list[str]) -> list[list[str]]:
    env = bfcl()
    decoded_steps = []
    for text in steps:
        try:
            calls = env.decode_execute(text, False)
        except Exception:  # BFCL ignores steps that do not decode (chat, refusals)
            continue
        if not env.is_empty_execute_response(calls):
            decoded_steps.append(calls)
    return decoded_steps


def _forget_instances(run_name: str) -> None:
    """Drop the backend instances the checker left in its module globals for this run."""
    namespace = vars(bfcl().multi_turn_utils)
    prefix = re.sub(r"[-./:]", "_", run_name)
    for name in [n for n in namespace if n.startswith(prefix)]:
        namespace.pop(name, None)
