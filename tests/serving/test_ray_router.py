"""The Ray adapter's routers survive what Ray Serve does to them before any cluster runs (no Ray started)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")


def test_every_router_class_pickles_by_value_as_ray_serve_ships_it() -> None:
    """`RequestRouterConfig` cloudpickles the router's whole module by value (ray/serve/config.py)."""
    from ray import cloudpickle

    import serving._ray as adapter

    for kind, router in adapter._ROUTERS.items():
        cloudpickle.register_pickle_by_value(adapter)
        try:
            shipped = cloudpickle.dumps(router)
        finally:
            cloudpickle.unregister_pickle_by_value(adapter)
        assert cloudpickle.loads(shipped).kind is kind


def test_router_config_accepts_each_router_by_path() -> None:
    from ray.serve.config import RequestRouterConfig

    import serving._ray as adapter

    for router in adapter._ROUTERS.values():
        config = RequestRouterConfig(request_router_class=f"serving._ray.{router.__qualname__}")
        assert config.get_request_router_class().kind is router.kind


def test_an_unreachable_cluster_is_a_clear_error_at_once() -> None:
    import socket
    import time

    from agentflow.exceptions import ClusterUnavailableError
    from serving._ray import ScaleOutOptions, _connect
    from serving.engine import EngineConfig

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ClusterUnavailableError, match="ray start --head"):
        _connect(ScaleOutOptions(engine=EngineConfig(), ray_address=f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 10
