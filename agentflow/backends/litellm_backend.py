"""Any provider litellm reaches (Anthropic, Bedrock, Vertex, Groq, Ollama...)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentflow.exceptions import EngineError, EngineUnavailableError

from ._protocol import Completion, LLMRequest
from .openai_compat import tool_calls_of

__all__ = ["LiteLLMBackend"]


class LiteLLMBackend:
    """Calls `litellm.acompletion` with a provider-qualified model name, e.g. `anthropic/claude-...`."""

    supports_grammar = False

    def __init__(self, model: str, **options: Any) -> None:
        self.model = model
        self.name = f"litellm:{model}"
        self._options = options  # api_base, api_key, ... passed through to litellm

    def _kwargs(self, request: LLMRequest) -> dict[str, Any]:
        messages = (
            list(request.messages)
            if request.messages is not None
            else [{"role": "user", "content": request.prompt or ""}]
        )
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            **self._options,
            **request.extra,
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.tools is not None:
            kwargs["tools"] = list(request.tools)
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema},
            }
        if request.metadata is not None:
            kwargs["metadata"] = request.metadata.to_extra_args()
        return kwargs

    async def start(self) -> None:
        """Nothing to load: the client connects on the first call."""

    async def complete(self, request: LLMRequest) -> Completion:
        litellm = _import_litellm()
        try:
            response = await litellm.acompletion(**self._kwargs(request))
        except Exception as exc:  # litellm maps every provider error to its own classes
            raise EngineError(f"{self.name}: {exc}") from exc
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        tool_calls, tool_call_error = tool_calls_of(getattr(choice.message, "tool_calls", None))
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            tool_calls=tool_calls,
            tool_call_error=tool_call_error,
        )

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        litellm = _import_litellm()
        try:
            response = await litellm.acompletion(stream=True, **self._kwargs(request))
            async for chunk in response:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    yield delta
        except Exception as exc:
            raise EngineError(f"{self.name}: {exc}") from exc

    async def aclose(self) -> None:
        return None


def _import_litellm() -> Any:
    try:
        import litellm
    except ImportError as exc:
        raise EngineUnavailableError("litellm is not installed: run `make install` or `pip install agentflow`") from exc
    return litellm
