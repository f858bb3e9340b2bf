"""Native tool calls read from model text (`<tool_call>` blocks, bare JSON), and from OpenAI-format replies."""

from __future__ import annotations

import pytest

from agentflow.backends import ToolCall
from agentflow.backends.openai_compat import tool_calls_of
from agentflow.backends.tool_calls import parse_tool_calls


def test_text_without_calls_is_content() -> None:
    parsed = parse_tool_calls("  Paris is the capital.  ")
    assert parsed.content == "Paris is the capital." and parsed.calls == () and parsed.error is None


def test_parallel_calls_and_the_words_before_them() -> None:
    text = (
        "I'll look both up.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert parsed.content == "I'll look both up." and parsed.error is None
    assert parsed.calls == (
        ToolCall(id="call_0", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Rome"}),
    )


def test_a_call_cut_off_by_the_token_limit_is_still_read() -> None:
    parsed = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"x": 1}}')
    assert parsed.calls == (ToolCall(id="call_0", name="f", arguments={"x": 1}),)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<tool_call>\nget_weather(city='Paris')\n</tool_call>", "not JSON"),
        ('<tool_call>["f"]</tool_call>', "not a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', "no function name"),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "arguments must be a JSON object"),
        ('<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "arguments are not JSON"),
    ],
)
def test_what_does_not_parse_says_why(text: str, problem: str) -> None:
    parsed = parse_tool_calls(text)
    assert parsed.calls == () and parsed.error is not None and problem in parsed.error


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "area", "arguments": {"r": 3}}\n{"name": "area", "arguments": {"r": 5}}',
        '[{"name": "area", "arguments": {"r": 3}}, {"name": "area", "arguments": {"r": 5}}]',
    ],
)
def test_several_calls_in_one_block_are_each_a_call(body: str) -> None:
    """Qwen2.5-Coder puts a parallel question's calls in one block: as objects in a row, or a list."""
    parsed = parse_tool_calls(f"<tool_call>\n{body}\n</tool_call>")
    assert parsed.error is None
    assert parsed.calls == (
        ToolCall(id="call_0", name="area", arguments={"r": 3}),
        ToolCall(id="call_1", name="area", arguments={"r": 5}),
    )


def test_a_cut_off_call_after_a_good_one_in_the_same_block_is_reported() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}} {"name": "g", "argu')
    assert [c.name for c in parsed.calls] == ["f"]
    assert parsed.error is not None and "tool call 2: not JSON" in parsed.error


def test_one_bad_call_among_good_ones_keeps_the_good_ones() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>oops</tool_call>')
    assert [c.name for c in parsed.calls] == ["f"] and parsed.error is not None and "tool call 2" in parsed.error


def test_openai_format_tool_calls() -> None:
    raw = [
        {"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "function": {"name": "g", "arguments": "nope"}},
    ]
    calls, error = tool_calls_of(raw)
    assert calls == (ToolCall(id="a", name="f", arguments={"x": 1}),)
    assert error is not None and "g: arguments are not JSON" in error
    assert calls[0].to_message() == {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}


# -- the bare JSON small models answer with (tools offered) ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n```',
        'Sure:\n```\n{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}\n```',
        '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}]',
        '{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}',
    ],
    ids=["bare", "fenced", "fenced-parameters", "list", "openai-shape"],
)
def test_bare_json_calls_are_read_when_tools_were_offered(text: str) -> None:
    parsed = parse_tool_calls(text, bare_json=True)
    assert parsed.error is None
    assert parsed.calls == (ToolCall(id="call_0", name="get_weather", arguments={"city": "Paris", "unit": "celsius"}),)
    assert parse_tool_calls(text).calls == ()  # without tools offered, it is only text


def test_several_bare_calls_in_a_row_are_parallel_calls() -> None:
    text = '{"name": "f", "arguments": {"x": 1}}\n{"name": "f", "arguments": {"x": 2}}'
    parsed = parse_tool_calls(text, bare_json=True)
    assert [c.arguments["x"] for c in parsed.calls] == [1, 2] and [c.id for c in parsed.calls] == ["call_0", "call_1"]


@pytest.mark.parametrize(
    "text",
    ["Paris is the capital of France.", "Use a list like [1, 2] here.", '```python\nprint({"a": 1})\n```'],
)
def test_prose_and_json_that_is_no_call_stay_content(text: str) -> None:
    parsed = parse_tool_calls(text, bare_json=True)
    assert parsed.calls == () and parsed.error is None and parsed.content == text.strip()


def test_a_bare_call_that_is_not_json_says_why() -> None:
    parsed = parse_tool_calls('{"name": "f", "arguments": {"x": 1', bare_json=True)
    assert parsed.calls == () and parsed.error is not None and "not JSON" in parsed.error
