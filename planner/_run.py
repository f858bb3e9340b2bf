"""`compile_and_run`: plan (streamed into a running `Program`), execute, join, replan if needed.

One `Program` holds every round, so a replan's new steps (numbered after the old ones) can
reference old steps by `$N` and get their recorded outputs; executed steps never run again.
Each round: the planner LLM writes a plan (grammar-constrained where the backend allows it);
every completed line is parsed and submitted at once, so ready calls start while the plan is
still being written; when the plan is complete and its calls have settled, the joiner decides
to finish or to replan. A plan that does not parse or validate is fed back as the replan
reason. At most `max_replans` replans, then a failed result that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentflow.backends import LLMBackend, LLMRequest, resolve_backend
from agentflow.exceptions import PlanError, UserError
from agentflow.ir import CallNode, Concat, NodeState, Ref
from agentflow.program import Program
from agentflow.tools import ToolRegistry
from executor import ExecutorObserver, RunResult, Trace

from ._format import format_step
from ._grammar import DEFAULT_MAX_STEPS, build_grammar
from ._joiner import Finish, JoinDecision, Replan, build_joiner_prompt, join_schema, parse_join_output
from ._parse import END_OF_PLAN, PlanParser
from ._prompt import Observation, PlanExample, build_planner_prompt, render_observations

__all__ = ["PlanRound", "PlanRunResult", "PlannerOptions", "compile_and_run", "compile_and_run_sync"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerOptions:
    """How plans are written and joined (defaults suit small local models)."""

    max_replans: int = 2
    use_grammar: bool | None = None  # None: when the backend enforces grammars
    stream: bool = True  # submit each step as its line completes (False: parse the whole plan first)
    examples: Sequence[PlanExample] | None = None  # None: one synthetic example from the registry
    max_steps: int = DEFAULT_MAX_STEPS  # grammar bound on steps per plan
    max_string_chars: int | None = 80  # grammar bound on one string literal
    plan_max_tokens: int = 384
    join_max_tokens: int = 192
    temperature: float = 0.0
    # False: the first plan that parses is run and the run ends there, no joiner call: for
    # function-calling evaluations (BFCL) where the calls are the answer, not a text about them.
    join: bool = True

    def __post_init__(self) -> None:
        if self.max_replans < 0:
            raise UserError(f"max_replans must be >= 0, got {self.max_replans}")
        if self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRound:
    """One plan and what became of it. Times are seconds since the program started."""

    index: int
    text: str  # what the planner LLM wrote
    nodes: tuple[CallNode, ...]  # the steps parsed and submitted
    reused: Mapping[str, str] = field(default_factory=dict)  # step id -> identical earlier step, not run again
    thoughts: tuple[str, ...] = ()
    grammar: bool = False  # the plan was grammar-constrained
    error: PlanError | None = None  # why the plan was rejected
    decision: JoinDecision | None = None
    joiner_text: str | None = None
    plan_start_s: float = 0.0
    first_step_s: float | None = None  # when its first step was parsed and submitted
    plan_end_s: float = 0.0
    join_s: float | None = None  # duration of the joiner call

    def to_dict(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "index": self.index,
            "text": self.text,
            "steps": [node.label or node.id for node in self.nodes],
            "reused": dict(self.reused),
            "thoughts": list(self.thoughts),
            "grammar": self.grammar,
            "error": None if self.error is None else str(self.error),
            "decision": None if decision is None else _decision_dict(decision),
            "plan_start_s": self.plan_start_s,
            "first_step_s": self.first_step_s,
            "plan_end_s": self.plan_end_s,
            "join_s": self.join_s,
        }


@dataclass(frozen=True, kw_only=True)
class PlanRunResult:
    """What a compiled run produced: the answer (or why there is none), every plan, the trace."""

    task: str
    answer: str | None
    reason: str | None  # why there is no answer
    rounds: tuple[PlanRound, ...]
    run: RunResult
    wall_s: float
    first_tool_start_s: float | None  # first call started, seconds since the program started
    streamed: bool
    backend: str = ""  # the planner backend's name

    @property
    def ok(self) -> bool:
        return self.answer is not None

    joined: bool = True  # False: `PlannerOptions(join=False)`, the calls ran and no joiner was asked

    @property
    def status(self) -> str:
        """`finished` (the joiner answered), `executed` (a plan ran, joining was off) or `failed`."""
        if self.ok:
            return "finished"
        return "executed" if not self.joined and self.reason is None else "failed"

    @property
    def replans(self) -> int:
        return max(len(self.rounds) - 1, 0)

    @property
    def plans(self) -> tuple[str, ...]:
        return tuple(r.text for r in self.rounds)

    @property
    def plan_errors(self) -> tuple[PlanError, ...]:
        return tuple(r.error for r in self.rounds if r.error is not None)

    @property
    def trace(self) -> Trace:
        return self.run.trace

    @property
    def failures(self) -> tuple[Any, ...]:
        """Calls that failed, were skipped or cancelled (`executor.Failure` records)."""
        return self.run.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "status": self.status,
            "answer": self.answer,
            "reason": self.reason,
            "replans": self.replans,
            "wall_s": self.wall_s,
            "first_tool_start_s": self.first_tool_start_s,
            "streamed": self.streamed,
            "backend": self.backend,
            "rounds": [r.to_dict() for r in self.rounds],
            "outputs": {k: _jsonable(v) for k, v in self.run.outputs.items()},
            "failures": [
                {"node_id": f.node_id, "target": f.target, "state": f.state.value, "reason": f.reason}
                for f in self.run.failures
            ],
            "trace": self.trace.to_dict(),
        }

    def render(self) -> str:
        """Plans, timeline and answer as text (what `agentflow run` prints)."""
        parts = []
        for r in self.rounds:
            title = "Plan" if r.index == 0 else f"Replan {r.index}"
            parts.append(f"{title}{' (grammar)' if r.grammar else ''}:\n{r.text.strip() or '(empty)'}")
            if r.reused:
                pairs = ", ".join(f"${new} = ${old}" for new, old in r.reused.items())
                parts.append(f"  not run again (same call as an earlier step): {pairs}")
            if r.error is not None:
                parts.append(f"  rejected: {r.error}")
            if isinstance(r.decision, Replan):
                parts.append(f"  joiner: replan ({r.decision.reason})")
        parts.append("Timeline:\n" + self.trace.render_timeline())
        first = "-" if self.first_tool_start_s is None else f"{self.first_tool_start_s:.3f}s"
        parts.append(f"wall {self.wall_s:.3f}s, first call started at {first}, replans {self.replans}")
        parts.append(f"Answer: {self.answer}" if self.ok else f"No answer: {self.reason}")
        return "\n\n".join(parts)


async def compile_and_run(
    task: str,
    *,
    tools: ToolRegistry | Iterable[Any],
    model: str | LLMBackend | None = None,
    max_replans: int = 2,
    use_grammar: bool | None = None,
    stream: bool = True,
    options: PlannerOptions | None = None,
    program_id: str | None = None,
    max_parallel: int = 64,
    observers: Iterable[ExecutorObserver] = (),
) -> PlanRunResult:
    """Compile `task` into a plan over `tools`, run it, and join (replanning up to `max_replans`).

    `options` overrides `max_replans`, `use_grammar` and `stream` when given.
    """
    opts = options or PlannerOptions(max_replans=max_replans, use_grammar=use_grammar, stream=stream)
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    if len(registry) == 0:
        raise UserError("compile_and_run needs at least one tool or semantic function")
    backend = resolve_backend(model)
    await backend.start()  # load the model now, so the run's timings do not include it
    program = Program(
        program_id=program_id, model=backend, tools=registry, max_parallel=max_parallel, observers=observers
    )
    session = _Session(task=task, registry=registry, backend=backend, opts=opts, program=program)
    async with program:
        session.start()
        outcome = await session.run()
    return session.result(outcome, program.result)


def compile_and_run_sync(task: str, **kwargs: Any) -> PlanRunResult:
    """`compile_and_run` for code without an event loop."""
    return asyncio.run(compile_and_run(task, **kwargs))


@dataclass(slots=True)
class _Outcome:
    answer: str | None
    reason: str | None


class _Session:
    """The state of one compiled run: rounds so far and the clock (the program counts LLM turns)."""

    def __init__(
        self, *, task: str, registry: ToolRegistry, backend: LLMBackend, opts: PlannerOptions, program: Program
    ) -> None:
        self.task = task
        self.registry = registry
        self.backend = backend
        self.opts = opts
        self.program = program
        self.constrained = backend.supports_grammar if opts.use_grammar is None else opts.use_grammar
        self.rounds: list[PlanRound] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self) -> _Outcome:
        feedback: str | None = None
        for index in range(self.opts.max_replans + 1):
            plan_round = await self._plan_round(index, feedback)
            await self.program.wait()
            if plan_round.error is not None:
                self.rounds.append(plan_round)
                feedback = f"The plan was rejected: {plan_round.error}"
                continue
            if not self.opts.join:
                self.rounds.append(plan_round)
                return _Outcome(answer=None, reason=None)
            decision, text, join_s = await self._join(allow_replan=index < self.opts.max_replans)
            self.rounds.append(replace(plan_round, decision=decision, joiner_text=text, join_s=join_s))
            if isinstance(decision, Finish):
                return _Outcome(answer=decision.answer, reason=None)
            feedback = f"The results did not answer the task: {decision.reason}"
        return _Outcome(answer=None, reason=f"no answer after {self.opts.max_replans} replan(s); last: {feedback}")

    def result(self, outcome: _Outcome, run: RunResult) -> PlanRunResult:
        starts = [r.start_s for r in run.trace.records if r.start_s is not None]
        return PlanRunResult(
            task=self.task,
            answer=outcome.answer,
            reason=outcome.reason,
            rounds=tuple(self.rounds),
            run=run,
            wall_s=self._now(),
            first_tool_start_s=min(starts, default=None),
            streamed=self.opts.stream,
            backend=self.backend.name,
            joined=self.opts.join,
        )

    # -- planning -----------------------------------------------------------------------------------

    async def _plan_round(self, index: int, feedback: str | None) -> PlanRound:
        graph = self.program.graph
        taken = [node.id for node in graph]
        available = list(self.program.result.outputs)
        first_step = 1 + max((int(i) for i in taken if i.isdigit()), default=0)
        request = self._plan_request(first_step, available, self._history(feedback) if index else None)
        parser = PlanParser(self.registry, first_step=first_step, available=available, taken=taken)
        intake = _Intake(self.program)
        start_s = self._now()
        if self.opts.stream:
            text, first_step_s, error = await self._stream_plan(request, parser, intake)
        else:
            text, first_step_s, error = await self._batch_plan(request, parser, intake)
        return PlanRound(
            index=index,
            text=text,
            nodes=tuple(intake.submitted),
            reused=dict(intake.reused),
            thoughts=parser.thoughts,
            grammar=request.grammar is not None,
            error=error,
            plan_start_s=start_s,
            first_step_s=first_step_s,
            plan_end_s=self._now(),
        )

    def _plan_request(self, first_step: int, available: list[str], history: str | None) -> LLMRequest:
        opts = self.opts
        messages = build_planner_prompt(
            self.task, self.registry, examples=opts.examples, history=history, first_step=first_step
        )
        grammar = None
        if self.constrained:
            grammar = build_grammar(
                self.registry,
                max_steps=opts.max_steps,
                first_step=first_step,
                available=available,
                max_string_chars=opts.max_string_chars,
            )
        return LLMRequest(
            messages=messages,
            max_tokens=opts.plan_max_tokens,
            temperature=opts.temperature,
            stop=() if grammar is not None else (END_OF_PLAN,),
            grammar=grammar,
            metadata=self.program.llm_metadata(),
        )

    async def _stream_plan(
        self, request: LLMRequest, parser: PlanParser, intake: _Intake
    ) -> tuple[str, float | None, PlanError | None]:
        pieces: list[str] = []
        first_step_s: float | None = None
        try:
            async with _closing(self.backend.stream(request)) as deltas:
                async for delta in deltas:
                    pieces.append(delta)
                    for node in parser.feed(delta):
                        first_step_s = self._now() if first_step_s is None else first_step_s
                        intake.submit(node)
                    if parser.done:
                        break  # join() seen: stop generating
            parser.finish()
        except PlanError as exc:
            return "".join(pieces), first_step_s, exc
        return "".join(pieces), first_step_s, None

    async def _batch_plan(
        self, request: LLMRequest, parser: PlanParser, intake: _Intake
    ) -> tuple[str, float | None, PlanError | None]:
        text = (await self.backend.complete(request)).text
        try:
            parser.feed(text)
            plan = parser.finish()
        except PlanError as exc:
            return text, None, exc  # rejected as a whole: nothing runs
        first_step_s = self._now() if plan.nodes else None
        intake.submit_batch(plan.nodes)
        return text, first_step_s, None

    def _history(self, feedback: str | None) -> str:
        observations = render_observations(self._observations())
        lines = ["Steps so far and their results:", observations or "(none ran)"]
        if feedback:
            lines.append(feedback)
        lines.append("Do not repeat steps that succeeded: refer to their results as $N.")
        return "\n".join(lines)

    # -- joining ------------------------------------------------------------------------------------

    async def _join(self, *, allow_replan: bool) -> tuple[JoinDecision, str, float]:
        structured = self.constrained
        messages = build_joiner_prompt(
            self.task, render_observations(self._observations()), allow_replan=allow_replan, structured=structured
        )
        request = LLMRequest(
            messages=messages,
            max_tokens=self.opts.join_max_tokens,
            temperature=self.opts.temperature,
            json_schema=join_schema(allow_replan=allow_replan) if structured else None,
            metadata=self.program.llm_metadata(is_last_turn=not allow_replan),
        )
        start = time.perf_counter()
        text = (await self.backend.complete(request)).text
        return parse_join_output(text), text, time.perf_counter() - start

    # -- helpers ------------------------------------------------------------------------------------

    def _observations(self) -> list[Observation]:
        result = self.program.result
        reasons = {f.node_id: f.reason for f in result.failures}
        return [
            Observation(
                node=node,
                state=result.states.get(node.id, NodeState.PENDING),
                output=result.outputs.get(node.id),
                error=reasons.get(node.id),
            )
            for node in self.program.graph
        ]

    def _now(self) -> float:
        return time.perf_counter() - self._t0


class _Intake:
    """Hands one round's steps to the program.

    A step that repeats a call an earlier round already finished (same callee, same arguments)
    is not run again: it becomes an alias of that step, and later references follow the alias.
    Small models often rewrite the whole plan when replanning; this keeps executed work executed.
    """

    def __init__(self, program: Program) -> None:
        outputs = program.result.outputs
        self._program = program
        self._finished = {_call_key(node): node.id for node in program.graph if node.id in outputs}
        self.reused: dict[str, str] = {}  # step id -> the earlier step it repeats
        self.submitted: list[CallNode] = []

    def submit(self, node: CallNode) -> None:
        ready = self._prepare(node)
        if ready is not None:
            self._program.submit(ready)
            self.submitted.append(ready)

    def submit_batch(self, nodes: Sequence[CallNode]) -> None:
        ready = [n for n in (self._prepare(node) for node in nodes) if n is not None]
        self._program.submit_batch(ready)
        self.submitted += ready

    def _prepare(self, node: CallNode) -> CallNode | None:
        node = _follow_aliases(node, self.reused)
        earlier = self._finished.get(_call_key(node))
        if earlier is not None:
            self.reused[node.id] = earlier
            return None
        return node


def _call_key(node: CallNode) -> tuple[str, str, str, str]:
    kwargs = sorted(node.kwargs.items(), key=lambda item: item[0])
    return (node.kind.value, node.target, repr(node.args), repr(kwargs))


def _follow_aliases(node: CallNode, aliases: Mapping[str, str]) -> CallNode:
    if not any(dep in aliases for dep in node.deps):
        return node

    def swap(value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(aliases.get(value.node_id, value.node_id))
        if isinstance(value, Concat):
            return Concat(tuple(swap(p) for p in value.parts))
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        if isinstance(value, Mapping):
            return {k: swap(v) for k, v in value.items()}
        return value

    rewritten = replace(node, args=swap(node.args), kwargs=swap(node.kwargs))
    try:  # the label shows the call as it runs, with the references it really has
        return replace(rewritten, label=format_step(rewritten))
    except ValueError:
        return rewritten


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[str]) -> AsyncIterator[AsyncIterator[str]]:
    """Close the backend's stream when we stop early, so the engine aborts the request."""
    try:
        yield stream
    finally:
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()


def _decision_dict(decision: JoinDecision) -> dict[str, str]:
    if isinstance(decision, Finish):
        return {"action": "finish", "answer": decision.answer, "thought": decision.thought}
    return {"action": "replan", "reason": decision.reason, "thought": decision.thought}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
