"""A tool from a JSON-schema function description (OpenAI's, BFCL's, an MCP server's), validated like `@tool`.

`@tool` builds a pydantic arguments model from type hints; a function description only has a
JSON schema. `SchemaTool` builds the same kind of model (`extra="forbid"`, errors raised as
`ArgumentValidationError`) from the schema, so the executor, the planner and the registry treat
it exactly like a decorated function. Positional arguments map to the schema's properties in
order: required ones first, then optional ones.

Two dialects:

- `tolerant=True` (the default, for BFCL's loose schemas; see `python_type`): `dict` is `object`,
  `float` is `number`, `tuple` is `array`, scalars are not coerced, `any` (or an unknown type)
  accepts anything, nested `properties` become typed dicts that allow extra keys, and property
  names need not be identifiers.
- `tolerant=False` (standard JSON Schema, see `json_schema_type`): each parameter's model type is
  the one its schema declares (`enum` and `const` become `Literal`s, `anyOf`/`oneOf` unions), so
  prompts and plan grammars built from the model admit what the schema admits.

Optional parameters the caller leaves out are not passed at all, so the function's own default
applies (BFCL's multi-turn backends rely on that).
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pydantic
import typing_extensions

from agentflow.exceptions import ArgumentValidationError, ToolDefinitionError
from agentflow.tools import Tool

__all__ = ["SchemaTool", "declared_type", "json_schema_type", "openai_parameters", "python_type"]

_SCALARS = frozenset(
    {"string", "str", "integer", "int", "float", "number", "double", "boolean", "bool", "char", "long"}
)
_DECLARED: dict[str, Any] = {
    "string": str, "str": str, "char": str, "integer": int, "int": int, "long": int, "float": float,
    "number": float, "double": float, "boolean": bool, "bool": bool, "null": type(None),
}  # fmt: skip
_ARRAYS = frozenset({"array", "tuple", "list", "arraylist"})
_OBJECTS = frozenset({"dict", "object", "hashmap", "map"})
_OPENAI_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "any": "string"}
# Standard JSON Schema type names (tolerant=False).
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


class SchemaTool(Tool[..., Any]):
    """A `Tool` whose argument schema comes from a JSON-schema function description.

    `fn` is called with keyword arguments only (the ones the caller gave, validated). Without
    `fn` the tool echoes its validated arguments: a dry run, for calls that are only checked.
    `tolerant` picks the schema dialect (see the module docstring).
    """

    def __init__(  # noqa: PLR0913 - mirrors Tool's options
        self,
        doc: Mapping[str, Any],
        fn: Callable[..., Any] | None = None,
        *,
        timeout_s: float | None = None,
        retries: int = 0,
        max_concurrency: int | None = None,
        expected_duration_s: float | None = None,
        tolerant: bool = True,
    ) -> None:
        # Tool.__init__ reads a Python signature; everything it sets is set here from the doc.
        name, description, parameters = _read_doc(doc)
        self.fn = fn if fn is not None else _echo
        self.name = name
        self.description = description
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.expected_duration_s = expected_duration_s  # None: learned by the runtime
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.runs_in_thread = not self.is_async
        self.doc = dict(doc)
        self.json_parameters = parameters
        self.arguments_model = _arguments_model(name, parameters, tolerant=tolerant)
        self.signature = _signature(parameters)
        self._param_names = list(self.signature.parameters)  # positional order
        self._no_params = not parameters.get("properties")
        self.__doc__ = description
        self.__name__ = name
        self.__wrapped__ = self.fn

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The doc's parameters as an OpenAI-style JSON schema (BFCL's type names normalized)."""
        return openai_parameters(self.json_parameters)

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate; keep only the arguments given (left-out optionals use the function's defaults)."""
        data = self._by_name(args, kwargs)
        try:
            validated = self.arguments_model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ArgumentValidationError(self.name, _summarize(exc)) from None
        return validated.model_dump(by_alias=True, exclude_unset=True)

    def _by_name(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Positional arguments by property name (required first, then optional), then the keywords."""
        if len(args) > len(self._param_names):
            raise ArgumentValidationError(
                self.name, f"takes {len(self._param_names)} arguments but {len(args)} were given"
            )
        data = dict(zip(self._param_names, args, strict=False))
        clash = sorted(set(data) & set(kwargs))
        if clash:
            raise ArgumentValidationError(self.name, f"got multiple values for {', '.join(clash)}")
        data.update(kwargs)
        return data

    def __repr__(self) -> str:
        return f"<SchemaTool {self.signature_text()}>"


async def _echo(**arguments: Any) -> dict[str, Any]:
    return arguments


# -- doc -> pydantic --------------------------------------------------------------------------------


def _read_doc(doc: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(doc, Mapping):
        raise ToolDefinitionError(f"a function description must be an object, got {type(doc).__name__}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolDefinitionError(f"a function description needs a non-empty 'name', got {name!r}")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ToolDefinitionError(f"{name}: 'parameters' must be an object")
    properties = parameters.get("properties") or {}
    if not isinstance(properties, Mapping) or not all(isinstance(v, Mapping) for v in properties.values()):
        raise ToolDefinitionError(f"{name}: 'parameters.properties' must map names to schemas")
    required = parameters.get("required") or []
    if not isinstance(required, Sequence) or isinstance(required, str):
        raise ToolDefinitionError(f"{name}: 'parameters.required' must be a list of names")
    description = doc.get("description")
    return name, description if isinstance(description, str) else "", dict(parameters)


def _arguments_model(name: str, parameters: Mapping[str, Any], *, tolerant: bool) -> type[pydantic.BaseModel]:
    properties: Mapping[str, Mapping[str, Any]] = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    fields: dict[str, Any] = {}
    for index, (pname, schema) in enumerate(properties.items()):
        where = f"{name}.{pname}"
        annotation = python_type(schema, where) if tolerant else json_schema_type(schema, where)
        description = schema.get("description") if isinstance(schema.get("description"), str) else None
        if pname in required:
            fields[f"p{index}"] = (annotation, pydantic.Field(..., alias=pname, description=description))
        elif tolerant:  # models often pass None for an optional parameter: accept it
            fields[f"p{index}"] = (annotation | None, pydantic.Field(None, alias=pname, description=description))
        else:
            default = schema.get("default")
            fields[f"p{index}"] = (annotation, pydantic.Field(default, alias=pname, description=description))
    config = pydantic.ConfigDict(extra="forbid", populate_by_name=False)
    try:
        return pydantic.create_model(f"{_safe(name)}_arguments", __config__=config, **fields)
    except (pydantic.PydanticSchemaGenerationError, TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"{name}: unsupported parameter schema: {exc}") from exc


def python_type(schema: Mapping[str, Any], where: str = "value") -> Any:
    """The Python type a JSON-schema node (BFCL dialect included) validates as.

    Tolerant on purpose, because BFCL's docs and answers disagree on types and BFCL's own
    executor passes the model's values through unchanged: a scalar type accepts any scalar
    (kept as given, never coerced), an array or object also accepts a string (a variable name,
    which BFCL's checker allows), and `any` or an unknown type accepts anything. What is checked
    is structure: parameter names, required parameters, list items, nested required keys.
    """
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        return _union([python_type({**schema, "type": k}, where) for k in kind])
    kind = kind.lower() if isinstance(kind, str) else "any"
    if kind == "null":
        return type(None)
    if kind in _SCALARS:
        return _scalar(_DECLARED[kind])
    if kind in _ARRAYS:
        items = schema.get("items")
        item_type = python_type(items, f"{where}[]") if isinstance(items, Mapping) else Any
        return list[item_type] | str  # type: ignore[valid-type]
    if kind in _OBJECTS:
        return _object_type(schema, where, python_type) | str
    return Any  # "any" and whatever else a record invents


def json_schema_type(schema: Any, where: str = "value") -> Any:
    """The Python type a standard JSON-schema node declares (`tolerant=False`).

    `enum`/`const` of scalars become `Literal`s, `anyOf`/`oneOf` and type lists unions, arrays
    typed lists, objects with `properties` typed dicts that allow extra keys; what has no Python
    counterpart (`$ref`, `allOf`, boolean schemas) is `Any`.
    """
    if not isinstance(schema, Mapping):
        return Any
    choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(choices, list) and choices and all(_is_literal(c) for c in choices):
        return Literal.__getitem__(tuple(choices))
    for combinator in ("anyOf", "oneOf"):
        members = schema.get(combinator)
        if isinstance(members, list) and members:
            return _union([json_schema_type(m, where) for m in members])
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return _union([json_schema_type({**schema, "type": k}, where) for k in kind])
    if kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    if kind == "array":
        items = schema.get("items")
        return list[json_schema_type(items, f"{where}[]")] if isinstance(items, Mapping) else list[Any]  # type: ignore[misc]
    if kind == "object":
        return _object_type(schema, where, json_schema_type)
    return Any


def _is_literal(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _union(options: list[Any]) -> Any:
    union = options[0]
    for option in options[1:]:
        union = union | option
    return union


def _scalar(declared: type) -> Any:
    """Any scalar, the declared type first (prompts and plan examples read the first member).

    Pydantic's smart-mode unions keep a value's exact type: 2 stays 2 for a "string" parameter.
    """
    union: Any = declared
    for other in (str, int, float, bool):
        if other is not declared:
            union = union | other
    return union


def declared_type(schema: Mapping[str, Any]) -> Any:
    """The type a doc declares, for signatures and prompts (`python_type` is what validation accepts)."""
    kind = schema.get("type")
    kind = kind.lower() if isinstance(kind, str) else "any"
    if kind in _ARRAYS:
        items = schema.get("items")
        return list[declared_type(items)] if isinstance(items, Mapping) else list  # type: ignore[misc]
    if kind in _OBJECTS:
        return dict
    return _DECLARED.get(kind, Any)


def _object_type(schema: Mapping[str, Any], where: str, translate: Callable[[Any, str], Any]) -> Any:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return dict[str, Any]
    required = set(schema.get("required") or [])
    keys: dict[str, Any] = {}
    for key, sub in properties.items():
        sub_type = translate(sub, f"{where}.{key}") if isinstance(sub, Mapping) else Any
        keys[str(key)] = typing_extensions.Required[sub_type] if key in required else sub_type
    # Built at runtime from the schema: mypy accepts only TypedDicts it can read statically.
    typed = typing_extensions.TypedDict(_safe(where), keys, total=False)  # type: ignore[misc]
    typed.__pydantic_config__ = pydantic.ConfigDict(extra="allow")  # type: ignore[attr-defined]
    return typed


def _signature(parameters: Mapping[str, Any]) -> inspect.Signature:
    """Required parameters first, then optional ones, each group in doc order.

    Python wants defaults last, and planners bind positional arguments to this order.
    Property names that are not identifiers have no place here; `bind` still accepts them.
    """
    properties: Mapping[str, Mapping[str, Any]] = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    usable = [p for p in properties if p.isidentifier() and not keyword.iskeyword(p)]
    ordered = [p for p in usable if p in required] + [p for p in usable if p not in required]
    params = [
        inspect.Parameter(
            pname,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if pname in required else properties[pname].get("default"),
            annotation=declared_type(properties[pname]),
        )
        for pname in ordered
    ]
    return inspect.Signature(params)


def openai_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """BFCL's parameter schema with OpenAI's type names (`dict` -> `object`, `float` -> `number`)."""

    def convert(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {k: convert(v) for k, v in node.items()}
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = _OPENAI_TYPES.get(kind, kind)
            return out
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    converted: dict[str, Any] = convert(dict(parameters))
    converted["type"] = "object"
    converted.setdefault("properties", {})
    converted.setdefault("required", [])
    return converted


def _summarize(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name) or "function"
