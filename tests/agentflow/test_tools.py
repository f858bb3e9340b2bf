"""`@tool`: schemas from hints and docstrings, validation, bad definitions, the registry."""

from __future__ import annotations

import asyncio
import types
import warnings
from typing import Literal, Optional

import pydantic
import pytest

from agentflow import semantic_function
from agentflow.calls import CallContext, Callee
from agentflow.exceptions import ArgumentValidationError, ToolDefinitionError, UnknownToolError
from agentflow.ir import CallKind
from agentflow.tools import Tool, ToolRegistry, build_arguments_model, tool

# -- decorating ---------------------------------------------------------------------------------------


@tool
def add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    return a + b


@tool(name="multiply", description="Multiply two numbers.", timeout_s=1.5, retries=2, max_concurrency=3)
def mul(a: int, b: int) -> int:
    return a * b


@tool
async def fetch(url: str) -> str:
    """Fetch a URL."""
    await asyncio.sleep(0)
    return f"body of {url}"


@tool(timeout_s=0.5)
async def fetch_fast(url: str) -> str:
    return url


def test_bare_sync_tool() -> None:
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two numbers."
    assert add.kind is CallKind.TOOL
    assert (add.timeout_s, add.retries, add.max_concurrency) == (None, 0, None)
    assert not add.is_async and add.runs_in_thread
    assert add.__name__ == "add" and add.__doc__ == "Add two numbers."
    assert add.__wrapped__(1, 2) == 3


def test_sync_tool_with_options() -> None:
    assert isinstance(mul, Tool)
    assert mul.name == "multiply" and mul.__name__ == "multiply"
    assert mul.description == "Multiply two numbers."
    assert (mul.timeout_s, mul.retries, mul.max_concurrency) == (1.5, 2, 3)


def test_bare_async_tool() -> None:
    assert fetch.is_async and not fetch.runs_in_thread
    assert fetch.name == "fetch"


def test_async_tool_with_options() -> None:
    assert fetch_fast.is_async and fetch_fast.timeout_s == 0.5
    assert fetch_fast.description == ""


def test_tools_satisfy_the_callee_protocol() -> None:
    assert isinstance(add, Callee)
    assert isinstance(fetch, Callee)


def test_outside_a_program_calling_a_tool_calls_the_function() -> None:
    assert add(1) == 3
    assert add(1, b=5) == 6
    assert mul(3, 4) == 12


async def test_outside_a_program_an_async_tool_returns_its_coroutine() -> None:
    assert await fetch("x") == "body of x"


async def test_invoke_runs_sync_and_async_functions() -> None:
    ctx = CallContext(program_id="p", node_id="1")
    assert await add.invoke({"a": 1, "b": 1}, ctx) == 2
    assert await fetch.invoke({"url": "u"}, ctx) == "body of u"
    assert add.invoke_sync({"a": 5, "b": 5}) == 10


def test_signature_text_and_repr() -> None:
    assert add.signature_text() == "add(a: int, b: int = 2) -> int"
    assert repr(add) == "<Tool add(a: int, b: int = 2) -> int>"


# -- schema -------------------------------------------------------------------------------------------


class Address(pydantic.BaseModel):
    street: str
    zip_code: int


@tool
def rich(
    city: str,
    ids: list[int],
    unit: Literal["c", "f"] = "c",
    note: Optional[str] = None,  # noqa: UP045 - Optional on purpose: both spellings must work
    limit: int | None = None,
    address: Address | None = None,
) -> str:
    """Look up things.

    Args:
        city: The city name.
        ids: Record ids to fetch.
        unit: Temperature unit.
        note: A free-form note.
        limit: At most this many.
        address: Where to deliver.
    """
    return city


def test_schema_types_from_hints() -> None:
    schema = rich.parameters_schema
    props = schema["properties"]
    assert schema["type"] == "object"
    assert schema["required"] == ["city", "ids"]
    assert props["city"]["type"] == "string"
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}, "description": "Record ids to fetch."}
    assert props["unit"]["enum"] == ["c", "f"] and props["unit"]["default"] == "c"
    assert {"type": "null"} in props["note"]["anyOf"] and {"type": "string"} in props["note"]["anyOf"]
    assert props["note"]["default"] is None
    assert {"type": "integer"} in props["limit"]["anyOf"]
    assert schema["additionalProperties"] is False


def test_schema_has_no_pydantic_titles() -> None:
    def titles(node: object) -> int:
        if isinstance(node, dict):
            return sum(k == "title" for k in node) + sum(titles(v) for v in node.values())
        if isinstance(node, list):
            return sum(titles(v) for v in node)
        return 0

    assert titles(rich.parameters_schema) == 0


def test_pydantic_model_parameter() -> None:
    schema = rich.parameters_schema
    address = schema["properties"]["address"]
    ref = next(option["$ref"] for option in address["anyOf"] if "$ref" in option)
    definition = schema["$defs"][ref.rsplit("/", 1)[-1]]
    assert definition["required"] == ["street", "zip_code"]
    bound = rich.bind(("Paris", [1]), {"address": {"street": "Rue", "zip_code": "75001"}})
    assert bound["address"] == Address(street="Rue", zip_code=75001)


def test_google_docstring_descriptions_land_in_the_schema() -> None:
    props = rich.parameters_schema["properties"]
    assert props["city"]["description"] == "The city name."
    assert props["unit"]["description"] == "Temperature unit."
    assert props["address"]["description"] == "Where to deliver."
    assert rich.description == "Look up things."


@tool
def sphinx_style(city: str, days: int = 1) -> str:
    """Forecast for a city.

    :param city: The city name.
    :type city: str
    :param int days: How many days
        ahead to forecast.
    :returns: The forecast text.
    """
    return city


@tool
def numpy_style(city: str, days: int = 1) -> str:
    """Forecast for a city.

    Parameters
    ----------
    city : str
        The city name.
    days : int, optional
        How many days
        ahead to forecast.

    Returns
    -------
    str
        The forecast text.
    """
    return city


@tool
def google_style(city: str, days: int = 1) -> str:
    """Forecast for a city.

    More detail about the forecast.

    Args:
        city (str): The city name.
        days: How many days
            ahead to forecast.

    Returns:
        The forecast text.
    """
    return city


@pytest.mark.parametrize("fn", [sphinx_style, numpy_style, google_style], ids=["sphinx", "numpy", "google"])
def test_docstring_styles(fn: Tool[..., str]) -> None:
    props = fn.parameters_schema["properties"]
    assert props["city"]["description"] == "The city name."
    assert props["days"]["description"] == "How many days ahead to forecast."
    assert props["days"]["default"] == 1
    assert fn.description.startswith("Forecast for a city.")
    assert "forecast text" not in fn.description


def test_google_description_keeps_every_paragraph_before_args() -> None:
    assert google_style.description == "Forecast for a city. More detail about the forecast."


def test_explicit_description_wins_over_docstring() -> None:
    @tool(description="Explicit.")
    def f(x: int) -> int:
        """From the docstring."""
        return x

    assert f.description == "Explicit."
    assert f.openai_schema()["function"]["description"] == "Explicit."


def test_openai_schema_format() -> None:
    schema = add.openai_schema()
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
                "required": ["a"],
                "additionalProperties": False,
            },
        },
    }


def test_a_tool_without_parameters() -> None:
    @tool
    def now() -> str:
        """The time."""
        return "noon"

    assert now.parameters_schema["properties"] == {} and now.parameters_schema["required"] == []
    assert now.bind((), {}) == {}
    with pytest.raises(ArgumentValidationError):
        now.bind((1,), {})


# -- validation ---------------------------------------------------------------------------------------


def test_bind_maps_positionals_and_coerces() -> None:
    assert add.bind((1,), {}) == {"a": 1, "b": 2}
    assert add.bind(("4",), {"b": 1}) == {"a": 4, "b": 1}
    assert rich.bind(("x", ["1", 2]), {}) == {
        "city": "x",
        "ids": [1, 2],
        "unit": "c",
        "note": None,
        "limit": None,
        "address": None,
    }


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("not a number",), {}, "a: Input should be a valid integer"),
        ((), {}, "a: Field required"),
        ((1, 2, 3), {}, "takes 2 arguments but 3 were given"),
        ((1,), {"a": 2}, "got multiple values for a"),
        ((1,), {"c": 3}, "c: Extra inputs are not permitted"),
    ],
)
def test_bind_rejects_bad_arguments(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ArgumentValidationError, match=message) as info:
        add.bind(args, kwargs)
    assert info.value.tool == "add"
    assert str(info.value).startswith("invalid arguments for 'add'")


def test_bind_rejects_a_literal_outside_its_choices() -> None:
    with pytest.raises(ArgumentValidationError, match="unit"):
        rich.bind(("x", [1]), {"unit": "kelvin"})


def test_build_arguments_model_directly() -> None:
    def f(x: int, y: str = "a") -> None:
        return None

    model = build_arguments_model("f", f, {"x": "An x."})
    assert model.model_json_schema()["properties"]["x"]["description"] == "An x."
    assert model.model_validate({"x": "3"}).x == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "pname", ["json", "schema", "copy", "validate", "dict", "model_config", "model_name", "_x", "_", "arg_x"]
)
def test_parameter_names_that_pydantic_reserves_still_work(pname: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"def probe({pname}: int) -> int:\n    return {pname} * 2", namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when a field shadows a BaseModel attribute
        probe = tool(namespace["probe"])  # type: ignore[arg-type]
    schema = probe.parameters_schema
    assert schema["required"] == [pname] and schema["properties"][pname]["type"] == "integer"
    assert probe.bind((3,), {}) == {pname: 3}
    assert probe.bind((), {pname: "4"}) == {pname: 4}
    assert probe.invoke_sync(probe.bind((5,), {})) == 10
    with pytest.raises(ArgumentValidationError, match=f"{pname}: Field required"):
        probe.bind((), {})


def test_reserved_and_plain_names_side_by_side() -> None:
    def both(_x: int, arg_x: str, json: bool = False) -> str:
        return f"{_x}{arg_x}{json}"

    probe = tool(both)
    assert probe.parameters_schema["required"] == ["_x", "arg_x"]
    assert list(probe.parameters_schema["properties"]) == ["_x", "arg_x", "json"]
    assert probe.bind((1, "a"), {"json": True}) == {"_x": 1, "arg_x": "a", "json": True}


# -- bad definitions ----------------------------------------------------------------------------------


def _missing_hint(x, y: int) -> int:  # type: ignore[no-untyped-def]  # noqa: ANN001
    return y


def _star_args(*values: int) -> int:
    return sum(values)


def _star_kwargs(**values: int) -> int:
    return sum(values.values())


def _generator(n: int):  # type: ignore[no-untyped-def]  # noqa: ANN202
    yield n


async def _async_generator(n: int):  # type: ignore[no-untyped-def]  # noqa: ANN202
    yield n


def _unresolvable(x: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
    return 1


class _Opaque:
    pass


def _opaque_param(x: _Opaque) -> int:
    return 1


def _ok(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("fn", "options", "message"),
    [
        (_missing_hint, {}, "parameter 'x' needs a type hint"),
        (_star_args, {}, r"\*values parameters have no schema"),
        (_star_kwargs, {}, r"\*values parameters have no schema"),
        (_generator, {}, "generators cannot be tools"),
        (_async_generator, {}, "generators cannot be tools"),
        (_unresolvable, {}, "cannot resolve type hints"),
        (_opaque_param, {}, "unsupported parameter type"),
        (_ok, {"name": "bad name"}, "must match"),
        (_ok, {"name": "1abc"}, "must match"),
        (_ok, {"name": "x" * 65}, "must match"),
        (_ok, {"timeout_s": -1.0}, "timeout_s must be > 0"),
        (_ok, {"timeout_s": 0}, "timeout_s must be > 0"),
        (_ok, {"retries": -1}, "retries must be >= 0"),
        (_ok, {"max_concurrency": 0}, "max_concurrency must be >= 1"),
    ],
)
def test_bad_definitions(fn: object, options: dict[str, object], message: str) -> None:
    with pytest.raises(ToolDefinitionError, match=message):
        tool(**options)(fn)  # type: ignore[call-overload, arg-type]


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(ToolDefinitionError, match="'<lambda>' must match"):
        tool(lambda: 1)
    assert tool(name="one")(lambda: 1).name == "one"


def test_a_non_callable_is_rejected() -> None:
    with pytest.raises(ToolDefinitionError, match="needs a function"):
        Tool(42)  # type: ignore[arg-type]


# -- registry -----------------------------------------------------------------------------------------


def test_registry_register_and_get() -> None:
    registry = ToolRegistry([add, fetch])
    assert registry.names() == ["add", "fetch"]
    assert registry.get("add") is add
    assert "fetch" in registry and "nope" not in registry
    assert len(registry) == 2 and list(registry) == [add, fetch]


def test_registry_same_object_twice_is_a_noop() -> None:
    registry = ToolRegistry([add])
    registry.register(add)
    assert len(registry) == 1


def test_registry_name_clash_is_an_error() -> None:
    @tool(name="add")
    def other_add(a: int) -> int:
        return a

    registry = ToolRegistry([add])
    with pytest.raises(ToolDefinitionError, match="two different callables are named 'add'"):
        registry.register(other_add)
    assert registry.get("add") is add


def test_registry_unknown_name() -> None:
    registry = ToolRegistry([add, fetch])
    with pytest.raises(UnknownToolError, match="unknown tool 'nope' \\(known: add, fetch\\)") as info:
        registry.get("nope")
    assert info.value.name == "nope"


def test_registry_rejects_plain_functions() -> None:
    with pytest.raises(ToolDefinitionError, match="decorate it with @tool"):
        ToolRegistry().register(_ok)


def test_registry_from_module_and_schemas() -> None:
    @semantic_function
    def summarize(text: str) -> str:
        """Summarize: {text}"""

    module = types.ModuleType("fake_tools")
    module.add = add  # type: ignore[attr-defined]
    module.fetch = fetch  # type: ignore[attr-defined]
    module.summarize = summarize  # type: ignore[attr-defined]
    module.helper = _ok  # type: ignore[attr-defined]  # not a tool: left out
    module.number = 3  # type: ignore[attr-defined]
    registry = ToolRegistry.from_module(module)
    assert registry.names() == ["add", "fetch", "summarize"]
    assert registry.tools() == [add, fetch]  # semantic functions are not tools
    assert [s["function"]["name"] for s in registry.openai_schemas()] == ["add", "fetch"]
