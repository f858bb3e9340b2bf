"""Semantic functions and variables on the scripted LLM: templates, edges, parallelism, metadata, typed output."""

from __future__ import annotations

import asyncio
import time

import pydantic
import pytest

from agentflow.backends import LLMRequest
from agentflow.calls import Callee
from agentflow.exceptions import CallFailedError, ToolDefinitionError, UserError
from agentflow.ir import CallKind, NodeState, Ref
from agentflow.program import Program
from agentflow.semantic import SemanticFunction, SemanticVariable, semantic_function
from agentflow.testing import ScriptedLLM
from agentflow.tools import ToolRegistry, tool
from executor import DurationEstimates

HANG_S = 5.0


@semantic_function
def summarize(text: str) -> str:
    """Summarize in one sentence: {text}"""


@semantic_function(max_tokens=16, temperature=0.7, stop=("\n",), system="Be brief.", name="title_of")
def title(text: str, style: str = "plain") -> str:
    """Give a {style} title for:
    {text}
    """


@semantic_function
def keywords(text: str) -> list[str]:
    """List keywords of {text} as a JSON array."""


class Verdict(pydantic.BaseModel):
    label: str
    score: float


@semantic_function
def judge(text: str) -> Verdict:
    """Judge {text}."""


@tool
def word_count(text: str) -> int:
    """Count words."""
    return len(text.split())


def user_prompt(request: LLMRequest) -> str:
    assert request.messages is not None
    return request.messages[-1]["content"]


# -- definitions ---------------------------------------------------------------------------------------


def test_template_comes_from_the_docstring() -> None:
    assert isinstance(summarize, SemanticFunction)
    assert summarize.name == "summarize" and summarize.kind is CallKind.LLM
    assert summarize.template == "Summarize in one sentence: {text}"
    assert summarize.render({"text": "a b c"}) == "Summarize in one sentence: a b c"
    assert summarize.description == "Summarize in one sentence: {text}"
    assert isinstance(summarize, Callee)


def test_options_and_multiline_templates() -> None:
    assert title.name == "title_of" and title.__name__ == "title_of"
    assert title.template == "Give a {style} title for:\n{text}"
    request = title.request(title.bind(("hello",), {}))
    assert request.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Give a plain title for:\nhello"},
    )
    assert (request.max_tokens, request.temperature, request.stop) == (16, 0.7, ("\n",))
    assert request.json_schema is None and request.metadata is None


def test_openai_schema_lists_the_template_parameters() -> None:
    function = title.openai_schema()["function"]
    assert function["name"] == "title_of" and function["description"] == "Give a {style} title for:"
    assert function["parameters"] == title.parameters_schema
    assert function["parameters"]["properties"] == {
        "text": {"type": "string"},
        "style": {"default": "plain", "type": "string"},
    }
    assert function["parameters"]["required"] == ["text"]


def test_template_option_overrides_the_docstring() -> None:
    @semantic_function(template="Translate {text} to French.")
    def translate(text: str) -> str:
        """A docstring that stays documentation, with {braces} that are not placeholders."""

    assert translate.render({"text": "cat"}) == "Translate cat to French."


def test_structured_values_are_rendered_as_json() -> None:
    @semantic_function
    def describe(items: list[int], info: dict[str, str], verdict: Verdict) -> str:
        """Items {items}; info {info}; verdict {verdict}."""

    prompt = describe.render(
        describe.bind(([1, 2], {"k": "é"}, {"label": "good", "score": 1}), {}),
    )
    assert prompt == 'Items [1, 2]; info {"k": "é"}; verdict {"label":"good","score":1.0}.'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Summarize {txt}", r"placeholders \['txt'\] are not parameters \['text'\]"),
        ("Summarize {}", "placeholders"),
        ("Summarize {0}", "placeholders"),
        ("Summarize {text", "bad prompt template"),
        ("   ", "needs a prompt template"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    def fn(text: str) -> str:
        return text

    with pytest.raises(ToolDefinitionError, match=message):
        semantic_function(template=template)(fn)


def test_a_semantic_function_without_a_template() -> None:
    def no_doc(text: str) -> str:
        return text

    with pytest.raises(ToolDefinitionError, match="needs a prompt template"):
        semantic_function(no_doc)


def test_bad_semantic_function_options_and_hints() -> None:
    def fn(text: str) -> str:
        """{text}"""

    with pytest.raises(ToolDefinitionError, match="timeout_s"):
        semantic_function(timeout_s=-1)(fn)

    def no_hint(text) -> str:  # type: ignore[no-untyped-def]  # noqa: ANN001
        """{text}"""

    with pytest.raises(ToolDefinitionError, match="needs a type hint"):
        semantic_function(no_hint)


def test_attribute_index_and_format_placeholders_use_the_values() -> None:
    @semantic_function
    def first(items: list[str], verdict: Verdict, scores: dict[str, float]) -> str:
        """First {items[0]}, label {verdict.label}, score {verdict.score:.1f}, rome {scores[rome]}, all {items}."""

    arguments = first.bind((["a", "b"], {"label": "good", "score": 0.25}, {"rome": 7.5}), {})
    assert first.render(arguments) == 'First a, label good, score 0.2, rome 7.5, all ["a", "b"].'


def test_calling_outside_a_program_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"summarize\(\) was called outside a Program"):
        summarize("text")


def test_typed_return_sets_the_json_schema() -> None:
    assert keywords.request({"text": "x"}).json_schema == {"type": "array", "items": {"type": "string"}}
    schema = judge.request({"text": "x"}).json_schema
    assert schema is not None and schema["required"] == ["label", "score"]
    assert summarize.request({"text": "x"}).json_schema is None


# -- in a program --------------------------------------------------------------------------------------


async def test_a_call_returns_a_variable_at_once_and_awaiting_yields_the_value() -> None:
    llm = ScriptedLLM(["A short summary."])
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        v = summarize("a long text")
        assert isinstance(v, SemanticVariable) and v.name == "summarize"
        assert await v == "A short summary."
    assert user_prompt(llm.requests[0]) == "Summarize in one sentence: a long text"
    assert p.result.outputs == {v.node_id: "A short summary."}


async def test_variables_between_semantic_functions_and_tools_build_edges() -> None:
    llm = ScriptedLLM(lambda request: f"<{user_prompt(request)}>")
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        s = summarize("some text here")
        n = word_count(s)
        t = title(s, style="bold")
        k = summarize(t)
    graph = p.graph
    assert graph[s.node_id].deps == ()
    assert graph[n.node_id].deps == (s.node_id,) and graph[n.node_id].kind is CallKind.TOOL
    assert graph[t.node_id].deps == (s.node_id,) and graph[t.node_id].kwargs == {"style": "bold"}
    assert graph[k.node_id].deps == (t.node_id,) and graph[k.node_id].kind is CallKind.LLM
    assert graph[t.node_id].args == (Ref(s.node_id),)
    outputs = p.result.outputs
    assert outputs[s.node_id] == "<Summarize in one sentence: some text here>"
    assert outputs[n.node_id] == 7
    assert outputs[k.node_id] == f"<Summarize in one sentence: {outputs[t.node_id]}>"
    assert set(p.registry.names()) == {"summarize", "word_count", "title_of"}


async def test_variables_nested_in_containers_are_edges() -> None:
    @semantic_function
    def combine(parts: list[str]) -> str:
        """Combine {parts}"""

    llm = ScriptedLLM(["a", "b", "ab"])
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        a, b = summarize("x"), summarize("y")
        c = combine([a, b])
        assert await c == "ab"
    assert p.graph[c.node_id].deps == (a.node_id, b.node_id)
    assert user_prompt(llm.requests[2]) == 'Combine ["a", "b"]'


async def test_independent_semantic_calls_run_concurrently() -> None:
    latency_s = 0.1
    llm = ScriptedLLM(lambda request: "ok", latency_s=latency_s)
    start = time.perf_counter()
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        for i in range(5):
            summarize(f"text {i}")
    wall_s = time.perf_counter() - start
    assert wall_s < 0.7 * 5 * latency_s  # less than the sum: serially they take 0.5 s
    assert p.result.trace.max_concurrency() == 5
    assert len(llm.requests) == 5


async def test_program_metadata_reaches_the_backend() -> None:
    llm = ScriptedLLM(lambda request: "seven words in this reply right here")
    estimates = DurationEstimates()  # nothing learned: no expected durations yet
    async with (
        asyncio.timeout(HANG_S),
        Program(model=llm, program_id="trip-42", deadline_in_s=60, estimates=estimates) as p,
    ):
        s = summarize("text")
        word_count(s)  # consumes the first call's output
        second = summarize(s)
        await second
        third = summarize("independent")
    metadata = [r.metadata for r in llm.requests]
    assert all(m is not None for m in metadata)
    first_md, second_md, third_md = metadata  # type: ignore[misc]
    assert {m.program_id for m in metadata if m} == {"trip-42"}
    assert [m.turn for m in metadata if m] == [0, 1, 2]
    facts = p.graph.facts
    assert facts is not None
    assert first_md.program_arrival_s == facts.arrival_s and first_md.deadline_at_s == facts.deadline_at_s
    assert first_md.next_tool == "word_count"
    assert first_md.next_tool_duration_s is None
    assert not first_md.is_last_turn  # another LLM call depends on it
    assert second_md.next_tool is None and third_md.next_tool is None
    assert p.result.outputs[third.node_id] == "seven words in this reply right here"
    extra = first_md.to_extra_args()
    assert extra["program_id"] == "trip-42" and extra["turn"] == 0 and extra["next_tool"] == "word_count"
    # The run measured word_count and summarize: the next program's metadata carries expected durations.
    learned_s = estimates.snapshot()
    async with asyncio.timeout(HANG_S), Program(model=llm, deadline_in_s=60, estimates=estimates):
        word_count(summarize("text"))
    learned = llm.requests[-1].metadata
    assert learned is not None and learned.next_tool == "word_count"
    assert learned.next_tool_duration_s == learned_s["word_count"]
    assert learned.critical_path_s == pytest.approx(learned_s["summarize"] + learned_s["word_count"])


async def test_typed_return_parses_json() -> None:
    llm = ScriptedLLM(['["paris", "food"]', '{"label": "good", "score": 0.9}'])
    async with asyncio.timeout(HANG_S), Program(model=llm):
        k = keywords("Paris food guide")
        assert await k == ["paris", "food"]
        j = judge("it")
        assert await j == Verdict(label="good", score=0.9)
    assert llm.requests[0].json_schema == {"type": "array", "items": {"type": "string"}}


async def test_invalid_json_fails_the_node() -> None:
    llm = ScriptedLLM(["paris, food"])
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        k = keywords("Paris")
        n = word_count(k)
        with pytest.raises(CallFailedError, match="not a valid") as info:
            await k
    assert info.value.state == "failed"
    assert p.result.states == {k.node_id: NodeState.FAILED, n.node_id: NodeState.SKIPPED}
    assert p.result.failures[0].reason.startswith("ToolError: keywords: LLM output is not a valid")


async def test_a_semantic_function_times_out() -> None:
    @semantic_function(timeout_s=0.05)
    def slow(text: str) -> str:
        """{text}"""

    llm = ScriptedLLM(["late"], latency_s=5)
    async with asyncio.timeout(HANG_S), Program(model=llm) as p:
        v = slow("x")
    assert p.result.states[v.node_id] is NodeState.FAILED
    assert "timed out after 0.05 s" in p.result.failures[0].reason


async def test_a_failing_backend_call_is_retried() -> None:
    calls: list[int] = []

    def flaky(request: LLMRequest) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("backend hiccup")
        return "recovered"

    @semantic_function(retries=1)
    def ask(text: str) -> str:
        """{text}"""

    async with asyncio.timeout(HANG_S), Program(model=ScriptedLLM(flaky)) as p:
        v = ask("x")
        assert await v == "recovered"
    assert {r.node_id: r.attempts for r in p.result.trace.records} == {v.node_id: 2}


async def test_tools_only_programs_never_resolve_a_model() -> None:
    async with asyncio.timeout(HANG_S), Program(model="bogus:never-resolved") as p:
        v = word_count("no model needed")
    assert p.result.outputs == {v.node_id: 3}


async def test_program_backend_passes_an_llm_through() -> None:
    llm = ScriptedLLM(["x"])
    async with Program(model=llm) as p:
        assert p.backend.name == "scripted" and p.backend.supports_grammar is False
        pieces = [piece async for piece in p.backend.stream(LLMRequest(prompt="hi"))]
        await p.backend.aclose()
    assert pieces == ["x"]


async def test_semantic_functions_in_a_registry() -> None:
    registry = ToolRegistry([summarize, word_count])
    assert registry.tools() == [word_count]
    assert registry.get("summarize") is summarize


# -- the scripted LLM itself --------------------------------------------------------------------------


async def test_scripted_llm_replies_in_order_and_records_requests() -> None:
    llm = ScriptedLLM(["one two", "three"], tokens_per_s=1000)
    first = await llm.complete(LLMRequest(prompt="a"))
    assert first.text == "one two" and first.completion_tokens == 2 and first.finish_reason == "stop"
    assert [p async for p in llm.stream(LLMRequest(prompt="b"))] == ["three"]
    assert [r.prompt for r in llm.requests] == ["a", "b"]
    with pytest.raises(AssertionError, match="ran out of replies after 2 calls"):
        await llm.complete(LLMRequest(prompt="c"))


def test_llm_request_checks() -> None:
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        LLMRequest()
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        LLMRequest(prompt="x", messages=({"role": "user", "content": "x"},))
    with pytest.raises(ValueError, match="max_tokens"):
        LLMRequest(prompt="x", max_tokens=0)


async def test_the_last_llm_call_knows_it_is_last_once_the_program_is_closed() -> None:
    @tool
    async def fetch_text() -> str:
        await asyncio.sleep(0.02)
        return "fetched"

    llm = ScriptedLLM(["one", "two"])
    async with asyncio.timeout(HANG_S), Program(model=llm):
        first = summarize(fetch_text())  # dispatched after the block closes the program
        summarize(first)
    assert [r.metadata.is_last_turn for r in llm.requests if r.metadata] == [False, True]
    assert [r.metadata.turn for r in llm.requests if r.metadata] == [0, 1]
