"""The replay harness on the real embedded engine (the session's shared engine; a few short programs)."""

from __future__ import annotations

import importlib.util

import pytest

from serving.engine import EmbeddedEngine
from workloads.replay._metrics import summarize_outcomes
from workloads.replay._probe import probe_figures, run_probe
from workloads.replay._run import POLICIES, ReplaySettings, RuntimeHooks, poisson_arrivals, replay_programs
from workloads.replay._trace import ScaledProgram, ScaledTurn

pytestmark = pytest.mark.engine


def _programs(n: int) -> list[ScaledProgram]:
    turns = (
        ScaledTurn(new_prompt_tokens=80, output_tokens=6, tool="ls", tool_s=0.05),
        ScaledTurn(new_prompt_tokens=40, output_tokens=4, tool="cat", tool_s=0.1),
        ScaledTurn(new_prompt_tokens=20, output_tokens=5, tool=None, tool_s=0.0),
    )
    return [ScaledProgram(program_id=f"replay-test-{i}", shared_prefix_tokens=40, turns=turns) for i in range(n)]


async def test_stock_replay_forces_lengths_and_hits_the_prefix_cache(engine: EmbeddedEngine) -> None:
    programs = _programs(3)
    settings = ReplaySettings(
        policy=POLICIES["vllm"], seed=11, arrivals_s=tuple(poisson_arrivals(3, rate_per_s=5.0, seed=11))
    )
    done: list[str] = []
    outcomes, stats = await replay_programs(engine, programs, settings, on_done=lambda o: done.append(o.program_id))

    assert sorted(done) == sorted(p.program_id for p in programs)
    for program, outcome in zip(programs, outcomes, strict=True):
        assert outcome.error is None and len(outcome.calls) == 3
        assert outcome.jct_s >= 0.15  # the tool pauses were slept
        for call, turn in zip(outcome.calls, program.turns, strict=True):
            assert call.num_output_tokens == turn.output_tokens  # ignore_eos + max_tokens
            assert call.num_prompt_tokens == program.prompt_tokens(call.turn)
            assert call.queued_s >= 0 and call.submit_s <= call.first_token_s <= call.finish_s
        # Turn i's prompt extends turn i-1's context: with room in the cache its full blocks hit.
        for call in outcome.calls[1:]:
            previous_prompt = program.prompt_tokens(call.turn - 1)
            assert call.num_cached_tokens >= previous_prompt // 32 * 32
    summary = summarize_outcomes(outcomes)
    assert summary["num_failed"] == 0 and summary["jct_mean_s"] > 0
    assert 0 < summary["cached_token_fraction"] <= 1
    assert stats["num_snapshots"] > 0


@pytest.mark.skipif(importlib.util.find_spec("serving._scheduler") is None, reason="no program-aware scheduler")
async def test_program_metadata_and_runtime_hooks_reach_the_engine(engine: EmbeddedEngine) -> None:
    programs = _programs(2)
    tools: list[tuple[str, float]] = []
    ended: list[str] = []

    async def program_done(program_id: str) -> object:
        ended.append(program_id)
        return await engine.end_program(program_id)

    def tool_done(tool: str, duration_s: float) -> None:
        tools.append((tool, duration_s))
        engine.observe_tool_duration(tool, duration_s)

    settings = ReplaySettings(
        policy=POLICIES["agentflow"], seed=12, concurrency=2, deadlines_s=(60.0, 60.0), send_deadlines=True
    )
    outcomes, _ = await replay_programs(
        engine, programs, settings, hooks=RuntimeHooks(tool_done=tool_done, program_done=program_done)
    )
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    assert sorted(ended) == sorted(p.program_id for p in programs)
    assert sorted(t for t, _ in tools) == ["cat", "cat", "ls", "ls"]
    assert all(d >= 0.05 for _, d in tools)
    assert summarize_outcomes(outcomes)["slo_attainment"] == 1.0


async def test_throughput_probe_alternates_stock_and_agentflow_on_one_engine(engine: EmbeddedEngine) -> None:
    ours = engine.scheduler
    probe = {"num_requests": 4, "prompt_tokens": 64, "output_tokens": 4, "rounds": 2}
    raw = await run_probe(engine, **probe, seed=5)
    assert engine.scheduler is ours  # swapped back
    assert raw["order"] == ["vllm", "agentflow", "agentflow", "vllm"]
    figures = probe_figures(probe, raw)
    stock, agentflow = figures["vllm"], figures["agentflow"]
    assert len(stock["walls_s"]) == len(agentflow["walls_s"]) == 2 and min(stock["walls_s"]) > 0
    # Each burst's steps ran on its own scheduler: both timed at least the 4 decode steps of a burst.
    assert stock["step_s"] > 0 and agentflow["step_s"] > 0
    assert stock["scheduler_s_per_step"] > 0 and agentflow["scheduler_s_per_step"] > 0
    assert len(agentflow["paired_cost_pct"]) == 2 and agentflow["cost_median_pct"] is not None


@pytest.mark.skipif(importlib.util.find_spec("serving._scheduler") is None, reason="no program-aware scheduler")
@pytest.mark.parametrize(("policy", "counter"), [("agentflow:session", "by_session"), ("agentflow:none", "by_chain")])
async def test_clients_sending_less_are_still_recognised(engine: EmbeddedEngine, policy: str, counter: str) -> None:
    await engine.configure_scheduler(identify_by_chain=True)
    try:
        before = await engine.agentflow_metrics()
        settings = ReplaySettings(policy=POLICIES[policy], seed=13, concurrency=2)
        outcomes, _ = await replay_programs(engine, _programs(2), settings)
        after = await engine.agentflow_metrics()
    finally:
        await engine.configure_scheduler(identify_by_chain=False, pinning=False)
        await engine.configure_scheduler(pinning=True)
    assert before is not None and after is not None
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    assert after["requests"]["with_metadata"] == before["requests"]["with_metadata"]
    # Sessions: every call; chains: at least every later turn (first turns are plain until learned).
    expected = 2 * 3 if counter == "by_session" else 2 * 2
    assert after["requests"][counter] - before["requests"][counter] >= expected
