"""BFCL records from bfcl-eval's shipped data files, validated one line at a time.

The files are JSON Lines named `BFCL_v4_<category>.json` under `bfcl_eval/data/`, with the
expected calls in `possible_answer/` (none for the relevance categories). Multi-turn records
name their backend classes; their function docs come from `multi_turn_func_doc/`, and
`missed_function` holds docs back until a later turn (as `bfcl_eval.utils` does it).

A line that is not JSON, misses a field, has a function doc no tool can be built from or has no
expected answer becomes a `MalformedRecord` with the reason: the batch skips it and goes on.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import pydantic

from agentflow.exceptions import AgentflowError, UserError
from workloads._schema import SchemaTool
from workloads.bfcl._env import bfcl, bfcl_data_dir

__all__ = [
    "ALL_CATEGORIES",
    "AST_CATEGORIES",
    "CATEGORY_GROUPS",
    "MULTI_TURN_CATEGORIES",
    "RELEVANCE_CATEGORIES",
    "BfclRecord",
    "MalformedRecord",
    "is_multi_turn",
    "is_relevance",
    "load_category",
    "parse_categories",
]

AST_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
MULTI_TURN_CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
ALL_CATEGORIES = (
    *AST_CATEGORIES[:4],
    "irrelevance",
    *AST_CATEGORIES[4:],
    *RELEVANCE_CATEGORIES[1:],
    *MULTI_TURN_CATEGORIES,
)
CATEGORY_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL_CATEGORIES,
    "single_turn": tuple(c for c in ALL_CATEGORIES if c not in MULTI_TURN_CATEGORIES),
    "multi_turn": MULTI_TURN_CATEGORIES,
    "live": tuple(c for c in ALL_CATEGORIES if c.startswith("live_")),
    "non_live": ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"),
}
_VERSION_PREFIX = "BFCL_v4"


def is_multi_turn(category: str) -> bool:
    return category in MULTI_TURN_CATEGORIES


def is_relevance(category: str) -> bool:
    return category in RELEVANCE_CATEGORIES


def parse_categories(text: str) -> list[str]:
    """`simple_python,multi_turn` -> category names in BFCL's order, groups expanded, no repeats."""
    wanted: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        names = CATEGORY_GROUPS.get(part, (part,))
        for name in names:
            if name not in ALL_CATEGORIES:
                known = ", ".join([*ALL_CATEGORIES, *CATEGORY_GROUPS])
                raise UserError(f"unknown BFCL category {name!r} (offline categories and groups: {known})")
            if name not in wanted:
                wanted.append(name)
    if not wanted:
        raise UserError("no BFCL category given")
    return wanted


@dataclass(frozen=True, slots=True, kw_only=True)
class BfclRecord:
    """One BFCL test entry, ready to run.

    `functions` are the docs the model is shown (with BFCL's Python-syntax hint, as its
    generation step adds it); `functions_for_scoring` are the raw docs its checker reads.
    """

    id: str
    category: str
    question: tuple[tuple[dict[str, str], ...], ...]  # turns -> messages
    functions: tuple[dict[str, Any], ...]
    functions_for_scoring: tuple[dict[str, Any], ...]
    possible_answer: Any = None  # AST: list of {func: {param: [values]}}; multi-turn: turns of call strings
    involved_classes: tuple[str, ...] = ()
    initial_config: dict[str, Any] = field(default_factory=dict)
    missed_function: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # turn -> held-back docs
    entry: dict[str, Any] = field(default_factory=dict)  # the record as BFCL's checkers read it

    @property
    def key(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True, kw_only=True)
class MalformedRecord:
    """A line that cannot run, and why."""

    key: str
    category: str
    line_no: int
    reason: str


class _Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    role: str
    content: str


class _Entry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(min_length=1)
    question: list[list[_Message]] = pydantic.Field(min_length=1)
    function: list[dict[str, Any]] | None = None
    involved_classes: list[str] | None = None
    initial_config: dict[str, Any] | None = None
    missed_function: dict[str, list[str]] | None = None


class _Malformed(AgentflowError):
    """Internal: why a line cannot become a record."""


# -- loading ------------------------------------------------------------------------------------------


def load_category(category: str, *, data_dir: Path | None = None) -> list[BfclRecord | MalformedRecord]:
    """Every line of a category's file, as a record or as a malformed line with its reason."""
    root = data_dir or bfcl_data_dir()
    path = root / f"{_VERSION_PREFIX}_{category}.json"
    if not path.is_file():
        raise UserError(f"no data file for BFCL category {category!r} at {path}")
    answers = _load_answers(root, category)
    items: list[BfclRecord | MalformedRecord] = []
    for line_no, line in _lines(path):
        try:
            items.append(_record(category, line, answers, root))
        except _Malformed as exc:
            items.append(
                MalformedRecord(
                    key=_guess_key(category, line, line_no), category=category, line_no=line_no, reason=str(exc)
                )
            )
    return items


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line


def _load_answers(root: Path, category: str) -> dict[str, Any] | None:
    if is_relevance(category):
        return None
    path = root / "possible_answer" / f"{_VERSION_PREFIX}_{category}.json"
    if not path.is_file():
        raise UserError(f"no possible answers for BFCL category {category!r} at {path}")
    answers: dict[str, Any] = {}
    for _, line in _lines(path):
        try:
            entry = json.loads(line)
            answers[entry["id"]] = entry["ground_truth"]
        except (ValueError, KeyError, TypeError):
            continue  # the record that needs it becomes malformed ("no possible answer")
    return answers


def _guess_key(category: str, line: str, line_no: int) -> str:
    try:
        entry_id = json.loads(line).get("id")
    except (ValueError, AttributeError):
        entry_id = None
    return entry_id if isinstance(entry_id, str) and entry_id else f"{category}@line{line_no}"


def _record(category: str, line: str, answers: Mapping[str, Any] | None, root: Path) -> BfclRecord:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise _Malformed(f"not JSON: {exc}") from None
    try:
        entry = _Entry.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _Malformed(f"{where}: {first['msg']}") from None
    if is_multi_turn(category):
        return _multi_turn_record(category, raw, entry, answers or {}, root)
    return _single_turn_record(category, raw, entry, answers)


def _single_turn_record(
    category: str, raw: dict[str, Any], entry: _Entry, answers: Mapping[str, Any] | None
) -> BfclRecord:
    if entry.function is None or (not entry.function and not is_relevance(category)):
        raise _Malformed("no function docs")  # irrelevance records may offer none
    _check_docs(entry.function)
    answer = None
    if answers is not None:
        answer = answers.get(entry.id)
        if not isinstance(answer, list) or not answer:
            raise _Malformed("no possible answer")
    return BfclRecord(
        id=entry.id,
        category=category,
        question=_question(entry),
        functions=tuple(_with_hint(entry.id, entry.function)),
        functions_for_scoring=tuple(copy.deepcopy(entry.function)),
        possible_answer=answer,
        entry=raw,
    )


def _multi_turn_record(
    category: str, raw: dict[str, Any], entry: _Entry, answers: Mapping[str, Any], root: Path
) -> BfclRecord:
    env = bfcl()
    classes = entry.involved_classes or []
    unknown = [c for c in classes if c not in env.class_file_path_mapping or c not in env.func_doc_file_mapping]
    if not classes or unknown:
        raise _Malformed(f"involved_classes must name BFCL backends, got {classes!r}")
    docs = [copy.deepcopy(doc) for c in classes for doc in _func_docs(root, env.func_doc_file_mapping[c])]
    missed = _hold_back(docs, entry.missed_function or {}, len(entry.question))
    ground_truth = answers.get(entry.id)
    if not _is_turns_of_calls(ground_truth) or len(ground_truth) != len(entry.question):
        raise _Malformed("no ground truth with one list of calls per turn")
    checked = {**raw, "function": docs, "missed_function": missed, "initial_config": entry.initial_config or {}}
    return BfclRecord(
        id=entry.id,
        category=category,
        question=_question(entry),
        functions=tuple(_with_hint(entry.id, docs)),
        functions_for_scoring=tuple(copy.deepcopy(docs)),
        possible_answer=ground_truth,
        involved_classes=tuple(classes),
        initial_config=copy.deepcopy(entry.initial_config or {}),
        missed_function=missed,
        entry=checked,
    )


def _func_docs(root: Path, file_name: str) -> tuple[dict[str, Any], ...]:
    """A backend's function docs, read and checked once per process (records share them)."""
    path = root / "multi_turn_func_doc" / file_name
    cached = _FUNC_DOCS.get(path)
    if cached is None:
        try:
            docs = tuple(json.loads(line) for _, line in _lines(path))
            _check_docs(docs)
            cached = docs
        except (OSError, ValueError) as exc:
            cached = f"cannot read function docs {path.name}: {exc}"
        except _Malformed as exc:
            cached = f"{path.name}: {exc}"
        _FUNC_DOCS[path] = cached
    if isinstance(cached, str):
        raise _Malformed(cached)
    return cached


_FUNC_DOCS: dict[Path, tuple[dict[str, Any], ...] | str] = {}  # doc file -> its docs, or why it is unusable


def _hold_back(
    docs: list[dict[str, Any]], missed: Mapping[str, list[str]], num_turns: int
) -> dict[str, list[dict[str, Any]]]:
    """Move each missed function's doc out of `docs` into its turn (BFCL's miss_func setup)."""
    held: dict[str, list[dict[str, Any]]] = {}
    for turn, names in missed.items():
        if not turn.isdigit() or int(turn) >= num_turns:
            raise _Malformed(f"missed_function names turn {turn!r} of a {num_turns}-turn record")
        held[turn] = []
        for name in names:
            index = next((i for i, d in enumerate(docs) if d.get("name") == name), None)
            if index is None:
                raise _Malformed(f"missed_function names unknown function {name!r}")
            held[turn].append(docs.pop(index))
    return held


def _check_docs(docs: Sequence[dict[str, Any]]) -> None:
    for doc in docs:
        try:
            SchemaTool(doc)
        except AgentflowError as exc:
            raise _Malformed(f"bad function doc: {exc}") from None


def _question(entry: _Entry) -> tuple[tuple[dict[str, str], ...], ...]:
    return tuple(tuple({"role": m.role, "content": m.content} for m in turn) for turn in entry.question)


def _with_hint(entry_id: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docs with BFCL's language hint, as its generation step shows them to the model."""
    hinted = bfcl().add_language_hint([{"id": entry_id, "function": copy.deepcopy(docs)}])
    return list(hinted[0]["function"])


def _is_turns_of_calls(value: Any) -> TypeGuard[list[list[str]]]:
    return isinstance(value, list) and all(
        isinstance(turn, list) and all(isinstance(call, str) for call in turn) for turn in value
    )
