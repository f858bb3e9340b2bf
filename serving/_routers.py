"""The request routers made in this process, for the metrics route (no Ray here).

Ray Serve copies a router's module by value into each process that routes (its
`RequestRouterConfig` cloudpickles it), so the routers' shared state lives in this module, which
is imported by reference: a lock cannot be pickled.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["SnapshotSource", "register", "snapshot"]


class SnapshotSource(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


_routers: list[SnapshotSource] = []
_lock = threading.Lock()


def register(router: SnapshotSource) -> None:
    with _lock:
        _routers.append(router)


def snapshot() -> dict[str, Any]:
    """The latest router's snapshot (the ingress's handle makes one); an empty one before any request."""
    with _lock:
        latest = _routers[-1] if _routers else None
    return latest.snapshot() if latest is not None else {"router": None, "replicas": {}}
