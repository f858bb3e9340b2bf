"""Plan text -> IR nodes, line by line, with no `eval`.

The plan form is LLMCompiler's:

```
Thought: the three lookups do not depend on each other.
1. population("Paris")
2. population(city="Lima")
3. largest(["Paris", "Lima"], [$1, $2])
4. join()
```

Each step line is parsed with `ast` (an expression that must be a call of a registered tool or
semantic function whose arguments are literals or references). `$N` and `${N}` name the output
of step N; inside a string they build a `Concat` ("weather in $1"), inside lists and dicts a
nested `Ref`. `PlanParser` is fed text deltas and returns each node as soon as its line is
complete; `parse_plan` feeds a whole text through the same parser, so both give the same nodes.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from agentflow.exceptions import ArgumentValidationError, CycleError, PlanError, UnknownToolError
from agentflow.ir import CallNode, Concat, Ref, iter_refs
from agentflow.tools import Tool, ToolRegistry

__all__ = ["END_OF_PLAN", "Plan", "PlanParser", "parse_call", "parse_plan"]

END_OF_PLAN = "<END_OF_PLAN>"
JOIN = "join"

_THOUGHT = re.compile(r"^\s*thought\s*:\s?(.*)$", re.IGNORECASE)
_STEP = re.compile(r"^\s*(\d+)\s*[.)]\s*(.*?)\s*$", re.DOTALL)
_JOIN_BODY = re.compile(r"^join\(\s*\)$")
_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
_REF_IN_TEXT = re.compile(r"\$\{(\d+)\}|\$(\d+)")
_REF_PLACEHOLDER = "__plan_ref_"  # `$N` outside strings becomes this identifier before ast.parse
_PLACEHOLDER_NAME = re.compile(rf"^{_REF_PLACEHOLDER}(\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A parsed plan: its nodes in step order, its thoughts, and the text they came from."""

    nodes: tuple[CallNode, ...]
    thoughts: tuple[str, ...] = ()
    text: str = ""


class PlanParser:
    """Incremental parser: `feed` text deltas, get back every node whose line is now complete.

    `first_step` is the lowest step number allowed (replans continue after earlier rounds);
    `available` are ids of earlier rounds' steps that may be referenced (their outputs exist);
    `taken` are ids that may not be reused. Errors raise `PlanError` with the line number and
    text; after an error the parser accepts nothing more.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        first_step: int = 1,
        available: Collection[str] = (),
        taken: Collection[str] = (),
    ) -> None:
        self.registry = registry
        self.first_step = first_step
        self._available = set(available)
        self._taken = set(taken) | self._available
        self._buffer = ""
        self._line_no = 0  # lines consumed so far
        self._last_step = first_step - 1
        self._steps: set[str] = set()  # ids of this plan's steps
        self._nodes: list[CallNode] = []
        self._thoughts: list[str] = []
        self._text: list[str] = []
        self._failed: PlanError | None = None
        self.done = False  # join() was seen

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, delta: str) -> list[CallNode]:
        """Take more text; return the nodes of the lines it completed (in order)."""
        self._check_usable()
        if self.done:
            return []
        self._text.append(delta)
        self._buffer += delta
        emitted: list[CallNode] = []
        while not self.done and "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            node = self._consume(line)
            if node is not None:
                emitted.append(node)
        return emitted

    def finish(self) -> Plan:
        """The text is complete: parse the last line and check the plan ended with `join()`."""
        self._check_usable()
        if not self.done and self._buffer.strip():
            line, self._buffer = self._buffer, ""
            self._consume(line)
        if not self.done:
            self._line_no, last = self._last_line()
            self._fail("the plan ends without join() (truncated?)", last)
        return Plan(nodes=tuple(self._nodes), thoughts=tuple(self._thoughts), text="".join(self._text))

    @property
    def nodes(self) -> tuple[CallNode, ...]:
        """Nodes emitted so far."""
        return tuple(self._nodes)

    @property
    def thoughts(self) -> tuple[str, ...]:
        """`Thought:` lines read so far."""
        return tuple(self._thoughts)

    # -- one line -------------------------------------------------------------------------------

    def _consume(self, raw: str) -> CallNode | None:
        self._line_no += 1
        line = raw.rstrip()
        if line.endswith(END_OF_PLAN):  # LLMCompiler's end marker; join() is what ends a plan
            line = line[: -len(END_OF_PLAN)].rstrip()
        if not line.strip() or _FENCE.match(line):
            return None
        thought = _THOUGHT.match(line)
        if thought:
            self._thoughts.append(thought.group(1).strip())
            return None
        step = _STEP.match(line)
        body = step.group(2) if step else line.strip()
        if _JOIN_BODY.match(body):
            self.done = True
            return None
        if step is None:
            self._fail("not a plan line: expected `N. tool(arguments)`, `Thought: ...` or `join()`", raw)
        return self._step(int(step.group(1)), body, raw)

    def _step(self, number: int, body: str, raw: str) -> CallNode:
        step_id = str(number)
        self._check_number(number, raw)
        try:
            node = parse_call(body, self.registry, node_id=step_id, label=raw.strip())
        except PlanError as exc:
            self._fail(exc.message, raw)
        self._check_refs(node, raw)
        self._last_step = number
        self._steps.add(step_id)
        self._nodes.append(node)
        return node

    def _check_number(self, number: int, raw: str) -> None:
        if number < self.first_step and not self._steps:
            self._fail(f"step numbers must continue after the earlier steps: start at {self.first_step}", raw)
        if str(number) in self._steps or str(number) in self._taken:
            self._fail(f"step {number} is numbered twice", raw)
        if number <= self._last_step:
            self._fail(f"step numbers must increase: expected {self._last_step + 1}, got {number}", raw)

    def _check_refs(self, node: CallNode, raw: str) -> None:
        for dep in node.deps:
            if dep in self._steps or dep in self._available:
                continue
            if dep in self._taken:
                self._fail(f"step {node.id} references ${dep}, an earlier step that produced no value", raw)
            if int(dep) > int(node.id):
                self._fail(
                    f"step {node.id} references ${dep}, a later step: references must point to earlier steps "
                    "(a forward reference could form a cycle)",
                    raw,
                )
            self._fail(f"step {node.id} references ${dep}, but there is no step {dep}", raw)

    # -- errors ---------------------------------------------------------------------------------

    def _fail(self, message: str, raw: str) -> NoReturn:
        error = PlanError(message, line_no=self._line_no, line=raw.rstrip("\n"))
        self._failed = error
        raise error

    def _check_usable(self) -> None:
        if self._failed is not None:
            failed = self._failed
            raise PlanError(
                f"the parser stopped at an earlier error: {failed.message}", line_no=failed.line_no, line=failed.line
            )

    def _last_line(self) -> tuple[int, str]:
        """The last non-blank line and its number (line 1 of an empty text)."""
        lines = "".join(self._text).split("\n")
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].strip():
                return i + 1, lines[i]
        return 1, ""


def parse_plan(
    text: str,
    registry: ToolRegistry,
    *,
    first_step: int = 1,
    available: Collection[str] = (),
    taken: Collection[str] = (),
) -> Plan:
    """Parse and validate a whole plan (the batch twin of `PlanParser`); `PlanError` if invalid."""
    parser = PlanParser(registry, first_step=first_step, available=available, taken=taken)
    parser.feed(text)
    return parser.finish()


# -- one call expression ----------------------------------------------------------------------------


def parse_call(body: str, registry: ToolRegistry, *, node_id: str, label: str | None = None) -> CallNode:
    """`tool(args)` -> a `CallNode`, checked against the registry (name and arity).

    Raises `PlanError` (without a line number: the caller knows the line).
    """
    call = _parse_expression(body)
    assert isinstance(call.func, ast.Name)  # _parse_expression checked it
    name = call.func.id
    if name == JOIN:
        raise PlanError("join() takes no arguments and ends the plan")
    try:
        callee = registry.get(name)
    except UnknownToolError:
        known = ", ".join(registry.names()) or "none"
        raise PlanError(f"unknown tool {name!r} (known: {known})") from None
    args = tuple(_value(arg) for arg in call.args)
    kwargs = {kw.arg: _value(kw.value) for kw in call.keywords if kw.arg is not None}
    _check_arity(callee, args, kwargs)
    try:
        return CallNode(id=node_id, kind=callee.kind, target=name, args=args, kwargs=kwargs, label=label)
    except CycleError:
        raise PlanError(f"step {node_id} references its own result ${node_id}") from None


def _parse_expression(body: str) -> ast.Call:
    masked = _mask_refs(body)
    try:
        tree = ast.parse(masked, mode="eval")
    except SyntaxError as exc:
        raise PlanError(f"cannot parse the call: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise PlanError(f"cannot parse the call: {exc}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise PlanError("a step must be one call: `tool(arguments)`")
    if any(isinstance(a, ast.Starred) for a in call.args) or any(kw.arg is None for kw in call.keywords):
        raise PlanError("*args and **kwargs are not allowed in a plan; write each argument")
    return call


def _mask_refs(src: str) -> str:
    """Replace `$N`/`${N}` outside string literals by an identifier `ast` can parse."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "'\"":
            end = _string_end(src, i)
            out.append(src[i:end])
            i = end
            continue
        if c == "$":
            m = _REF_IN_TEXT.match(src, i)
            if m:
                out.append(f"{_REF_PLACEHOLDER}{m.group(1) or m.group(2)}")
                i = m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _string_end(src: str, start: int) -> int:
    """Index just past the string literal opening at `start` (or the end of `src` if unterminated)."""
    quote = src[start] * 3 if src.startswith(src[start] * 3, start) else src[start]
    i = start + len(quote)
    while i < len(src):
        if src[i] == "\\":
            i += 2
            continue
        if src.startswith(quote, i):
            return i + len(quote)
        i += 1
    return len(src)


def _value(node: ast.expr) -> Any:
    """An argument's AST -> literal, `Ref`, `Concat`, or containers of those."""
    if isinstance(node, ast.Name):
        m = _PLACEHOLDER_NAME.match(node.id)
        if m:
            return Ref(str(int(m.group(1))))
        raise PlanError(f"{node.id!r} is not a literal: quote strings, and write $N for the result of step N")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _string_value(node.value)
    if isinstance(node, ast.List):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        return _dict_value(node)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise PlanError(f"not a literal: {ast.unparse(node)!r} (arguments are Python literals or $N)") from None


def _dict_value(node: ast.Dict) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:
            raise PlanError("**mappings are not allowed in a plan; write each key")
        try:
            literal_key = ast.literal_eval(key)
        except ValueError:
            raise PlanError(f"dict keys must be literals, got {ast.unparse(key)!r}") from None
        out[literal_key] = _value(value)
    return out


def _string_value(text: str) -> str | Ref | Concat:
    """A string literal: plain text, a whole-string reference, or text with references inside."""
    parts = list(_split_refs(text))
    if not any(isinstance(p, Ref) for p in parts):
        return text
    if len(parts) == 1:
        return parts[0]
    return Concat(tuple(parts))


def _split_refs(text: str) -> Iterator[str | Ref]:
    pos = 0
    for m in _REF_IN_TEXT.finditer(text):
        if m.start() > pos:
            yield text[pos : m.start()]
        yield Ref(str(int(m.group(1) or m.group(2))))
        pos = m.end()
    if pos < len(text):
        yield text[pos:]


# -- arity ----------------------------------------------------------------------------------------


def _check_arity(callee: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Right number and names of arguments (from the signature); full validation when no refs."""
    try:
        callee.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise PlanError(f"wrong arguments for {callee.name}: {exc}; signature: {signature_text(callee)}") from None
    if any(True for _ in iter_refs((args, kwargs))):
        return  # values arrive at run time; the executor validates them then
    try:
        callee.bind(args, kwargs)
    except ArgumentValidationError as exc:
        raise PlanError(f"bad arguments for {callee.name}: {exc.detail}") from None


def signature_text(callee: Any) -> str:
    """`name(param: type = default, ...) -> type` for a tool or semantic function."""
    if isinstance(callee, Tool):
        return callee.signature_text()
    signature: inspect.Signature = callee.signature
    params = []
    for p in signature.parameters.values():
        text = p.name if p.annotation is p.empty else f"{p.name}: {_annotation_text(p.annotation)}"
        params.append(text if p.default is p.empty else f"{text} = {p.default!r}")
    ret = signature.return_annotation
    arrow = "" if ret is signature.empty else f" -> {_annotation_text(ret)}"
    return f"{callee.name}({', '.join(params)}){arrow}"


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):  # postponed annotations arrive as source text
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
