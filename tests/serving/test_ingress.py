"""The scale-out ingress on its own: validation, access, prompts and routing keys, over a pool of the test's making."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from serving._guard import AccessPolicy
from serving._ingress import Ingress, ReplicaUnavailable
from serving._replicas import ReplicaDelta, ReplicaReply, ReplicaRequest, ResidentBook

REPO = Path(__file__).resolve().parents[2]


class EchoPool:
    """Answers every request with its prompt's last word; records what it was given."""

    def __init__(self, *, fail: bool = False) -> None:
        self.requests: list[ReplicaRequest] = []
        self.fail = fail

    async def complete(self, request: ReplicaRequest) -> ReplicaReply:
        self.requests.append(request)
        if self.fail:
            raise ReplicaUnavailable("every replica is saturated")
        return ReplicaReply(
            text=request.prompt.split()[-1],
            finish_reason="stop",
            num_prompt_tokens=request.context_tokens,
            num_completion_tokens=1,
            num_cached_tokens=0,
            replica="r1",
        )

    async def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]:
        self.requests.append(request)
        for i, word in enumerate(["a", "b"]):
            yield ReplicaDelta(
                text=word,
                token_ids=(i,),
                finished=i == 1,
                finish_reason="stop" if i == 1 else None,
                num_prompt_tokens=3,
                num_completion_tokens=i + 1,
                num_cached_tokens=0,
                replica="r1",
            )

    async def metrics(self) -> dict[str, Any]:
        return {"router": "agentflow", "replicas": {"r1": {"resident": ["program:secret"], "num_waiting": 0}}}


class WordPrompts:
    """Chat template: the messages' contents joined; one token per word."""

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str:
        return " ".join(str(m["content"]) for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def ingress(pool: EchoPool, *, keys: Sequence[str] = (), max_model_len: int = 100) -> Ingress:
    access = AccessPolicy.for_server(api_keys=keys, host="127.0.0.1", port=8000)
    return Ingress(pool=pool, prompts=WordPrompts(), access=access, max_model_len=max_model_len)


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "default", "messages": [{"role": "user", "content": "hello there"}], **fields}).encode()


async def test_readme_style_request_is_answered_with_its_program_key() -> None:
    pool = EchoPool()
    xargs = {"program_id": "job-42", "turn": 0, "next_tool": "bash", "next_tool_duration_s": 0.3}
    reply = await ingress(pool).handle("POST", "/v1/chat/completions", {}, chat(max_tokens=8, vllm_xargs=xargs))
    assert reply.status == 200, reply.body
    assert reply.body["choices"][0]["message"]["content"] == "there"
    assert reply.headers["x-agentflow-replica"] == "r1"
    sent = pool.requests[0]
    assert sent.key == "program:job-42" and sent.context_tokens == 2 and sent.max_tokens == 8
    assert sent.extra_args == xargs


async def test_top_level_program_fields_and_last_turn() -> None:
    pool = EchoPool()
    body = chat(program_id="job-42", turn=1, is_last_turn=True)
    assert (await ingress(pool).handle("POST", "/v1/chat/completions", {}, body)).status == 200
    assert pool.requests[0].is_last_turn and pool.requests[0].extra_args == {
        "program_id": "job-42",
        "turn": 1,
        "is_last_turn": 1,
    }


async def test_session_header_then_prompt_chain_name_the_program() -> None:
    pool = EchoPool()
    await ingress(pool).handle("POST", "/v1/chat/completions", {"x-session-id": "s-1"}, chat())
    await ingress(pool).handle("POST", "/v1/completions", {}, json.dumps({"prompt": "a long agent prompt"}).encode())
    assert pool.requests[0].key == "session:s-1" and pool.requests[0].session_id == "s-1"
    assert pool.requests[1].key is not None and pool.requests[1].key.startswith("chain:")


@pytest.mark.parametrize(
    "body",
    [
        chat(vllm_xargs={"program_id": "p", "turn": -1}),
        chat(vllm_xargs={"program_id": "p", "next_tool_duration_s": "soon"}),
        chat(program_id="p", surprise=1),
        chat(vllm_xargs={"turn": 2}),
        b"{not json",
    ],
)
async def test_malformed_program_fields_are_a_400(body: bytes) -> None:
    pool = EchoPool()
    reply = await ingress(pool).handle("POST", "/v1/chat/completions", {}, body)
    assert reply.status == 400, reply.body
    assert pool.requests == []


async def test_structured_outputs_reach_the_replica() -> None:
    pool = EchoPool()
    body = chat(structured_outputs={"grammar": 'root ::= "x"'}, vllm_xargs={"program_id": "p"})
    assert (await ingress(pool).handle("POST", "/v1/chat/completions", {}, body)).status == 200
    assert pool.requests[0].grammar == 'root ::= "x"' and pool.requests[0].json_schema is None
    both = chat(structured_outputs={"grammar": "g", "json": {"type": "object"}})
    assert (await ingress(pool).handle("POST", "/v1/chat/completions", {}, both)).status == 400


async def test_malformed_openai_fields_are_a_400() -> None:
    reply = await ingress(EchoPool()).handle("POST", "/v1/chat/completions", {}, chat(max_tokens=0))
    assert reply.status == 400
    too_long = chat(messages=[{"role": "user", "content": "w " * 200}])
    assert (await ingress(EchoPool()).handle("POST", "/v1/chat/completions", {}, too_long)).status == 400


async def test_the_api_key_guards_every_route() -> None:
    guarded = ingress(EchoPool(), keys=["secret"])
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/agentflow/metrics")]:
        assert (await guarded.handle(method, path, {}, chat())).status == 401
    ok = await guarded.handle("POST", "/v1/chat/completions", {"authorization": "Bearer secret"}, chat())
    assert ok.status == 200


async def test_foreign_host_is_refused_on_a_loopback_bind() -> None:
    reply = await ingress(EchoPool()).handle("GET", "/v1/models", {"host": "evil.example:8000"}, b"")
    assert reply.status == 403


async def test_saturation_is_a_503() -> None:
    reply = await ingress(EchoPool(fail=True)).handle("POST", "/v1/chat/completions", {}, chat())
    assert reply.status == 503 and "saturated" in reply.body["error"]["message"]


async def test_metrics_hide_program_keys_without_an_api_key() -> None:
    open_metrics = await ingress(EchoPool()).handle("GET", "/agentflow/metrics", {}, b"")
    assert open_metrics.body["replicas"]["r1"]["resident"] == 1
    keyed = ingress(EchoPool(), keys=["k"])
    shown = await keyed.handle("GET", "/agentflow/metrics", {"authorization": "Bearer k"}, b"")
    assert shown.body["replicas"]["r1"]["resident"] == ["program:secret"]


async def test_streaming_is_server_sent_events() -> None:
    reply = await ingress(EchoPool()).handle("POST", "/v1/chat/completions", {}, chat(stream=True))
    assert reply.events is not None
    events = [event async for event in reply.events]
    assert events[-1] == b"data: [DONE]\n\n"
    deltas = [json.loads(e[len(b"data: ") :])["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == "ab"


def test_resident_book_forgets_ended_and_old_programs() -> None:
    book = ResidentBook(resident_ttl_s=10, max_keys=2)
    book.served("a", is_last_turn=False, now_s=0)
    book.served("b", is_last_turn=False, now_s=5)
    book.served("b", is_last_turn=True, now_s=6)
    assert book.keys(now_s=6) == {"a"}
    assert book.keys(now_s=11) == frozenset()
    for key in "xyz":
        book.served(key, is_last_turn=False, now_s=20)
    assert book.keys(now_s=20) == {"y", "z"}


def test_without_ray_the_adapter_names_the_fix() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from agentflow.exceptions import ClusterUnavailableError\n"
        "try:\n    import serving._ray\n"
        "except ClusterUnavailableError as exc:\n    print(exc); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "pip install 'agentflow[scale]'" in done.stdout


def test_only_the_adapter_imports_ray() -> None:
    offenders = [
        path.relative_to(REPO).as_posix()
        for package in ("agentflow", "executor", "planner", "serving", "workloads")
        for path in (REPO / package).glob("**/*.py")
        if path.name != "_ray.py"
        and any(
            line.strip().startswith(("import ray", "from ray ", "from ray.")) for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
