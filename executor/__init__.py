"""The task fetching unit: runs every call whose inputs are ready, in parallel, with limits."""

from ._runner import Executor, ExecutorObserver, Failure, RunResult
from ._state import NodeRun, RunState
from ._trace import NodeRecord, Trace

__all__ = ["Executor", "ExecutorObserver", "Failure", "NodeRecord", "NodeRun", "RunResult", "RunState", "Trace"]
