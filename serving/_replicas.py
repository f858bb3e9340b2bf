"""One engine replica of a scale-out deployment, without Ray: what it is asked, what it answers, what it reports.

`serving._ray` wraps `EngineReplica` in a Ray Serve deployment (one per replica actor) and
`serving._ingress` builds the `ReplicaRequest`s. The records cross Ray's process boundary
pickled, so they are plain frozen dataclasses of builtins.

A replica knows which programs it holds (`ResidentBook`): the keys of the requests it served,
until their last turn or until `resident_ttl_s` passes without a turn (the scheduler's pins last
seconds; a key this old has most likely lost its KV). It reports them with its KV and queue
state (`ReplicaLoad`) when Ray asks (`record_routing_stats`, every `stats_period_s`): no call on
the request path.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from serving._affinity import ReplicaLoad, RouteRequest
from serving._types import GenerationChunk
from serving.engine import EmbeddedEngine, EngineConfig

__all__ = ["EngineReplica", "ReplicaReply", "ReplicaRequest", "ResidentBook"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaRequest:
    """One generation, as the ingress hands it to a replica (and the router reads it).

    `prompt` is the chat template's output: Ray LLM's prefix-cache router reads `.prompt`. A
    request made of token ids (replays) carries them in `prompt_token_ids`, which the engine is
    given instead, and their decimal rendering in `prompt` (what the prefix router can compare).
    """

    request_id: str
    prompt: str
    prompt_token_ids: tuple[int, ...] | None = None
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    extra_args: dict[str, Any] | None = None  # agentflow's program fields (validated at the ingress)
    session_id: str | None = None
    key: str | None = None  # serving._affinity.program_key
    context_tokens: int = 0  # the prompt's length in tokens
    is_last_turn: bool = False
    grammar: str | None = None  # EBNF the output must follow (vLLM's structured_outputs.grammar)
    json_schema: dict[str, Any] | None = None  # or a JSON schema it must follow

    def route_request(self, routing_id: str) -> RouteRequest:
        """What the router needs of it; `routing_id`: Ray's id for this call (completion callbacks carry it)."""
        return RouteRequest(
            request_id=routing_id, key=self.key, context_tokens=self.context_tokens, is_last_turn=self.is_last_turn
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaReply:
    """A finished generation and the replica that made it."""

    text: str
    finish_reason: str | None
    num_prompt_tokens: int
    num_completion_tokens: int
    num_cached_tokens: int
    replica: str  # the replica's id (Ray's replica unique id)

    @classmethod
    def of_stream(cls, texts: Sequence[str], last: ReplicaDelta) -> ReplicaReply:
        """The reply a stream's deltas make: their texts joined, the counts of its finished last delta."""
        return cls(
            text="".join(texts),
            finish_reason=last.finish_reason,
            num_prompt_tokens=last.num_prompt_tokens,
            num_completion_tokens=last.num_completion_tokens,
            num_cached_tokens=last.num_cached_tokens,
            replica=last.replica,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaDelta:
    """One streamed piece of a generation."""

    text: str
    token_ids: tuple[int, ...]  # new since the last delta
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_completion_tokens: int  # so far
    num_cached_tokens: int
    replica: str


class ResidentBook:
    """Program keys whose KV this replica holds, most recently served last; bounded in count and age."""

    def __init__(self, *, resident_ttl_s: float = 120.0, max_keys: int = 4096) -> None:
        self.resident_ttl_s = resident_ttl_s
        self.max_keys = max_keys
        self._last_s: OrderedDict[str, float] = OrderedDict()  # key -> when its last turn finished (monotonic)

    def served(self, key: str, *, is_last_turn: bool, now_s: float) -> None:
        if is_last_turn:
            self._last_s.pop(key, None)
            return
        self._last_s[key] = now_s
        self._last_s.move_to_end(key)
        while len(self._last_s) > self.max_keys:
            self._last_s.popitem(last=False)

    def keys(self, *, now_s: float) -> frozenset[str]:
        while self._last_s and next(iter(self._last_s.values())) < now_s - self.resident_ttl_s:
            self._last_s.popitem(last=False)
        return frozenset(self._last_s)


class EngineReplica:
    """The embedded engine with agentflow's scheduler, serving `ReplicaRequest`s for one replica."""

    def __init__(self, config: EngineConfig, *, replica_id: str, resident_ttl_s: float = 120.0) -> None:
        self.replica_id = replica_id
        self.engine = EmbeddedEngine(config)
        self.resident = ResidentBook(resident_ttl_s=resident_ttl_s)
        self.compute = compute_key()  # fixed for the process: read once, not on every load report

    async def start(self) -> None:
        await self.engine.astart()

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def complete(self, request: ReplicaRequest) -> ReplicaReply:
        last: ReplicaDelta | None = None
        texts: list[str] = []
        async for delta in self.stream(request):
            texts.append(delta.text)
            last = delta
        assert last is not None and last.finished, "a stream ends with a finished delta"
        return ReplicaReply.of_stream(texts, last)

    async def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]:
        num_tokens = 0
        chunk: GenerationChunk | None = None
        async for chunk in self.engine.generate(
            prompt=list(request.prompt_token_ids) if request.prompt_token_ids is not None else request.prompt,
            max_tokens=request.max_tokens,
            ignore_eos=request.ignore_eos,
            grammar=request.grammar,
            json_schema=request.json_schema,
            temperature=request.temperature,
            stop=request.stop,
            extra_args=request.extra_args,
            request_id=f"{request.request_id}-{uuid.uuid4().hex[:6]}",
            session_id=request.session_id,
        ):
            num_tokens += len(chunk.token_ids)
            yield ReplicaDelta(
                text=chunk.text,
                token_ids=chunk.token_ids,
                finished=chunk.finished,
                finish_reason=chunk.finish_reason,
                num_prompt_tokens=chunk.num_prompt_tokens,
                num_completion_tokens=num_tokens,
                num_cached_tokens=chunk.num_cached_tokens,
                replica=self.replica_id,
            )
        if request.key is not None and chunk is not None and chunk.finished:
            self.resident.served(request.key, is_last_turn=request.is_last_turn, now_s=time.monotonic())

    async def load(self) -> ReplicaLoad:
        """The replica's report for the router: KV, queues, resident programs, busy time."""
        snapshot = await self.engine.queue_snapshot()
        metrics = await self.engine.agentflow_metrics() or {}
        kv = metrics.get("kv", {})
        pins = metrics.get("pins", {})
        num_blocks = int(kv.get("num_blocks", 0))
        return ReplicaLoad(
            num_blocks=num_blocks,
            num_free_blocks=int(kv.get("num_free_blocks", round(num_blocks * (1 - snapshot.kv_usage)))),
            num_reclaimable_blocks=int(pins.get("blocks_pinned", 0)),
            block_size=int(kv.get("block_size", self.engine.config.block_size)),
            num_waiting=snapshot.num_waiting,
            num_running=len(snapshot.running),
            max_num_seqs=self.engine.config.max_num_seqs,
            resident=self.resident.keys(now_s=time.monotonic()),
            busy_s=self.engine.busy_s,
            compute=self.compute,
        )


def compute_key() -> str:
    """What this process computes on: its host and the GPUs it sees, or the host's CPU cores.

    Ray sets `CUDA_VISIBLE_DEVICES` per GPU replica; every CPU replica on a host shares its cores.
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"{socket.gethostname()}:{f'cuda:{devices}' if devices else 'cpu'}"
