"""Native mode: each BFCL record runs as an agentflow program, prompted the way BFCL prompts.

Single-turn: one LLM node answers with BFCL's default system prompt (function docs as JSON,
calls as `[func(a=1), ...]`); the decoded calls then run as tool nodes in parallel on dry-run
tools built from the record's docs (validated like `@tool`, echoing their arguments), which
records whether each call fits its schema. The score comes from BFCL's checker on the text.

Multi-turn: BFCL's backend classes are instantiated with the record's `initial_config` and
their methods are the tools. Every turn loops as BFCL's prompting handler does: an LLM node,
decode, run the calls in order (they mutate state), feed the results back as a user message,
until the model answers with no call (or `MAXIMUM_STEP_LIMIT` steps force a quit). Held-back
functions are announced at their turn.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentflow.backends import LLMBackend, LLMRequest
from agentflow.calls import CallContext
from agentflow.exceptions import CallFailedError, UserError
from agentflow.ir import CallKind, CallNode
from agentflow.program import Program
from workloads._schema import SchemaTool
from workloads.bfcl._data import BfclRecord
from workloads.bfcl._env import bfcl
from workloads.bfcl._score import Score, decode_calls, score_multi_turn, score_single_turn

__all__ = ["ChatCall", "Inference", "inference_failed", "instantiate_backends", "program_id_for", "run_native"]


@dataclass(slots=True)
class Inference:
    """What running a record produced, before and after scoring."""

    model_output: Any = None  # single-turn: the text; multi-turn: turns -> step texts
    calls: list[dict[str, Any]] = field(default_factory=list)  # tool calls run: name, ok, detail
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_s: float = 0.0
    inference_error: str | None = None  # the LLM call failed; the record is scored invalid
    force_quit: bool = False
    score: Score | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class ChatCall:
    """An LLM callee that sends a whole chat (BFCL's messages) and returns the reply."""

    kind = CallKind.LLM
    name = "bfcl_model"
    timeout_s: float | None = None
    retries = 0
    max_concurrency: int | None = None
    runs_in_thread = False
    expected_duration_s: float | None = None  # learned by the runtime

    def __init__(self, *, max_tokens: int, temperature: float = 0.0) -> None:
        self.max_tokens = max_tokens
        self.temperature = temperature

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if args or set(kwargs) != {"messages"}:
            raise UserError("bfcl_model takes one keyword argument, messages")
        return {"messages": kwargs["messages"]}

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> _Reply:
        assert ctx.backend is not None, "the executor gives LLM calls the program's backend"
        request = LLMRequest(
            messages=tuple({"role": m["role"], "content": m["content"]} for m in arguments["messages"]),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            metadata=ctx.metadata,
        )
        t0 = time.perf_counter()
        completion = await ctx.backend.complete(request)
        return _Reply(
            text=completion.text,
            prompt_tokens=completion.prompt_tokens or 0,
            completion_tokens=completion.completion_tokens or 0,
            latency_s=time.perf_counter() - t0,
        )

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        raise AssertionError("bfcl_model is async; the executor awaits invoke()")


async def run_native(record: BfclRecord, backend: LLMBackend, *, max_tokens: int) -> Inference:
    """Run one record in native mode and score it."""
    chat = ChatCall(max_tokens=max_tokens)
    if record.involved_classes:
        return await _run_multi_turn(record, backend, chat)
    return await _run_single_turn(record, backend, chat)


# -- single turn ----------------------------------------------------------------------------------


async def _run_single_turn(record: BfclRecord, backend: LLMBackend, chat: ChatCall) -> Inference:
    inference = Inference()
    tools = _dry_run_tools(record)
    messages = _first_turn_messages(record)
    async with Program(model=backend, tools=tools.values(), program_id=program_id_for(record)) as program:
        reply = await _ask(program, chat, messages, inference)
        if reply is not None:
            inference.model_output = reply.text
            decoded, _ = decode_calls(reply.text)
            if decoded is not None and bfcl().is_function_calling_format_output(decoded):
                inference.calls = await _run_parallel(program, tools, decoded)
    if inference.inference_error is not None:
        inference.score = inference_failed(inference.inference_error)
    else:
        inference.score = await asyncio.to_thread(score_single_turn, record, inference.model_output)
    return inference


def _dry_run_tools(record: BfclRecord) -> dict[str, SchemaTool]:
    tools: dict[str, SchemaTool] = {}
    for doc in record.functions_for_scoring:
        tools.setdefault(doc["name"], SchemaTool(doc))  # a repeated name: BFCL's checker reads the first
    return tools


async def _run_parallel(
    program: Program, tools: Mapping[str, SchemaTool], decoded: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The decoded calls as independent tool nodes: they run at once."""
    pending = []
    for call in decoded:
        ((name, arguments),) = call.items()
        tool = tools.get(name)
        pending.append((name, None if tool is None else _submit(program, tool, arguments)))
    calls = []
    for name, variable in pending:
        if variable is None:
            calls.append({"name": name, "ok": False, "detail": "no such function in the record"})
            continue
        try:
            await variable
            calls.append({"name": name, "ok": True})
        except CallFailedError as exc:
            calls.append({"name": name, "ok": False, "detail": exc.reason})
    return calls


# -- multi-turn -------------------------------------------------------------------------------------


async def _run_multi_turn(record: BfclRecord, backend: LLMBackend, chat: ChatCall) -> Inference:
    env = bfcl()
    inference = Inference()
    tools = _backend_tools(record, instantiate_backends(record))
    messages = _first_turn_messages(record)
    turns: list[list[str]] = []
    async with Program(model=backend, tools=tools.values(), program_id=program_id_for(record)) as program:
        for turn_index, turn_messages in enumerate(record.question):
            if turn_index > 0:
                messages.extend(_turn_messages(record, turn_index, turn_messages))
            steps: list[str] = []
            turns.append(steps)
            await _run_turn(program, chat, tools, messages, steps, inference, env.max_steps_per_turn)
            if inference.force_quit or inference.inference_error is not None:
                break
    inference.model_output = turns
    if inference.inference_error is not None:
        inference.score = inference_failed(inference.inference_error)
    else:
        inference.score = await asyncio.to_thread(score_multi_turn, record, turns, force_quit=inference.force_quit)
    return inference


async def _run_turn(
    program: Program,
    chat: ChatCall,
    tools: Mapping[str, SchemaTool],
    messages: list[dict[str, str]],
    steps: list[str],
    inference: Inference,
    max_steps: int,
) -> None:
    """Steps until the model makes no call (BFCL: empty or undecodable reply ends the turn)."""
    env = bfcl()
    for step in range(max_steps + 1):
        reply = await _ask(program, chat, messages, inference)
        if reply is None:
            return
        messages.append({"role": "assistant", "content": reply.text})
        steps.append(reply.text)
        decoded, _ = decode_calls(reply.text)
        if decoded is None:
            return
        call_texts = env.decoded_to_execution_list(decoded)
        if env.is_empty_execute_response(call_texts):
            return
        results = [await _run_in_order(program, tools, call, inference) for call in decoded]
        feedback = env.format_execution_results({}, results, {"model_responses_decoded": call_texts})
        messages.append({"role": "user", "content": feedback})
        if step + 1 > max_steps:
            inference.force_quit = True


async def _run_in_order(
    program: Program, tools: Mapping[str, SchemaTool], call: dict[str, Any], inference: Inference
) -> str:
    """One decoded call on the real backend; the result as BFCL's executor renders it."""
    ((name, arguments),) = call.items()
    tool = tools.get(name)
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


def _submit(program: Program, tool: SchemaTool, arguments: Mapping[str, Any]) -> asyncio.Future[Any]:
    """One call as an IR node (argument names are data here: `callee=` or `self=` cannot clash)."""
    node = CallNode(id=program.new_node_id(), kind=tool.kind, target=tool.name, kwargs=dict(arguments))
    program.submit(node)
    return program.future(node.id)


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def instantiate_backends(record: BfclRecord) -> dict[str, Any]:
    """Fresh instances of the record's BFCL backend classes, loaded with its initial config."""
    env = bfcl()
    long_context = "long_context" in record.category
    instances: dict[str, Any] = {}
    for class_name in record.involved_classes:
        module = importlib.import_module(env.class_file_path_mapping[class_name])
        instance = getattr(module, class_name)()
        if class_name not in env.stateless_classes:
            config = copy.deepcopy(record.initial_config.get(class_name, {}))
            instance._load_scenario(config, long_context=long_context)
        instances[class_name] = instance
    return instances


def _backend_tools(record: BfclRecord, instances: Mapping[str, Any]) -> dict[str, SchemaTool]:
    """Every documented method (held-back ones included: BFCL's executor can call them too)."""
    docs = [*record.functions_for_scoring, *(d for held in record.missed_function.values() for d in held)]
    tools: dict[str, SchemaTool] = {}
    for doc in docs:
        name = doc["name"]
        method = next((getattr(i, name) for i in instances.values() if callable(getattr(i, name, None))), None)
        if method is not None and name not in tools:
            tools[name] = SchemaTool(doc, method)
    return tools


def _turn_messages(
    record: BfclRecord, turn_index: int, turn_messages: tuple[dict[str, str], ...]
) -> list[dict[str, str]]:
    held = record.missed_function.get(str(turn_index))
    if held is None:
        return [dict(m) for m in turn_messages]
    # A held-back turn has no user message: the new functions are announced instead.
    return [{"role": "user", "content": bfcl().additional_function_prompt.format(functions=held)}]


# -- shared ---------------------------------------------------------------------------------------------


def _first_turn_messages(record: BfclRecord) -> list[dict[str, str]]:
    """BFCL's system prompt (function docs, output format) in front of the first turn."""
    first = [dict(m) for m in record.question[0]]
    messages = bfcl().system_prompt_pre_processing(first, copy.deepcopy(list(record.functions)), record.id)
    return list(messages)


async def _ask(program: Program, chat: ChatCall, messages: list[dict[str, str]], inference: Inference) -> _Reply | None:
    try:
        reply: _Reply = await program.call(chat, messages=[dict(m) for m in messages])
    except CallFailedError as exc:
        inference.inference_error = exc.reason
        return None
    inference.llm_calls += 1
    inference.prompt_tokens += reply.prompt_tokens
    inference.completion_tokens += reply.completion_tokens
    inference.llm_s += reply.latency_s
    return reply


def inference_failed(reason: str) -> Score:
    """The score of a record whose LLM call failed: invalid, with the reason."""
    return Score(valid=False, error=f"inference failed: {reason}", error_type="inference_error", undecodable=True)


def program_id_for(record: BfclRecord) -> str:
    """A fresh program id that names the record (engine metadata and traces show it)."""
    return f"bfcl-{record.id}-{uuid.uuid4().hex[:8]}"
