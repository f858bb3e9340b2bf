"""`agentflow serve --replicas 2` on a real local Ray cluster: 2 replicas of the tiny model, num_cpus=0 each."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.engine

# Small: 2 engines share the 2-core box (and its memory) with the test process.
REPLICA_ENGINE: dict[str, Any] = {"kv_cache_bytes": 48 * 1024**2, "max_model_len": 1024, "max_num_seqs": 8}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from serving._ray import ScaleOutOptions, start
    from serving.engine import EngineConfig

    server = start(
        ScaleOutOptions(
            engine=EngineConfig(**REPLICA_ENGINE), replicas=2, port=free_port(), api_keys=("secret",), local_num_cpus=2
        )
    )
    try:
        yield server
    finally:
        server.close()


def client(server: Any, *, key: str | None = "secret") -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


def test_readme_client_example_is_answered_and_its_turns_stick(cluster: Any) -> None:
    from openai import OpenAI

    openai = OpenAI(base_url=f"{cluster.url}/v1", api_key="secret")
    start = time.time()
    messages: list[Any] = [{"role": "user", "content": "List the files you need."}]
    first = openai.chat.completions.with_raw_response.create(
        model="default",
        messages=messages,
        max_tokens=16,
        extra_body={"vllm_xargs": {"program_id": "job-42", "program_arrival_s": start, "turn": 0,
                                   "next_tool": "bash", "next_tool_duration_s": 0.3}},
    )  # fmt: skip
    reply = first.parse()
    assert reply.choices[0].message.content
    messages += [
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "Tool output: README.md setup.py"},
    ]
    second = openai.chat.completions.with_raw_response.create(
        model="default",
        messages=messages,
        max_tokens=16,
        extra_body={"program_id": "job-42", "program_arrival_s": start, "turn": 1, "is_last_turn": True},
    )
    assert second.parse().choices[0].message.content is not None
    assert first.headers["x-agentflow-replica"] == second.headers["x-agentflow-replica"]


def test_programs_stick_to_one_replica_and_spread_over_both(cluster: Any) -> None:
    homes: dict[str, set[str]] = {}
    with client(cluster) as http:
        for turn in range(3):
            for program in range(4):
                body = {
                    "model": "default",
                    "messages": [{"role": "user", "content": f"Program {program}: count to {turn + 3}."}],
                    "max_tokens": 4,
                    "vllm_xargs": {"program_id": f"p{program}", "turn": turn},
                }
                answer = http.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                homes.setdefault(f"p{program}", set()).add(answer.headers["x-agentflow-replica"])
    assert all(len(replicas) == 1 for replicas in homes.values()), homes
    assert len(set().union(*homes.values())) == 2, homes


def test_malformed_program_fields_are_a_400_and_the_key_guards_routes(cluster: Any) -> None:
    with client(cluster) as http:
        bad = {
            "model": "default",
            "messages": [{"role": "user", "content": "x"}],
            "vllm_xargs": {"program_id": "p", "turn": -1},
        }
        answer = http.post("/v1/chat/completions", json=bad)
        assert answer.status_code == 400 and "turn" in answer.json()["error"]["message"]
    with client(cluster, key=None) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401


def test_metrics_show_the_router_and_each_replica_report(cluster: Any) -> None:
    with client(cluster) as http:
        metrics = http.get("/agentflow/metrics").json()
    assert metrics["router"] == "agentflow"
    assert metrics["choose_replicas_us"]["count"] > 0
    assert metrics["affinity"]["requests"] > 0
    assert len(metrics["replicas"]) == 2
