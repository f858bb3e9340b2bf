"""The scale-out simulator: deterministic, fast, and it tells the routers apart the way the policy intends."""

from __future__ import annotations

import random

import pytest

from serving._affinity import RouterKind
from serving._simulate import SimProgram, SimReplica, SimTurn, calibrated_replica, fitted_replica, simulate


def workload(num_programs: int, *, rate_per_s: float, turns: int = 6, seed: int = 0) -> list[SimProgram]:
    rng = random.Random(seed)
    t = 0.0
    programs = []
    for i in range(num_programs):
        t += rng.expovariate(rate_per_s)
        programs.append(
            SimProgram(
                f"p{i}",
                t,
                64,
                tuple(
                    SimTurn(300 if j == 0 else rng.randint(40, 120), rng.randint(8, 24), 0.5 if j < turns - 1 else 0.0)
                    for j in range(turns)
                ),
            )
        )
    return programs


ROOMY = SimReplica(capacity_tokens=20_000, max_num_seqs=8)


def test_one_program_alone_costs_its_steps_and_its_tools() -> None:
    program = SimProgram("p", 0.0, 0, (SimTurn(500, 10, 1.0), SimTurn(100, 10, 0.0)))
    result = simulate([program], replicas=1, replica=ROOMY, router=RouterKind.AGENTFLOW)
    (jct,) = result.jct_s
    assert 1.0 < jct < 3.0  # two short turns on the seeded CPU model, plus the 1 s tool
    # The second turn prefilled only its 100 new tokens: its context stayed on the replica.
    assert result.prefill_tokens == 500 + 100
    assert result.busy_s[0] == pytest.approx(jct - 1.0, rel=1e-6)


def test_the_same_inputs_give_the_same_result() -> None:
    programs = workload(12, rate_per_s=3)
    first = simulate(programs, replicas=4, replica=ROOMY, router=RouterKind.POW2, seed=7).summary()
    assert simulate(programs, replicas=4, replica=ROOMY, router=RouterKind.POW2, seed=7).summary() == first


def test_affinity_keeps_contexts_where_pow2_scatters_them() -> None:
    programs = workload(16, rate_per_s=4)
    ours = simulate(programs, replicas=4, replica=ROOMY, router=RouterKind.AGENTFLOW).summary()
    pow2 = simulate(programs, replicas=4, replica=ROOMY, router=RouterKind.POW2).summary()
    assert ours["cached_fraction"] > pow2["cached_fraction"] + 0.2
    assert ours["mean_jct_s"] < pow2["mean_jct_s"]


def test_headroom_placement_balances_better_than_hashing() -> None:
    programs = workload(12, rate_per_s=6)
    ours = simulate(programs, replicas=6, replica=ROOMY, router=RouterKind.AGENTFLOW).summary()
    hashed = simulate(programs, replicas=6, replica=ROOMY, router=RouterKind.SESSION_HASH).summary()
    assert ours["load_imbalance"] < hashed["load_imbalance"]


def test_shared_cores_slow_every_replica_down() -> None:
    programs = workload(8, rate_per_s=4)
    apart = simulate(programs, replicas=2, replica=ROOMY, router=RouterKind.AGENTFLOW).summary()
    shared = simulate(programs, replicas=2, replica=ROOMY, router=RouterKind.AGENTFLOW, shared_cores=True).summary()
    assert shared["mean_jct_s"] > apart["mean_jct_s"]


def test_calibration_matches_the_measured_speeds() -> None:
    replica = calibrated_replica(capacity_tokens=4096, max_num_seqs=8, prefill_512_s=1.52, decode_s_per_token=0.06)
    program = SimProgram("p", 0.0, 0, (SimTurn(512, 2, 0.0),))
    (jct,) = simulate([program], replicas=1, replica=replica, router=RouterKind.AGENTFLOW).jct_s
    assert jct == pytest.approx(1.52 + 0.06, rel=0.05)  # a 512-token prefill step, then one decode step


def test_a_fitted_replica_steps_at_the_schedulers_own_fit() -> None:
    fit = {"steps_observed": 1461, "a_s": 0.03, "b_s_per_ktok": 1.0, "c_s_per_ktok2": 0.5, "d_s_per_decode": 0.001}
    replica = fitted_replica(capacity_tokens=4096, max_num_seqs=8, step_time_model=fit)
    program = SimProgram("p", 0.0, 0, (SimTurn(512, 2, 0.0),))
    (jct,) = simulate([program], replicas=1, replica=replica, router=RouterKind.AGENTFLOW).jct_s
    prefill_step = 0.03 + 1.0 * 0.512 + 0.5 * 0.512**2  # nothing decoding yet
    assert jct == pytest.approx(prefill_step + 0.03 + 0.001, rel=1e-6)


def test_a_fitted_replica_refuses_what_is_not_a_step_time_snapshot() -> None:
    with pytest.raises(ValueError, match="not a step-time model snapshot"):
        fitted_replica(capacity_tokens=4096, max_num_seqs=8, step_time_model={"a_s": "fast"})
