"""Scale-out on Ray Serve: every `ray` import of agentflow is here (as every `vllm` import is in `serving._vllm`).

Written against `ray[serve]==2.60.0` (its request-router API is marked alpha). Importing this
module without Ray raises `ClusterUnavailableError`, naming the fix.

- `ProgramAffinityRouter`: a `ray.serve.request_router.RequestRouter` that asks
  `serving._affinity.AffinityPolicy` and returns one rank per replica, best first; Ray then sends
  the request to the first rank whose replica accepts it (its queue-length cache, its probes, its
  backoff). Replicas' load reports reach it in `RunningReplica.routing_stats`, which Ray's
  controller collects by calling each replica's `record_routing_stats` every
  `stats_period_s` and broadcasts: nothing is added to the request path.
- Ray's own routers, for comparison (`RouterKind`): power-of-two choices (its default),
  `ConsistentHashRouter` on the session id (`ray.serve.experimental`), and Ray LLM's
  `PrefixCacheAffinityRouter`. Each runs as Ray ships it, with a timer around `choose_replicas`
  (`_Measured`) so the overhead figures compare like with like.
- `EngineDeployment`: one `serving._replicas.EngineReplica` per replica actor (`num_cpus=0`, so
  several fit on a small machine; the engine's threads are not Ray's to count).
- `IngressDeployment`: `serving._ingress.Ingress` behind Ray Serve's HTTP proxy.

`start(options)` runs the application on a local Ray instance or joins `options.ray_address`;
`serve_replicas(options)` is `agentflow serve --replicas N`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import ClusterUnavailableError, EngineError

try:
    import ray
    from ray import serve
    from ray.exceptions import ActorUnavailableError, RayActorError

    # Ray LLM's prefix router: `ray.serve.llm.request_router` re-exports this very class, but importing
    # it there imports `ray.serve.llm`, which needs pyarrow (ray[llm]); the class itself does not.
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import PrefixCacheAffinityRouter

    # Ray's default router, public only through RequestRouterConfig's default path.
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
    from ray.serve.config import RequestRouterConfig
    from ray.serve.exceptions import BackPressureError
    from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
    from ray.serve.handle import DeploymentHandle
    from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
except ImportError as exc:  # pragma: no cover - exercised by a test that hides ray
    raise ClusterUnavailableError(
        f"engine replicas run on Ray Serve, which is not installed ({exc}); "
        "install it with `pip install 'agentflow[scale]'` (or `make install`)"
    ) from None

from agentflow.metadata import ProgramMetadata
from serving import _routers
from serving._affinity import AffinityKnobs, AffinityPolicy, ReplicaLoad, RouteRequest, RouterKind, program_key
from serving._estimators import StepTimeModel
from serving._guard import AccessPolicy
from serving._identity import Session
from serving._ingress import HfPrompts, HttpReply, Ingress, ReplicaUnavailable
from serving._replicas import EngineReplica, ReplicaDelta, ReplicaReply, ReplicaRequest
from serving._types import GenerationChunk, QueueSnapshot
from serving.engine import EngineConfig
from serving.scaleout import ScaleOutOptions

__all__ = [
    "ProgramAffinityRouter",
    "ReplicaSet",
    "ScaleOutOptions",
    "ScaleOutServer",
    "replica_request",
    "serve_replicas",
    "start",
    "start_replica_set",
]

logger = logging.getLogger(__name__)

APP_NAME = "agentflow"
ENGINE_DEPLOYMENT = "engine"
_OVERHEAD_SAMPLES = 4096


# -- routers ---------------------------------------------------------------------------------------------


class _Measured(RequestRouter):
    """Times `choose_replicas` and publishes what the ingress's metrics route shows (thread-safe reads)."""

    kind: RouterKind

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self._choose_ns: deque[int] = deque(maxlen=_OVERHEAD_SAMPLES)
        _routers.register(self)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        started = time.perf_counter_ns()
        try:
            return await super().choose_replicas(candidate_replicas, pending_request)  # type: ignore[safe-super]
        finally:
            self._choose_ns.append(time.perf_counter_ns() - started)

    def snapshot(self) -> dict[str, Any]:
        """The router's counters and each live replica's last report (safe from another thread)."""
        samples = sorted(self._choose_ns)
        replicas = {rid.unique_id: dict(r.routing_stats or {}) for rid, r in list(self.curr_replicas.items())}
        return {
            "router": self.kind.value,
            "choose_replicas_us": _quantiles_us(samples),
            "replicas": replicas,
        }


def _quantiles_us(samples: list[int]) -> dict[str, float | int | None]:
    if not samples:
        return {"count": 0, "p50": None, "p95": None}
    return {
        "count": len(samples),
        "p50": samples[len(samples) // 2] / 1000,
        "p95": samples[min(len(samples) - 1, int(len(samples) * 0.95))] / 1000,
    }


class ProgramAffinityRouter(_Measured):
    """agentflow's router: `serving._affinity.AffinityPolicy` over Ray's replica set."""

    kind = RouterKind.AGENTFLOW

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state()
        self._policy = AffinityPolicy(cost=StepTimeModel(), knobs=AffinityKnobs(**kwargs))
        self._reports: dict[str, tuple[object, ReplicaLoad | None]] = {}  # replica id -> (raw stats, parsed)
        self._lock = threading.Lock()  # the policy against snapshot() from the ingress's thread

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        started = time.perf_counter_ns()
        try:
            return self._choose(candidate_replicas, pending_request)
        finally:
            self._choose_ns.append(time.perf_counter_ns() - started)

    def _choose(
        self, candidates: list[RunningReplica], pending_request: PendingRequest | None
    ) -> list[list[RunningReplica]]:
        request = _route_request(pending_request)
        if request is None or not candidates:
            return [candidates] if candidates else []
        assert pending_request is not None
        pending_request.routing_context.should_backoff = True  # every rank refused: back off, do not spin
        by_id = {r.replica_id.unique_id: r for r in candidates}
        with self._lock:
            self._policy.update_replicas({rid: self._report(rid, r) for rid, r in by_id.items()})
            route = self._policy.choose(request)
        return [[by_id[rid]] for rid in route.ranked if rid in by_id]

    def _report(self, replica_id: str, replica: RunningReplica) -> ReplicaLoad | None:
        """The replica's latest report, parsed once per report (Ray hands the same dict until a new one)."""
        stats = replica.routing_stats
        cached = self._reports.get(replica_id)
        if cached is not None and cached[0] is stats:
            return cached[1]
        load = ReplicaLoad.from_stats(stats)
        self._reports[replica_id] = (stats, load)
        return load

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        request = _route_request(pending_request)
        if request is not None:
            with self._lock:
                self._policy.on_routed(request, replica_id.unique_id, now_s=time.monotonic())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        with self._lock:
            self._policy.on_completed(internal_request_id, now_s=time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            policy = self._policy.snapshot()
        return {**super().snapshot(), "affinity": policy}


def _route_request(pending_request: PendingRequest | None) -> RouteRequest | None:
    """The `RouteRequest` of a call to the engine deployment (its first argument); None for other calls."""
    if pending_request is None or not pending_request.args:
        return None
    first = pending_request.args[0]
    if not isinstance(first, ReplicaRequest):
        return None
    return first.route_request(pending_request.metadata.internal_request_id)


class Pow2Router(_Measured, PowerOfTwoChoicesRequestRouter):
    """Ray's default: power of two choices on queue length."""

    kind = RouterKind.POW2


class SessionHashRouter(_Measured, ConsistentHashRouter):
    """Ray's consistent-hash router on the session id (the ingress passes the program key as it)."""

    kind = RouterKind.SESSION_HASH


# Ray's class annotates choose_replicas as returning one rank and initialize_state with its own kwargs.
class PrefixRouter(_Measured, PrefixCacheAffinityRouter):  # type: ignore[misc]
    """Ray LLM's prefix-cache-affinity router (it reads the `prompt` of `ReplicaRequest`)."""

    kind = RouterKind.PREFIX


_ROUTERS: dict[RouterKind, type[_Measured]] = {
    RouterKind.AGENTFLOW: ProgramAffinityRouter,
    RouterKind.POW2: Pow2Router,
    RouterKind.SESSION_HASH: SessionHashRouter,
    RouterKind.PREFIX: PrefixRouter,
}


# -- deployments -------------------------------------------------------------------------------------------


class EngineDeployment:
    """One engine replica: the embedded engine with agentflow's scheduler (decorated by `_deployments`)."""

    def __init__(self, config: EngineConfig) -> None:
        replica_id = serve.get_replica_context().replica_id.unique_id
        self._replica = EngineReplica(config, replica_id=replica_id)
        self._replica.engine.start()  # a replica is healthy once its engine is

    async def complete(self, request: ReplicaRequest) -> ReplicaReply:
        return await self._replica.complete(request)

    async def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]:
        async for delta in self._replica.stream(request):
            yield delta

    async def record_routing_stats(self) -> dict[str, Any]:
        """Ray's controller calls this every `stats_period_s`; the routers get the answer."""
        return (await self._replica.load()).to_stats()

    def check_health(self) -> None:
        if self._replica.engine.dead:
            raise EngineError(f"replica {self._replica.replica_id}: its engine died")

    def __del__(self) -> None:
        self._replica.shutdown()


class HandlePool:
    """`ReplicaPool` over the engine deployment's handle; Ray's failures become `ReplicaUnavailable`."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    def _for(self, request: ReplicaRequest, *, stream: bool) -> Any:
        # The session id Ray's session-hash router hashes: the program's key, whatever identified it.
        return self._handle.options(stream=stream, session_id=request.key or "")

    async def complete(self, request: ReplicaRequest) -> ReplicaReply:
        try:
            reply: ReplicaReply = await self._for(request, stream=False).complete.remote(request)
        except Exception as exc:  # not CancelledError: a cancelled caller is not a failed replica
            raise _unavailable(exc) from exc
        return reply

    async def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]:
        try:
            async for delta in self._for(request, stream=True).stream.remote(request):
                yield delta
        except Exception as exc:  # not GeneratorExit or CancelledError: the caller stopped, nothing failed
            raise _unavailable(exc) from exc

    async def metrics(self) -> dict[str, Any]:
        return _routers.snapshot()


def _unavailable(exc: Exception) -> Exception:
    """Ray's failure as the ingress's `ReplicaUnavailable` (a 503); anything else unchanged."""
    if isinstance(exc, BackPressureError):
        return ReplicaUnavailable(f"every replica is saturated and the queue is full; retry later ({exc})")
    if isinstance(exc, RayActorError | ActorUnavailableError):
        return ReplicaUnavailable(
            "the replica serving this request died; retry it: its program is routed to a live replica "
            f"and its context prefilled there ({type(exc).__name__})"
        )
    if isinstance(exc, EngineError):
        return ReplicaUnavailable(f"the replica's engine failed: {exc}")
    return exc


class IngressDeployment:
    """The HTTP front (decorated by `_deployments`)."""

    def __init__(self, engines: DeploymentHandle, settings: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(settings["model_dir"]))
        self._ingress = Ingress(
            pool=HandlePool(engines),
            prompts=HfPrompts(tokenizer),
            access=AccessPolicy.for_server(api_keys=settings["api_keys"], host=settings["host"], port=settings["port"]),
            served_model_name=settings["served_model_name"],
            max_model_len=settings["max_model_len"],
        )

    async def __call__(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await self._ingress.handle(request.method, request.url.path, headers, await request.body())
        return _response(reply)


def _response(reply: HttpReply) -> Response:
    if reply.events is not None:
        return StreamingResponse(reply.events, media_type="text/event-stream", headers=reply.headers)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _application(options: ScaleOutOptions) -> Any:
    engine = options.engine
    settings = {
        "model_dir": str(engine.model_dir),
        "api_keys": list(options.api_keys),
        "host": options.host,
        "port": options.port,
        "served_model_name": options.served_model_name,
        "max_model_len": engine.max_model_len,
    }
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)(
        IngressDeployment
    )
    return ingress.bind(_engines(options), settings)


def _engines(options: ScaleOutOptions) -> Any:
    """The engine deployment, bound to its config: N replicas behind the chosen router."""
    engine = options.engine
    max_ongoing = options.max_ongoing_requests or 2 * engine.max_num_seqs
    # Ray's pydantic-compat model types its fields for mypy as dicts: pass them as one mapping.
    router_fields: dict[str, Any] = {
        # By import path: each process that routes imports the class (cloudpickle would copy this module).
        "request_router_class": f"{__name__}.{_ROUTERS[options.router].__qualname__}",
        "request_router_kwargs": _router_kwargs(options),
        "request_routing_stats_period_s": options.stats_period_s,
        "request_routing_stats_timeout_s": max(5.0, 10 * options.stats_period_s),
    }
    router = RequestRouterConfig(**router_fields)
    return serve.deployment(
        name=ENGINE_DEPLOYMENT,
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max_ongoing,
        max_queued_requests=options.max_queued_requests,
        request_router_config=router,
        health_check_period_s=2.0,
    )(EngineDeployment).bind(engine)


def _router_kwargs(options: ScaleOutOptions) -> dict[str, Any]:
    if options.router is RouterKind.AGENTFLOW:
        return dataclasses.asdict(options.affinity)
    if options.router is RouterKind.SESSION_HASH:
        return {"num_fallback_replicas": 1}
    return {}


# -- running it ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScaleOutServer:
    """A running scale-out application; `close()` stops it (and the local Ray instance it started)."""

    url: str
    options: ScaleOutOptions
    started_ray: bool

    def close(self) -> None:
        _shut_down(started_ray=self.started_ray)


def start(options: ScaleOutOptions, *, timeout_s: float = 600.0) -> ScaleOutServer:
    """Start the replicas and the HTTP endpoint; returns once every replica's engine is up.

    Raises:
        ClusterUnavailableError: `ray_address` cannot be reached.
    """
    started_ray = _connect(options)
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(_application(options), name=APP_NAME, route_prefix="/", blocking=False)
        _wait_running(timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            _shut_down(started_ray=started_ray)
        raise
    return ScaleOutServer(
        url=f"http://{_url_host(options.host)}:{options.port}", options=options, started_ray=started_ray
    )


def _shut_down(*, started_ray: bool) -> None:
    """Stop Serve's applications, then the local Ray instance if this process started it."""
    try:
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


def _connect(options: ScaleOutOptions) -> bool:
    """Join the cluster, or start a local Ray instance; True if this call started one."""
    if ray.is_initialized():
        return False
    if options.ray_address is not None:
        _check_reachable(options.ray_address)
        try:
            ray.init(address=options.ray_address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as exc:
            raise ClusterUnavailableError(
                f"cannot reach the Ray cluster at {options.ray_address}: {exc}; start it with `ray start --head` "
                "on the head node, or leave out --ray-address to run a local Ray instance"
            ) from None
        return False
    ray.init(num_cpus=options.local_num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _check_reachable(address: str, *, timeout_s: float = 5.0) -> None:
    """Fail fast on a `host:port` nobody answers (`ray.init` would retry for minutes); `auto` is Ray's to find."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ClusterUnavailableError(
            f"cannot reach the Ray cluster at {address} ({exc}); start it with `ray start --head` on the head "
            "node, or leave out --ray-address to run a local Ray instance"
        ) from None


def _wait_running(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise EngineError(f"the engine replicas failed to start: {status.message or status.deployments}")
        time.sleep(0.5)
    raise EngineError(f"the engine replicas did not start within {timeout_s:.0f} s")


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


# -- replays: the replicas without HTTP, in this process ----------------------------------------------------


class ReplicaSet:
    """The engine replicas as one engine-like object (`generate`, `queue_snapshot`), for replays in this process.

    The handle's router runs here, so `routing()` reads its counters and the replicas' reports.
    `queue_snapshot` is the client's view: a request counts as running from its first delta.
    """

    def __init__(self, handle: DeploymentHandle, *, started_ray: bool, startup_s: float) -> None:
        self._pool = HandlePool(handle)
        self._started_ray = started_ray
        self.startup_s = startup_s
        self._waiting: set[str] = set()  # request ids sent, no delta yet
        self._running: set[str] = set()  # request ids with a delta, not finished

    async def generate(
        self,
        *,
        prompt: str | list[int],
        max_tokens: int,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        extra_args: dict[str, Any] | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[GenerationChunk]:
        """Like `EmbeddedEngine.generate`, on whichever replica the router picks (`priority` is per engine: unused)."""
        request = replica_request(
            prompt=prompt, max_tokens=max_tokens, ignore_eos=ignore_eos, temperature=temperature,
            extra_args=extra_args, request_id=request_id, session_id=session_id,
        )  # fmt: skip
        self._waiting.add(request.request_id)
        try:
            async for delta in self.stream(request):
                self._waiting.discard(request.request_id)
                self._running.add(request.request_id)
                yield GenerationChunk(
                    text=delta.text,
                    token_ids=delta.token_ids,
                    finished=delta.finished,
                    finish_reason=delta.finish_reason,
                    num_prompt_tokens=delta.num_prompt_tokens,
                    num_cached_tokens=delta.num_cached_tokens,
                )
        finally:
            self._waiting.discard(request.request_id)
            self._running.discard(request.request_id)

    async def stream(self, request: ReplicaRequest) -> AsyncIterator[ReplicaDelta]:
        """Its deltas, each naming its replica. Raises `ReplicaUnavailable`: saturated, or its replica died."""
        async for delta in self._pool.stream(request):
            yield delta

    def kill_replica(self, replica_id: str) -> None:
        """Kill one replica's actor, as a crash would (fault drills); Serve's controller starts a replacement."""
        actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{ENGINE_DEPLOYMENT}#{replica_id}", namespace="serve")
        ray.kill(actor, no_restart=True)

    async def queue_snapshot(self) -> QueueSnapshot:
        return QueueSnapshot(running=frozenset(self._running), num_waiting=len(self._waiting), kv_usage=0.0)

    def routing(self) -> dict[str, Any]:
        return _routers.snapshot()

    def close(self) -> None:
        _shut_down(started_ray=self._started_ray)


def replica_request(
    *,
    prompt: str | list[int],
    max_tokens: int,
    ignore_eos: bool = False,
    temperature: float = 0.0,
    extra_args: dict[str, Any] | None = None,
    request_id: str | None = None,
    session_id: str | None = None,
) -> ReplicaRequest:
    """A `ReplicaRequest` from `EmbeddedEngine.generate`'s arguments (its key as the ingress would find it)."""
    token_ids = tuple(prompt) if isinstance(prompt, list) else None
    text = " ".join(map(str, prompt)) if isinstance(prompt, list) else prompt
    metadata = ProgramMetadata.from_extra_args(extra_args)
    session = Session(session_id, "caller") if session_id else None
    return ReplicaRequest(
        request_id=request_id or f"af-{uuid.uuid4().hex}",
        prompt=text,
        prompt_token_ids=token_ids,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        temperature=temperature,
        extra_args=dict(extra_args) if extra_args else None,
        session_id=session_id,
        key=program_key(extra_args, session, text),
        context_tokens=len(token_ids) if token_ids is not None else len(text) // 4,
        is_last_turn=metadata is not None and metadata.is_last_turn,
    )


def start_replica_set(options: ScaleOutOptions, *, timeout_s: float = 600.0) -> ReplicaSet:
    """The replicas alone (no HTTP endpoint), for a replay in this process."""
    started = time.perf_counter()
    started_ray = _connect(options)
    try:
        serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy, no port taken
        handle = serve.run(_engines(options), name=APP_NAME, route_prefix=None, blocking=False)
        _wait_running(timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            _shut_down(started_ray=started_ray)
        raise
    return ReplicaSet(handle, started_ray=started_ray, startup_s=time.perf_counter() - started)


def serve_replicas(options: ScaleOutOptions) -> None:
    """`agentflow serve --replicas N`: run until interrupted."""
    server = start(options)
    print(f"agentflow: {options.replicas} engine replicas ({options.router.value} routing) at {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
