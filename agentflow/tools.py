"""`@tool`: a Python function becomes a validated, schema-described call the runtime can schedule.

```python
@tool
def get_weather(city: str, days: int = 1) -> str:
    '''Forecast for a city (an `Args:` section describes each parameter).'''
```

The OpenAI-format JSON schema comes from the type hints (through pydantic) and the docstring.
Arguments are validated before every call. Outside a `Program`, calling the tool calls the
function; inside one, it schedules a call and returns a `SemanticVariable` at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, ParamSpec, TypeVar, get_type_hints, overload

import pydantic

from agentflow import _context
from agentflow._docstring import parse_docstring
from agentflow.calls import CallContext
from agentflow.exceptions import ArgumentValidationError, ToolDefinitionError, UnknownToolError, UserError
from agentflow.ir import CallKind

__all__ = ["Tool", "ToolRegistry", "build_arguments_model", "load_tools_module", "tool"]

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Tool(Generic[P, R]):
    """A registered function: name, description, argument schema, execution options."""

    kind = CallKind.TOOL

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
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
        doc_description, param_docs = parse_docstring(fn.__doc__)
        self.fn = fn
        self.name: str = name or fn.__name__
        self.description: str = description if description is not None else doc_description
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_concurrency = max_concurrency
        # Declared seconds a call takes; None: the runtime learns it from the calls it measures.
        self.expected_duration_s = expected_duration_s
        self.is_async = inspect.iscoroutinefunction(fn)
        self.runs_in_thread = not self.is_async
        self.signature = inspect.signature(fn)
        self.arguments_model = build_arguments_model(self.name, fn, param_docs)
        self._no_params = not self.signature.parameters
        self.__doc__ = fn.__doc__
        self.__name__ = self.name
        self.__wrapped__ = fn

    # -- schema ---------------------------------------------------------------------------------

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments object."""
        return _clean_schema(self.arguments_model.model_json_schema())

    def openai_schema(self) -> dict[str, Any]:
        """The tool in OpenAI's function-calling format."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters_schema},
        }

    def signature_text(self) -> str:
        """`name(param: type = default, ...) -> type`, for prompts."""
        return f"{self.name}{_render_signature(self.signature)}"

    # -- calling --------------------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map positional and keyword arguments to names and validate them against the schema."""
        if self._no_params and not args and not kwargs:
            return {}
        return validate_arguments(self.name, self.signature, self.arguments_model, args, kwargs)

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """Run the function with validated arguments (the executor calls this for async tools)."""
        del ctx
        _context.detach()  # the function runs as if outside the program (see `_context.detach`)
        fn = self._fn_by_name()
        if self.is_async:
            return await fn(**arguments)
        return fn(**arguments)

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        """Run a sync function with validated arguments (in a worker thread, in a copied context)."""
        _context.detach()
        return self._fn_by_name()(**arguments)

    def _fn_by_name(self) -> Callable[..., Any]:
        # `fn` called with arguments by name: `bind` validated them against its signature at runtime,
        # which `P` cannot express for a dict.
        return self.fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Inside a `Program`: schedule the call, return its `SemanticVariable`. Outside: call `fn`."""
        program = _context.current_program()
        if program is not None:
            return program.call(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.signature_text()}>"


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    retries: int = 0,
    max_concurrency: int | None = None,
    expected_duration_s: float | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    retries: int = 0,
    max_concurrency: int | None = None,
    expected_duration_s: float | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Turn a sync or async function into a `Tool`; use bare or with options.

    `expected_duration_s` declares how long a call takes (urgency scheduling reads it along the
    DAG); without it the runtime learns each tool's duration from the calls it measures.
    """

    def wrap(f: Callable[P, R]) -> Tool[P, R]:
        return Tool(
            f,
            name=name,
            description=description,
            timeout_s=timeout_s,
            retries=retries,
            max_concurrency=max_concurrency,
            expected_duration_s=expected_duration_s,
        )

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """Tools and semantic functions by name."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items: dict[str, Any] = {}  # name -> Tool or SemanticFunction
        for item in items:
            self.register(item)

    @classmethod
    def from_module(cls, module: ModuleType) -> ToolRegistry:
        """Every tool and semantic function defined at the top level of a module."""
        from agentflow.semantic import SemanticFunction

        found = [v for v in vars(module).values() if isinstance(v, (Tool, SemanticFunction))]
        return cls(found)

    def register(self, item: Any) -> None:
        """Add a tool or semantic function; the same object twice is a no-op, a clash an error."""
        if not hasattr(item, "bind") or not hasattr(item, "kind"):
            raise ToolDefinitionError(f"{item!r} is not a tool: decorate it with @tool or @semantic_function")
        existing = self._items.get(item.name)
        if existing is not None and existing is not item:
            raise ToolDefinitionError(f"two different callables are named {item.name!r}")
        self._items[item.name] = item

    def get(self, name: str) -> Any:
        """The callable named `name`; `UnknownToolError` when absent."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownToolError(name, list(self._items)) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def tools(self) -> list[Tool[Any, Any]]:
        """Registered tools (not semantic functions)."""
        return [v for v in self._items.values() if isinstance(v, Tool)]

    def openai_schemas(self) -> list[dict[str, Any]]:
        """Every tool in OpenAI's function-calling format."""
        return [t.openai_schema() for t in self.tools()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def load_tools_module(spec: str) -> ModuleType:
    """Import `spec`, a module that defines tools (`--tools` of the CLI): a dotted module name or a `.py` path."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"--tools {spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"--tools {spec}: cannot load this file as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise UserError(f"--tools {spec}: cannot import {exc.name!r}; give a module name or a .py path") from exc


# -- schema building ------------------------------------------------------------------------------


def build_arguments_model(
    name: str, fn: Callable[..., Any], param_docs: Mapping[str, str] | None = None
) -> type[pydantic.BaseModel]:
    """A pydantic model of a function's parameters, from its hints and docstring descriptions."""
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:  # unresolvable forward references, bad annotations
        raise ToolDefinitionError(f"{name}: cannot resolve type hints: {exc}") from exc
    fields: dict[str, Any] = {}
    for pname, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"{name}: *{pname} parameters have no schema; name every parameter")
        if pname not in hints:
            raise ToolDefinitionError(f"{name}: parameter {pname!r} needs a type hint")
        default = ... if param.default is param.empty else param.default
        doc = (param_docs or {}).get(pname) or None
        field_name = _field_name(pname, signature.parameters)
        alias = pname if field_name != pname else None
        fields[field_name] = (hints[pname], pydantic.Field(default, alias=alias, description=doc))
    try:
        return pydantic.create_model(
            f"{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False), **fields
        )
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ToolDefinitionError(f"{name}: unsupported parameter type: {exc}") from exc


def _field_name(pname: str, params: Mapping[str, Any]) -> str:
    """The model field for a parameter: its own name unless pydantic reserves it (`_x`, `json`, `model_config`).

    A reserved name becomes an aliased field, so the schema and validation still use the parameter's name.
    """
    if not pname.startswith("_") and not hasattr(pydantic.BaseModel, pname):
        return pname
    field_name = f"arg_{pname.strip('_')}"
    while field_name in params or hasattr(pydantic.BaseModel, field_name):
        field_name += "_"
    return field_name


def validate_arguments(
    name: str,
    signature: inspect.Signature,
    model: type[pydantic.BaseModel],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """Map arguments to parameter names and validate them; `ArgumentValidationError` otherwise."""
    data = _by_name(name, signature, args, kwargs)
    try:
        validated = model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ArgumentValidationError(name, _summarize_validation(exc)) from None
    # By parameter name (a field's alias where the name is reserved), values as validated (models stay models).
    return {info.alias or field: getattr(validated, field) for field, info in type(validated).model_fields.items()}


def _by_name(
    name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Positional arguments by parameter name (tools have no *args, so this is a zip)."""
    if not args:
        return dict(kwargs)
    names = list(signature.parameters)
    if len(args) > len(names):
        raise ArgumentValidationError(name, f"takes {len(names)} arguments but {len(args)} were given")
    data = dict(zip(names, args, strict=False))
    clash = sorted(set(data) & set(kwargs))
    if clash:
        raise ArgumentValidationError(name, f"got multiple values for {', '.join(clash)}")
    data.update(kwargs)
    return data


def _summarize_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's auto-generated titles; function-calling schemas do not use them."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    cleaned: dict[str, Any] = strip(schema)
    cleaned.setdefault("properties", {})
    cleaned.setdefault("required", [])
    return cleaned


def _check_options(
    fn: Callable[..., Any],
    *,
    name: str | None,
    timeout_s: float | None,
    retries: int,
    max_concurrency: int | None,
    expected_duration_s: float | None,
) -> None:
    if not callable(fn):
        raise ToolDefinitionError(f"@tool needs a function, got {fn!r}")
    fn_name: str = getattr(fn, "__name__", "")
    tool_name = name or fn_name
    if not _NAME.match(tool_name):
        raise ToolDefinitionError(f"tool name {tool_name!r} must match {_NAME.pattern}")
    if timeout_s is not None and not timeout_s > 0:
        raise ToolDefinitionError(f"{tool_name}: timeout_s must be > 0, got {timeout_s}")
    if retries < 0:
        raise ToolDefinitionError(f"{tool_name}: retries must be >= 0, got {retries}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ToolDefinitionError(f"{tool_name}: max_concurrency must be >= 1, got {max_concurrency}")
    if expected_duration_s is not None and not (
        isinstance(expected_duration_s, int | float)
        and not isinstance(expected_duration_s, bool)
        and math.isfinite(expected_duration_s)
        and expected_duration_s >= 0
    ):
        raise ToolDefinitionError(
            f"{tool_name}: expected_duration_s must be a finite number of seconds >= 0, got {expected_duration_s!r}"
        )
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise ToolDefinitionError(f"{tool_name}: generators cannot be tools; return a value")


def _render_signature(signature: inspect.Signature) -> str:
    params = []
    for p in signature.parameters.values():
        text = p.name
        if p.annotation is not p.empty:
            text += f": {_type_name(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = "" if signature.return_annotation is signature.empty else f" -> {_type_name(signature.return_annotation)}"
    return f"({', '.join(params)}){ret}"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
