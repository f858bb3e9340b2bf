"""Semantic variables and semantic functions.

A semantic function is a prompt template with typed parameters:

```python
@semantic_function(max_tokens=64)
def summarize(text: str) -> str:
    '''Summarize in one sentence: {text}'''
```

Called inside a `Program` it returns a `SemanticVariable` at once; the call runs when its inputs
are ready. Passing a variable to another semantic function or tool adds an edge to the program's
DAG; independent calls run in parallel with no extra code; `await variable` yields the value.
"""

from __future__ import annotations

import inspect
import json
import string
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_type_hints, overload

import pydantic

from agentflow import _context
from agentflow.backends import LLMRequest
from agentflow.calls import CallContext
from agentflow.exceptions import EngineError, ToolDefinitionError, ToolError, UserError
from agentflow.ir import CallKind, NodeState, Ref
from agentflow.tools import _check_options, _clean_schema, build_arguments_model, validate_arguments

if TYPE_CHECKING:
    from agentflow.program import Program

__all__ = ["SemanticFunction", "SemanticVariable", "semantic_function"]

T = TypeVar("T")


class SemanticVariable(Generic[T]):
    """The future output of one call in a program: an edge of the DAG."""

    __slots__ = ("_program", "name", "node_id")

    def __init__(self, program: Program, node_id: str, name: str) -> None:
        self._program = program
        self.node_id = node_id
        self.name = name  # the callee that produces it

    @property
    def ref(self) -> Ref:
        return Ref(self.node_id)

    @property
    def state(self) -> NodeState:
        return self._program.node_state(self.node_id)

    def done(self) -> bool:
        return self.state is NodeState.DONE

    def __await__(self) -> Any:
        return self._program.future(self.node_id).__await__()

    def __repr__(self) -> str:
        return f"<SemanticVariable ${self.node_id} from {self.name} ({self.state.value})>"


class SemanticFunction:
    """A prompt template whose calls are LLM nodes."""

    kind = CallKind.LLM
    runs_in_thread = False

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        template: str | None = None,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: tuple[str, ...] = (),
        timeout_s: float | None = None,
        retries: int = 0,
        max_concurrency: int | None = None,
        expected_duration_s: float | None = None,
    ) -> None:
        _check_options(
            fn,
            name=name,
            timeout_s=timeout_s,
            retries=retries,
            max_concurrency=max_concurrency,
            expected_duration_s=expected_duration_s,
        )
        self.name: str = name or fn.__name__
        self.template = inspect.cleandoc(template if template is not None else (fn.__doc__ or ""))
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stop = tuple(stop)
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.expected_duration_s = expected_duration_s  # None: learned from the calls the runtime measures
        self.signature = inspect.signature(fn)
        self.arguments_model = build_arguments_model(self.name, fn, None)
        self.description = self.template.splitlines()[0] if self.template else self.name
        self._output = _OutputSpec.of(fn)
        _check_template(self.name, self.template, set(self.signature.parameters))
        self.__doc__ = fn.__doc__
        self.__name__ = self.name

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments object (the template's parameters)."""
        return _clean_schema(self.arguments_model.model_json_schema())

    def openai_schema(self) -> dict[str, Any]:
        """The function in OpenAI's function-calling format, as a tool's (an MCP server lists it so)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters_schema},
        }

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return validate_arguments(self.name, self.signature, self.arguments_model, args, kwargs)

    def render(self, arguments: Mapping[str, Any]) -> str:
        """The prompt for these arguments."""
        return _PROMPT_FORMATTER.vformat(self.template, (), dict(arguments))

    def request(self, arguments: Mapping[str, Any], ctx: CallContext | None = None) -> LLMRequest:
        messages: list[dict[str, str]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.render(arguments)})
        return LLMRequest(
            messages=tuple(messages),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            stop=self.stop,
            json_schema=self._output.json_schema,
            metadata=ctx.metadata if ctx else None,
        )

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> Any:
        if ctx.backend is None:
            raise EngineError(f"{self.name}: no LLM backend configured for this program")
        completion = await ctx.backend.complete(self.request(arguments, ctx))
        if ctx.on_completion is not None:
            ctx.on_completion(completion)
        return self._output.parse(self.name, completion.text)

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        raise AssertionError("semantic functions are async; the executor awaits invoke()")

    def __call__(self, *args: Any, **kwargs: Any) -> SemanticVariable[Any]:
        program = _context.current_program()
        if program is None:
            raise UserError(f"{self.name}() was called outside a Program; use `async with agentflow.Program() as p:`")
        return program.call(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<SemanticFunction {self.name}{self.signature}>"


@overload
def semantic_function(fn: Callable[..., Any], /) -> SemanticFunction: ...


@overload
def semantic_function(
    *,
    name: str | None = None,
    template: str | None = None,
    system: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    stop: tuple[str, ...] = (),
    timeout_s: float | None = None,
    retries: int = 0,
    max_concurrency: int | None = None,
    expected_duration_s: float | None = None,
) -> Callable[[Callable[..., Any]], SemanticFunction]: ...


def semantic_function(
    fn: Callable[..., Any] | None = None, /, **options: Any
) -> SemanticFunction | Callable[[Callable[..., Any]], SemanticFunction]:
    """Turn a function whose docstring (or `template=`) is a prompt template into an LLM call."""

    def wrap(f: Callable[..., Any]) -> SemanticFunction:
        return SemanticFunction(f, **options)

    return wrap(fn) if fn is not None else wrap


class _OutputSpec:
    """How to read a completion: raw text for `str`, validated JSON for anything else."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.is_text = annotation in (str, inspect.Signature.empty, Any)
        self._adapter = None if self.is_text else pydantic.TypeAdapter(annotation)
        self.json_schema = None if self._adapter is None else self._adapter.json_schema()

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> _OutputSpec:
        try:
            annotation = get_type_hints(fn).get("return", inspect.Signature.empty)
        except Exception as exc:
            raise ToolDefinitionError(f"{fn.__name__}: cannot resolve return type: {exc}") from exc
        try:
            return cls(annotation)
        except pydantic.PydanticSchemaGenerationError as exc:
            raise ToolDefinitionError(f"{fn.__name__}: unsupported return type: {exc}") from exc

    def parse(self, name: str, text: str) -> Any:
        if self._adapter is None:
            return text.strip()
        try:
            return self._adapter.validate_json(text)
        except pydantic.ValidationError as exc:
            raise ToolError(f"{name}: LLM output is not a valid {self.annotation!r}: {exc.errors()[0]['msg']}") from exc


def _check_template(name: str, template: str, params: set[str]) -> None:
    if not template.strip():
        raise ToolDefinitionError(f"{name}: a semantic function needs a prompt template (docstring or template=)")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ToolDefinitionError(f"{name}: bad prompt template: {exc}") from exc
    roots = {f.split(".")[0].split("[")[0] for f in fields}
    unknown = sorted(r for r in roots if r not in params)
    if unknown or "" in roots:
        raise ToolDefinitionError(
            f"{name}: template placeholders {unknown or ['{}']} are not parameters {sorted(params)}"
        )


class _PromptFormatter(string.Formatter):
    """`str.format` that looks up `{x.attr}` / `{x[0]}` on the values themselves, then writes them as prompt text.

    Turning arguments into text first would make `{items[0]}` the first character of a JSON array
    and `{score:.1f}` a format error on a string.
    """

    def format_field(self, value: Any, format_spec: str) -> str:
        return format(value, format_spec) if format_spec else _as_prompt_text(value)


_PROMPT_FORMATTER = _PromptFormatter()


def _as_prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except TypeError:
        return str(value)
