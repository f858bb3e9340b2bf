"""The task fetching unit: runs every call whose inputs are ready, in parallel, with limits."""

from ._durations import DurationEstimates, shared_estimates
from ._metadata import MetadataIssuer
from ._runner import Executor, ExecutorObserver, Failure, RunResult
from ._state import NodeRun, RunState
from ._trace import NodeRecord, Trace

__all__ = [
    "DurationEstimates",
    "Executor",
    "ExecutorObserver",
    "Failure",
    "MetadataIssuer",
    "NodeRecord",
    "NodeRun",
    "RunResult",
    "RunState",
    "Trace",
    "shared_estimates",
]
