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
