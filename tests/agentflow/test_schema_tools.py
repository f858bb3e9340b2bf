"""`agentflow.schema_tools`: the standard JSON-Schema dialect (`tolerant=False`) MCP tools use.

The tolerant BFCL dialect is tested in tests/workloads/test_schema.py.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

from agentflow import ToolRegistry
from agentflow.exceptions import ArgumentValidationError
from agentflow.schema_tools import SchemaTool, json_schema_type
from planner import build_grammar

DOC: dict[str, Any] = {
    "name": "forecast",
    "description": "Weather forecast.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "default": 1},
            "unit": {"enum": ["C", "F"]},
            "hours": {"type": "array", "items": {"type": "integer"}},
            "where": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["city"],
    },
}


def test_declared_types_are_kept() -> None:
    assert json_schema_type({"type": "string"}) is str
    assert json_schema_type({"type": "number"}) is float
    assert json_schema_type({"enum": ["a", "b"]}) == Literal["a", "b"]
    assert json_schema_type({"const": 3}) == Literal[3]
    assert json_schema_type({"type": ["integer", "null"]}) == int | None
    assert json_schema_type({"type": "array", "items": {"type": "boolean"}}) == list[bool]
    assert json_schema_type({"type": "object"}) == dict[str, Any]
    assert json_schema_type({"$ref": "#/$defs/x"}) is Any
    assert json_schema_type(True) is Any


def test_strict_model_validates_and_binds_positionally() -> None:
    forecast = SchemaTool(DOC, tolerant=False)
    assert (
        forecast.signature_text()
        == "forecast(city: str, days: int = 1, unit: Any = None, hours: list[int] = None, where: Any = None)"
    )
    assert forecast.bind(("Lima", 3), {"unit": "F"}) == {"city": "Lima", "days": 3, "unit": "F"}
    with pytest.raises(ArgumentValidationError, match="unit"):
        forecast.bind(("Lima",), {"unit": "K"})
    props = forecast.arguments_model.model_json_schema()["properties"]
    assert props["days"]["type"] == "integer" and props["unit"]["enum"] == ["C", "F"]


def test_grammar_reads_the_declared_types() -> None:
    grammar = build_grammar(ToolRegistry([SchemaTool(DOC, tolerant=False)]), max_steps=1, thoughts=False)
    assert '("\\"C\\"" | "\\"F\\"")' in grammar  # the enum's values, nothing else
