"""Program-affinity routing across engine replicas: the pure policy (no Ray, no vLLM, no clock of its own).

Ray Serve's `RequestRouter` subclass in `serving._ray` is a thin shell over `AffinityPolicy`; the
simulator (`serving._simulate`) drives the same object. The rules:

1. **A program's turns go where its KV lives.** A request's program key (`program_key`: agentflow's
   program fields, else a session id, else its prompt chain's head) maps to the replica that served
   the program last (this router's book), or to one whose load report lists the key as resident
   (another router's doing, or this router's before a restart).
2. **A new program goes to the replica with the most headroom** for its expected context: the one
   that fits it in free + reclaimable KV blocks, with the shortest queue, then the most free
   blocks. Not a hash: a hash ignores how much each replica already holds.
3. **A program moves only at a turn boundary** (none of its requests in flight), **only when its
   replica is overloaded** (requests waiting beyond `overload_waiting`, or no room for the turn's
   new tokens), **and only when the re-prefill it costs is less than the queueing it saves**
   (`CostModel.prefill_s(context) < (wait at home - wait elsewhere)`), **and never between replicas
   that share their compute** (the same `ReplicaLoad.compute`: one host's CPU cores, one GPU): there
   the other queue drains on the same cores, so a move saves no queueing and its re-prefill slows
   both. (Measured on 2 replicas sharing 2 cores: 12 moves cost 20% mean JCT against no moves.)
   Moves are counted, and so are re-homes: a program whose replica is gone, re-prefilled elsewhere.

`choose` ranks replicas and changes nothing (Ray may ask again while it backs off); `on_routed`
records where a request went, which is where homes and moves are decided and counted.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from agentflow.metadata import ProgramMetadata
from serving._identity import Session

__all__ = [
    "AffinityKnobs",
    "AffinityPolicy",
    "CostModel",
    "ReplicaLoad",
    "Route",
    "RouteRequest",
    "RouterKind",
    "RoutingCounters",
    "program_key",
]

_MAX_CHOSEN = 4096  # choices awaiting on_routed; older ones belong to requests cancelled while routed
_CHAIN_HEAD_CHARS = 2048  # a prompt's head this long names its chain (agents' prompts extend each other)


class RouterKind(StrEnum):
    """The routers `--router` chooses from: agentflow's, and Ray Serve's own three for comparison."""

    AGENTFLOW = "agentflow"  # AffinityPolicy behind serving._ray.ProgramAffinityRouter
    POW2 = "pow2"  # Ray's default, PowerOfTwoChoicesRequestRouter
    SESSION_HASH = "session-hash"  # Ray's experimental ConsistentHashRouter on the session id
    PREFIX = "prefix"  # Ray LLM's PrefixCacheAffinityRouter


# -- what the router knows about a request and a replica --------------------------------------------


def program_key(extra_args: Mapping[str, Any] | None, session: Session | None, prompt: str | None) -> str | None:
    """The key a request's program is routed by; None: nothing identifies it.

    In the scheduler's order (`--identify-by fields,session,chain`): agentflow's program id, else
    the session id, else a digest of the prompt's first `_CHAIN_HEAD_CHARS` characters (an agent's
    next prompt extends its last one, so its head stays put).

    Raises:
        MetadataError: malformed program fields (the ingress answers 400).
    """
    metadata = ProgramMetadata.from_extra_args(extra_args)
    if metadata is not None:
        return f"program:{metadata.program_id}"
    if session is not None:
        return f"session:{session.session_id}"
    if prompt:
        digest = hashlib.blake2b(prompt[:_CHAIN_HEAD_CHARS].encode(), digest_size=12).hexdigest()
        return f"chain:{digest}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRequest:
    """One request, as the router sees it."""

    request_id: str
    key: str | None  # program_key(); None: routed by load alone
    context_tokens: int  # the prompt's length in tokens (estimated): what a re-prefill costs
    is_last_turn: bool = False  # the program ends with it: its home is forgotten once it completes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaLoad:
    """What a replica reports about itself (Ray Serve's `record_routing_stats`, every period)."""

    num_blocks: int  # KV blocks of its pool
    num_free_blocks: int  # free now (prefix-cached blocks nobody references count as free)
    num_reclaimable_blocks: int  # pinned by the scheduler, released under memory pressure
    block_size: int  # tokens per block
    num_waiting: int  # requests its engine holds but does not run
    num_running: int  # requests its engine runs
    max_num_seqs: int  # most requests it runs at once
    resident: frozenset[str] = frozenset()  # program keys whose KV it holds
    busy_s: float = 0.0  # seconds its engine has had work, since it started
    compute: str = ""  # what it computes on; replicas reporting the same non-empty value share it

    @property
    def headroom_blocks(self) -> int:
        return self.num_free_blocks + self.num_reclaimable_blocks

    def to_stats(self) -> dict[str, Any]:
        """The JSON-safe mapping a replica returns from `record_routing_stats`."""
        return {
            "num_blocks": self.num_blocks,
            "num_free_blocks": self.num_free_blocks,
            "num_reclaimable_blocks": self.num_reclaimable_blocks,
            "block_size": self.block_size,
            "num_waiting": self.num_waiting,
            "num_running": self.num_running,
            "max_num_seqs": self.max_num_seqs,
            "resident": sorted(self.resident),
            "busy_s": self.busy_s,
            "compute": self.compute,
        }

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | None) -> ReplicaLoad | None:
        """A report back from `to_stats`; None: no report yet, or one this version cannot read."""
        if not stats:
            return None
        try:
            counts = {name: int(stats[name]) for name in _COUNT_FIELDS}
            resident = frozenset(str(key) for key in stats.get("resident", ()))
            busy_s = float(stats.get("busy_s", 0.0))
            compute = str(stats.get("compute", ""))
        except (KeyError, TypeError, ValueError):
            return None
        if min(counts.values()) < 0 or counts["block_size"] < 1:
            return None
        return cls(**counts, resident=resident, busy_s=busy_s, compute=compute)


_COUNT_FIELDS = (
    "num_blocks",
    "num_free_blocks",
    "num_reclaimable_blocks",
    "block_size",
    "num_waiting",
    "num_running",
    "max_num_seqs",
)


class CostModel(Protocol):
    """Seconds of engine time (`serving._estimators.StepTimeModel` is one)."""

    def prefill_s(self, num_tokens: int) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AffinityKnobs:
    # A replica with this many requests waiting beyond what it runs is overloaded.
    overload_waiting: int = 2
    # Move when re-prefill < saved queueing / move_margin (> 1: moves need a clear win).
    move_margin: float = 1.0
    # Seconds one waiting request delays the next, before any completion has been seen.
    default_service_s: float = 1.0
    # Weight of the latest completion in the service-time average.
    service_ewma: float = 0.2
    # Programs this router remembers (least recently routed forgotten first).
    max_programs: int = 100_000


# -- decisions --------------------------------------------------------------------------------------

Reason = Literal["home", "resident", "new", "move", "rehome", "keyless"]


@dataclass(frozen=True, slots=True)
class Route:
    """Replica ids, best first, and why the first one."""

    ranked: tuple[str, ...]
    reason: Reason


@dataclass(slots=True)
class RoutingCounters:
    """What the router did, since it started."""

    requests: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # reason -> requests routed for it
    moves: int = 0  # programs moved off an overloaded replica at a turn boundary
    rehomes: int = 0  # programs whose replica was gone, re-prefilled elsewhere
    fallbacks: int = 0  # turns that went elsewhere than their home: Ray fell back to a lower rank (home full)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_reason": dict(sorted(self.by_reason.items())),
            "moves": self.moves,
            "rehomes": self.rehomes,
            "fallbacks": self.fallbacks,
        }


@dataclass(slots=True)
class _Program:
    home: str  # replica id
    in_flight: int = 0  # its requests routed and not yet completed
    ending: bool = False  # its last turn was routed: forget it when nothing is in flight


@dataclass(frozen=True, slots=True)
class _InFlight:
    key: str | None
    replica: str
    routed_at_s: float
    pending_at_route: int  # requests in flight on that replica when this one was routed (itself included)


class AffinityPolicy:
    """The program-affinity policy over a changing set of replicas. Not thread-safe: one router loop owns it."""

    def __init__(self, *, cost: CostModel, knobs: AffinityKnobs | None = None) -> None:
        self.knobs = knobs or AffinityKnobs()
        self._cost = cost
        self._loads: dict[str, ReplicaLoad | None] = {}  # replica id -> its last report (None: none yet)
        self._in_flight_by_replica: dict[str, int] = {}  # replica id -> requests this router has there
        self._done_since_report: dict[str, int] = {}  # replica id -> finished here since its report
        self._programs: OrderedDict[str, _Program] = OrderedDict()  # key -> its program, LRU first
        self._requests: dict[str, _InFlight] = {}  # request id -> where it went
        self._homed: dict[str, int] = {}  # replica id -> programs this router placed there (live ones)
        self._chosen: dict[str, Reason] = {}  # request id -> why, between choose() and on_routed()
        self._service_s = self.knobs.default_service_s
        self.counters = RoutingCounters()

    # -- the replica set ---------------------------------------------------------------------------

    def update_replicas(self, loads: Mapping[str, ReplicaLoad | None]) -> None:
        """The live replicas and their latest reports; a replica missing here is gone.

        A report is the same object until the replica sends a new one (Ray hands the same stats; the
        shell parses each once), so a new object is a new report: what this router saw finish before
        it is already in it.
        """
        previous, self._loads = self._loads, dict(loads)
        for replica in list(self._in_flight_by_replica):
            if replica not in self._loads:
                del self._in_flight_by_replica[replica]
                self._done_since_report.pop(replica, None)
        for replica, load in self._loads.items():
            self._in_flight_by_replica.setdefault(replica, 0)
            if load is None or load is not previous.get(replica):
                self._done_since_report[replica] = 0

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(self._loads)

    # -- choosing --------------------------------------------------------------------------------------

    def choose(self, request: RouteRequest) -> Route:
        """Replicas ranked for `request` (every live one, best first). Changes no home."""
        if not self._loads:
            return Route((), "keyless")
        by_load = self._by_load(request.context_tokens)
        route = Route(by_load, "keyless") if request.key is None else self._choose_for_program(request, by_load)
        self._chosen[request.request_id] = route.reason
        while len(self._chosen) > _MAX_CHOSEN:  # requests cancelled before Ray sent them anywhere
            del self._chosen[next(iter(self._chosen))]
        return route

    def _choose_for_program(self, request: RouteRequest, by_load: tuple[str, ...]) -> Route:
        assert request.key is not None
        program = self._programs.get(request.key)
        home = program.home if program is not None else None
        reason: Reason = "home"
        if home is None or home not in self._loads:
            home = self._resident_home(request.key)
            reason = "resident"
        if home is None:
            reason = "new" if program is None else "rehome"
            return Route(by_load, reason)
        others = tuple(r for r in by_load if r != home)
        at_boundary = program is None or program.in_flight == 0
        if at_boundary and others and self._should_move(home, others[0], request.context_tokens):
            return Route((others[0], home, *others[1:]), "move")
        return Route((home, *others), reason)

    def _resident_home(self, key: str) -> str | None:
        """A live replica whose report lists `key` as resident (the least loaded, if several)."""
        holders = [r for r, load in self._loads.items() if load is not None and key in load.resident]
        return min(holders, key=self._waiting) if holders else None

    def _by_load(self, context_tokens: int) -> tuple[str, ...]:
        """Live replicas, most headroom for `context_tokens` first.

        It fits, then the shortest wait, fewest requests, fewest programs placed there (whose next
        turns will come), most free KV.
        """

        def rank(replica: str) -> tuple[bool, int, int, int, int, str]:
            load = self._loads[replica]
            headroom = load.headroom_blocks if load is not None else 0
            fits = load is None or headroom >= self._blocks(context_tokens, load)
            homed = self._homed.get(replica, 0)
            return (not fits, self._waiting(replica), self._pending(replica), homed, -headroom, replica)

        return tuple(sorted(self._loads, key=rank))

    def _should_move(self, home: str, other: str, context_tokens: int) -> bool:
        """Move off `home` to `other`: `home` is overloaded and the re-prefill costs less than the wait it saves.

        Never onto a replica sharing `home`'s compute: its queue drains on the same cores.
        """
        if self._share_compute(home, other):
            return False
        if not self._overloaded(home, context_tokens) or self._overloaded(other, context_tokens):
            return False
        saved_s = (self._waiting(home) - self._waiting(other)) * self._service_s
        return self._cost.prefill_s(context_tokens) * self.knobs.move_margin < saved_s

    def _share_compute(self, a: str, b: str) -> bool:
        load_a, load_b = self._loads.get(a), self._loads.get(b)
        return load_a is not None and load_b is not None and bool(load_a.compute) and load_a.compute == load_b.compute

    def _overloaded(self, replica: str, context_tokens: int) -> bool:
        if self._waiting(replica) >= self.knobs.overload_waiting:
            return True
        load = self._loads.get(replica)
        return load is not None and load.headroom_blocks < self._blocks(context_tokens, load) // 4

    def _pending(self, replica: str) -> int:
        """Requests at `replica`: the larger of this router's in-flight count and its report (other routers').

        The report is up to a stats period old: requests this router saw finish since are taken off it,
        or a burst of new programs arriving just after a turn ended would all avoid that replica.
        """
        load = self._loads.get(replica)
        reported = load.num_running + load.num_waiting if load is not None else 0
        return max(self._in_flight_by_replica.get(replica, 0), reported - self._done_since_report.get(replica, 0))

    def _waiting(self, replica: str) -> int:
        """Requests at `replica` beyond what it runs at once."""
        load = self._loads.get(replica)
        if load is None:
            return self._in_flight_by_replica.get(replica, 0)
        reported = max(0, load.num_waiting - self._done_since_report.get(replica, 0))
        return max(reported, self._pending(replica) - load.max_num_seqs)

    @staticmethod
    def _blocks(num_tokens: int, load: ReplicaLoad) -> int:
        return math.ceil(max(num_tokens, 1) / load.block_size)

    # -- what happened -----------------------------------------------------------------------------------

    def on_routed(self, request: RouteRequest, replica: str, *, now_s: float) -> None:
        """`request` went to `replica`: its program's home is there now."""
        reason = self._chosen.pop(request.request_id, "keyless" if request.key is None else "new")
        self._count(reason)
        pending = self._in_flight_by_replica.get(replica, 0) + 1
        self._in_flight_by_replica[replica] = pending
        self._requests[request.request_id] = _InFlight(request.key, replica, now_s, pending)
        if request.key is not None:
            self._place(request, replica, reason)

    def _count(self, reason: Reason) -> None:
        counters = self.counters
        counters.requests += 1
        counters.by_reason[reason] = counters.by_reason.get(reason, 0) + 1

    def _place(self, request: RouteRequest, replica: str, reason: Reason) -> None:
        assert request.key is not None
        program = self._programs.get(request.key)
        if program is None:
            program = self._programs[request.key] = _Program(home=replica)
            self._homed[replica] = self._homed.get(replica, 0) + 1
            self._trim()
        elif program.home != replica:
            if program.home not in self._loads:
                self.counters.rehomes += 1
            elif reason == "move":
                self.counters.moves += 1
            else:
                self.counters.fallbacks += 1
            self._homed[program.home] = self._homed.get(program.home, 1) - 1
            self._homed[replica] = self._homed.get(replica, 0) + 1
            program.home = replica
        self._programs.move_to_end(request.key)
        program.in_flight += 1
        program.ending = program.ending or request.is_last_turn

    def _trim(self) -> None:
        while len(self._programs) > self.knobs.max_programs:
            _, dropped = self._programs.popitem(last=False)
            self._homed[dropped.home] = self._homed.get(dropped.home, 1) - 1

    def on_completed(self, request_id: str, *, now_s: float) -> None:
        """A request finished (or failed): its replica has one less, its program may end."""
        self._chosen.pop(request_id, None)
        done = self._requests.pop(request_id, None)
        if done is None:
            return
        if done.replica in self._in_flight_by_replica:
            self._in_flight_by_replica[done.replica] = max(0, self._in_flight_by_replica[done.replica] - 1)
            self._done_since_report[done.replica] = self._done_since_report.get(done.replica, 0) + 1
        self._observe_service(max(0.0, now_s - done.routed_at_s), done.pending_at_route)
        program = self._programs.get(done.key) if done.key is not None else None
        if program is not None:
            program.in_flight = max(0, program.in_flight - 1)
            if program.ending and program.in_flight == 0 and done.key is not None:
                del self._programs[done.key]
                self._homed[program.home] = self._homed.get(program.home, 1) - 1

    def _observe_service(self, latency_s: float, pending_at_route: int) -> None:
        """Seconds one request ahead delays the next: latency over the requests it shared the replica with."""
        sample = latency_s / max(1, pending_at_route)
        alpha = self.knobs.service_ewma
        self._service_s = (1 - alpha) * self._service_s + alpha * sample

    # -- reading it ----------------------------------------------------------------------------------------

    def home_of(self, key: str) -> str | None:
        program = self._programs.get(key)
        return program.home if program is not None else None

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    @property
    def service_s(self) -> float:
        return self._service_s

    def in_flight(self, replica: str) -> int:
        return self._in_flight_by_replica.get(replica, 0)

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.counters.snapshot(),
            "programs": len(self._programs),
            "service_s": round(self._service_s, 6),
            "in_flight": dict(sorted(self._in_flight_by_replica.items())),
            "homed": {replica: n for replica, n in sorted(self._homed.items()) if n},
        }
