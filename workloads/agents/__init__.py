"""Real, unmodified agents against the server (`agentflow bench agents`).

mini-swe-agent from PyPI, in a venv of its own (`_venv`), K at a time on small shipped task
repositories (`_tasks`: a bug and a failing test each), configured only through its own YAML config
(`_config`: the server's base URL), each behind its own forwarding proxy (`_proxy`) that records
which requests were its own; run against `agentflow serve` and stock `vllm serve` (`_servers`),
scored for JCT, cached tokens and program attribution (`_attribution`, `_bench`).
"""

from workloads.agents._attribution import AgentAttribution, AttributionReport, score_attribution
from workloads.agents._bench import ATTRIBUTION_TARGET, AgentsBenchOptions, run_agents_bench
from workloads.agents._tasks import TASKS_DIR, Task, copy_task, load_tasks

__all__ = [
    "ATTRIBUTION_TARGET",
    "TASKS_DIR",
    "AgentAttribution",
    "AgentsBenchOptions",
    "AttributionReport",
    "Task",
    "copy_task",
    "load_tasks",
    "run_agents_bench",
    "score_attribution",
]
