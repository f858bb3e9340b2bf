"""The workloads' subcommands: each wing registers its own (`agentflow.cli` loads this module by name)."""

from __future__ import annotations

from typing import Any

from workloads.agents import _bench as agents_bench
from workloads.bfcl import _cli as bfcl_cli
from workloads.replay import _bench as replay_bench
from workloads.replay import _cli as replay_cli
from workloads.replay import _scaleout as scaleout_bench

__all__ = ["register"]


def register(subparsers: Any) -> None:
    bfcl_cli.register(subparsers)  # agentflow bfcl, agentflow bench bfcl
    replay_cli.register(subparsers)  # agentflow replay, agentflow convert-trace
    replay_bench.register_bench()  # agentflow bench serving
    agents_bench.register_bench()  # agentflow bench agents
    scaleout_bench.register_bench()  # agentflow bench scaleout
