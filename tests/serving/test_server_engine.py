"""`agentflow serve` in a subprocess: program metadata through vllm_xargs or the body, the control
plane behind the API key, and every defect a hostile client found, each a 4xx that leaves the
server serving."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from _serving_workloads import token_prompt
from conftest import Served

pytestmark = pytest.mark.engine

RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def server(served: Served) -> httpx.Client:
    """A client holding the server's API key."""
    return served.client


def _complete(client: httpx.Client, prompt: Any, **body: Any) -> httpx.Response:
    return client.post("/v1/completions", json={"model": "default", "prompt": prompt, "max_tokens": 4, **body})


def _metrics(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/agentflow/metrics")
    assert response.status_code == 200, response.text
    return response.json()


def test_program_turns_through_vllm_xargs_pin_and_hit(server: httpx.Client) -> None:
    program, now = f"{RUN}-xargs", time.time()
    prompt = token_prompt(320, f"{RUN}:server:turn0")
    first = _complete(
        server, prompt, vllm_xargs={"program_id": program, "program_arrival_s": now, "turn": 0, "next_tool": "bash"}
    )
    assert first.status_code == 200, first.text
    assert _metrics(server)["pins"]["active"] == 1
    # The body's top level works too (the OpenAI client's extra_body puts fields there).
    second = _complete(
        server,
        prompt + token_prompt(48, f"{RUN}:server:tool"),
        program_id=program,
        program_arrival_s=now,
        turn=1,
        is_last_turn=True,
    )
    assert second.status_code == 200, second.text
    snapshot = _metrics(server)
    assert snapshot["pins"]["hit"] == 1 and snapshot["pins"]["active"] == 0
    assert snapshot["prefix_cache_by_turn"]["1"]["cached_tokens"] >= 320
    assert snapshot["requests"]["with_metadata"] >= 2


def test_chat_with_metadata_and_end_program(server: httpx.Client) -> None:
    program = f"{RUN}-chat"
    response = server.post(
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": "Name a fruit. " * 20}],
            "max_tokens": 4,
            "vllm_xargs": {"program_id": program, "turn": 0, "next_tool": "search"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert server.post("/agentflow/tool_duration", json={"tool": "search", "duration_s": 0.4}).status_code == 200
    ended = server.post("/agentflow/end_program", json={"program_id": program})
    assert ended.status_code == 200 and ended.json()["known"] is True
    snapshot = _metrics(server)
    assert snapshot["pins"]["active"] == 0 and snapshot["predictor"]["tools"]["search"]["samples"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"vllm_xargs": {"program_id": "p", "turn": "two"}},
        {"vllm_xargs": {"program_id": "p", "next_tool_duration_s": -3}},
        {"vllm_xargs": {"program_id": "p", "unexpected": 1}},
        {"program_id": 12},
        {"program_id": "p", "deadline_at_s": -1},
    ],
)
def test_malformed_metadata_is_http_400(server: httpx.Client, body: dict[str, Any]) -> None:
    response = _complete(server, "Hello", **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


def test_requests_without_metadata_still_work(server: httpx.Client) -> None:
    before = _metrics(server)["requests"]["without_metadata"]
    response = _complete(server, "The capital of France is")
    assert response.status_code == 200 and response.json()["choices"][0]["text"]
    assert _metrics(server)["requests"]["without_metadata"] == before + 1
    assert server.get("/agentflow/nope").status_code == 404


# -- the control plane behind the key ---------------------------------------------------------------------


def test_every_agentflow_route_needs_the_key_and_gets_401_before_validation(served: Served) -> None:
    anonymous = served.anonymous
    assert anonymous.get("/agentflow/metrics").status_code == 401
    assert anonymous.post("/agentflow/end_program", json={"program_id": "someone-else"}).status_code == 401
    assert anonymous.post("/agentflow/tool_duration", json={"tool": "x", "duration_s": 1}).status_code == 401
    response = anonymous.post("/agentflow/configure", json={"reserve_turns": "not even a number"})
    assert response.status_code == 401 and response.json()["error"]["code"] == 401
    # Generation routes too: 401, not a 400 that describes the program fields.
    assert _complete(anonymous, "Hello", program_id=12).status_code == 401


def test_configure_takes_only_json_from_this_host(served: Served) -> None:
    client = served.client
    text = client.post("/agentflow/configure", content=b'{"fixed_ttl_s": 1}', headers={"content-type": "text/plain"})
    assert text.status_code == 415
    foreign = client.post("/agentflow/configure", json={"fixed_ttl_s": 1}, headers={"host": "evil.example"})
    assert foreign.status_code == 403
    page = client.post("/agentflow/configure", json={"fixed_ttl_s": 1}, headers={"origin": "http://evil.example"})
    assert page.status_code == 403
    assert _metrics(client)["knobs"]["fixed_ttl_s"] == 30  # nothing changed


@pytest.mark.parametrize(
    "knobs",
    [
        {"reserve_turns": 1e308},  # crashed the engine core (OverflowError) before
        {"tau_max_s": 1e308},
        {"kv_block_limit": 1},  # hung every request before
        {"fixed_ttl_s": -1},
        {"enabled": "yes"},
        {"min_tool_samples": 2.5},
    ],
)
def test_a_bad_knob_is_a_400_and_changes_nothing(served: Served, knobs: dict[str, Any]) -> None:
    client = served.client
    before = _metrics(client)["knobs"]
    response = client.post("/agentflow/configure", json=knobs)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400
    assert _metrics(client)["knobs"] == before
    assert _complete(client, "Hello", program_id=f"{RUN}-after-knob").status_code == 200


def test_non_finite_knobs_are_refused_and_metrics_are_strict_json(served: Served) -> None:
    client = served.client
    infinite = client.post(
        "/agentflow/configure", content=b'{"tau_max_s": Infinity}', headers={"content-type": "application/json"}
    )
    assert infinite.status_code == 400
    text = client.get("/agentflow/metrics").text

    def strict(constant: str) -> Any:
        raise AssertionError(f"metrics emitted {constant}")

    json.loads(text, parse_constant=strict)


# -- every generation route, every body -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 4, "vllm_xargs": {"program_id": "p", "turn": "x"}}),
        ("/v1/messages", {"max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], "program_id": 7}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "program_id": "p", "turnn": 1}),
        ("/v1/completions", {"prompt": "Hi", "program_id": "p", "next_tool": "t" * 600}),
    ],
)
def test_malformed_program_fields_are_a_400_on_every_generation_route(
    server: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = server.post(path, json={"model": "default", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


@pytest.mark.parametrize(
    "content",
    [b"[" * 200_000, b'{"a":' * 10_000, b"\xff\xfe\x00", b'{"model": "default", "prompt": "Hi", "max_tokens": 1e999}'],
)
def test_pathological_bodies_are_a_400_never_a_500(server: httpx.Client, content: bytes) -> None:
    response = server.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert _complete(server, "Hello").status_code == 200


def test_a_program_claiming_an_old_arrival_is_ranked_by_when_the_server_saw_it(server: httpx.Client) -> None:
    response = _complete(server, "Hello", program_id=f"{RUN}-liar", program_arrival_s=0.0, is_last_turn=True)
    assert response.status_code == 200
    snapshot = _metrics(server)
    [entry] = [p for p in snapshot["programs"]["recent_finished"] if p["program_id"] == f"{RUN}-liar"]
    assert entry["requests"] == 1


# -- clients that send no program fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"x-session-id": f"{RUN}-h1"}, {}),
        ({"x-dynamo-session-id": f"{RUN}-h2"}, {}),
        ({}, {"user": f"{RUN}-user"}),
        ({}, {"prompt_cache_key": f"{RUN}-pck"}),
        ({}, {"session_id": f"{RUN}-body"}),
    ],
    ids=["x-session-id", "x-dynamo-session-id", "user", "prompt_cache_key", "session_id"],
)
def test_a_session_id_from_any_source_identifies_a_program(
    server: httpx.Client, headers: dict[str, str], body: dict[str, Any]
) -> None:
    before = _metrics(server)["requests"]
    response = server.post(
        "/v1/completions",
        json={"model": "default", "prompt": token_prompt(40, f"{RUN}:{headers}{body}"), "max_tokens": 2, **body},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    after = _metrics(server)["requests"]
    assert after["by_session"] == before["by_session"] + 1
    assert after["without_metadata"] == before["without_metadata"]


@pytest.mark.parametrize(
    "value",
    [b"x" * 5000, "caf\u00e9".encode("latin-1"), b"\xff\xfe", b"tab\there"],
    ids=["huge", "non-ascii", "bytes", "control"],
)
@pytest.mark.parametrize("header", ["x-session-id", "x-dynamo-session-id"])
def test_a_bad_session_header_is_a_400_and_the_server_goes_on(server: httpx.Client, header: str, value: bytes) -> None:
    response = server.post(
        "/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 1}, headers={header: value}
    )
    assert response.status_code == 400, response.text
    assert header in response.json()["error"]["message"]
    assert _complete(server, "Hello").status_code == 200


def test_an_empty_session_header_is_ignored(server: httpx.Client) -> None:
    before = _metrics(server)["requests"]
    response = server.post(
        "/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 1}, headers={"x-session-id": ""}
    )
    assert response.status_code == 200, response.text
    assert _metrics(server)["requests"]["by_session"] == before["by_session"]


def test_a_chat_client_that_sends_nothing_is_recognised_turn_by_turn(server: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": f"You are a careful assistant ({RUN}). " * 8},
        {"role": "user", "content": "List three fruits, one per line."},
    ]
    turns: list[str] = []
    before = _metrics(server)["requests"]
    for i in range(3):
        body = {"model": "default", "messages": messages, "max_tokens": 16}
        response = server.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        content = response.json()["choices"][0]["message"]["content"]
        turns.append(content)
        messages += [{"role": "assistant", "content": content}, {"role": "user", "content": f"Tool output {i}: ok."}]
    after = _metrics(server)["requests"]
    # The first turn continues nothing; each later one extends the previous prompt and output.
    assert after["by_chain"] - before["by_chain"] == 2, (turns, before, after)
