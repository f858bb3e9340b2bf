"""`agentflow bench executor`: dispatch overhead, a 10k-node DAG, parallel efficiency."""

from __future__ import annotations

import argparse
from typing import Any

from agentflow.cli import add_bench

__all__ = ["register"]


def register(subparsers: Any) -> None:
    del subparsers  # a benchmark only
    add_bench("executor", "dispatch overhead, a 10k-node DAG, parallel efficiency", _bench_executor)
    add_bench("tracing", "executor dispatch with OpenTelemetry tracing off vs on, side by side", _bench_tracing)


def _bench_executor(args: argparse.Namespace) -> dict[str, Any]:
    from executor._bench import run_executor_bench

    return run_executor_bench()


def _bench_tracing(args: argparse.Namespace) -> dict[str, Any]:
    from executor._bench import run_tracing_bench

    return run_tracing_bench()
