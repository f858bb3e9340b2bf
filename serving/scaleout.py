"""Scale-out: engine replicas behind a program-affinity router on Ray Serve, and its simulator.

Importing this module imports neither Ray nor vLLM: `start` and `start_replica_set` load the Ray
adapter (`serving._ray`) when called, and raise `ClusterUnavailableError` without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentflow.exceptions import UserError
from serving._affinity import AffinityKnobs, RouterKind
from serving._simulate import (
    SimProgram,
    SimReplica,
    SimResult,
    SimTurn,
    calibrated_replica,
    fitted_replica,
    simulate,
)
from serving.engine import EngineConfig

if TYPE_CHECKING:
    from serving._ray import ReplicaSet, ScaleOutServer

__all__ = [
    "AffinityKnobs",
    "RouterKind",
    "ScaleOutOptions",
    "SimProgram",
    "SimReplica",
    "SimResult",
    "SimTurn",
    "calibrated_replica",
    "fitted_replica",
    "simulate",
    "start",
    "start_replica_set",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleOutOptions:
    """N engine replicas behind one OpenAI-compatible endpoint."""

    engine: EngineConfig
    replicas: int = 2
    router: RouterKind = RouterKind.AGENTFLOW
    ray_address: str | None = None  # None: a local Ray instance, started here
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    served_model_name: str = "default"
    stats_period_s: float = 0.5  # how often Ray collects each replica's load report
    # Requests one replica takes at once (Ray's max_ongoing_requests); beyond, Ray's router holds them.
    max_ongoing_requests: int | None = None  # None: twice the engine's max_num_seqs
    # Requests held for the whole deployment beyond that; more get HTTP 503 (backpressure), not memory.
    max_queued_requests: int = 256
    affinity: AffinityKnobs = field(default_factory=AffinityKnobs)
    local_num_cpus: int | None = None  # a local Ray instance's CPUs (None: Ray counts them)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UserError(f"--replicas must be >= 1, got {self.replicas}")
        if self.max_queued_requests < 1:
            raise UserError(f"max_queued_requests must be >= 1, got {self.max_queued_requests}")


def start(options: ScaleOutOptions, *, timeout_s: float = 600.0) -> ScaleOutServer:
    """The replicas and the HTTP endpoint, running (`ScaleOutServer.close()` stops them).

    Raises:
        ClusterUnavailableError: Ray is not installed, or `ray_address` cannot be reached.
    """
    from serving import _ray

    return _ray.start(options, timeout_s=timeout_s)


def start_replica_set(options: ScaleOutOptions, *, timeout_s: float = 600.0) -> ReplicaSet:
    """The replicas alone, as one engine-like object for replays in this process (`close()` stops them)."""
    from serving import _ray

    return _ray.start_replica_set(options, timeout_s=timeout_s)
