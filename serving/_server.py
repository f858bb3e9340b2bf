"""`agentflow serve`: vLLM's OpenAI-compatible server with the program-aware scheduler.

The server is vLLM's own (`vllm serve`), started with `--scheduler-cls PROGRAM_AWARE_SCHEDULER`
and one ASGI middleware, `ProgramMetadataMiddleware`, which sits outside vLLM's own middlewares:

- **Access** (`serving._guard`): the API key, when set, guards every route below before any body
  is read; on a loopback bind only loopback `Host`s are answered; state-changing `/agentflow`
  routes take only `application/json` and refuse foreign `Origin`s.
- **Generation routes** (every POST route of vLLM's whose body model has `vllm_xargs`, plus
  `/invocations`): the body must be JSON (else 400, never a 500); program fields
  (`agentflow.metadata.ProgramMetadata`) in `vllm_xargs` or at the top level (what the OpenAI
  client's `extra_body` produces) are validated by the one schema and forwarded in `vllm_xargs`,
  where the scheduler reads them; with program fields present, a top-level field the route does
  not know is refused. A session id (`serving._identity`: `x-dynamo-session-id`, the body's
  `prompt_cache_key` or `user`) that vLLM does not read by itself goes to `vllm_xargs.session_id`,
  where it does; a session header too long or not printable ASCII is refused. A request with
  neither passes untouched.
- **The scheduler's routes** (the engine core runs in another process; vLLM's utility-call
  channel carries a `serving._control` command to it): `GET /agentflow/metrics` (per-program
  detail only to a caller holding the key), `POST /agentflow/end_program {"program_id"}`,
  `POST /agentflow/tool_duration {"tool", "duration_s"}`, `POST /agentflow/configure {knobs}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agentflow.backends.tool_calls import parse_tool_calls
from agentflow.exceptions import MetadataError
from agentflow.metadata import PROGRAM_KEYS, ProgramMetadata, describe_validation
from serving import _vllm
from serving._control import PROGRAM_AWARE_SCHEDULER, Configure, EndProgram, GetMetrics, ToolDuration
from serving._guard import AccessPolicy
from serving._http import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    headers_of,
    read_body,
    resend,
    send_error,
    send_json,
    with_length,
)
from serving._identity import request_session

__all__ = [
    "ProgramMetadataMiddleware",
    "ServeOptions",
    "configure_access",
    "parse_json",
    "rewrite_body",
    "serve",
    "vllm_server_args",
]

MIDDLEWARE = "serving._server.ProgramMetadataMiddleware"
_MAX_GENERATION_BODY_BYTES = 64 * 1024**2  # a long prompt in JSON; more is refused with 413
_MAX_CONTROL_BODY_BYTES = 64 * 1024  # the scheduler's routes take a few fields
_MAX_JSON_DEPTH = 64  # deeper bodies are refused before they are parsed
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


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
    tool_calls: bool = True  # OpenAI tool calling: the model's template renders `tools`, replies are parsed
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
    if options.tool_calls:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", _vllm.TOOL_CALL_PARSER]
    return argv + list(options.extra_args)


def serve(options: ServeOptions) -> None:
    """Run the server until interrupted."""
    if options.tool_calls:
        _vllm.register_tool_parser(lambda text: parse_tool_calls(text, bare_json=True))
    _vllm.run_openai_server(vllm_server_args(options), on_args=configure_access)


# -- who may call -----------------------------------------------------------------------------------

_access: AccessPolicy | None = None  # set by `serve` from vLLM's parsed arguments


def configure_access(*, api_keys: list[str] | None, host: str | None, port: int | None) -> None:
    """The access rules of the server this process runs (`serve` calls it with vLLM's own arguments).

    `api_keys`: vLLM's `--api-key` values; none given, `VLLM_API_KEY` counts, as in vLLM.
    """
    global _access
    keys = api_keys or [os.environ.get("VLLM_API_KEY", "")]
    _access = AccessPolicy.for_server(api_keys=[key for key in keys if key], host=host, port=port)


def _policy() -> AccessPolicy:
    if _access is None:  # the middleware inside a plain `vllm serve --middleware ...`
        configure_access(api_keys=None, host=None, port=None)
    assert _access is not None
    return _access


# -- the middleware ---------------------------------------------------------------------------------


class ProgramMetadataMiddleware:
    """Guards and validates before vLLM sees a request; serves `/agentflow/...` (pure ASGI)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = _policy()
        headers = headers_of(scope)
        if not policy.host_allowed(headers):
            await send_error(send, 403, "this server answers requests addressed to its own host only")
            return
        path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
        if path.startswith("/agentflow/"):
            await _agentflow_route(scope, path, headers, receive, send, policy)
        elif scope.get("method") == "POST" and _vllm.is_generation_route(scope, path):
            await self._generation(scope, path, headers, receive, send, policy)
        else:
            await self.app(scope, receive, send)

    async def _generation(
        self, scope: Scope, path: str, headers: Mapping[str, str], receive: Receive, send: Send, policy: AccessPolicy
    ) -> None:
        if not policy.authorized(headers):
            await send_error(send, 401, "a valid API key is required (Authorization: Bearer ...)")
            return
        try:
            body = await read_body(receive, limit_bytes=_MAX_GENERATION_BODY_BYTES)
            payload = parse_json(body)
            session = request_session(headers, payload) if isinstance(payload, dict) else None
            rewritten = rewrite_payload(
                payload,
                known_fields=_vllm.request_body_fields(scope, path),
                session_id=None if session is None or session.engine_reads_it else session.session_id,
            )
        except BodyTooLarge as exc:
            await send_error(send, 413, str(exc))
            return
        except MetadataError as exc:
            await send_error(send, 400, str(exc), param="vllm_xargs")
            return
        if rewritten is None:
            await self.app(scope, resend(body, receive), send)
        else:
            await self.app(with_length(scope, len(rewritten)), resend(rewritten, receive), send)


def rewrite_body(body: bytes) -> bytes | None:
    """`rewrite_payload` of a raw body (any route's fields allowed); None: unchanged.

    Raises:
        MetadataError: not JSON, malformed program fields, or one given twice with different values.
    """
    return rewrite_payload(parse_json(body), known_fields=None)


def rewrite_payload(
    payload: Any, *, known_fields: frozenset[str] | None, session_id: str | None = None
) -> bytes | None:
    """The body with its program fields validated and moved into `vllm_xargs`; None: nothing to change.

    `known_fields`: the route's own top-level fields; with program fields present, any other
    top-level field is refused (None: not checked). `session_id`: a session id vLLM would not
    find by itself, put in `vllm_xargs.session_id` unless the client set that already.

    Raises:
        MetadataError: malformed fields, an unknown field beside them, or one given twice differently.
    """
    if not isinstance(payload, dict):
        return None  # vLLM answers a body of the wrong shape itself
    top = {key: payload.pop(key) for key in list(payload) if key in PROGRAM_KEYS}
    xargs = payload.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise MetadataError("vllm_xargs must be a JSON object")
    xargs = dict(xargs or {})
    _vllm.check_reserved_extra_args(xargs)
    for key, value in top.items():
        if key in xargs and xargs[key] != value:
            raise MetadataError(f"{key} is given both in the body and in vllm_xargs, with different values")
    merged = {**xargs, **top}
    has_program = ProgramMetadata.from_extra_args(merged) is not None or bool(top)
    if session_id is not None and "session_id" not in merged:
        merged["session_id"] = session_id
    elif not has_program:
        return None
    if has_program and known_fields is not None and (unknown := sorted(set(payload) - known_fields)):
        raise MetadataError(f"unknown field(s) beside the program fields: {', '.join(unknown)[:200]}")
    # vLLM types vllm_xargs values as str | int | float: send flags as 0/1 and leave nulls out.
    payload["vllm_xargs"] = {k: int(v) if isinstance(v, bool) else v for k, v in merged.items() if v is not None}
    return json.dumps(payload).encode()


def parse_json(body: bytes) -> Any:
    """The body as JSON. Raises `MetadataError` (a 400) for anything that is not: never a 500."""
    if _nesting_depth(body) > _MAX_JSON_DEPTH:
        raise MetadataError(f"the JSON body nests deeper than {_MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MetadataError(f"the body is not valid JSON: {str(exc)[:200]}") from None


def _nesting_depth(body: bytes) -> int:
    """An upper bound on the JSON nesting depth (brackets inside strings count too: a cheap, safe bound)."""
    depth = deepest = 0
    for byte in body.translate(None, delete=_NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


# -- /agentflow routes --------------------------------------------------------------------------------

# (method, path) -> the command it sends, built from the request body.
_ROUTES: dict[tuple[str, str], Callable[[dict[str, Any]], BaseModel]] = {
    ("GET", "/agentflow/metrics"): lambda _body: GetMetrics(),
    ("POST", "/agentflow/end_program"): lambda body: EndProgram.model_validate(body),
    ("POST", "/agentflow/tool_duration"): lambda body: ToolDuration.model_validate(body),
    ("POST", "/agentflow/configure"): lambda body: Configure(knobs=body),
}
_PATHS = frozenset(path for _, path in _ROUTES)


async def _agentflow_route(
    scope: Scope, path: str, headers: Mapping[str, str], receive: Receive, send: Send, policy: AccessPolicy
) -> None:
    method = str(scope.get("method", ""))
    if not policy.authorized(headers):
        await send_error(send, 401, "a valid API key is required (Authorization: Bearer ...)")
        return
    make_command = _ROUTES.get((method, path))
    if make_command is None:
        status = 405 if path in _PATHS else 404
        await send_error(send, status, f"no route {method} {path}"[:300])
        return
    body: dict[str, Any] = {}
    if method == "POST":
        problem = _post_problem(headers, policy)
        if problem is not None:
            await send_error(send, *problem)
            return
        try:
            parsed = parse_json(await read_body(receive, limit_bytes=_MAX_CONTROL_BODY_BYTES) or b"{}")
        except BodyTooLarge as exc:
            await send_error(send, 413, str(exc))
            return
        except MetadataError as exc:
            await send_error(send, 400, str(exc))
            return
        if not isinstance(parsed, dict):
            await send_error(send, 400, "the body must be a JSON object")
            return
        body = parsed
    try:
        command = make_command(body)
    except ValidationError as exc:
        await send_error(send, 400, describe_validation(exc)[:1000])
        return
    await _run_command(scope, command, send, detail=policy.keyed)


def _post_problem(headers: Mapping[str, str], policy: AccessPolicy) -> tuple[int, str] | None:
    """Why a state-changing request is refused before its body is read (None: it is not)."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return 415, "the body must be application/json"
    if not policy.origin_allowed(headers):
        return 403, "cross-origin requests are refused"
    return None


async def _run_command(scope: Scope, command: BaseModel, send: Send, *, detail: bool) -> None:
    engine_client = _vllm.server_engine_client(scope)
    if engine_client is None:
        await send_error(send, 503, "the engine is not ready")
        return
    try:
        result = await _vllm.engine_core_call(engine_client, command.model_dump())
    except Exception as exc:  # the engine core reports a failed call as an exception here
        status = 400 if isinstance(command, Configure) else 503
        await send_error(send, status, str(exc)[:1000])
        return
    if isinstance(command, GetMetrics) and not detail:
        result = aggregate_metrics(result)
    await send_json(send, 200, result if result is not None else {"ok": True})


# Lists in the scheduler's metrics that name programs: only a caller holding the API key sees them.
_PER_PROGRAM = ("admissions", "recent_pins", "attributions")


def aggregate_metrics(metrics: Any) -> Any:
    """The scheduler's metrics without anything that names a program or a tool.

    What a server without an API key shows (with a key, a caller must hold it to see anything).
    """
    if not isinstance(metrics, dict):
        return metrics
    out = {k: v for k, v in metrics.items() if k not in _PER_PROGRAM}
    programs = out.get("programs")
    if isinstance(programs, dict):
        out["programs"] = {"tracked": programs.get("tracked")}
    predictor = out.get("predictor")
    if isinstance(predictor, dict):  # tool names are the programs' too
        out["predictor"] = {k: v for k, v in predictor.items() if k != "tools"}
    return out
