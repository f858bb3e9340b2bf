"""Backends: the model string, and what each backend sends (no network: an in-process HTTP transport)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from agentflow.backends import MODEL_ENV, LLMBackend, LLMRequest, ProgramMetadata, resolve_backend
from agentflow.backends.litellm_backend import LiteLLMBackend
from agentflow.backends.openai_compat import OpenAICompatBackend
from agentflow.exceptions import BackendConfigError, EngineError
from agentflow.testing import ScriptedLLM

METADATA = ProgramMetadata(
    program_id="p-1", program_arrival_s=100.0, turn=2, next_tool="search", next_tool_duration_s=1.5, deadline_at_s=160.0
)
GRAMMAR = 'root ::= "yes" | "no"'


def chat(**options: Any) -> LLMRequest:
    return LLMRequest(messages=({"role": "user", "content": "hi"},), **options)


# -- the model string -----------------------------------------------------------------------------------


def test_openai_with_a_base_url() -> None:
    backend = resolve_backend("openai:gpt-4o-mini@http://127.0.0.1:9/v1")
    assert isinstance(backend, OpenAICompatBackend) and isinstance(backend, LLMBackend)
    assert backend.model == "gpt-4o-mini" and backend.name == "openai:gpt-4o-mini"
    assert not backend.vllm and not backend.supports_grammar
    assert str(backend._client.base_url) == "http://127.0.0.1:9/v1/"


def test_openai_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:10/v1")
    backend = resolve_backend("openai:m")
    assert isinstance(backend, OpenAICompatBackend)
    assert str(backend._client.base_url) == "http://127.0.0.1:10/v1/"


def test_vllm_supports_grammar() -> None:
    backend = resolve_backend("vllm:HuggingFaceTB/SmolLM2-135M-Instruct@http://127.0.0.1:8000/v1")
    assert isinstance(backend, OpenAICompatBackend)
    assert backend.vllm and backend.supports_grammar
    assert backend.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert backend.name == "vllm:HuggingFaceTB/SmolLM2-135M-Instruct"


def test_litellm_provider_model() -> None:
    backend = resolve_backend("litellm:anthropic/claude-3-5-haiku")
    assert isinstance(backend, LiteLLMBackend) and isinstance(backend, LLMBackend)
    assert backend.model == "anthropic/claude-3-5-haiku" and backend.name == "litellm:anthropic/claude-3-5-haiku"
    assert backend.supports_grammar is False


def test_a_backend_passes_through() -> None:
    llm = ScriptedLLM(["x"])
    assert resolve_backend(llm) is llm


def test_the_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, "  litellm:ollama/llama3  ")
    backend = resolve_backend()
    assert isinstance(backend, LiteLLMBackend) and backend.model == "ollama/llama3"
    assert isinstance(resolve_backend(""), LiteLLMBackend)  # empty string: the default too


def test_missing_parts_name_the_forms() -> None:
    with pytest.raises(BackendConfigError, match="missing model name .*forms: embedded"):
        resolve_backend("openai:@http://x")
    with pytest.raises(BackendConfigError, match="missing provider/model"):
        resolve_backend("litellm:")


# -- the OpenAI-compatible backend ---------------------------------------------------------------------


def test_openai_params_keep_vllm_fields_out() -> None:
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1")
    params = backend._params(chat(grammar=GRAMMAR, metadata=METADATA, stop=("\n",), max_tokens=7, temperature=0.3))
    assert params == {"model": "m", "max_tokens": 7, "temperature": 0.3, "stop": ["\n"]}


def test_vllm_params_carry_grammar_and_metadata_in_extra_body() -> None:
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1", vllm=True)
    params = backend._params(chat(grammar=GRAMMAR, metadata=METADATA))
    assert params["extra_body"] == {
        "structured_outputs": {"grammar": GRAMMAR},
        "vllm_xargs": {
            "program_id": "p-1",
            "program_arrival_s": 100.0,
            "turn": 2,
            "is_last_turn": False,
            "next_tool": "search",
            "next_tool_duration_s": 1.5,
            "deadline_at_s": 160.0,
        },
    }
    assert "extra_body" not in backend._params(chat())


def test_json_schema_becomes_response_format_and_extra_passes_through() -> None:
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1")
    schema = {"type": "array", "items": {"type": "string"}}
    params = backend._params(chat(json_schema=schema, extra={"top_p": 0.5}))
    assert params["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert params["extra_body"] == {"top_p": 0.5}


class FakeServer:
    """An OpenAI-compatible server inside the HTTP transport: records bodies, answers from a script."""

    def __init__(self, *, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = status

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        self.bodies.append(json.loads(request.content))
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "overloaded"}})
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if request.url.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": "hello there"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        else:
            choice = {"index": 0, "text": "plain text", "finish_reason": "length"}
            body = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]}
        return httpx.Response(200, json={**body, "usage": usage})

    def backend(self, *, vllm: bool) -> OpenAICompatBackend:
        backend = OpenAICompatBackend("m", base_url="http://fake/v1", vllm=vllm)
        backend._client = openai.AsyncOpenAI(
            base_url="http://fake/v1",
            api_key="EMPTY",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handle)),
        )
        return backend


async def test_vllm_chat_request_reaches_the_server_with_metadata() -> None:
    server = FakeServer()
    backend = server.backend(vllm=True)
    completion = await backend.complete(chat(grammar=GRAMMAR, metadata=METADATA, max_tokens=9))
    await backend.aclose()
    assert completion.text == "hello there" and completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (5, 2)
    body = server.bodies[0]
    assert server.paths == ["/v1/chat/completions"]
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 9
    assert body["structured_outputs"] == {"grammar": GRAMMAR}
    assert body["vllm_xargs"]["program_id"] == "p-1" and body["vllm_xargs"]["next_tool"] == "search"


async def test_openai_prompt_request_uses_completions_without_vllm_fields() -> None:
    server = FakeServer()
    backend = server.backend(vllm=False)
    completion = await backend.complete(LLMRequest(prompt="once upon", metadata=METADATA))
    await backend.aclose()
    assert completion.text == "plain text" and completion.finish_reason == "length"
    assert server.paths == ["/v1/completions"]
    assert server.bodies[0]["prompt"] == "once upon"
    assert "vllm_xargs" not in server.bodies[0]


async def test_server_errors_become_engine_errors() -> None:
    backend = FakeServer(status=503).backend(vllm=True)
    with pytest.raises(EngineError, match="vllm:m"):
        await backend.complete(chat())
    await backend.aclose()


# -- litellm --------------------------------------------------------------------------------------------


def test_litellm_kwargs() -> None:
    backend = LiteLLMBackend("ollama/llama3", api_base="http://127.0.0.1:11434")
    schema = {"type": "object"}
    kwargs = backend._kwargs(LLMRequest(prompt="hi", stop=("x",), json_schema=schema, metadata=METADATA))
    assert kwargs["model"] == "ollama/llama3" and kwargs["api_base"] == "http://127.0.0.1:11434"
    assert kwargs["messages"] == [{"role": "user", "content": "hi"}]
    assert kwargs["stop"] == ["x"]
    assert kwargs["response_format"]["json_schema"]["schema"] == schema
    assert kwargs["metadata"]["program_id"] == "p-1"
    assert "grammar" not in kwargs


# -- records --------------------------------------------------------------------------------------------


def test_metadata_extra_args_leave_out_unknowns() -> None:
    minimal = ProgramMetadata(program_id="p", program_arrival_s=1.0, turn=0)
    assert minimal.to_extra_args() == {"program_id": "p", "program_arrival_s": 1.0, "turn": 0, "is_last_turn": False}
