"""One `agentflow serve` subprocess for the serving tests that need a real server (started on first use)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300
API_KEY = "agentflow-test-key"


@dataclass(frozen=True)
class Served:
    """A running `agentflow serve`: a client holding the API key, one without it, and its process."""

    client: httpx.Client  # sends the API key
    anonymous: httpx.Client  # sends no key
    process: subprocess.Popen[bytes]
    port: int
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`agentflow serve` on 127.0.0.1 with an API key, a 64 MiB KV cache and max_model_len 1024."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [
        sys.executable, "-m", "agentflow", "serve", "--port", str(port),
        "--kv-cache-bytes", str(64 * 1024**2), "--max-model-len", "1024", "--max-num-seqs", "8",
        "--scheduler-knobs", '{"fixed_ttl_s": 30}', "--", "--api-key", API_KEY,
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"})
    anonymous = httpx.Client(base_url=base_url, timeout=120)
    try:
        _wait_until_healthy(anonymous, process, log)
        yield Served(client=client, anonymous=anonymous, process=process, port=port, log=log)
    finally:
        client.close()
        anonymous.close()
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
