"""`agentflow bench mcp`: what a tool call costs through MCP, and whether MCP calls run in parallel.

Against a local stdio server (`agentflow._mcp_bench_server`, built on the SDK's `MCPServer`):

- per-call latency of `add(a, b)` awaited one call at a time, as an MCP tool in a `Program`, as
  the same function registered as a local `@tool` in a `Program`, and through the SDK's client
  alone; the MCP overhead is the difference to the local tool (p50, p95, microseconds);
- the wall time of `num_parallel` independent calls of a tool that sleeps `sleep_s`, in one
  program, over the slowest of those calls (target <= 1.2).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentflow import _mcp_bench_server as bench_server
from agentflow.program import Program
from agentflow.tools import tool

__all__ = ["run_mcp_bench"]

_SERVER = f"stdio:{sys.executable} -m agentflow._mcp_bench_server"
_MAX_PARALLEL_RATIO = 1.2
_WARMUP_CALLS = 20


def run_mcp_bench(*, num_calls: int = 200, num_parallel: int = 8, sleep_s: float = 0.2) -> dict[str, Any]:
    """Every figure, the target and whether it passes (`all_pass`)."""
    figures = asyncio.run(_measure(num_calls=num_calls, num_parallel=num_parallel, sleep_s=sleep_s))
    passed = figures["parallel_ratio"] <= _MAX_PARALLEL_RATIO
    return {
        "server": _SERVER,
        "figures": figures,
        "targets": {"parallel_ratio": {"target": f"<= {_MAX_PARALLEL_RATIO}", "pass": passed}},
        "all_pass": passed,
    }


async def _measure(*, num_calls: int, num_parallel: int, sleep_s: float) -> dict[str, Any]:
    from agentflow.mcp import mcp_tools

    local_add = tool(bench_server.add)
    async with Program(tools=[local_add]) as program:
        direct_us = await _latencies_us(lambda: local_add(1, 2), num_calls)
        toolset = await mcp_tools(_SERVER, prefix="mcp_")  # closed when the program ends
        mcp_us = await _latencies_us(lambda: toolset["mcp_add"](1, 2), num_calls)
        parallel = await _parallel(program, toolset["mcp_sleep"], num_parallel, sleep_s)
    sdk_us = await _sdk_latencies_us(num_calls)
    figures: dict[str, Any] = {"calls": num_calls}
    figures.update(_percentiles("direct_us", direct_us))
    figures.update(_percentiles("mcp_us", mcp_us))
    figures.update(_percentiles("sdk_client_us", sdk_us))
    for q in ("p50", "p95"):  # what MCP adds to a local call; agentflow's part of it (the rest: SDK and server)
        figures[f"overhead_us_{q}"] = figures[f"mcp_us_{q}"] - figures[f"direct_us_{q}"]
    for q in ("p50", "p95"):
        figures[f"agentflow_share_us_{q}"] = figures[f"mcp_us_{q}"] - figures[f"sdk_client_us_{q}"]
    figures.update(parallel)
    return figures


async def _latencies_us(call: Callable[[], Awaitable[Any]], num_calls: int) -> list[float]:
    """Microseconds per awaited call, after a warm-up."""
    for _ in range(_WARMUP_CALLS):
        await call()
    out = []
    for _ in range(num_calls):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def _sdk_latencies_us(num_calls: int) -> list[float]:
    """The same call through the SDK's client alone: the share of the transport and the server."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "agentflow._mcp_bench_server"])
    async with Client(params) as client:
        await client.list_tools()
        return await _latencies_us(lambda: client.call_tool("add", {"a": 1, "b": 2}), num_calls)


async def _parallel(program: Program, sleep_tool: Any, num_parallel: int, sleep_s: float) -> dict[str, Any]:
    """Wall time of independent sleeping calls together, over the slowest of them."""
    start = time.perf_counter()
    variables = [sleep_tool(sleep_s) for _ in range(num_parallel)]
    for variable in variables:
        await variable
    wall_s = time.perf_counter() - start
    records = {r.node_id: r for r in program.result.trace.records}
    slowest_s = max(records[v.node_id].duration_s for v in variables)
    return {
        "parallel_calls": num_parallel,
        "parallel_sleep_s": sleep_s,
        "parallel_wall_s": wall_s,
        "slowest_call_s": slowest_s,
        "parallel_ratio": wall_s / slowest_s,
    }


def _percentiles(prefix: str, samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {f"{prefix}_p50": statistics.median(samples), f"{prefix}_p95": cuts[94]}
