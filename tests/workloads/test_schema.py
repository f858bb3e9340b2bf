"""SchemaTool: a JSON-schema function doc becomes a tool validated like `@tool`."""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import Program, ToolRegistry
from agentflow.exceptions import ArgumentValidationError, CallFailedError, ToolDefinitionError
from agentflow.tools import Tool
from workloads import SchemaTool

DOC: dict[str, Any] = {
    "name": "book.room",
    "description": "Book a room.",
    "parameters": {
        "type": "dict",
        "required": ["hotel", "nights", "guest"],
        "properties": {
            "hotel": {"type": "string", "description": "Hotel name."},
            "nights": {"type": "integer"},
            "price": {"type": "float", "default": 9.5},
            "extras": {"type": "array", "items": {"type": "string"}},
            "dates": {"type": "tuple", "items": {"type": "string"}},
            "guest": {
                "type": "dict",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            },
            "meta": {"type": "dict"},
            "anything": {"type": "any"},
            "Content-Type": {"type": "string"},
            "weird": {"type": "hashset-of-things"},
        },
    },
}


def test_valid_arguments_keep_only_what_was_given_unchanged() -> None:
    tool = SchemaTool(DOC)
    bound = tool.bind((), {"hotel": "Ritz", "nights": 2, "guest": {"name": "Ann", "vip": True}, "price": 3})
    assert bound == {"hotel": "Ritz", "nights": 2, "price": 3, "guest": {"name": "Ann", "vip": True}}
    assert type(bound["price"]) is int  # never coerced: BFCL's checker sees what the model wrote


def test_loose_bfcl_types_are_accepted() -> None:
    tool = SchemaTool(DOC)
    bound = tool.bind(
        (),
        {
            "hotel": True, "nights": "3", "guest": {"name": "B"}, "dates": ("a", "b"), "meta": {"x": [1]},
            "anything": object, "Content-Type": "json", "weird": {1, 2}, "extras": "my_list",
        },
    )  # fmt: skip
    assert bound["dates"] == ["a", "b"] and bound["Content-Type"] == "json" and bound["anything"] is object
    assert bound["hotel"] is True and bound["nights"] == "3"  # any scalar for a scalar type, kept as given
    assert bound["extras"] == "my_list"  # a variable name where a list goes (BFCL's checker allows it)
    assert tool.bind((), {"hotel": "H", "nights": 1, "guest": {"name": "B"}, "extras": None})["extras"] is None


def test_bad_arguments_raise_argument_validation_error() -> None:
    tool = SchemaTool(DOC)
    with pytest.raises(ArgumentValidationError) as info:
        tool.bind((), {"hotel": "H", "guest": {"age": 3}, "extras": [[1]], "color": "red"})
    message = str(info.value)
    assert "nights" in message and "guest" in message and "name" in message and "extras" in message
    assert "color" in message


def test_positional_arguments_follow_the_doc_order() -> None:
    tool = SchemaTool(DOC)
    assert tool.bind(("Ritz", 3, {"name": "C"}, 2.0), {}) == {
        "hotel": "Ritz", "nights": 3, "guest": {"name": "C"}, "price": 2.0
    }  # fmt: skip
    with pytest.raises(ArgumentValidationError, match="multiple values"):
        tool.bind(("Ritz",), {"hotel": "Ritz"})


def test_it_is_a_tool_with_an_openai_schema() -> None:
    tool = SchemaTool(DOC)
    assert isinstance(tool, Tool) and tool in ToolRegistry([tool]).tools()
    schema = tool.openai_schema()["function"]
    assert schema["name"] == "book.room" and schema["description"] == "Book a room."
    params = schema["parameters"]
    assert params["type"] == "object" and params["required"] == ["hotel", "nights", "guest"]
    assert params["properties"]["price"]["type"] == "number" and params["properties"]["guest"]["type"] == "object"
    assert tool.signature_text().startswith("book.room(hotel: str, nights: int, guest: dict, ")  # required first
    assert "price: float = 9.5" in tool.signature_text() and "Content-Type" not in tool.signature_text()


@pytest.mark.parametrize(
    "doc",
    [
        {"description": "no name"},
        {"name": "f", "parameters": "nope"},
        {"name": "f", "parameters": {"properties": {"a": "string"}}},
        {"name": "f", "parameters": {"properties": {}, "required": "a"}},
    ],
)
def test_unusable_docs_are_definition_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(ToolDefinitionError):
        SchemaTool(doc)


async def test_runs_in_a_program_with_a_real_function_and_validation() -> None:
    calls: list[dict[str, Any]] = []

    def book(hotel: str, nights: int, guest: dict[str, Any], price: float = 9.5) -> str:
        calls.append({"hotel": hotel, "nights": nights, "price": price})
        return f"{hotel} x{nights} at {price}"

    tool = SchemaTool(DOC, book)
    async with Program(tools=[tool]) as program:
        ok = program.call(tool, hotel="Ritz", nights=2, guest={"name": "D"})
        bad = program.call(tool, hotel="Ritz")
    assert await ok == "Ritz x2 at 9.5"  # the left-out optional took the function's own default
    with pytest.raises(CallFailedError, match="ArgumentValidationError"):
        await bad
    assert calls == [{"hotel": "Ritz", "nights": 2, "price": 9.5}]


async def test_without_a_function_it_echoes_its_validated_arguments() -> None:
    tool = SchemaTool({"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}})
    async with Program(tools=[tool]) as program:
        out = program.call(tool, x=4)
        bad = program.call(tool, y=1)
    assert await out == {"x": 4}
    with pytest.raises(CallFailedError, match="y"):
        await bad
