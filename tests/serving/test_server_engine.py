"""`agentflow serve` in a subprocess: program metadata through vllm_xargs or the body, 400s, metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _serving_workloads import token_prompt

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300
RUN = uuid.uuid4().hex[:8]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [
        sys.executable, "-m", "agentflow", "serve", "--port", str(port),
        "--kv-cache-bytes", str(64 * 1024**2), "--max-model-len", "1024", "--max-num-seqs", "8",
        "--scheduler-knobs", '{"fixed_ttl_s": 30}',
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        _wait_until_healthy(client, process, log)
        yield client
    finally:
        client.close()
        _stop(process)


def _wait_until_healthy(client: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"agentflow serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    pytest.fail(f"agentflow serve did not come up in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # vLLM shuts its engine-core process down on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the session this test started: anything left of it
    process.wait(timeout=30)


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
