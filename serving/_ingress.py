"""The HTTP front of `agentflow serve --replicas N`, without Ray: OpenAI-compatible routes over a pool of replicas.

Same rules as the single engine's middleware (`serving._server`): the API key guards every route;
a loopback bind answers loopback `Host`s only; the body must be JSON; program fields in
`vllm_xargs` or at the top level are validated by the one schema (`rewrite_payload`), a malformed
one is a 400 and so is an unknown top-level field beside them; session ids are read the same way
(`serving._identity`). Then the prompt is built once, here (the model's chat template), so the
router sees the request's program key and its length in tokens (`ReplicaRequest`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream`), `GET /v1/models`,
`GET /health`, `GET /agentflow/metrics` (the router's counters and each replica's last report;
program keys only to a caller holding the key).

`serving._ray` runs `Ingress` in a Ray Serve deployment and gives it a `ReplicaPool` over a
deployment handle; tests give it a pool of their own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflow.backends.tool_calls import parse_tool_calls
from agentflow.exceptions import MetadataError
from agentflow.metadata import ProgramMetadata, describe_validation
from serving._affinity import program_key
from serving._guard import AccessPolicy
from serving._http import ERROR_TYPES, finite_json
from serving._identity import Session, request_session
from serving._replicas import ReplicaDelta, ReplicaReply, ReplicaRequest
from serving._server import parse_json, rewrite_payload

__all__ = ["HttpReply", "Ingress", "PromptBuilder", "ReplicaPool", "ReplicaUnavailable"]

_MAX_BODY_BYTES = 64 * 1024**2


class ReplicaUnavailable(Exception):
    """No replica could serve the request: all saturated, or the one serving it died. A 503."""


class ReplicaPool(Protocol):
    """The engine replicas behind the ingress (a Ray Serve deployment handle, in `serving._ray`)."""

    async def complete(self, request: ReplicaRequest) -> ReplicaReply: ...

    def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]: ...

    async def metrics(self) -> dict[str, Any]: ...


class PromptBuilder(Protocol):
    """The model's chat template and token count (a Hugging Face tokenizer, in `HfPrompts`)."""

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str: ...

    def count_tokens(self, text: str) -> int: ...


class HfPrompts:
    """`PromptBuilder` over a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str:
        text = self._tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=[dict(t) for t in tools] if tools else None,
            tokenize=False,
            add_generation_prompt=True,
        )
        assert isinstance(text, str)
        return text

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A JSON answer, or an event stream when `events` is set."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: AsyncIterator[bytes] | None = None


# -- request bodies (pydantic at the edge) -------------------------------------------------------------


class _Structured(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grammar: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="json")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2, allow_inf_nan=False)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = None
    user: str | None = None
    session_id: str | None = None
    prompt_cache_key: str | None = None
    vllm_xargs: dict[str, Any] | None = None
    structured_outputs: _Structured | None = None  # vLLM's: the output follows a grammar or a JSON schema

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionBody(_Body):
    prompt: str = Field(min_length=1)


# OpenAI fields accepted and not acted on (beside program fields, anything else is refused).
_IGNORED = frozenset({"stream_options", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "metadata"})
_CHAT_FIELDS = frozenset(ChatBody.model_fields) | _IGNORED | {"parallel_tool_calls"}
_COMPLETION_FIELDS = frozenset(CompletionBody.model_fields) | _IGNORED


# -- the ingress ---------------------------------------------------------------------------------------


class Ingress:
    """Validates, builds prompts, hands requests to the pool, answers in OpenAI's shapes."""

    def __init__(
        self,
        *,
        pool: ReplicaPool,
        prompts: PromptBuilder,
        access: AccessPolicy,
        served_model_name: str = "default",
        max_model_len: int = 4096,
    ) -> None:
        self.pool = pool
        self.prompts = prompts
        self.access = access
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len

    async def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        """One HTTP request (headers lowercased) -> its answer."""
        if not self.access.host_allowed(headers):
            return _error(403, "this server answers requests addressed to its own host only")
        if not self.access.authorized(headers):
            return _error(401, "a valid API key is required (Authorization: Bearer ...)")
        route = (method, path.rstrip("/") or "/")
        if route == ("GET", "/health"):
            return HttpReply(200, {"ok": True})
        if route == ("GET", "/v1/models"):
            return HttpReply(200, self._models())
        if route == ("GET", "/agentflow/metrics"):
            return HttpReply(200, _without_keys(await self.pool.metrics(), keyed=self.access.keyed))
        if route in (("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
            return await self._generation(route[1], headers, body)
        return _error(404, f"no route {method} {path}"[:300])

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.served_model_name, "object": "model", "owned_by": "agentflow"}],
        }

    async def _generation(self, path: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        chat = path.endswith("chat/completions")
        try:
            parsed, request = self._parse(chat, headers, body)
        except MetadataError as exc:
            return _error(400, str(exc), param="vllm_xargs")
        except _BadRequest as exc:
            return _error(exc.status, str(exc))
        tools = parsed.tools if isinstance(parsed, ChatBody) and parsed.tool_choice != "none" else None
        if parsed.stream:
            return HttpReply(200, events=self._events(request, chat=chat, tools=bool(tools)))
        try:
            reply = await self.pool.complete(request)
        except ReplicaUnavailable as exc:
            return _error(503, str(exc))
        return HttpReply(200, _answer(reply, request, chat=chat, tools=bool(tools), model=self.served_model_name),
                         headers={"x-agentflow-replica": reply.replica})  # fmt: skip

    # -- parsing -----------------------------------------------------------------------------------------

    def _parse(self, chat: bool, headers: Mapping[str, str], body: bytes) -> tuple[_Body, ReplicaRequest]:
        if len(body) > _MAX_BODY_BYTES:
            raise _BadRequest(413, f"the request body is over {_MAX_BODY_BYTES} bytes")
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise _BadRequest(400, "the body must be a JSON object")
        session = request_session(headers, payload)
        rewrite_payload(payload, known_fields=_CHAT_FIELDS if chat else _COMPLETION_FIELDS)  # moves fields in place
        model: type[_Body] = ChatBody if chat else CompletionBody
        try:
            parsed = model.model_validate(payload)
        except ValidationError as exc:
            raise _BadRequest(400, describe_validation(exc)[:1000]) from None
        return parsed, self._replica_request(parsed, self._prompt(parsed), session)

    def _prompt(self, parsed: _Body) -> str:
        if isinstance(parsed, ChatBody):
            try:
                return self.prompts.chat_prompt(parsed.messages, parsed.tools)
            except Exception as exc:  # the template's own complaint about the messages
                raise _BadRequest(400, f"the messages do not fit the model's chat template: {exc}"[:1000]) from None
        assert isinstance(parsed, CompletionBody)
        return parsed.prompt

    def _replica_request(self, parsed: _Body, prompt: str, session: Session | None) -> ReplicaRequest:
        xargs = {k: v for k, v in (parsed.vllm_xargs or {}).items() if k != "session_id"} or None
        metadata = ProgramMetadata.from_extra_args(xargs)
        num_tokens = self.prompts.count_tokens(prompt)
        room = self.max_model_len - num_tokens
        if room < 1:
            raise _BadRequest(400, f"the prompt is {num_tokens} tokens; this server's limit is {self.max_model_len}")
        wanted = (parsed.max_completion_tokens if isinstance(parsed, ChatBody) else None) or parsed.max_tokens
        structured = parsed.structured_outputs or _Structured()
        if structured.grammar is not None and structured.json_schema is not None:
            raise _BadRequest(400, "structured_outputs takes one of grammar and json")
        return ReplicaRequest(
            request_id=f"af-{uuid.uuid4().hex}",
            prompt=prompt,
            max_tokens=min(wanted or room, room),
            temperature=parsed.temperature,
            stop=parsed.stops(),
            extra_args=xargs,
            session_id=session.session_id if session is not None else None,
            key=program_key(xargs, session, prompt),
            context_tokens=num_tokens,
            is_last_turn=metadata is not None and metadata.is_last_turn,
            grammar=structured.grammar,
            json_schema=structured.json_schema,
        )

    # -- streaming ------------------------------------------------------------------------------------------

    async def _events(self, request: ReplicaRequest, *, chat: bool, tools: bool) -> AsyncIterator[bytes]:
        """Server-sent events in OpenAI's chunk shapes; with tools, one chunk at the end (calls are parsed whole)."""
        texts: list[str] = []
        try:
            async for delta in self.pool.stream(request):
                texts.append(delta.text)
                if not tools and (delta.text or delta.finished):
                    yield _sse(
                        _chunk(request, delta.text, delta.finish_reason, chat=chat, model=self.served_model_name)
                    )
                if delta.finished and tools:
                    reply = ReplicaReply.of_stream(texts, delta)
                    yield _sse(_tool_chunk(reply, request, model=self.served_model_name))
        except ReplicaUnavailable as exc:
            yield _sse({"error": {"message": str(exc), "type": "ServiceUnavailableError", "code": 503}})
        yield b"data: [DONE]\n\n"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- answers ------------------------------------------------------------------------------------------------


def _answer(reply: ReplicaReply, request: ReplicaRequest, *, chat: bool, tools: bool, model: str) -> dict[str, Any]:
    usage = {
        "prompt_tokens": reply.num_prompt_tokens,
        "completion_tokens": reply.num_completion_tokens,
        "total_tokens": reply.num_prompt_tokens + reply.num_completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.num_cached_tokens},
    }
    created = int(time.time())
    if not chat:
        choice = {"index": 0, "text": reply.text, "finish_reason": reply.finish_reason, "logprobs": None}
        return {"id": f"cmpl-{request.request_id}", "object": "text_completion", "created": created,
                "model": model, "choices": [choice], "usage": usage}  # fmt: skip
    message, finish = _message(reply, tools=tools)
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion", "created": created,
            "model": model, "choices": [choice], "usage": usage}  # fmt: skip


def _message(reply: ReplicaReply, *, tools: bool) -> tuple[dict[str, Any], str | None]:
    if not tools:
        return {"role": "assistant", "content": reply.text}, reply.finish_reason
    parsed = parse_tool_calls(reply.text, bare_json=True)
    if not parsed.calls:
        return {"role": "assistant", "content": reply.text}, reply.finish_reason
    calls = [call.to_message() for call in parsed.calls]
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}, "tool_calls"


def _chunk(request: ReplicaRequest, text: str, finish: str | None, *, chat: bool, model: str) -> dict[str, Any]:
    created = int(time.time())
    if chat:
        choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [choice]}  # fmt: skip
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return {"id": f"cmpl-{request.request_id}", "object": "text_completion", "created": created,
            "model": model, "choices": [choice]}  # fmt: skip


def _tool_chunk(reply: ReplicaReply, request: ReplicaRequest, *, model: str) -> dict[str, Any]:
    message, finish = _message(reply, tools=True)
    delta = {k: v for k, v in message.items() if k != "role" and v is not None}
    for index, call in enumerate(delta.get("tool_calls", [])):
        call["index"] = index
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [choice]}  # fmt: skip


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(finite_json(payload), allow_nan=False).encode() + b"\n\n"


def _error(status: int, message: str, *, param: str | None = None) -> HttpReply:
    error = {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param, "code": status}
    headers = {"www-authenticate": "Bearer"} if status == 401 else {}
    return HttpReply(status, {"error": error}, headers=headers)


def _without_keys(metrics: dict[str, Any], *, keyed: bool) -> dict[str, Any]:
    """The pool's metrics; without an API key on the server, no program keys (they name programs)."""
    if keyed:
        return metrics
    replicas = metrics.get("replicas")
    if not isinstance(replicas, dict):
        return metrics
    hidden = {
        rid: {k: (len(v) if k == "resident" and isinstance(v, list) else v) for k, v in report.items()}
        if isinstance(report, dict)
        else report
        for rid, report in replicas.items()
    }
    return {**metrics, "replicas": hidden}
