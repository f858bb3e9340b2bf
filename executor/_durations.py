"""How long each tool and semantic function takes: learned online from the calls the executor measures.

The estimate feeds the DAG's expected durations (`CallNode.expected_duration_s`), from which the
executor computes each LLM call's `next_tool_duration_s` and remaining `critical_path_s`: the
inputs of urgency scheduling. A duration a callee declares (`@tool(expected_duration_s=...)`)
wins over the estimate.
"""

from __future__ import annotations

import math
import threading

__all__ = ["DurationEstimates", "shared_estimates"]

_MAX_NAMES = 4096  # bound the table: names come from registries, but a long-lived process sees many


class DurationEstimates:
    """A running estimate of seconds per call, per callee name (an exponentially weighted mean).

    One instance is shared by every program of a process by default (`shared_estimates()`), so a
    tool measured in one program is known to the next. Thread-safe: programs running on event
    loops in several threads may share it.
    """

    def __init__(self, *, weight: float = 0.3) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self._weight = weight  # of the newest sample
        self._mean_s: dict[str, float] = {}  # callee name -> estimated seconds per call
        self._lock = threading.Lock()

    def observe(self, name: str, duration_s: float) -> None:
        """A call of `name` just took `duration_s` seconds."""
        if not (math.isfinite(duration_s) and duration_s >= 0):
            return
        with self._lock:
            mean = self._mean_s.get(name)
            if mean is None:
                if len(self._mean_s) >= _MAX_NAMES:
                    return
                self._mean_s[name] = duration_s
            else:
                self._mean_s[name] = mean + self._weight * (duration_s - mean)

    def expected_s(self, name: str) -> float | None:
        """Seconds a call of `name` is expected to take; None until one was measured."""
        return self._mean_s.get(name)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._mean_s)


_shared = DurationEstimates()


def shared_estimates() -> DurationEstimates:
    """The process-wide estimates every `Program` uses unless it is given its own."""
    return _shared
