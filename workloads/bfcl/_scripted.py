"""Test double: a "model" that answers every BFCL record with its ground truth.

Model string `scripted:ground_truth` (optionally `scripted:ground_truth@LATENCY_S`, a pause before
each reply). It is understood by the workloads runner only, never by `resolve_backend`, and
exists to check the scoring path end to end: the expected calls are written as the text a model
would emit (`[func(a=1), ...]`) and go through the same decoders and checkers as real output.

- AST categories: the first acceptable value of every parameter; optional parameters whose
  acceptable values include `""` ("may be omitted") are left out.
- irrelevance categories: an empty reply (no call).
- live_relevance (BFCL ships no answer): a call to the first function with a placeholder value of
  the declared type for every required parameter (the relevance rule only asks for a call).
- multi-turn: each turn's ground-truth calls in one step, then an empty step that ends the turn;
  positional arguments become keywords from the real backend method's signature.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

from agentflow.exceptions import UserError
from agentflow.testing import ScriptedLLM
from workloads.bfcl._data import BfclRecord, is_multi_turn, is_relevance
from workloads.bfcl._env import bfcl

__all__ = ["SCRIPTED_PREFIX", "ground_truth_model", "ground_truth_replies", "parse_scripted"]

SCRIPTED_PREFIX = "scripted:"
_PLACEHOLDERS: dict[str, Any] = {
    "integer": 1, "float": 1.0, "number": 1.0, "boolean": True, "array": [], "tuple": [], "dict": {}, "object": {}
}  # fmt: skip


def parse_scripted(model: str) -> float | None:
    """Latency in seconds for `scripted:ground_truth[@S]`; `None` for other model strings."""
    if not model.startswith(SCRIPTED_PREFIX):
        return None
    name, _, latency = model[len(SCRIPTED_PREFIX) :].partition("@")
    if name != "ground_truth":
        raise UserError(f"unknown test double {model!r}: the runner knows scripted:ground_truth[@LATENCY_S]")
    try:
        return float(latency) if latency else 0.0
    except ValueError:
        raise UserError(f"{model!r}: latency must be seconds, e.g. scripted:ground_truth@0.5") from None


def ground_truth_model(record: BfclRecord, *, latency_s: float = 0.0, mode: str = "native") -> ScriptedLLM:
    """A scripted backend that replies to this record's requests with its ground truth, in order.

    FC mode: the replies are `<tool_call>` blocks with the tool names FC mode offers, read into
    `Completion.tool_calls` as a native backend reads its model's reply.
    """
    if mode == "compiled":
        replies = ground_truth_plans(record)
    elif mode == "fc":
        replies = ground_truth_tool_calls(record)
    else:
        replies = ground_truth_replies(record)
    return ScriptedLLM(replies, latency_s=latency_s, name="scripted:ground_truth", native_tool_calls=mode == "fc")


def ground_truth_replies(record: BfclRecord) -> list[str]:
    """Native mode: the replies, one per LLM call the native runner makes for this record."""
    return [_render_calls(turn) if turn else "" for turn in _calls_per_reply(record)]


def ground_truth_tool_calls(record: BfclRecord) -> list[str]:
    """FC mode: per LLM call, the ground truth as `<tool_call>` blocks (no call: an empty reply)."""
    from workloads.bfcl._fc import fc_tools

    functions = list(record.functions)
    for held in record.missed_function.values():
        functions += held
    to_tool = {original: name for name, original in fc_tools(functions).original.items()}
    return [
        "".join(
            f"<tool_call>{json.dumps({'name': to_tool.get(name, name), 'arguments': args})}</tool_call>"
            for name, args in calls or []
        )
        for calls in _calls_per_reply(record)
    ]


def ground_truth_plans(record: BfclRecord) -> list[str]:
    """Compiled mode: per request, a plan (`1. f(a=1)` lines, `N. join()`) and the joiner's finish."""
    turns: list[list[tuple[str, dict[str, Any]]] | None]
    if is_multi_turn(record.category):
        turns = [c for c in _calls_per_reply(record) if c is not None]
    else:
        turns = _calls_per_reply(record)
    replies: list[str] = []
    for calls in turns:
        steps = [f"{i}. {_identifier(name)}({_plan_args(args)})" for i, (name, args) in enumerate(calls or [], 1)]
        replies += ["\n".join([*steps, f"{len(steps) + 1}. join()"]), "Action: Finish(done)"]
    return replies


def _calls_per_reply(record: BfclRecord) -> list[list[tuple[str, dict[str, Any]]] | None]:
    """Calls per native reply; `[]` is a reply with no call, `None` a reply that only ends a turn."""
    if is_multi_turn(record.category):
        return _multi_turn_calls(record)
    if record.category == "live_relevance":
        return [[_placeholder_call(record.functions_for_scoring[0])]]
    if is_relevance(record.category):
        return [[]]
    return [[_pick_call(call, record.functions_for_scoring) for call in record.possible_answer]]


# -- single turn ----------------------------------------------------------------------------------


def _pick_call(
    call: Mapping[str, Mapping[str, list[Any]]], docs: tuple[dict[str, Any], ...]
) -> tuple[str, dict[str, Any]]:
    ((name, params),) = call.items()
    doc = next((d for d in docs if d.get("name") == name), {})
    required = set(doc.get("parameters", {}).get("required", []))
    picked = {}
    for param, options in params.items():
        if "" in options and param not in required:
            continue  # omission is always accepted for an optional parameter
        picked[param] = _pick(options)
    return name, picked


def _pick(options: list[Any]) -> Any:
    """The first acceptable value (`""` if that is all there is)."""
    value = next((option for option in options if option != ""), "")
    if isinstance(value, dict):  # a dict parameter: each key holds its own acceptable values
        return _pick_dict(value)
    if isinstance(value, list):
        return [_pick_dict(item) if isinstance(item, dict) else item for item in value]
    return value


def _pick_dict(options_by_key: Mapping[str, Any]) -> dict[str, Any]:
    picked = {}
    for key, options in options_by_key.items():
        if not isinstance(options, list):
            return dict(options_by_key)  # a literal dict, not acceptable values per key
        if "" in options:
            continue
        picked[key] = next(iter(options))
    return picked


def _placeholder_call(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    properties = doc.get("parameters", {}).get("properties", {})
    required = doc.get("parameters", {}).get("required", [])
    return doc["name"], {p: _PLACEHOLDERS.get(properties[p].get("type"), "x") for p in required if p in properties}


def _render_calls(calls: list[tuple[str, dict[str, Any]]]) -> str:
    return f"[{', '.join(f'{name}({_render_args(args)})' for name, args in calls)}]"


def _render_args(args: dict[str, Any]) -> str:
    """Keyword arguments as Python source."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _plan_args(args: dict[str, Any]) -> str:
    """Keyword arguments in the planner's literal form (`repr` where it has none, e.g. `"$5"`)."""
    from planner import format_value

    def literal(value: Any) -> str:
        try:
            return format_value(value)
        except ValueError:  # the plan language cannot write it: the planner will reject the line
            return repr(value)

    return ", ".join(f"{k}={literal(v)}" for k, v in args.items())


def _identifier(name: str) -> str:
    """The name compiled mode registers a BFCL function under (see `_bfcl_compiled`)."""
    base = re.sub(r"\W", "_", name)
    return base if base and not base[0].isdigit() else f"f_{base}"


# -- multi-turn -------------------------------------------------------------------------------------


def _multi_turn_calls(record: BfclRecord) -> list[list[tuple[str, dict[str, Any]]] | None]:
    signatures = _method_signatures(record.involved_classes)
    replies: list[list[tuple[str, dict[str, Any]]] | None] = []
    for turn in record.possible_answer:
        if turn:
            replies.append([_keyword_call(call, signatures) for call in turn])
        replies.append(None if turn else [])  # nothing more to call: the turn ends
    return replies


def _method_signatures(class_names: tuple[str, ...]) -> dict[str, inspect.Signature]:
    env = bfcl()
    signatures: dict[str, inspect.Signature] = {}
    for class_name in class_names:
        cls = getattr(importlib.import_module(env.class_file_path_mapping[class_name]), class_name)
        for name, fn in inspect.getmembers(cls, predicate=inspect.isfunction):
            if not name.startswith("_"):
                signatures.setdefault(name, inspect.signature(fn))
    return signatures


def _keyword_call(call_text: str, signatures: Mapping[str, inspect.Signature]) -> tuple[str, dict[str, Any]]:
    """`sort('a.txt')` -> `("sort", {"file_name": "a.txt"})`: keywords, as the prompt asks models to write."""
    node = ast.parse(call_text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise UserError(f"ground truth call {call_text!r} is not a plain function call")
    names = [p for p in signatures[node.func.id].parameters if p != "self"]
    arguments = {names[i]: ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None})
    return node.func.id, arguments
