"""Trace replay (`agentflow replay`, `agentflow bench serving`): real agent programs, replayed.

SWE-bench-shaped agent programs run through the embedded engine under several serving policies,
with their tool pauses. The trace format and the shipped trace (`_trace`), mini-swe-agent trajectory conversion
(`_swebench`), the replay loop (`_run`), one process per policy (`_runner`, `_worker`), the
throughput probe (`_probe`), metrics and plots.
"""

from workloads.replay._run import POLICIES, ProgramOutcome, ReplaySettings, ServingPolicy, replay_programs
from workloads.replay._runner import ReplayOptions, ReplayReport, run_replay
from workloads.replay._trace import DEFAULT_TRACE_PATH, TraceProgram, TraceScaling, load_trace, scale_trace

__all__ = [
    "DEFAULT_TRACE_PATH",
    "POLICIES",
    "ServingPolicy",
    "ProgramOutcome",
    "ReplayOptions",
    "ReplayReport",
    "ReplaySettings",
    "TraceProgram",
    "TraceScaling",
    "load_trace",
    "replay_programs",
    "run_replay",
    "scale_trace",
]
