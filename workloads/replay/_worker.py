"""One policy's replay in a process of its own: `python -m workloads.replay._worker SPEC.json OUT.json`.

`python -m workloads.replay._worker --probe SPEC.json OUT.json` instead runs the throughput probe:
one engine with agentflow's scheduler and vLLM's stock one swapped in and out between bursts
(`workloads.replay._probe`).

Engines are per configuration and share process-global vLLM state, so each policy gets a fresh
process: the same scaled programs, seed and arrivals, a clean engine, no leftovers of the last
policy in its cache or its allocator. The parent (`workloads.replay._runner`) writes the spec and
reads the result; per-program lines are appended to the spec's `results_path` as they finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from workloads.replay._probe import run_probe
from workloads.replay._run import (
    ProgramOutcome,
    ReplaySettings,
    RuntimeHooks,
    ServingPolicy,
    get_policy,
    replay_programs,
    speed_check,
)
from workloads.replay._trace import ScaledProgram

__all__: list[str] = []  # internal module

_REPORT_SETTLE_S = 2.0  # a few of Ray's routing-stats periods (serving._ray.ScaleOutOptions.stats_period_s)


def main(argv: list[str]) -> int:
    probe = bool(argv) and argv[0] == "--probe"
    spec_path, out_path = (Path(arg) for arg in (argv[1:3] if probe else argv[0:2]))
    spec = json.loads(spec_path.read_text())
    try:
        result = asyncio.run(run_probe_spec(spec) if probe else run_spec(spec))
    except Exception as exc:  # the parent reports it as this policy's failure; the run goes on
        out_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    out_path.write_text(json.dumps(result))
    return 0


async def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Start the policy's engine, replay, shut down; the raw results."""
    async with _policy_engine(spec) as engine:
        return await _run_on(engine, spec)


async def run_probe_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Start the policy's engine (agentflow's scheduler), run the throughput probe, shut down; its raw walls."""
    probe = spec["probe"]
    async with _policy_engine(spec) as engine:
        return await run_probe(
            engine,
            num_requests=probe["num_requests"],
            prompt_tokens=probe["prompt_tokens"],
            output_tokens=probe["output_tokens"],
            rounds=probe["rounds"],
            seed=spec["seed"],
        )


@contextlib.asynccontextmanager
async def _policy_engine(spec: dict[str, Any]) -> AsyncIterator[Any]:
    """The spec's engine settings plus its policy's scheduler, started; shut down on exit."""
    from serving.engine import EmbeddedEngine, EngineConfig

    policy = get_policy(spec["policy"])
    config = EngineConfig(**spec["engine"], **policy.engine_overrides(), **spec.get("engine_extra", {}))
    if spec.get("router") is not None:
        async with _replica_set(spec, config) as replicas:
            yield replicas
        return
    engine = EmbeddedEngine(config)
    try:
        await engine.astart()
        yield engine
    finally:
        engine.shutdown()


@contextlib.asynccontextmanager
async def _replica_set(spec: dict[str, Any], config: Any) -> AsyncIterator[Any]:
    """`spec["replicas"]` engines on a local Ray instance behind `spec["router"]` (serving._ray.ReplicaSet)."""
    from serving.scaleout import AffinityKnobs, RouterKind, ScaleOutOptions, start_replica_set

    options = ScaleOutOptions(
        engine=config,
        replicas=spec["replicas"],
        router=RouterKind(spec["router"]),
        affinity=AffinityKnobs(**spec.get("affinity_knobs", {})),
    )
    replicas = start_replica_set(options)  # blocks until the engines are up; nothing else runs yet
    try:
        yield replicas
    finally:
        replicas.close()


async def _run_on(engine: Any, spec: dict[str, Any]) -> dict[str, Any]:
    policy = get_policy(spec["policy"])
    programs = [ScaledProgram.from_json(raw) for raw in spec["programs"]]
    settings = ReplaySettings(
        policy=policy,
        seed=spec["seed"],
        arrivals_s=tuple(spec["arrivals_s"]) if spec.get("arrivals_s") is not None else None,
        concurrency=spec.get("concurrency"),
        deadlines_s=tuple(spec["deadlines_s"]) if spec.get("deadlines_s") is not None else None,
        send_deadlines=bool(spec.get("send_deadlines", False)),
    )
    across_replicas = spec.get("router") is not None
    sink = _ProgramSink(spec.get("results_path"), spec["policy"], len(programs), spec.get("progress"))
    speed = await speed_check(engine, seed=spec["seed"])
    routing_before = engine.routing() if across_replicas else None  # busy time so far: the speed check's
    started = time.perf_counter()
    try:
        # Across replicas the runtime's tool-duration and program-end reports are not forwarded yet:
        # each replica's scheduler learns from the program fields and its own steps.
        hooks = RuntimeHooks() if across_replicas else _runtime_hooks(engine, policy)
        outcomes, engine_stats = await replay_programs(engine, programs, settings, hooks=hooks, on_done=sink.done)
    finally:
        sink.close()
    replay_wall_s = time.perf_counter() - started
    # The scheduler's own counters (pins created/hit/expired/reclaimed, ...), where it keeps them.
    serving_metrics = await engine.agentflow_metrics() if policy.program_aware and not across_replicas else None
    routing: dict[str, Any] = {}
    if across_replicas:
        await asyncio.sleep(_REPORT_SETTLE_S)  # the replicas' last load reports reach the router
        routing = {"routing": {"before": routing_before, "after": engine.routing()}}
    return {
        **routing,
        "speed_check": speed,
        "serving_metrics": serving_metrics,
        "policy": policy.name,
        "engine_startup_s": engine.startup_s,
        "replay_wall_s": replay_wall_s,
        "engine_stats": engine_stats,
        "outcomes": [outcome.to_json() for outcome in outcomes],
    }


def _runtime_hooks(engine: Any, policy: ServingPolicy) -> RuntimeHooks:
    """Report tool durations and program ends the way the agentflow runtime does, for programs only."""
    if not policy.program_metadata:
        return RuntimeHooks()
    return RuntimeHooks(tool_done=engine.observe_tool_duration, program_done=engine.end_program)


class _ProgramSink:
    """Appends each finished program to the results file and ticks the progress bar."""

    def __init__(self, path: str | None, policy: str, total: int, progress: bool | None) -> None:
        from workloads._batch import ResultsFile

        self._results = ResultsFile(Path(path)) if path else None
        self._policy = policy
        self._bar = _progress_bar(total, f"replay {policy}", progress)

    def done(self, outcome: ProgramOutcome) -> None:
        if self._results is not None:
            self._results.append({"key": outcome.program_id, "policy": self._policy, **outcome.to_json()})
        if self._bar is not None:
            self._bar.set_postfix_str(f"last JCT {outcome.jct_s:.1f} s", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._results is not None:
            self._results.close()
        if self._bar is not None:
            self._bar.close()


def _progress_bar(total: int, description: str, enabled: bool | None) -> Any:
    if enabled is False:
        return None
    from tqdm import tqdm

    # disable=None: a bar only on a terminal, so logs and pipes stay clean.
    return tqdm(
        total=total,
        desc=description,
        unit="prog",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if enabled is None else False,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
