"""`agentflow bench bfcl`: runner throughput on the embedded model, `--concurrency K` vs 1, same records.

Both runs share one engine in one process. The K-way run goes first and the prefix cache is
reset before each run, so neither run reuses the other's prompts.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from serving import EmbeddedEngine
from workloads.bfcl._run import BfclOptions, run_bfcl_async

__all__ = ["run_throughput_bench"]

_TARGET_SPEEDUP = 3.0


def run_throughput_bench(
    *, category: str = "simple_python", num_records: int = 24, concurrency: int = 8, max_tokens: int = 192
) -> dict[str, Any]:
    """Records/s at `concurrency` and at 1 on the same records; `speedup` must be >= 3."""
    return asyncio.run(_bench(category, num_records, concurrency, max_tokens))


async def _bench(category: str, num_records: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    runs: dict[int, dict[str, Any]] = {}
    engine_start_s = await _start_engine()
    with tempfile.TemporaryDirectory(prefix="agentflow-bfcl-bench-") as tmp:
        for k in (concurrency, 1):
            options = BfclOptions(
                categories=(category,),
                limit=num_records,
                concurrency=k,
                max_tokens=max_tokens,
                out_dir=Path(tmp) / f"c{k}",
                progress=False,
            )
            await _reset_prefix_cache()
            report = await run_bfcl_async(options)
            runs[k] = report.summary
    fast, slow = runs[concurrency]["run"], runs[1]["run"]
    speedup = slow["wall_s"] / fast["wall_s"] if fast["wall_s"] > 0 else 0.0
    return {
        "benchmark": "bfcl runner throughput (embedded model, native mode)",
        "category": category,
        "records": num_records,
        "max_tokens": max_tokens,
        f"concurrency_{concurrency}_wall_s": fast["wall_s"],
        "concurrency_1_wall_s": slow["wall_s"],
        f"concurrency_{concurrency}_records_per_s": fast["records_per_s"],
        "concurrency_1_records_per_s": slow["records_per_s"],
        "speedup": speedup,
        "accuracy": {str(k): runs[k]["overall"]["accuracy"] for k in runs},
        "engine_start_s": engine_start_s,
        "target_speedup": _TARGET_SPEEDUP,
        "all_pass": speedup >= _TARGET_SPEEDUP,
    }


def _engine() -> EmbeddedEngine:
    from workloads.bfcl._run import embedded_backend

    return embedded_backend().engine  # the runner's engine


async def _start_engine() -> float:
    t0 = time.perf_counter()
    await _engine().astart()
    return time.perf_counter() - t0


async def _reset_prefix_cache() -> None:
    engine = _engine()
    await engine.reset_prefix_cache()
