"""`agentflow serve`'s middleware without a server: validation, rewriting, routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentflow.exceptions import MetadataError, UserError
from serving._guard import AccessPolicy, split_host
from serving._http import finite_json
from serving._server import (
    ProgramMetadataMiddleware,
    ServeOptions,
    aggregate_metrics,
    configure_access,
    rewrite_body,
    rewrite_payload,
    vllm_server_args,
)


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
        {"vllm_xargs": {"kv_transfer_params": "0"}},  # vLLM's own key of the wrong shape: a 500 inside vLLM
        {"vllm_xargs": {"program_id": "p", "kv_cache_report_mode": "sometimes"}},
    ],
)
def test_malformed_metadata_is_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(MetadataError):
        rewrite_body(_body(**payload))


@pytest.mark.parametrize("body", [_body(), _body(vllm_xargs={"custom": 1}), b"[1, 2]"])
def test_bodies_without_program_fields_pass_untouched(body: bytes) -> None:
    assert rewrite_body(body) is None


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[" * 100_000, b'{"a": ' * 5000])
def test_a_body_that_is_not_json_is_a_400_never_a_500(body: bytes) -> None:
    with pytest.raises(MetadataError, match="JSON"):
        rewrite_body(body)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.calls.append((scope, message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _request(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [body[:5], body[5:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    sent_headers = {"content-length": str(len(body)), "content-type": "application/json", **(headers or {})}
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in sent_headers.items()],
    }
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
    assert _request(app, "GET", "/agentflow/configure")[0] == 405
    assert _request(app, "POST", "/agentflow/end_program", b'{"program_id": ""}')[0] == 400
    assert _request(app, "POST", "/agentflow/end_program", b'{"program_id": "' + b"x" * 600 + b'"}')[0] == 400
    assert _request(app, "POST", "/agentflow/tool_duration", b'{"tool": "cat", "duration_s": -1}')[0] == 400
    assert _request(app, "POST", "/agentflow/tool_duration", b'{"tool": "cat", "duration_s": 1e999}')[0] == 400
    assert _request(app, "POST", "/agentflow/configure", b"[" * 10_000)[0] == 400
    assert _request(app, "POST", "/agentflow/configure", b"x" * 100_000)[0] == 413
    assert _request(app, "POST", "/agentflow/configure", b"{}", {"content-type": "text/plain"})[0] == 415
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


# -- access: the API key, Host, Origin --------------------------------------------------------------------


@pytest.fixture
def keyed_server() -> Iterator[None]:
    configure_access(api_keys=["secret"], host="127.0.0.1", port=8000)
    yield
    configure_access(api_keys=None, host="127.0.0.1", port=8000)


@pytest.mark.usefixtures("keyed_server")
def test_with_a_key_every_route_we_read_needs_it_before_its_body_is_read() -> None:
    inner = _Recorder()
    app = ProgramMetadataMiddleware(inner)
    for method, path, body in (
        ("GET", "/agentflow/metrics", b""),
        ("POST", "/agentflow/end_program", b'{"program_id": "p"}'),
        ("POST", "/agentflow/tool_duration", b"not even json"),
        ("POST", "/agentflow/configure", b'{"reserve_turns": 1e308}'),
        ("POST", "/v1/completions", _body(program_id=3)),  # 401, not a 400 that describes the body
    ):
        status, answer = _request(app, method, path, body)
        assert status == 401, (method, path)
        assert json.loads(answer)["error"]["code"] == 401
        status, _ = _request(app, method, path, body, {"authorization": "Bearer wrong"})
        assert status == 401
    assert inner.calls == []
    ok = {"authorization": "Bearer secret"}
    assert _request(app, "POST", "/v1/completions", _body(program_id=3), ok)[0] == 400  # now it may be read
    assert _request(app, "POST", "/v1/completions", _body(program_id="p"), ok)[0] == 200


def test_a_loopback_server_refuses_foreign_hosts_and_origins() -> None:
    configure_access(api_keys=None, host="127.0.0.1", port=8000)
    app = ProgramMetadataMiddleware(_Recorder())
    rebound = {"host": "attacker.example:8000"}
    assert _request(app, "GET", "/agentflow/metrics", headers=rebound)[0] == 403
    assert _request(app, "POST", "/v1/completions", _body(), rebound)[0] == 403
    page = {"host": "127.0.0.1:8000", "origin": "http://attacker.example"}
    assert _request(app, "POST", "/agentflow/configure", b"{}", page)[0] == 403
    own = {"host": "localhost:8000", "origin": "http://localhost:8000"}
    assert _request(app, "GET", "/agentflow/metrics", headers=own)[0] == 503  # allowed: no engine here


def test_access_policy_rules() -> None:
    policy = AccessPolicy.for_server(api_keys=["k1", "", "k2"], host="127.0.0.1", port=8000)
    assert policy.keyed and len(policy.token_hashes) == 2
    assert policy.authorized({"authorization": "Bearer k2"}) and not policy.authorized({"authorization": "Basic k2"})
    assert policy.host_allowed({"host": "[::1]:8000"}) and not policy.host_allowed({"host": "127.0.0.1:9"})
    assert not policy.origin_allowed({"origin": "null"})
    open_bind = AccessPolicy.for_server(api_keys=[], host="0.0.0.0", port=8000)
    assert not open_bind.keyed and open_bind.authorized({}) and open_bind.host_allowed({"host": "my.host:8000"})
    assert open_bind.origin_allowed({"host": "my.host:8000", "origin": "http://my.host:8000"})
    assert not open_bind.origin_allowed({"host": "my.host:8000", "origin": "http://evil.example:8000"})
    assert split_host("[::1]:80") == ("::1", 80) and split_host("Example.COM") == ("example.com", None)


def test_metrics_without_the_key_name_no_program() -> None:
    metrics = {
        "pins": {"created": 3},
        "admissions": [{"program_id": "secret-job"}],
        "recent_pins": [{"program_id": "secret-job"}],
        "programs": {"tracked": 1, "active": [{"program_id": "secret-job"}]},
        "predictor": {"observed": 2, "tools": {"secret-tool": {}}},
        "prefill": float("inf"),
    }
    aggregate = aggregate_metrics(metrics)
    assert "secret" not in json.dumps(aggregate) and aggregate["pins"] == {"created": 3}
    assert finite_json(aggregate)["prefill"] is None


# -- session ids (serving._identity) and --identify-by -------------------------------------------------


def test_session_precedence_follows_vllm_then_dynamo_then_openai_fields() -> None:
    from serving._identity import request_session

    every = {"x-session-id": "hdr", "x-dynamo-session-id": "dyn"}
    body = {"session_id": "body", "prompt_cache_key": "pck", "user": "usr"}
    assert request_session(every, body) == request_session({}, {"session_id": "body"})
    assert request_session(every, {"user": "usr"}).source == "header:x-session-id"
    assert request_session({"x-dynamo-session-id": "dyn"}, {"user": "usr"}).source == "header:x-dynamo-session-id"
    assert request_session({}, {"prompt_cache_key": "pck", "user": "usr"}).session_id == "pck"
    assert request_session({}, {"user": "usr"}).session_id == "usr"
    assert request_session({}, {"user": 5, "prompt_cache_key": ""}) is None
    assert request_session({"x-session-id": ""}, {}) is None
    assert request_session({}, {"user": "u" * 10_000}) is None  # too long to be a session: not used


@pytest.mark.parametrize("value", ["x" * 600, "caf\u00e9", "tab\there", "\x00"])
def test_a_bad_session_header_is_refused_even_when_another_source_wins(value: str) -> None:
    from serving._identity import request_session

    with pytest.raises(MetadataError, match="x-dynamo-session-id"):
        request_session({"x-dynamo-session-id": value}, {"session_id": "fine"})


def test_a_session_vllm_does_not_read_goes_to_vllm_xargs() -> None:
    payload = {"model": "m", "prompt": "p", "user": "u1"}
    out = json.loads(rewrite_payload(dict(payload), known_fields=None, session_id="u1") or b"")
    assert out["vllm_xargs"] == {"session_id": "u1"} and out["user"] == "u1"
    # A client's own vllm_xargs.session_id stays; with nothing to add the body passes untouched.
    mine = {**payload, "vllm_xargs": {"session_id": "mine"}}
    assert rewrite_payload(dict(mine), known_fields=None, session_id="u1") is None
    assert rewrite_payload(dict(payload), known_fields=None) is None


def test_identify_by_maps_to_knobs_and_refuses_unknown_names() -> None:
    from serving._cli import identify_knobs

    assert identify_knobs("fields,session,chain") == dict.fromkeys(
        ("identify_by_fields", "identify_by_session", "identify_by_chain"), True
    )
    assert identify_knobs("fields") == {
        "identify_by_fields": True,
        "identify_by_session": False,
        "identify_by_chain": False,
    }
    assert not any(identify_knobs("none").values())
    with pytest.raises(UserError, match="unknown chains"):
        identify_knobs("fields,chains")
