"""The router replica's debug hook (`debug_counts`, for bench/soak.py): off unless configured, never over HTTP."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest

from serve_app.config import RouterArgs
from serve_app.router_deployment import RouterDeployment
from tests.component.fakes import API_KEY, router_args
from tests.unit.test_config import SERVE_CONFIGS, app_args

_debug_counts = RouterDeployment.func_or_class.debug_counts


@pytest.mark.parametrize("config_name", SERVE_CONFIGS)
def test_debug_introspection_is_off_in_the_shipped_configs(config_name):
    assert RouterArgs.model_validate(app_args(config_name, "router")["args"]).debug_introspection is False


async def test_debug_counts_refuses_when_introspection_is_off():
    replica = SimpleNamespace(_args=router_args())
    with pytest.raises(PermissionError, match="debug_introspection"):
        await _debug_counts(replica)


async def test_debug_counts_gives_the_replica_loop_task_count_when_on():
    replica = SimpleNamespace(_args=router_args(debug_introspection=True))
    idle = await _debug_counts(replica)
    sleepers = [asyncio.create_task(asyncio.sleep(5)) for _ in range(7)]
    try:
        busy = await _debug_counts(replica)
    finally:
        for task in sleepers:
            task.cancel()
    assert idle["pid"] == busy["pid"] == os.getpid()
    assert busy["asyncio_tasks"] == idle["asyncio_tasks"] + 7
    assert idle["gc_objects"] > 0 and "top_types" not in idle


async def test_debug_counts_names_the_most_common_object_types_when_asked():
    replica = SimpleNamespace(_args=router_args(debug_introspection=True))
    kept = [_Marker() for _ in range(300_000)]  # more than any other type in this process
    counts = await _debug_counts(replica, top_types=3)
    assert len(counts["top_types"]) == 3
    assert counts["top_types"][0] == ("_Marker", len(kept))


class _Marker:
    pass


async def test_no_http_route_reaches_the_debug_hook(make_router):
    router = make_router(args=router_args(debug_introspection=True))
    paths = {getattr(route, "path", "") for route in router.app.routes}
    assert not any("debug" in path for path in paths), paths
    client = router.client(api_key=API_KEY)
    for path in ("/debug_counts", "/v1/debug_counts"):
        assert (await client.get(path)).status_code == 404
        assert (await client.post(path)).status_code in (404, 405)
