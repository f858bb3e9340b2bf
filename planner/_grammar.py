"""An EBNF grammar of valid plans, generated from the tool registry, for constrained decoding.

The dialect is xgrammar's (what vLLM's structured outputs take as `grammar=`). The grammar admits
only registered tools and semantic functions, their parameter names, the right number of
arguments (positional first, then keywords in signature order, every required one present),
literal values of each parameter's JSON type or references, and a final `N. join()`.

"References to earlier steps only" is not context free for unbounded plans, so the grammar is
unrolled over at most `max_steps` steps with one rule set per step: step i may reference steps
`first_step..i-1` and the `available` ids of earlier rounds, nothing else. Everything it admits is
canonical plan text that `parse_plan` accepts (strings double-quoted, references inside strings
written `${N}`, `", "` between items).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentflow.exceptions import UserError
from agentflow.tools import ToolRegistry

from ._format import format_value

__all__ = ["DEFAULT_MAX_STEPS", "build_grammar"]

DEFAULT_MAX_STEPS = 32  # plans of up to 32 steps; the unrolled grammar compiles in ~0.25 s against a real vocabulary

# Step-independent terminals. Python rejects leading zeros (`01`), so integers avoid them.
_COMMON_RULES = r"""
int ::= "-"? ("0" | [1-9] [0-9]*)
num ::= int ("." [0-9]+)? ([eE] [+\-]? [0-9]+)?
bool ::= "True" | "False"
none ::= "None"
esc ::= "\\" (["\\nrt'] | "\"" | "x" [0-9a-fA-F] [0-9a-fA-F])
plainch ::= [^"\\\x00-\x1f$] | esc | "$" [^0-9{"\\\x00-\x1f$]
key ::= "\"" plainch* "\""
""".strip()

_JSON_KINDS = ("string", "integer", "number", "boolean", "null", "array", "object")


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    required: bool
    kinds: frozenset[str] | None  # JSON types admitted; None: any literal
    choices: tuple[Any, ...] | None  # enum / Literal values, when the schema lists them


def build_grammar(
    registry: ToolRegistry,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    first_step: int = 1,
    available: Collection[str] = (),
    thoughts: bool = True,
    max_thought_chars: int | None = None,
    max_string_chars: int | None = None,
) -> str:
    """EBNF for plans of 1..`max_steps` steps numbered from `first_step`, ending with `N. join()`.

    `available`: ids of earlier rounds' steps that may be referenced. `thoughts`: admit optional
    `Thought:` lines. `max_string_chars` bounds string literals (keeps a small model from spending
    its tokens inside one; cheap). `max_thought_chars` bounds thoughts, but a bounded free-text
    line costs xgrammar seconds to compile against a real vocabulary, so it is off by default.
    """
    _check_options(registry, max_steps, first_step, max_thought_chars)
    tools = [(callee.name, _params(callee)) for callee in registry]
    last = first_step + max_steps - 1
    rules: list[str] = [_root(first_step, thoughts, max_thought_chars)]
    for step in range(first_step, last + 1):
        refs = sorted({*available, *(str(i) for i in range(first_step, step))}, key=_ref_sort_key)
        rules += _step_rules(step, last, tools, refs, max_string_chars, thoughts)
    rules.append(_COMMON_RULES)
    return "\n".join(rules) + "\n"


def _check_options(registry: ToolRegistry, max_steps: int, first_step: int, max_thought_chars: int | None) -> None:
    if len(registry) == 0:
        raise UserError("cannot build a plan grammar: the registry has no tools")
    if max_steps < 1 or first_step < 1 or (max_thought_chars is not None and max_thought_chars < 1):
        raise UserError("max_steps, first_step and max_thought_chars must be >= 1")


def _ref_sort_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 62, node_id)


# -- plan structure -----------------------------------------------------------------------------------


def _root(first_step: int, thoughts: bool, max_thought_chars: int | None) -> str:
    lines = [f"root ::= {_maybe_thought(thoughts)}step{first_step}"]
    if thoughts:
        reps = "+" if max_thought_chars is None else f"{{1,{max_thought_chars}}}"
        lines.append(f'thought ::= "Thought: " [^\\n]{reps} "\\n"')
    return "\n".join(lines)


def _maybe_thought(thoughts: bool) -> str:
    return "thought? " if thoughts else ""


def _step_rules(
    step: int,
    last: int,
    tools: list[tuple[str, list[_Param]]],
    refs: list[str],
    max_string_chars: int | None,
    thoughts: bool,
) -> list[str]:
    s = f"_s{step}"
    thought = _maybe_thought(thoughts)
    follow = f"join{step + 1}" if step == last else f"(step{step + 1} | join{step + 1})"
    rules = [
        f'step{step} ::= "{step}. " call{s} "\\n" {thought}{follow}',
        f'join{step + 1} ::= "{step + 1}. join()"',
        f"call{s} ::= " + " | ".join(f"c{i}{s}" for i in range(len(tools))),
    ]
    rules += _value_rules(s, refs, max_string_chars)
    kinds_used: dict[str, str] = {}  # rule name -> body, for the typed value rules of this step
    for i, (name, params) in enumerate(tools):
        rules += _call_rules(f"c{i}{s}", name, params, s, bool(refs), kinds_used)
    rules += [f"{rule} ::= {body}" for rule, body in kinds_used.items()]
    return rules


def _value_rules(s: str, refs: list[str], max_string_chars: int | None) -> list[str]:
    reps = "*" if max_string_chars is None else f"{{0,{max_string_chars}}}"
    rules = []
    if refs:
        ids = " | ".join(f'"{r}"' for r in refs)
        rules += [f'ref{s} ::= "$" ({ids})', f'sref{s} ::= "${{" ({ids}) "}}"']
        rules.append(f'str{s} ::= "\\"" (plainch | sref{s}){reps} "\\""')
    else:
        rules.append(f'str{s} ::= "\\"" plainch{reps} "\\""')
    ref_alt = f" | ref{s}" if refs else ""
    rules += [
        f"val{s} ::= str{s} | num | bool | none | list{s} | tuple{s} | dict{s}{ref_alt}",
        f'list{s} ::= "[" (val{s} (", " val{s})*)? "]"',
        f'tuple{s} ::= "()" | "(" val{s} ",)" | "(" val{s} (", " val{s})+ ")"',
        f'dict{s} ::= "{{" (key ": " val{s} (", " key ": " val{s})*)? "}}"',
    ]
    return rules


# -- one callee -------------------------------------------------------------------------------------


def _call_rules(
    rule: str, name: str, params: list[_Param], s: str, has_refs: bool, kinds_used: dict[str, str]
) -> list[str]:
    """`name(args)`: positional arguments first, then keywords in signature order."""
    if not params:
        return [f'{rule} ::= "{name}()"']
    values = [_param_value(p, s, has_refs, kinds_used) for p in params]
    rules: list[str] = []
    alternatives = [f"{rule}_p1"]  # positional first argument
    for k, param in enumerate(params):  # or the first argument is keyword k
        if any(p.required for p in params[:k]):
            break
        alternatives.append(f'"{param.name}=" {values[k]} {_rest(params, values, k + 1)}'.rstrip())
    nullable = not any(p.required for p in params)
    args = " | ".join(alternatives)
    rules.append(f'{rule} ::= "{name}(" ({args}){"?" if nullable else ""} ")"')
    for j in range(len(params)):  # positional argument j+1, then more positionals or the keywords
        nxt = f'", " {rule}_p{j + 2}' if j + 1 < len(params) else ""
        rest = _rest(params, values, j + 1)
        tail = " | ".join(t for t in (nxt, rest) if t)
        optional = not any(p.required for p in params[j + 1 :])
        body = values[j] if not tail else f"{values[j]} ({tail}){'?' if optional else ''}"
        rules.append(f"{rule}_p{j + 1} ::= {body}")
    return rules


def _rest(params: list[_Param], values: list[str], start: int) -> str:
    """Keyword arguments for params[start:], after at least one argument: required ones present."""
    pieces = []
    for param, value in zip(params[start:], values[start:], strict=True):
        piece = f'", {param.name}=" {value}'
        pieces.append(piece if param.required else f"({piece})?")
    return " ".join(pieces)


def _param_value(param: _Param, s: str, has_refs: bool, kinds_used: dict[str, str]) -> str:
    """The value rule for one parameter (shared by parameters of the same type in this step)."""
    ref = [f"ref{s}"] if has_refs else []
    if param.choices is not None:
        return "(" + " | ".join([_quote_ebnf(format_value(c)) for c in param.choices] + ref) + ")"
    if param.kinds is None:
        return f"val{s}"
    alts = [_KIND_RULES[k].format(s=s) for k in _JSON_KINDS if k in param.kinds] + ref
    rule = f"t{'_'.join(k[:3] for k in _JSON_KINDS if k in param.kinds)}{s}"
    kinds_used[rule] = " | ".join(dict.fromkeys(alts))
    return rule


_KIND_RULES = {
    "string": "str{s}",
    "integer": "int",
    "number": "num",
    "boolean": "bool",
    "null": "none",
    "array": "list{s}",
    "object": "dict{s}",
}


def _quote_ebnf(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- parameters from the schema -----------------------------------------------------------------------


def _params(callee: Any) -> list[_Param]:
    schema = callee.arguments_model.model_json_schema()
    props: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = []
    for name in callee.signature.parameters:
        prop = props.get(name, {})
        out.append(_Param(name=name, required=name in required, kinds=_kinds(prop), choices=_choices(prop)))
    return out


def _kinds(prop: Mapping[str, Any]) -> frozenset[str] | None:
    if "anyOf" in prop:
        parts = [_kinds(p) for p in prop["anyOf"]]
        known = [p for p in parts if p is not None]
        return frozenset().union(*known) if len(known) == len(parts) else None
    kind = prop.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if not kinds or not all(k in _JSON_KINDS for k in kinds):
        return None
    return frozenset(kinds)


def _choices(prop: Mapping[str, Any]) -> tuple[Any, ...] | None:
    if "const" in prop:
        return (prop["const"],)
    values = prop.get("enum")
    if not values or not all(_has_literal_form(v) for v in values):
        return None
    return tuple(values)


def _has_literal_form(value: Any) -> bool:
    try:
        format_value(value)
    except ValueError:
        return False
    return isinstance(value, str | int | float | bool) or value is None


def iter_rule_names(grammar: str) -> Iterable[str]:
    """Names of the rules a grammar defines (for tests and debugging)."""
    for line in grammar.splitlines():
        name, sep, _ = line.partition(" ::= ")
        if sep:
            yield name
