"""`agentflow serve`'s middleware without a server: validation, rewriting, routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentflow.exceptions import MetadataError
from serving._server import ProgramMetadataMiddleware, ServeOptions, rewrite_body, vllm_server_args


def _body(**payload: Any) -> bytes:
    return json.dumps({"model": "default", "prompt": "hi", **payload}).encode()


def test_top_level_fields_move_into_vllm_xargs() -> None:
    out = json.loads(rewrite_body(_body(program_id="p", turn=2, is_last_turn=True, next_tool="cat")) or b"")
    assert out["vllm_xargs"] == {"program_id": "p", "turn": 2, "is_last_turn": 1, "next_tool": "cat"}
    assert "program_id" not in out and out["prompt"] == "hi"


def test_vllm_xargs_fields_are_validated_and_kept() -> None:
    out = json.loads(
        rewrite_body(_body(vllm_xargs={"program_id": "p", "deadline_at_s": 5.0, "session_id": "s"})) or b""
    )
    assert out["vllm_xargs"] == {"program_id": "p", "deadline_at_s": 5.0, "session_id": "s"}  # vLLM's own key stays


@pytest.mark.parametrize(
    "payload",
    [
        {"vllm_xargs": {"program_id": "p", "turn": "one"}},
        {"vllm_xargs": {"program_id": "p", "next_tool_duration_s": -1}},
        {"vllm_xargs": {"program_id": "p", "surprise": 1}},
        {"program_id": "p", "turn": -2},
        {"program_id": "p", "vllm_xargs": {"program_id": "q"}},
        {"program_id": "p", "vllm_xargs": "not an object"},
    ],
)
def test_malformed_metadata_is_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(MetadataError):
        rewrite_body(_body(**payload))


@pytest.mark.parametrize("body", [_body(), _body(vllm_xargs={"custom": 1}), b"not json", b"[1, 2]"])
def test_bodies_without_program_fields_pass_untouched(body: bytes) -> None:
    assert rewrite_body(body) is None


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.calls.append((scope, message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _request(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [body[:5], body[5:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_middleware_answers_400_and_never_calls_the_engine() -> None:
    inner = _Recorder()
    status, body = _request(ProgramMetadataMiddleware(inner), "POST", "/v1/completions", _body(program_id=3))
    assert status == 400 and inner.calls == []
    assert json.loads(body)["error"]["code"] == 400


def test_middleware_forwards_rewritten_and_untouched_bodies() -> None:
    inner = _Recorder()
    app = ProgramMetadataMiddleware(inner)
    assert _request(app, "POST", "/v1/chat/completions", _body(program_id="p"))[0] == 200
    scope, forwarded = inner.calls[-1]
    assert json.loads(forwarded)["vllm_xargs"] == {"program_id": "p"}
    assert dict(scope["headers"])[b"content-length"] == str(len(forwarded)).encode()
    plain = _body()
    assert _request(app, "POST", "/v1/completions", plain)[0] == 200
    assert inner.calls[-1][1] == plain
    assert _request(app, "GET", "/v1/models")[0] == 200


def test_agentflow_routes_without_an_engine() -> None:
    app = ProgramMetadataMiddleware(_Recorder())
    assert _request(app, "GET", "/agentflow/nope")[0] == 404
    assert _request(app, "POST", "/agentflow/end_program", b'{"program_id": ""}')[0] == 400
    assert _request(app, "POST", "/agentflow/tool_duration", b'{"tool": "cat", "duration_s": -1}')[0] == 400
    assert _request(app, "GET", "/agentflow/metrics")[0] == 503  # no engine client in this app


def test_server_arguments() -> None:
    from pathlib import Path

    argv = vllm_server_args(ServeOptions(model_dir=Path("/m"), scheduler_knobs={"fixed_ttl_s": 2}))
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--scheduler-cls") + 1] == "serving._scheduler.ProgramAwareScheduler"
    assert json.loads(argv[argv.index("--additional-config") + 1]) == {"agentflow_scheduler_knobs": {"fixed_ttl_s": 2}}
    assert "--scheduler-cls" not in vllm_server_args(ServeOptions(model_dir=Path("/m"), scheduler_cls=None))


@pytest.mark.parametrize(
    "fields",
    [
        {"program_id": "p", "turn": "one"},
        {"program_id": "p", "next_tool_duration_s": -1},
        {"program_id": "p", "deadline_at_s": 0},
        {"program_id": "p", "surprise": 1},
    ],
)
async def test_one_validation_gives_the_embedded_error_and_the_http_400(fields: dict[str, Any]) -> None:
    """The embedded engine and the server reject malformed metadata with the same words, from one schema."""
    from agentflow.metadata import ProgramMetadata
    from serving.engine import EmbeddedEngine, EngineConfig

    with pytest.raises(MetadataError) as schema:
        ProgramMetadata.from_extra_args(fields)
    with pytest.raises(MetadataError) as embedded:  # refused before the engine would start
        await anext(EmbeddedEngine(EngineConfig()).generate(prompt="hi", max_tokens=1, extra_args=fields))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _body(vllm_xargs=fields), "more_body": False}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("malformed metadata reached vLLM")

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    await ProgramMetadataMiddleware(app)(scope, receive, send)
    assert sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert str(embedded.value) == str(schema.value) == error["message"]
