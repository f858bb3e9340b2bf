"""Any OpenAI-compatible server (OpenAI itself, vLLM, SGLang, llama.cpp, Ollama...)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from agentflow.exceptions import EngineError

from ._protocol import Completion, LLMRequest, ToolCall

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

__all__ = ["OpenAICompatBackend"]


class OpenAICompatBackend:
    """Chat and completion calls through the `openai` client.

    With `vllm=True` the server is taken to be vLLM: grammars go in `structured_outputs` and
    program metadata in `vllm_xargs`, which the program-aware scheduler reads.
    """

    def __init__(
        self, model: str, *, base_url: str | None = None, api_key: str | None = None, vllm: bool = False
    ) -> None:
        import openai  # imported here so the SDK loads without the client installed

        self.model = model
        self.vllm = vllm
        self.name = f"{'vllm' if vllm else 'openai'}:{model}"
        self.supports_grammar = vllm
        self._client = openai.AsyncOpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.tools is not None:
            params["tools"] = list(request.tools)
            if request.tool_choice is not None:
                params["tool_choice"] = request.tool_choice
        if request.stop:
            params["stop"] = list(request.stop)
        extra: dict[str, Any] = dict(request.extra)
        if request.json_schema is not None and request.messages is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema},
            }
        if self.vllm:
            if request.grammar is not None:
                extra["structured_outputs"] = {"grammar": request.grammar}
            if request.metadata is not None:
                extra["vllm_xargs"] = request.metadata.to_extra_args()
        if extra:
            params["extra_body"] = extra
        return params

    async def start(self) -> None:
        """Nothing to load: the client connects on the first call."""

    async def complete(self, request: LLMRequest) -> Completion:
        import openai

        params = self._params(request)
        try:
            if request.messages is not None:
                chat = await self._client.chat.completions.create(messages=_messages(request.messages), **params)
                choice = chat.choices[0]
                text, finish, usage = choice.message.content or "", choice.finish_reason, chat.usage
                tool_calls, tool_call_error = tool_calls_of(choice.message.tool_calls)
            else:
                comp = await self._client.completions.create(prompt=request.prompt or "", **params)
                text, finish, usage = comp.choices[0].text, comp.choices[0].finish_reason, comp.usage
                tool_calls, tool_call_error = (), None
        except openai.OpenAIError as exc:
            raise EngineError(f"{self.name}: {exc}") from exc
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=getattr(details, "cached_tokens", None) if details else None,
            tool_calls=tool_calls,
            tool_call_error=tool_call_error,
        )

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        import openai

        params = self._params(request)
        try:
            if request.messages is not None:
                chunks = await self._client.chat.completions.create(
                    messages=_messages(request.messages),
                    stream=True,
                    **params,
                )
                async for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
            else:
                pieces = await self._client.completions.create(prompt=request.prompt or "", stream=True, **params)
                async for piece in pieces:
                    if piece.choices and piece.choices[0].text:
                        yield piece.choices[0].text
        except openai.OpenAIError as exc:
            raise EngineError(f"{self.name}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.close()


def _messages(messages: tuple[dict[str, Any], ...]) -> list[ChatCompletionMessageParam]:
    # Role/content dicts as the caller wrote them; the server validates roles.
    return cast("list[ChatCompletionMessageParam]", list(messages))


def tool_calls_of(raw: Any) -> tuple[tuple[ToolCall, ...], str | None]:
    """OpenAI-format tool calls (objects or dicts) -> `ToolCall`s, and why any did not parse."""
    calls: list[ToolCall] = []
    problems: list[str] = []
    for index, call in enumerate(raw or ()):
        function = call["function"] if isinstance(call, dict) else call.function
        name = function["name"] if isinstance(function, dict) else function.name
        arguments = function["arguments"] if isinstance(function, dict) else function.arguments
        call_id = (call.get("id") if isinstance(call, dict) else call.id) or f"call_{index}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError as exc:
            problems.append(f"{name}: arguments are not JSON ({exc})")
            continue
        if not isinstance(parsed, dict):
            problems.append(f"{name}: arguments must be a JSON object, got {type(parsed).__name__}")
            continue
        calls.append(ToolCall(id=str(call_id), name=str(name), arguments=parsed))
    return tuple(calls), "; ".join(problems) or None
