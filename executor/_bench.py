"""`agentflow bench executor`: dispatch overhead, a 10k-node DAG, parallel efficiency.

Every figure comes from real runs of the executor through `Program` (no simulated clock).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from agentflow.ir import CallKind, CallNode, Ref
from agentflow.program import Program
from agentflow.tools import tool

__all__ = ["run_executor_bench"]

TARGETS = {
    "dispatch_overhead_us_p50": ("<=", 20.0),
    "dag10k_wall_s": ("<=", 0.5),
    "parallel_efficiency_min": (">=", 0.97),
}


@tool(name="noop")
async def noop_tool(deps: list[Any] | None = None) -> None:
    """Do nothing (measures the runtime, not the tool)."""
    return None


@tool(name="sleep_ms")
async def sleep_tool(ms: float, deps: list[Any] | None = None) -> float:
    """Sleep for `ms` milliseconds."""
    await asyncio.sleep(ms / 1000.0)
    return ms


def _node(node_id: int, deps: list[int], target: str = "noop", **kwargs: Any) -> CallNode:
    if deps:
        kwargs["deps"] = [Ref(str(d)) for d in deps]
    return CallNode(id=str(node_id), kind=CallKind.TOOL, target=target, kwargs=kwargs)


async def _run_nodes(nodes: list[CallNode], tools: list[Any], *, max_parallel: int = 64) -> tuple[float, Program]:
    start = time.perf_counter()
    async with Program(tools=tools, max_parallel=max_parallel) as program:
        program.submit_batch(nodes)
    wall_s = time.perf_counter() - start
    assert program.result.ok, program.result.failures[:3]
    return wall_s, program


def _chain(n: int) -> list[CallNode]:
    return [_node(i, [i - 1] if i > 1 else []) for i in range(1, n + 1)]


def _fanout(n: int) -> list[CallNode]:
    return [_node(1, [])] + [_node(i, [1]) for i in range(2, n)] + [_node(n, list(range(2, n)))]


async def dispatch_overhead(repeats: int = 15, size: int = 2000) -> dict[str, float]:
    """Per-call overhead: wall time of a DAG of no-op calls divided by its calls (chain and fan-out)."""
    per_call_us: dict[str, list[float]] = {"chain": [], "fanout": []}
    for _ in range(repeats):
        for shape, build in (("chain", _chain), ("fanout", _fanout)):
            wall_s, _ = await _run_nodes(build(size), [noop_tool], max_parallel=size)
            per_call_us[shape].append(wall_s / size * 1e6)
    both = per_call_us["chain"] + per_call_us["fanout"]
    return {
        "dispatch_overhead_us_p50": statistics.median(both),
        "dispatch_overhead_us_p50_chain": statistics.median(per_call_us["chain"]),
        "dispatch_overhead_us_p50_fanout": statistics.median(per_call_us["fanout"]),
    }


def _random_dag(n: int, rng: random.Random) -> list[CallNode]:
    nodes = []
    for i in range(1, n + 1):
        pool = range(max(1, i - 200), i)
        k = min(len(pool), rng.choice((0, 1, 1, 2, 2, 3)))
        nodes.append(_node(i, sorted(rng.sample(pool, k))))
    return nodes


async def dag10k(seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """Wall time of a random 10,000-node DAG (up to 3 deps each), submission included."""
    rng = random.Random(seed)
    walls = []
    for _ in range(repeats):
        nodes = _random_dag(10_000, rng)
        wall_s, _ = await _run_nodes(nodes, [noop_tool], max_parallel=256)
        walls.append(wall_s)
    return {"dag10k_wall_s": statistics.median(walls), "dag10k_wall_s_min": min(walls)}


def _layered(width: int, rng: random.Random) -> list[CallNode]:
    """Two layers of `width` sleep calls (10-50 ms), each of layer 2 on 1-2 of layer 1, then a join."""
    nodes = [_node(i, [], "sleep_ms", ms=rng.uniform(10, 50)) for i in range(1, width + 1)]
    for j in range(width + 1, 2 * width + 1):
        deps = sorted(rng.sample(range(1, width + 1), rng.choice((1, 2))))
        nodes.append(_node(j, deps, "sleep_ms", ms=rng.uniform(10, 50)))
    nodes.append(_node(2 * width + 1, list(range(width + 1, 2 * width + 1))))
    return nodes


async def parallel_efficiency(seed: int = 0, repeats: int = 5) -> dict[str, float]:
    """Critical-path time / wall time at widths 8, 32, 64 (median of repeats per width)."""
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for width in (8, 32, 64):
        effs = []
        for _ in range(repeats):
            _, program = await _run_nodes(_layered(width, rng), [noop_tool, sleep_tool], max_parallel=2 * width + 1)
            effs.append(program.result.trace.parallel_efficiency)
        out[f"parallel_efficiency_w{width}"] = statistics.median(effs)
    out["parallel_efficiency_min"] = min(out[f"parallel_efficiency_w{w}"] for w in (8, 32, 64))
    return out


async def _run_all() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures.update(await dispatch_overhead())
    figures.update(await dag10k())
    figures.update(await parallel_efficiency())
    return figures


def run_executor_bench() -> dict[str, Any]:
    """Run every executor benchmark; returns figures plus targets and pass/fail per target."""
    figures = asyncio.run(_run_all())
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = figures[key]
        checks[key] = {"target": f"{op} {bound}", "pass": value <= bound if op == "<=" else value >= bound}
    return {"figures": figures, "targets": checks, "all_pass": all(c["pass"] for c in checks.values())}


# -- tracing on vs off -------------------------------------------------------------------------------------


def run_tracing_bench(rounds: int = 4) -> dict[str, Any]:
    """Executor dispatch p50 with OpenTelemetry tracing off and on, side by side (off, on, on, off, ...).

    "On" is a real SDK pipeline: a span per program and per call, batched to an exporter that
    drops them (what it costs to record, not to ship). Needs the `otel` extra.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    import agentflow.otel

    class _Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=65_536))
    off: list[float] = []
    on: list[float] = []
    for i in range(rounds * 2):
        traced = i % 4 in (1, 2)  # off on on off: drift in the machine's speed falls on both
        if traced:
            agentflow.otel.instrument(tracer_provider=provider)
        try:
            figure = asyncio.run(dispatch_overhead(repeats=5))["dispatch_overhead_us_p50"]
        finally:
            agentflow.otel.uninstrument()
        (on if traced else off).append(figure)
    provider.shutdown()
    off_p50, on_p50 = statistics.median(off), statistics.median(on)
    return {
        "dispatch_overhead_us_p50_tracing_off": off_p50,
        "dispatch_overhead_us_p50_tracing_on": on_p50,
        "tracing_cost_us_per_call": on_p50 - off_p50,
        "rounds_off_us": off,
        "rounds_on_us": on,
        "measured": "executor dispatch (chain and fan-out of no-op tools), tracing off/on alternating",
    }
