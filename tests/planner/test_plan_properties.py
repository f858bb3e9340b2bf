"""Property tests over generated plans.

- streaming and batch parsing give the same nodes (and the generated ones), for any chunking,
  and each node is emitted by the very feed that completes its line;
- the grammar admits every generated valid plan and rejects invalid ones (xgrammar's matcher,
  offline, no engine);
- everything the grammar can generate parses (random walks through the grammar).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any, Literal

import hypothesis.strategies as st
import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, given, settings
from plan_tools import TEST_TOOLS  # type: ignore[import-not-found]

from agentflow.exceptions import PlanError
from agentflow.ir import CallNode, Concat, Ref
from agentflow.tools import ToolRegistry
from planner import PlanParser, build_grammar, format_plan, format_step, parse_plan

REGISTRY = ToolRegistry(TEST_TOOLS)
CALLEES = list(REGISTRY)
MAX_STEPS = 8

# -- generated values, typed by parameter ------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="$"), max_size=12)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def _refs(refs: list[str]) -> st.SearchStrategy[Any]:
    return st.sampled_from([Ref(r) for r in refs]) if refs else st.nothing()


def _string(refs: list[str]) -> st.SearchStrategy[Any]:
    """Plain text, or text with references inside (normalized the way the parser reads it)."""
    parts = st.lists(st.one_of(_TEXT.filter(bool), _refs(refs)), min_size=1, max_size=4)
    return st.one_of(_TEXT, parts.map(_normalize)) if refs else _TEXT


def _normalize(parts: list[Any]) -> Any:
    merged: list[Any] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    if not any(isinstance(p, Ref) for p in merged):
        return "".join(merged)
    return merged[0] if len(merged) == 1 else Concat(tuple(merged))


def _any_value(refs: list[str]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), _FLOATS, _string(refs), _refs(refs))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.lists(inner, max_size=3).map(tuple),
            st.dictionaries(_TEXT, inner, max_size=3),
        ),
        max_leaves=6,
    )


def _value_for(annotation: Any, refs: list[str]) -> st.SearchStrategy[Any]:
    ref = _refs(refs)
    by_type: dict[Any, Callable[[], st.SearchStrategy[Any]]] = {
        str: lambda: _string(refs),
        int: lambda: st.one_of(st.integers(), ref),
        float: lambda: st.one_of(_FLOATS, st.integers(), ref),
        int | None: lambda: st.one_of(st.integers(), st.none(), ref),
        list[Any]: lambda: st.one_of(st.lists(_any_value(refs), max_size=3), ref),
        dict[str, Any] | None: lambda: st.one_of(st.dictionaries(_TEXT, _any_value(refs), max_size=3), st.none(), ref),
        Any: lambda: _any_value(refs),
        Literal["fast", "slow"]: lambda: st.one_of(st.sampled_from(["fast", "slow"]), ref),
    }
    return by_type[annotation]()


@st.composite
def _call(draw: st.DrawFn, step_id: str, refs: list[str]) -> CallNode:
    """A call with positional arguments first, then keywords in signature order (canonical form)."""
    callee = draw(st.sampled_from(CALLEES))
    fields = list(callee.arguments_model.model_fields.items())
    num_positional = draw(st.integers(0, len(fields)))
    args, kwargs = [], {}
    for i, (name, field) in enumerate(fields):
        if i < num_positional:
            args.append(draw(_value_for(field.annotation, refs)))
        elif field.is_required() or draw(st.booleans()):  # optional keywords may be left out
            kwargs[name] = draw(_value_for(field.annotation, refs))
    return CallNode(id=step_id, kind=callee.kind, target=callee.name, args=tuple(args), kwargs=kwargs)


@st.composite
def plans(draw: st.DrawFn, first_step: int = 1, available: tuple[str, ...] = ()) -> tuple[list[CallNode], str]:
    """Valid nodes and their canonical text (with some `Thought:` lines)."""
    num_steps = draw(st.integers(1, MAX_STEPS))
    nodes: list[CallNode] = []
    thoughts: dict[str, str] = {}
    thought_text = st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\n<"), min_size=1, max_size=40
    ).filter(str.strip)
    for step in range(first_step, first_step + num_steps):
        refs = [*available, *(str(i) for i in range(first_step, step))]
        nodes.append(draw(_call(str(step), refs)))
        if draw(st.integers(0, 3)) == 0:
            thoughts[str(step)] = draw(thought_text)
    return nodes, format_plan(nodes, thoughts=thoughts)


def _core(node: CallNode) -> tuple[Any, ...]:
    return (node.id, node.kind, node.target, node.args, dict(node.kwargs), node.deps)


# -- streaming == batch ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), data=st.data())
def test_streaming_and_batch_parsing_agree_for_any_chunking(
    plan: tuple[list[CallNode], str], data: st.DataObject
) -> None:
    nodes, text = plan
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=25))))
    bounds = [0, *cuts, len(text)]
    step_line_ends = [i for i, line_end in _line_ends(text) if _is_step(line_end)]
    parser = PlanParser(REGISTRY)
    streamed: list[CallNode] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        streamed += parser.feed(text[start:end])
        # every step line whose newline has arrived is out, and no other
        assert len(streamed) == sum(1 for newline_at in step_line_ends if newline_at < end)
    streamed_plan = parser.finish()
    batch = parse_plan(text, REGISTRY)
    assert streamed == list(streamed_plan.nodes) == list(batch.nodes)
    assert streamed_plan.thoughts == batch.thoughts
    assert [_core(n) for n in batch.nodes] == [_core(n) for n in nodes]


def _line_ends(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.split("\n")[:-1]:
        pos += len(line)
        out.append((pos, line))
        pos += 1
    return out


def _is_step(line: str) -> bool:
    return line[:1].isdigit() and not line.endswith("join()")


# -- the grammar admits valid plans, rejects invalid ones -----------------------------------------------


@functools.lru_cache(maxsize=16)
def _compiled(first_step: int = 1, available: tuple[str, ...] = ()) -> xgr.CompiledGrammar:
    grammar = build_grammar(REGISTRY, max_steps=MAX_STEPS, first_step=first_step, available=available)
    return xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False).compile_grammar(grammar)


def _admits(text: str, first_step: int = 1, available: tuple[str, ...] = ()) -> bool:
    matcher = xgr.GrammarMatcher(_compiled(first_step, available), terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


@settings(max_examples=300, deadline=None)
@given(plan=plans())
def test_grammar_admits_every_generated_plan(plan: tuple[list[CallNode], str]) -> None:
    assert _admits(plan[1]), plan[1]


@settings(max_examples=100, deadline=None)
@given(plan=plans(first_step=4, available=("1", "3")))
def test_grammar_admits_replans_that_use_earlier_results(plan: tuple[list[CallNode], str]) -> None:
    nodes, text = plan
    parse_plan(text, REGISTRY, first_step=4, available={"1", "3"}, taken={"1", "2", "3"})
    assert _admits(text, 4, ("1", "3")), text
    assert not _admits(text.replace("4. ", "1. ", 1), 4, ("1", "3"))


def _mutations(nodes: list[CallNode], text: str) -> dict[str, str]:
    """Invalid variants of a valid plan: each must be rejected by the grammar and the parser."""
    last = int(nodes[-1].id)
    head = "\n".join(format_step(n) for n in nodes)
    end = f"{last + 2}. join()"

    def extra(call: str) -> str:
        return f"{head}\n{last + 1}. {call}\n{end}"

    return {
        "unknown tool": extra('search("x")'),
        "forward reference": extra(f"anything(${last + 2})"),
        "self reference": extra(f"anything(${last + 1})"),
        "reference to a step that does not exist": extra("anything($0)"),
        "forward reference in a string": extra(f'lookup("at ${{{last + 5}}}")'),
        "missing required argument": extra("add(c=1)"),
        "too many arguments": extra("add(1, 2.5, 3, 4)"),
        "unknown keyword": extra('lookup("a", zzz=1)'),
        "keyword twice": extra("add(1, a=2)"),
        "wrong literal type": extra('add("one")'),
        "not a choice": extra('choose("medium")'),
        "bare name": extra("lookup(key)"),
        "no join": head,
        "truncated": text[: len(text) // 2],
        "garbage": "Sure, here is my plan!\n" + text,
    }


@settings(max_examples=60, deadline=None)
@given(plan=plans())
def test_grammar_and_parser_reject_invalid_plans(plan: tuple[list[CallNode], str]) -> None:
    nodes, text = plan
    for name, bad in _mutations(nodes, text).items():
        assert not _admits(bad), f"grammar admitted {name}: {bad!r}"
        with pytest.raises(PlanError):
            parse_plan(bad, REGISTRY)


# -- everything the grammar generates parses --------------------------------------------------------------

_VOCAB = [chr(c) for c in range(0x20, 0x7F)] + ["\n", "\t", "é", "日", "\x7f", "</s>"]


def _random_walk(compiled: xgr.CompiledGrammar, rng: random.Random, max_len: int = 3000) -> str | None:
    """A random string the grammar admits, one character at a time (None if it runs too long)."""
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, len(_VOCAB))
    out: list[str] = []
    while not matcher.is_terminated():
        if len(out) >= max_len:
            return None
        matcher.fill_next_token_bitmask(bitmask)
        words = bitmask[0].tolist()
        allowed = [i for i in range(len(_VOCAB)) if (words[i // 32] >> (i % 32)) & 1]
        token = rng.choice(allowed)
        assert matcher.accept_token(token)
        if _VOCAB[token] != "</s>":
            out.append(_VOCAB[token])
    return "".join(out)


@pytest.mark.parametrize(("first_step", "available"), [(1, ()), (5, ("2", "4"))])
def test_every_string_the_grammar_generates_parses(first_step: int, available: tuple[str, ...]) -> None:
    info = xgr.TokenizerInfo(_VOCAB, vocab_type=xgr.VocabType.RAW, stop_token_ids=[len(_VOCAB) - 1])
    grammar = build_grammar(REGISTRY, max_steps=6, first_step=first_step, available=available, max_string_chars=6)
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_grammar(grammar)
    rng = random.Random(1234)
    walks = [w for w in (_random_walk(compiled, rng) for _ in range(150)) if w is not None]
    assert len(walks) >= 100
    taken = {str(i) for i in range(1, first_step)}
    for text in walks:
        parse_plan(text, REGISTRY, first_step=first_step, available=set(available), taken=taken)
