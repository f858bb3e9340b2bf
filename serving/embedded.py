"""The embedded backend: LLM calls served by the in-process vLLM engine (`serving.engine`).

The SDK resolves the `embedded` model string to `EmbeddedBackend` by name
(`agentflow.backends.EMBEDDED_BACKEND`), so the SDK never imports this package.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agentflow.backends import Completion, LLMRequest, ToolCall
from agentflow.backends.tool_calls import parse_tool_calls
from agentflow.exceptions import UserError
from serving.engine import EmbeddedEngine, EngineConfig, GenerationChunk
from serving.models import CATALOG, catalog_dir, lookup

__all__ = ["EmbeddedBackend", "model_path"]


class EmbeddedBackend:
    """`LLMBackend` over the process-wide embedded engine for its configuration.

    `model_dir=None` serves the default catalog model (Qwen2.5-Coder-0.5B-Instruct); a catalog name
    (`"qwen2.5-coder-1.5b"`, see `serving.models.CATALOG`) serves that model, prepared on the
    engine's first start; a path (with a `/`, or an existing directory) serves a local Hugging
    Face model directory. `engine_options` are `EngineConfig` fields
    (`kv_cache_bytes`, `max_model_len`, `scheduler_cls`, ...). Backends with equal options
    share one engine.

    `LLMRequest.extra` keys read here (others belong to other backends and are ignored):
    `ignore_eos`, `priority`, `request_id`, `extra_args` (merged under the program metadata).

    Native tool calling: `LLMRequest.tools` go through the model's own chat template, and its
    answer is parsed into `Completion.tool_calls` (`agentflow.backends.tool_calls`: `<tool_call>` blocks, or
    the bare JSON small models write); what looks like a call but is not one is
    `Completion.tool_call_error`. `tool_choice="none"` renders the tools but reads no call.
    """

    name = "embedded"
    supports_grammar = True

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, **engine_options: Any) -> None:
        """Bind to the shared engine for these options; nothing starts until the first call.

        Raises:
            BackendConfigError: `model_dir` is neither a catalog name nor a path; the message lists the catalog.
        """
        try:
            config = EngineConfig(model_dir=model_path(model_dir), **engine_options)
        except TypeError as exc:  # an option EngineConfig does not have
            raise UserError(f"bad embedded engine option: {exc}") from exc
        self.engine = EmbeddedEngine.shared(config)
        self._tokenizer_loaded = False

    async def start(self) -> None:
        """Start the shared engine (prepares the default model on first use) without blocking the loop."""
        await self.engine.astart()

    async def complete(self, request: LLMRequest) -> Completion:
        """Run the request to completion on the embedded engine."""
        texts: list[str] = []
        num_completion_tokens = 0
        last: GenerationChunk | None = None
        async for chunk in await self._generate(request):
            texts.append(chunk.text)
            num_completion_tokens += len(chunk.token_ids)
            last = chunk
        assert last is not None and last.finished, "generate() ends with a finished chunk"
        text = "".join(texts)
        tool_calls: tuple[ToolCall, ...] = ()
        tool_call_error = None
        if request.tools and request.tool_choice != "none":
            parsed = parse_tool_calls(text, bare_json=True)
            text, tool_calls, tool_call_error = parsed.content, parsed.calls, parsed.error
        return Completion(
            text=text,
            tool_calls=tool_calls,
            tool_call_error=tool_call_error,
            finish_reason="tool_calls" if tool_calls else last.finish_reason,
            prompt_tokens=last.num_prompt_tokens,
            completion_tokens=num_completion_tokens,
            cached_tokens=last.num_cached_tokens,
            serving=dict(last.serving) if last.serving is not None else None,
        )

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Yield text deltas as the engine produces them."""
        async for chunk in await self._generate(request):
            if chunk.text:
                yield chunk.text

    async def aclose(self) -> None:
        """Nothing to release: the shared engine stays up for the process."""

    def observe_tool_duration(self, tool: str, duration_s: float) -> None:
        """A tool's real duration, for the program-aware scheduler's predictor (never blocks)."""
        self.engine.observe_tool_duration(tool, duration_s)

    async def end_program(self, program_id: str) -> dict[str, Any] | None:
        """Release the program's pinned KV; the scheduler's summary of the program, if it has one."""
        return await self.engine.end_program(program_id)

    def post_end_program(self, program_id: str) -> None:
        """`end_program` without waiting: for a task that is being cancelled."""
        self.engine.post_end_program(program_id)

    async def _generate(self, request: LLMRequest) -> AsyncIterator[GenerationChunk]:
        prompt = await self._prompt(request)
        extra = request.extra
        extra_args = dict(extra.get("extra_args") or {})
        if request.metadata is not None:
            extra_args.update(request.metadata.to_extra_args())
        return self.engine.generate(
            prompt=prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=request.stop,
            ignore_eos=bool(extra.get("ignore_eos", False)),
            grammar=request.grammar,
            json_schema=request.json_schema,
            extra_args=extra_args or None,
            request_id=extra.get("request_id"),
            priority=int(extra.get("priority", 0)),
        )

    async def _prompt(self, request: LLMRequest) -> str:
        if request.prompt is not None:
            return request.prompt  # raw: the caller formatted it
        assert request.messages is not None  # LLMRequest guarantees one of the two
        if not self._tokenizer_loaded:
            # The first load may convert the default model (~20 s): keep it off the loop.
            await asyncio.to_thread(lambda: self.engine.tokenizer)
            self._tokenizer_loaded = True
        return self.engine.apply_chat_template(_template_messages(request.messages), tools=request.tools)


def _template_messages(messages: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """OpenAI-format messages as chat templates read them: tool-call arguments as objects, not JSON text."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_with_object_arguments(call) for call in calls]}
        out.append(message)
    return out


def _with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            return {**call, "function": {**function, "arguments": json.loads(function["arguments"])}}
        except ValueError:
            return call  # the template renders the text as it is
    return call


def model_path(model: str | os.PathLike[str] | None) -> Path | None:
    """The directory `embedded:MODEL` names: None (the default), a catalog model's, or a local path.

    A string with a `/`, or starting with `~` or `.`, is a path; so is an existing directory.
    Any other string is a catalog name.

    Raises:
        BackendConfigError: an unknown name; the message lists the catalog.
    """
    if model is None:
        return None
    if not isinstance(model, str) or model.startswith(("~", ".")) or "/" in model or os.sep in model:
        return Path(model)
    if model in CATALOG or not Path(model).is_dir():
        return catalog_dir(lookup(model))
    return Path(model)
