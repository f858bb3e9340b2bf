"""FC mode: each BFCL record as an agentflow program whose model calls functions natively, BFCL's FC column.

BFCL's leaderboard has two columns per model: Prompt (function docs in the system prompt, calls
written as text: our `native` mode) and FC (the API's function calling). In FC mode the record's
function docs become OpenAI function tools (BFCL's own `convert_to_tool`: its type mapping, and
dots in names replaced by `_`, mapped back before scoring), the chat carries no BFCL system
prompt, and the backend's native tool calling answers: `Completion.tool_calls` (the embedded
engine renders the tools with the model's chat template and parses its reply,
`agentflow.backends.tool_calls`). A reply that looks like a call but does not parse is scored
invalid with the parser's error.

Single-turn: the calls are scored by BFCL's AST checker as compiled mode's are, and run as
dry-run tool nodes in parallel. Multi-turn: the loop of BFCL's FC handlers: the assistant message
with its `tool_calls`, one `tool` message per result, until the model calls nothing; held-back
functions join the tools at their turn with BFCL's FC announcement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentflow.backends import LLMBackend, LLMRequest, ToolCall
from agentflow.calls import CallContext
from agentflow.exceptions import CallFailedError, UserError
from agentflow.ir import CallKind
from agentflow.program import Program
from workloads._schema import SchemaTool
from workloads.bfcl._data import BfclRecord
from workloads.bfcl._env import bfcl
from workloads.bfcl._native import (
    Inference,
    _as_text,
    _backend_tools,
    _dry_run_tools,
    _run_parallel,
    _submit,
    inference_failed,
    instantiate_backends,
    program_id_for,
)
from workloads.bfcl._score import Score, check_multi_turn, score_single_turn_calls

__all__ = ["FcTools", "fc_tools", "run_fc"]


@dataclass(frozen=True, slots=True)
class FcTools:
    """The record's functions as OpenAI function tools, and each tool name's BFCL function name."""

    specs: tuple[dict[str, Any], ...]
    original: dict[str, str]  # tool name (dots replaced) -> the function name BFCL scores

    def decoded(self, calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
        """Calls in BFCL's decoded form, `[{function: {arg: value}}]`, with BFCL's names."""
        return [{self.original.get(call.name, call.name): dict(call.arguments)} for call in calls]


def fc_tools(functions: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> FcTools:
    """BFCL's own conversion (`convert_to_tool`, OpenAI style) of a record's function docs."""
    env = bfcl()
    # OpenAI style: each is {"type": "function", "function": {...}}
    specs = tuple(env.convert_to_tool(list(functions), env.gorilla_to_openapi, env.openai_style))
    original = {spec["function"]["name"]: doc["name"] for spec, doc in zip(specs, functions, strict=True)}
    return FcTools(specs=specs, original=original)


@dataclass(frozen=True, slots=True, kw_only=True)
class _FcReply:
    text: str
    tool_calls: tuple[ToolCall, ...]
    tool_call_error: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class ToolChatCall:
    """An LLM callee that sends a chat and function tools and returns the reply with its tool calls."""

    kind = CallKind.LLM
    name = "bfcl_model"
    timeout_s: float | None = None
    retries = 0
    max_concurrency: int | None = None
    runs_in_thread = False
    expected_duration_s: float | None = None

    def __init__(self, *, max_tokens: int, temperature: float = 0.0) -> None:
        self.max_tokens = max_tokens
        self.temperature = temperature

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if args or set(kwargs) != {"messages", "tools"}:
            raise UserError("bfcl_model takes two keyword arguments, messages and tools")
        return {"messages": kwargs["messages"], "tools": kwargs["tools"]}

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> _FcReply:
        assert ctx.backend is not None, "the executor gives LLM calls the program's backend"
        request = LLMRequest(
            messages=tuple(dict(m) for m in arguments["messages"]),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            tools=tuple(arguments["tools"]),
            tool_choice="auto",
            metadata=ctx.metadata,
        )
        t0 = time.perf_counter()
        completion = await ctx.backend.complete(request)
        return _FcReply(
            text=completion.text,
            tool_calls=completion.tool_calls,
            tool_call_error=completion.tool_call_error,
            prompt_tokens=completion.prompt_tokens or 0,
            completion_tokens=completion.completion_tokens or 0,
            latency_s=time.perf_counter() - t0,
        )

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        raise AssertionError("bfcl_model is async; the executor awaits invoke()")


async def run_fc(record: BfclRecord, backend: LLMBackend, *, max_tokens: int) -> Inference:
    """Run one record in FC mode and score it."""
    chat = ToolChatCall(max_tokens=max_tokens)
    if record.involved_classes:
        return await _run_multi_turn(record, backend, chat)
    return await _run_single_turn(record, backend, chat)


# -- single turn ----------------------------------------------------------------------------------


async def _run_single_turn(record: BfclRecord, backend: LLMBackend, chat: ToolChatCall) -> Inference:
    inference = Inference()
    tools = fc_tools(record.functions)
    dry_run = _dry_run_tools(record)
    messages = [dict(m) for m in record.question[0]]
    reply: _FcReply | None = None
    async with Program(model=backend, tools=dry_run.values(), program_id=program_id_for(record)) as program:
        reply = await _ask(program, chat, messages, tools, inference)
        if reply is not None:
            inference.model_output = _output(reply, tools)
            if reply.tool_calls:
                inference.calls = await _run_parallel(program, dry_run, tools.decoded(reply.tool_calls))
    if inference.inference_error is not None:
        inference.score = inference_failed(inference.inference_error)
    else:
        assert reply is not None
        inference.score = await asyncio.to_thread(_score_single_turn, record, reply, tools)
    return inference


def _score_single_turn(record: BfclRecord, reply: _FcReply, tools: FcTools) -> Score:
    if reply.tool_call_error is not None and not reply.tool_calls:
        return Score(
            valid=False,
            error=f"not a valid tool call: {reply.tool_call_error}",
            error_type="fc:invalid_tool_call",
            undecodable=True,
        )
    return score_single_turn_calls(record, tools.decoded(reply.tool_calls))


def _output(reply: _FcReply, tools: FcTools) -> Any:
    """What the record file shows: the decoded calls, else the text (and any parse error)."""
    if reply.tool_calls:
        return tools.decoded(reply.tool_calls)
    if reply.tool_call_error is not None:
        return {"text": reply.text, "tool_call_error": reply.tool_call_error}
    return reply.text


# -- multi-turn -------------------------------------------------------------------------------------


async def _run_multi_turn(record: BfclRecord, backend: LLMBackend, chat: ToolChatCall) -> Inference:
    env = bfcl()
    inference = Inference()
    backends = _backend_tools(record, instantiate_backends(record))
    functions = list(record.functions)
    messages = [dict(m) for m in record.question[0]]
    turns: list[list[list[str]]] = []  # per turn, per step: BFCL's call strings
    outputs: list[list[Any]] = []
    async with Program(model=backend, tools=backends.values(), program_id=program_id_for(record)) as program:
        for turn_index, turn_messages in enumerate(record.question):
            held = record.missed_function.get(str(turn_index))
            if turn_index > 0:
                if held is not None:  # BFCL's FC handlers add the functions and announce them
                    functions += held
                    messages.append({"role": "user", "content": env.additional_function_prompt_fc})
                else:
                    messages.extend(dict(m) for m in turn_messages)
            steps: list[list[str]] = []
            turn_outputs: list[Any] = []
            turns.append(steps)
            outputs.append(turn_outputs)
            await _run_turn(program, chat, fc_tools(functions), backends, messages, steps, turn_outputs, inference)
            if inference.force_quit or inference.inference_error is not None:
                break
    inference.model_output = outputs
    if inference.inference_error is not None:
        inference.score = inference_failed(inference.inference_error)
    elif len(turns) != len(record.possible_answer):
        why = "forced to quit" if inference.force_quit else "stopped early"
        inference.score = Score(
            valid=False,
            error=f"Model was {why}: {len(turns)} turns answered, {len(record.possible_answer)} in the ground truth.",
            error_type="multi_turn:force_terminated",
        )
    else:
        inference.score = await asyncio.to_thread(check_multi_turn, record, turns)
    return inference


async def _run_turn(
    program: Program,
    chat: ToolChatCall,
    tools: FcTools,
    backends: Mapping[str, SchemaTool],
    messages: list[dict[str, Any]],
    steps: list[list[str]],
    outputs: list[Any],
    inference: Inference,
) -> None:
    """Steps until the model calls nothing (or BFCL's step limit forces a quit)."""
    env = bfcl()
    for step in range(env.max_steps_per_turn + 1):
        reply = await _ask(program, chat, messages, tools, inference)
        if reply is None:
            return
        outputs.append(_output(reply, tools))
        if not reply.tool_calls:
            messages.append({"role": "assistant", "content": reply.text})
            return
        calls = [call.to_message() for call in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": calls})
        decoded = tools.decoded(reply.tool_calls)
        steps.append(env.convert_to_function_call(decoded))
        for call, (name, arguments) in zip(reply.tool_calls, (next(iter(d.items())) for d in decoded), strict=True):
            result = await _run_in_order(program, backends, name, arguments, inference)
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result})
        if step + 1 > env.max_steps_per_turn:
            inference.force_quit = True


async def _run_in_order(
    program: Program, backends: Mapping[str, SchemaTool], name: str, arguments: Mapping[str, Any], inference: Inference
) -> str:
    tool = backends.get(name)
    if tool is None:
        inference.calls.append({"name": name, "ok": False, "detail": "unknown function"})
        return f"Error during execution: name '{name}' is not defined"
    try:
        result = await _submit(program, tool, arguments)
    except CallFailedError as exc:
        inference.calls.append({"name": name, "ok": False, "detail": exc.reason})
        return f"Error during execution: {exc.reason}"
    inference.calls.append({"name": name, "ok": True})
    return _as_text(result)


# -- shared ---------------------------------------------------------------------------------------------


async def _ask(
    program: Program, chat: ToolChatCall, messages: list[dict[str, Any]], tools: FcTools, inference: Inference
) -> _FcReply | None:
    try:
        reply: _FcReply = await program.call(chat, messages=[dict(m) for m in messages], tools=list(tools.specs))
    except CallFailedError as exc:
        inference.inference_error = exc.reason
        return None
    inference.llm_calls += 1
    inference.prompt_tokens += reply.prompt_tokens
    inference.completion_tokens += reply.completion_tokens
    inference.llm_s += reply.latency_s
    return reply
