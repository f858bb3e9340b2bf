"""The program-affinity policy on its own: no Ray, no engine, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.exceptions import MetadataError
from serving._affinity import AffinityKnobs, AffinityPolicy, ReplicaLoad, RouteRequest, program_key
from serving._identity import Session


class LinearCost:
    """Re-prefill seconds: `s_per_token` each."""

    def __init__(self, s_per_token: float = 0.001) -> None:
        self.s_per_token = s_per_token

    def prefill_s(self, num_tokens: int) -> float:
        return num_tokens * self.s_per_token


def load(
    *,
    free: int = 100,
    reclaimable: int = 0,
    waiting: int = 0,
    running: int = 0,
    resident: frozenset[str] = frozenset(),
    max_num_seqs: int = 4,
    compute: str = "",
) -> ReplicaLoad:
    return ReplicaLoad(
        num_blocks=128,
        num_free_blocks=free,
        num_reclaimable_blocks=reclaimable,
        block_size=32,
        num_waiting=waiting,
        num_running=running,
        max_num_seqs=max_num_seqs,
        resident=resident,
        compute=compute,
    )


_ids = iter(range(10**9))


def req(key: str | None, *, tokens: int = 320, last: bool = False) -> RouteRequest:
    return RouteRequest(request_id=f"r{next(_ids)}", key=key, context_tokens=tokens, is_last_turn=last)


def route(policy: AffinityPolicy, request: RouteRequest, *, now_s: float = 0.0) -> str:
    """Choose, then send to the first rank (what Ray does when that replica accepts)."""
    chosen = policy.choose(request).ranked[0]
    policy.on_routed(request, chosen, now_s=now_s)
    return chosen


def policy_with(loads: dict[str, ReplicaLoad | None], **knobs: object) -> AffinityPolicy:
    policy = AffinityPolicy(cost=LinearCost(), knobs=AffinityKnobs(**knobs))  # type: ignore[arg-type]
    policy.update_replicas(loads)
    return policy


# -- program keys --------------------------------------------------------------------------------


def test_program_fields_win_over_session_and_prompt() -> None:
    key = program_key({"program_id": "job-42", "turn": 1}, Session("s1", "header:x-session-id"), "hello")
    assert key == "program:job-42"


def test_session_then_prompt_chain() -> None:
    assert program_key(None, Session("s1", "body:user"), "hello") == "session:s1"
    head = "system prompt " * 200
    first = program_key(None, None, head + "turn one")
    assert first is not None and first.startswith("chain:")
    # A later turn extends the prompt: the same head, the same key.
    assert program_key(None, None, head + "turn one, its output and the tool's") == first
    assert program_key(None, None, "another agent " * 200) != first
    assert program_key(None, None, "") is None


def test_malformed_program_fields_raise() -> None:
    with pytest.raises(MetadataError):
        program_key({"program_id": "p", "turn": -1}, None, "x")


# -- rule 1: a program's turns stay where its KV lives --------------------------------------------


def test_turns_stick_to_the_replica_that_served_the_first() -> None:
    policy = policy_with({"a": load(), "b": load()})
    first = route(policy, req("program:p"))
    for _ in range(5):
        # The other replica is emptier now, which would draw a load balancer away.
        other = "b" if first == "a" else "a"
        policy.update_replicas({first: load(free=60, running=2), other: load(free=120)})
        assert route(policy, req("program:p")) == first
    assert policy.counters.by_reason["home"] == 5
    assert policy.counters.moves == 0


def test_a_key_resident_on_a_replica_goes_there_without_history() -> None:
    """Another router (or this one before a restart) placed the program: the replicas' reports say where."""
    policy = policy_with({"a": load(free=120), "b": load(free=10, resident=frozenset({"session:s"}))})
    assert policy.choose(req("session:s")).ranked[0] == "b"
    assert policy.choose(req("session:s")).reason == "resident"


def test_a_program_ends_with_its_last_turn() -> None:
    policy = policy_with({"a": load(), "b": load()})
    first = req("program:p")
    route(policy, first)
    last = req("program:p", last=True)
    route(policy, last)
    policy.on_completed(first.request_id, now_s=1.0)
    assert policy.home_of("program:p") is not None  # the last turn still runs
    policy.on_completed(last.request_id, now_s=2.0)
    assert policy.home_of("program:p") is None


# -- rule 2: new programs go where the headroom is --------------------------------------------------


def test_new_program_goes_to_the_replica_with_room_for_its_context() -> None:
    # "a" has the shorter queue but no room for 64 blocks; "b" holds much reclaimable (pinned) KV.
    policy = policy_with({"a": load(free=10), "b": load(free=20, reclaimable=60, running=1)})
    chosen = policy.choose(req("program:new", tokens=64 * 32))
    assert chosen.ranked[0] == "b" and chosen.reason == "new"


def test_new_programs_spread_by_queue_not_by_hash() -> None:
    policy = policy_with({"a": load(max_num_seqs=1), "b": load(max_num_seqs=1), "c": load(max_num_seqs=1)})
    homes = [route(policy, req(f"program:p{i}")) for i in range(9)]
    assert sorted(homes.count(r) for r in "abc") == [3, 3, 3]


def test_keyless_requests_go_to_the_least_loaded() -> None:
    policy = policy_with({"a": load(waiting=3, running=4), "b": load(running=1)})
    chosen = policy.choose(req(None))
    assert chosen.ranked == ("b", "a") and chosen.reason == "keyless"


def test_replicas_without_a_report_yet_are_ranked_by_this_routers_own_count() -> None:
    policy = policy_with({"a": None, "b": None})
    homes = {route(policy, req(f"program:p{i}")) for i in range(2)}
    assert homes == {"a", "b"}


# -- rule 3: moves at turn boundaries, when they pay --------------------------------------------------


def overloaded_home(policy: AffinityPolicy, key: str) -> tuple[str, str]:
    first = req(key)
    home = route(policy, first)
    policy.on_completed(first.request_id, now_s=1.0)  # the turn ended: a boundary
    other = "b" if home == "a" else "a"
    return home, other


def test_moves_off_an_overloaded_replica_when_reprefill_is_cheaper_than_the_queue() -> None:
    policy = policy_with({"a": load(), "b": load()}, default_service_s=2.0)
    home, other = overloaded_home(policy, "program:p")
    policy.update_replicas({home: load(waiting=6, running=4), other: load(running=1)})
    # 320 tokens re-prefill: 0.32 s; 6 waiting x ~2 s: far more.
    request = req("program:p")
    chosen = policy.choose(request)
    assert chosen.reason == "move" and chosen.ranked[0] == other
    policy.on_routed(request, other, now_s=2.0)
    assert policy.counters.moves == 1
    assert policy.home_of("program:p") == other


def test_stays_when_reprefill_costs_more_than_the_wait() -> None:
    policy = policy_with({"a": load(), "b": load()}, default_service_s=0.01)
    home, other = overloaded_home(policy, "program:p")
    policy.update_replicas({home: load(waiting=3, running=4), other: load()})
    # 8k tokens re-prefill: 8 s; 3 waiting x ~0.01 s.
    assert policy.choose(req("program:p", tokens=8000)).ranked[0] == home


def test_never_moves_while_a_turn_of_the_program_is_in_flight() -> None:
    policy = policy_with({"a": load(), "b": load()}, default_service_s=2.0)
    home = route(policy, req("program:p"))  # in flight (a parallel call of the same program follows)
    other = "b" if home == "a" else "a"
    policy.update_replicas({home: load(waiting=6, running=4), other: load()})
    assert policy.choose(req("program:p")).ranked[0] == home


def test_never_moves_between_replicas_that_share_their_compute() -> None:
    policy = policy_with({"a": load(), "b": load()}, default_service_s=2.0)
    home, other = overloaded_home(policy, "program:p")
    # The move that pays between separate devices (above), on one host's shared CPU cores: the other
    # queue drains on the same cores, so the re-prefill is all cost.
    shared = {home: load(waiting=6, running=4, compute="host:cpu"), other: load(running=1, compute="host:cpu")}
    policy.update_replicas(shared)
    assert policy.choose(req("program:p")).ranked[0] == home
    apart = {home: load(waiting=6, running=4, compute="host:cuda:0"), other: load(running=1, compute="host:cuda:1")}
    policy.update_replicas(apart)
    assert policy.choose(req("program:p")).reason == "move"


def test_a_load_report_round_trips_with_its_compute_and_an_older_report_reads_as_unknown() -> None:
    report = load(compute="host:cpu", resident=frozenset({"program:p"}))
    assert ReplicaLoad.from_stats(report.to_stats()) == report
    older = {k: v for k, v in report.to_stats().items() if k != "compute"}
    assert ReplicaLoad.from_stats(older) == load(resident=frozenset({"program:p"}))


def test_never_moves_to_a_replica_that_is_overloaded_too() -> None:
    policy = policy_with({"a": load(), "b": load()}, default_service_s=2.0)
    home, other = overloaded_home(policy, "program:p")
    policy.update_replicas({home: load(waiting=6, running=4), other: load(waiting=5, running=4)})
    assert policy.choose(req("program:p")).ranked[0] == home


# -- replicas come and go --------------------------------------------------------------------------


def test_a_program_whose_replica_died_is_rehomed_and_counted() -> None:
    policy = policy_with({"a": load(), "b": load()})
    home = route(policy, req("program:p"))
    survivor = "b" if home == "a" else "a"
    policy.update_replicas({survivor: load()})
    request = req("program:p")
    chosen = policy.choose(request)
    assert chosen.ranked == (survivor,) and chosen.reason == "rehome"
    policy.on_routed(request, survivor, now_s=1.0)
    assert policy.counters.rehomes == 1
    assert policy.in_flight(home) == 0  # the dead replica's book is gone


def test_a_turn_ray_sent_elsewhere_is_a_fallback_not_a_move() -> None:
    policy = policy_with({"a": load(), "b": load()})
    home = route(policy, req("program:p"))
    other = "b" if home == "a" else "a"
    policy.on_routed(req("program:p"), other, now_s=1.0)  # the home was full: Ray took rank 2
    assert policy.counters.fallbacks == 1 and policy.counters.moves == 0


def test_the_program_table_is_bounded() -> None:
    policy = policy_with({"a": load()}, max_programs=10)
    for i in range(50):
        request = req(f"program:p{i}")
        route(policy, request)
        policy.on_completed(request.request_id, now_s=1.0)
    assert policy.num_programs == 10


# -- reports over the wire --------------------------------------------------------------------------


def test_load_reports_round_trip_and_bad_ones_are_none() -> None:
    report = load(free=7, reclaimable=3, resident=frozenset({"program:x"}))
    assert ReplicaLoad.from_stats(report.to_stats()) == report
    assert ReplicaLoad.from_stats({}) is None
    assert ReplicaLoad.from_stats(None) is None
    assert ReplicaLoad.from_stats({**report.to_stats(), "num_free_blocks": "lots"}) is None
    assert ReplicaLoad.from_stats({**report.to_stats(), "block_size": 0}) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.booleans(), st.integers(1, 4000), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    )
)
def test_every_choice_ranks_every_live_replica_once(steps: list[tuple[int, bool, int, int]]) -> None:
    policy = policy_with({"a": load(), "b": load(), "c": load()})
    in_flight: list[str] = []
    for program, complete, tokens, waiting in steps:
        policy.update_replicas({"a": load(waiting=waiting), "b": load(), "c": load(running=waiting)})
        request = req(f"program:p{program}", tokens=tokens)
        ranked = policy.choose(request).ranked
        assert sorted(ranked) == ["a", "b", "c"]
        policy.on_routed(request, ranked[0], now_s=0.0)
        in_flight.append(request.request_id)
        if complete:
            policy.on_completed(in_flight.pop(0), now_s=1.0)
    assert sum(policy.in_flight(r) for r in "abc") == len(in_flight)
    assert sum(policy.snapshot()["homed"].values()) == policy.num_programs


def test_new_programs_spread_over_idle_replicas_by_the_programs_already_placed() -> None:
    """Between turns nothing is in flight: the programs placed on a replica still count (their turns will come)."""
    policy = policy_with({"a": load(), "b": load()})
    homes = []
    for i in range(4):
        request = req(f"program:p{i}")
        homes.append(route(policy, request))
        policy.on_completed(request.request_id, now_s=1.0)
    assert sorted(homes) == ["a", "a", "b", "b"]


def test_a_stale_report_does_not_count_requests_this_router_saw_finish() -> None:
    """Reports come every stats period: one taken while a turn ran still lists it after it finished.

    New programs arriving just after must spread by what is really there (CI once saw four new
    programs all avoid a replica whose report still counted one finished request).
    """
    stale = {"a": load(running=1), "b": load()}
    policy = policy_with(stale)
    turn = req("program:old", last=True)
    policy.on_routed(turn, "a", now_s=0.0)
    policy.on_completed(turn.request_id, now_s=0.5)
    homes = []
    for i in range(4):
        policy.update_replicas(stale)  # the same reports: no new one yet
        request = req(f"program:p{i}")
        homes.append(route(policy, request))
        policy.on_completed(request.request_id, now_s=1.0)
    assert sorted(homes) == ["a", "a", "b", "b"]


def test_a_new_report_replaces_what_this_router_saw_finish() -> None:
    policy = policy_with({"a": load(running=1), "b": load()})
    turn = req("program:old")
    policy.on_routed(turn, "a", now_s=0.0)
    policy.on_completed(turn.request_id, now_s=0.5)
    policy.update_replicas({"a": load(running=2), "b": load()})  # other routers' requests, reported after
    assert policy.choose(req("program:new")).ranked[0] == "b"


def test_choices_never_routed_do_not_pile_up() -> None:
    policy = policy_with({"a": load()})
    for i in range(5000):
        policy.choose(req(f"program:p{i}"))  # each cancelled before Ray sent it anywhere
    assert len(policy._chosen) <= 4096
