"""`agentflow serve`: vLLM's OpenAI-compatible server with the program-aware scheduler.

The server is vLLM's own (`vllm serve`), started with `--scheduler-cls PROGRAM_AWARE_SCHEDULER`
and one ASGI middleware, `ProgramMetadataMiddleware`:

- On `POST /v1/completions`, `/v1/chat/completions`, `/v1/responses` and `/invocations` it
  reads the program fields (`agentflow.metadata.ProgramMetadata`) from `vllm_xargs` or from the top
  level of the body (what the OpenAI client's `extra_body` produces), validates them, and
  forwards them in `vllm_xargs`, where the scheduler reads them. Malformed metadata gets
  HTTP 400 and never reaches the engine. A request without program fields passes untouched.
- It serves the scheduler's own routes (the engine core runs in another process; vLLM's
  utility-call channel carries a `serving._control` command to it):
  `GET /agentflow/metrics`, `POST /agentflow/end_program {"program_id"}`,
  `POST /agentflow/tool_duration {"tool", "duration_s"}`, `POST /agentflow/configure {knobs}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agentflow.exceptions import MetadataError
from agentflow.metadata import PROGRAM_KEYS, ProgramMetadata, describe_validation
from serving import _vllm
from serving._control import PROGRAM_AWARE_SCHEDULER, Configure, EndProgram, GetMetrics, ToolDuration

__all__ = ["ProgramMetadataMiddleware", "ServeOptions", "serve", "vllm_server_args"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MIDDLEWARE = "serving._server.ProgramMetadataMiddleware"
_GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/invocations"})
_MAX_BODY_BYTES = 64 * 1024**2


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    model_dir: Path
    served_model_name: str = "default"
    host: str = "127.0.0.1"
    port: int = 8000
    kv_cache_bytes: int = 1024**3
    max_model_len: int = 4096
    max_num_seqs: int = 64
    block_size: int = 32
    scheduler_cls: str | None = PROGRAM_AWARE_SCHEDULER  # None: vLLM's stock scheduler
    scheduler_knobs: dict[str, Any] | None = None  # serving._knobs.SchedulerKnobs
    seed: int = 0
    extra_args: tuple[str, ...] = ()  # passed to vLLM as they are


def vllm_server_args(options: ServeOptions) -> list[str]:
    """The `vllm serve` command line for these options (the middleware is always on)."""
    argv = [
        "--model", str(options.model_dir),
        "--served-model-name", options.served_model_name,
        "--host", options.host,
        "--port", str(options.port),
        "--dtype", "bfloat16",
        "--enforce-eager",
        "--block-size", str(options.block_size),
        "--max-model-len", str(options.max_model_len),
        "--max-num-seqs", str(options.max_num_seqs),
        "--kv-cache-memory-bytes", str(options.kv_cache_bytes),
        "--seed", str(options.seed),
        "--middleware", MIDDLEWARE,
    ]  # fmt: skip
    if options.scheduler_cls is not None:
        argv += ["--scheduler-cls", options.scheduler_cls]
    if options.scheduler_knobs:
        argv += ["--additional-config", json.dumps({_vllm.SCHEDULER_KNOBS_KEY: options.scheduler_knobs})]
    return argv + list(options.extra_args)


def serve(options: ServeOptions) -> None:
    """Run the server until interrupted."""
    _vllm.run_openai_server(vllm_server_args(options))


# -- the middleware ---------------------------------------------------------------------------------


class ProgramMetadataMiddleware:
    """Validates program metadata before vLLM sees a request; serves `/agentflow/...` (pure ASGI)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith("/agentflow/"):
            await _agentflow_route(scope, receive, send)
            return
        if scope.get("method") != "POST" or path not in _GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            rewritten = rewrite_body(body)
        except MetadataError as exc:
            await _send_json(send, 400, _openai_error(str(exc), "vllm_xargs"))
            return
        if rewritten is None:
            await self.app(scope, _resend(body, receive), send)
        else:
            await self.app(_with_length(scope, len(rewritten)), _resend(rewritten, receive), send)


def rewrite_body(body: bytes) -> bytes | None:
    """The body with its program fields validated and moved into `vllm_xargs`; None: unchanged.

    Raises:
        MetadataError: malformed fields, or one given twice with different values.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return None  # vLLM answers malformed JSON itself
    if not isinstance(payload, dict):
        return None
    top = {key: payload.pop(key) for key in list(payload) if key in PROGRAM_KEYS}
    xargs = payload.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise MetadataError("vllm_xargs must be a JSON object")
    xargs = dict(xargs or {})
    for key, value in top.items():
        if key in xargs and xargs[key] != value:
            raise MetadataError(f"{key} is given both in the body and in vllm_xargs, with different values")
    merged = {**xargs, **top}
    if ProgramMetadata.from_extra_args(merged) is None and not top:
        return None
    # vLLM types vllm_xargs values as str | int | float: send flags as 0/1 and leave nulls out.
    payload["vllm_xargs"] = {k: int(v) if isinstance(v, bool) else v for k, v in merged.items() if v is not None}
    return json.dumps(payload).encode()


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            break  # not ours to police: vLLM sees the truncated body and rejects it
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _resend(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body we already read, then the client's later messages."""
    sent = False

    async def resend() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect and the like

    return resend


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def _openai_error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload, default=_json_default).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# -- /agentflow routes --------------------------------------------------------------------------------

# (method, path) -> the command it sends, built from the request body.
_ROUTES: dict[tuple[str, str], Callable[[dict[str, Any]], BaseModel]] = {
    ("GET", "/agentflow/metrics"): lambda _body: GetMetrics(),
    ("POST", "/agentflow/end_program"): lambda body: EndProgram.model_validate(body),
    ("POST", "/agentflow/tool_duration"): lambda body: ToolDuration.model_validate(body),
    ("POST", "/agentflow/configure"): lambda body: Configure(knobs=body),
}


async def _agentflow_route(scope: Scope, receive: Receive, send: Send) -> None:
    make_command = _ROUTES.get((scope.get("method", ""), scope.get("path", "")))
    if make_command is None:
        await _send_json(send, 404, _openai_error(f"no route {scope.get('method')} {scope.get('path')}", None))
        return
    body: Any = {}
    if scope.get("method") == "POST":
        try:
            body = json.loads(await _read_body(receive) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await _send_json(send, 400, _openai_error("the body must be a JSON object", None))
            return
    try:
        command = make_command(body)
    except ValidationError as exc:
        await _send_json(send, 400, _openai_error(describe_validation(exc), None))
        return
    engine_client = _vllm.server_engine_client(scope)
    if engine_client is None:
        await _send_json(send, 503, _openai_error("the engine is not ready", None))
        return
    try:
        result = await _vllm.engine_core_call(engine_client, command.model_dump())
    except Exception as exc:  # the engine core reports a failed call as an exception here
        status = 400 if isinstance(command, Configure) else 500
        await _send_json(send, status, _openai_error(str(exc), None))
        return
    await _send_json(send, 200, result if result is not None else {"ok": True})
