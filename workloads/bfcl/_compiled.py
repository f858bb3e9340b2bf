"""Compiled mode: the planner compiles each request into a DAG over the record's tools; the executor runs it.

The calls that ran (done, in the order they started) are the model's answer, scored by the same
BFCL checkers as native mode:

- single-turn: one plan, as BFCL asks once (no joiner: the calls are the answer); the tools are
  dry runs built from the record's docs (validated, echoing their arguments); the executed calls
  with their validated arguments become `[{func: {args}}]` for the AST checker, and "made a
  call" for the relevance rules;
- multi-turn: each user turn is one `compile_and_run` over BFCL's real backends (state carries
  from turn to turn; held-back functions join the registry at their turn); the calls each turn
  ran become that turn's step for `multi_turn_checker`.

Planner tool names must be identifiers, so dotted BFCL names (`math.factorial`) are registered
as `math_factorial` and mapped back for scoring.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agentflow.backends import Completion, LLMBackend, LLMRequest
from agentflow.exceptions import UserError
from agentflow.ir import NodeState, resolve_value
from workloads._schema import SchemaTool
from workloads.bfcl._data import BfclRecord
from workloads.bfcl._env import bfcl
from workloads.bfcl._native import Inference, inference_failed, instantiate_backends, program_id_for
from workloads.bfcl._score import Score, check_multi_turn, score_single_turn_calls

__all__ = ["compiled_runner", "run_compiled"]

_MAX_REPLANS = 1  # one replan: each plan is a long prompt on a small CPU model
_Runner = Callable[[BfclRecord, LLMBackend, int], Any]


def compiled_runner() -> _Runner:
    """The compiled-mode runner, or a clear error when the planner package is missing."""
    try:
        import planner
    except ImportError as exc:
        raise UserError(f"compiled mode needs the planner package, which cannot be imported: {exc}") from exc
    if not hasattr(planner, "compile_and_run"):
        raise UserError("compiled mode needs planner.compile_and_run, which this build's planner lacks")
    return lambda record, backend, max_tokens: run_compiled(record, backend, max_tokens=max_tokens)


async def run_compiled(record: BfclRecord, backend: LLMBackend, *, max_tokens: int) -> Inference:
    """Run one record in compiled mode and score it."""
    counted = _CountingBackend(backend)
    if record.involved_classes:
        inference = await _run_multi_turn(record, counted, max_tokens)
    else:
        inference = await _run_single_turn(record, counted, max_tokens)
    inference.llm_calls, inference.completion_tokens = counted.calls, counted.completion_tokens
    inference.prompt_tokens, inference.llm_s = counted.prompt_tokens, counted.llm_s
    return inference


# -- single turn ----------------------------------------------------------------------------------------


async def _run_single_turn(record: BfclRecord, backend: LLMBackend, max_tokens: int) -> Inference:
    tools, original = _named_tools(record.functions_for_scoring, fns={})
    task = _task_text(record.question[0])
    inference = Inference()
    if not tools:  # some irrelevance records offer no function: there is nothing to plan
        inference.model_output = {"plans": [], "answer": None, "reason": "no functions offered"}
        inference.score = score_single_turn_calls(record, [])
        return inference
    result = await _compile(task, tools, backend, max_tokens, program_id_for(record), join=False)
    if isinstance(result, str):
        inference.inference_error = result
        inference.score = inference_failed(result)
        return inference
    calls = _executed_calls(result, tools, original)
    inference.model_output = {"plans": list(result.plans), "answer": result.answer, "reason": result.reason}
    inference.calls = _call_log(result, original)
    inference.score = _with_plan_errors(score_single_turn_calls(record, calls), result)
    return inference


# -- multi-turn ---------------------------------------------------------------------------------------------


async def _run_multi_turn(record: BfclRecord, backend: LLMBackend, max_tokens: int) -> Inference:
    instances = instantiate_backends(record)
    fns = {name: _on_the_loop(method) for name, method in _methods(record, instances).items()}
    available = list(record.functions_for_scoring)
    inference = Inference(model_output={"plans": [], "answers": []})
    decoded_turns: list[list[list[str]]] = []
    requests: list[str] = []
    plan_errors: list[str] = []
    for turn_index, messages in enumerate(record.question):
        available += record.missed_function.get(str(turn_index), [])
        request = _task_text(messages) if messages else _resume_text(requests)
        tools, original = _named_tools(available, fns=fns)
        task = _with_history(request, requests)
        requests.append(request)
        result = await _compile(task, tools, backend, max_tokens, f"{program_id_for(record)}-t{turn_index}", join=True)
        if isinstance(result, str):
            inference.inference_error = result
            inference.score = inference_failed(result)
            return inference
        inference.model_output["plans"].append(list(result.plans))
        if all(r.error is not None for r in result.rounds):
            plan_errors.append(f"turn {turn_index}: no plan parsed: {result.rounds[-1].error}")
        inference.model_output["answers"].append(result.answer)
        inference.calls += _call_log(result, original)
        calls = bfcl().decoded_to_execution_list(_executed_calls(result, tools, original))
        decoded_turns.append([calls] if calls else [])
    inference.score = check_multi_turn(record, decoded_turns)
    if not any(decoded_turns) and plan_errors:
        inference.score = replace(
            inference.score, undecodable=True, error=f"{inference.score.error}; {plan_errors[-1]}"
        )
    return inference


def _methods(record: BfclRecord, instances: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    names = [d["name"] for d in record.functions_for_scoring]
    names += [d["name"] for held in record.missed_function.values() for d in held]
    methods: dict[str, Callable[..., Any]] = {}
    for name in names:
        method = next((getattr(i, name) for i in instances.values() if callable(getattr(i, name, None))), None)
        if method is not None:
            methods.setdefault(name, method)
    return methods


def _on_the_loop(method: Callable[..., Any]) -> Callable[..., Any]:
    """An async wrapper: the executor then runs it on the event loop, not in a thread.

    BFCL's backends are fast in-memory objects with state; independent plan steps dispatched
    together then run one at a time in plan order instead of racing in worker threads.
    """

    async def call(**arguments: Any) -> Any:
        return method(**arguments)

    return call


def _resume_text(requests: list[str]) -> str:
    last = requests[-1] if requests else "the task"
    return f"More functions are available now. Complete the earlier request: {last}"


def _with_history(request: str, earlier: list[str]) -> str:
    if not earlier:
        return request
    done = "\n".join(f"- {r}" for r in earlier)
    return f"Earlier requests (already handled):\n{done}\n\nCurrent request: {request}"


# -- shared ----------------------------------------------------------------------------------------------------


def _with_plan_errors(score: Score, result: Any) -> Score:
    """A record whose every plan was rejected is undecodable output, as in native mode."""
    if score.valid or not result.rounds or any(r.error is None for r in result.rounds):
        return score
    return replace(score, undecodable=True, error=f"no plan parsed: {result.rounds[-1].error}")


def _named_tools(
    docs: list[dict[str, Any]] | tuple[dict[str, Any], ...], *, fns: Mapping[str, Callable[..., Any]]
) -> tuple[list[SchemaTool], dict[str, str]]:
    """Tools under identifier names; `original` maps each back to BFCL's name."""
    tools: list[SchemaTool] = []
    original: dict[str, str] = {}
    for doc in docs:
        name = _identifier(doc["name"], original)
        if doc["name"] in original.values():
            continue  # a repeated doc: BFCL's checker reads the first
        original[name] = doc["name"]
        tools.append(SchemaTool({**doc, "name": name}, fns.get(doc["name"])))
    return tools, original


def _identifier(name: str, taken: Mapping[str, str]) -> str:
    base = re.sub(r"\W", "_", name)
    base = base if base and not base[0].isdigit() else f"f_{base}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def _task_text(messages: tuple[dict[str, str], ...]) -> str:
    parts = [m["content"] if m["role"] == "user" else f"({m['role']}: {m['content']})" for m in messages]
    return "\n".join(parts)


async def _compile(
    task: str, tools: list[SchemaTool], backend: LLMBackend, max_tokens: int, program_id: str, *, join: bool
) -> Any:
    """`compile_and_run`'s result, or the error text when the LLM backend failed.

    Single-turn records are one model response in BFCL (its FC and Prompt handlers ask once): the
    first plan that parses is the answer, run and scored without a joiner (`join=False`; a plan
    rejected by the parser is still fed back once). Multi-turn records keep the joiner: it is the
    loop BFCL's handlers run, calling again after seeing results.
    """
    from planner import PlannerOptions, compile_and_run

    options = PlannerOptions(
        max_replans=_MAX_REPLANS,
        plan_max_tokens=2 * max_tokens,
        join_max_tokens=max_tokens,
        examples=_examples(tools),
        join=join,
    )
    try:
        return await compile_and_run(task, tools=tools, model=backend, options=options, program_id=program_id)
    except UserError:
        raise
    except Exception as exc:  # the planner raises what the backend raised
        return f"{type(exc).__name__}: {exc}"


def _examples(tools: list[SchemaTool]) -> list[Any]:
    """One format example over the first two tools: keyword arguments, values of the declared types.

    (The planner's own synthetic example reads the lenient validation types, and small models
    copy its placeholders.)
    """
    from planner import PlanExample, format_value

    lines = []
    for i, tool in enumerate(tools[:2], start=1):
        required = [p for p in tool.signature.parameters.values() if p.default is p.empty]
        args = ", ".join(f"{p.name}={format_value(_placeholder(p.annotation))}" for p in required)
        lines.append(f"{i}. {tool.name}({args})")
    lines.append(f"{len(lines) + 1}. join()")
    return [PlanExample(task="(an example of the format only; take the values from the task)", plan="\n".join(lines))]


_PLACEHOLDERS: dict[Any, Any] = {str: "text", int: 1, float: 1.5, bool: True, list: [], dict: {}}


def _placeholder(annotation: Any) -> Any:
    return _PLACEHOLDERS.get(getattr(annotation, "__origin__", annotation), "text")


def _executed_calls(result: Any, tools: list[SchemaTool], original: Mapping[str, str]) -> list[dict[str, Any]]:
    """Tool calls that ran to completion, in the order they started: `[{bfcl_name: arguments}]`.

    The arguments are the validated ones the tool ran with (`bind` again is pure).
    """
    by_name = {tool.name: tool for tool in tools}
    nodes = {node.id: node for plan_round in result.rounds for node in plan_round.nodes}
    outputs = result.run.outputs
    started = sorted(
        (r for r in result.run.trace.records if r.start_s is not None and r.state is NodeState.DONE),
        key=lambda r: r.start_s,
    )
    calls = []
    for record in started:
        node = nodes.get(record.node_id)
        if node is None or node.target not in original:
            continue
        args = tuple(resolve_value(a, outputs) for a in node.args)
        kwargs = {k: resolve_value(v, outputs) for k, v in node.kwargs.items()}
        calls.append({original[node.target]: by_name[node.target].bind(args, kwargs)})
    return calls


def _call_log(result: Any, original: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every tool step of every plan: its BFCL name, whether it ran, and why not."""
    return [
        {"name": original[r.target], "ok": r.state is NodeState.DONE, "detail": r.error}
        for r in result.run.trace.records
        if r.target in original
    ]


@dataclass(slots=True)
class _CountingBackend:
    """Counts LLM calls, tokens and time on the way to the real backend."""

    inner: LLMBackend
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_s: float = 0.0
    name: str = field(init=False)
    supports_grammar: bool = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.supports_grammar = self.inner.supports_grammar

    async def start(self) -> None:
        await self.inner.start()

    async def complete(self, request: LLMRequest) -> Completion:
        t0 = time.perf_counter()
        completion = await self.inner.complete(request)
        self._count(time.perf_counter() - t0, completion.prompt_tokens or 0, completion.completion_tokens or 0)
        return completion

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        t0 = time.perf_counter()
        num_deltas = 0
        try:
            async for delta in self.inner.stream(request):
                num_deltas += 1
                yield delta
        finally:
            self._count(time.perf_counter() - t0, 0, num_deltas)

    def _count(self, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls += 1
        self.llm_s += seconds
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    async def aclose(self) -> None:
        await self.inner.aclose()
