"""The router's Ray Serve deployment: one replica's backends, tenancy and telemetry, readiness refresh, shutdown.

`serve_app.ingress` builds the FastAPI app this replica serves (and runs without Ray); here it gets the id Serve
gave each request, a background task that keeps the readiness gauges fresh, and a debug hook reached only
through a DeploymentHandle.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from serve_app.auth import ApiKeys
from serve_app.backends.local import LocalBackend
from serve_app.chat import ChatService
from serve_app.config import RouterArgs
from serve_app.ingress import create_app, header_request_id, valid_request_id
from serve_app.ledger import build_ledger
from serve_app.prompt_tokens import PromptCounter
from serve_app.telemetry import Telemetry
from serve_app.telemetry.metrics import RayMetricsSink
from serve_app.tenancy import Tenancy

logger = logging.getLogger(__name__)

# Ray drops a gauge not set again within two metric exports (2 s at the shortest interval): stay below that.
_READINESS_PERIOD_S = 1.0


def serve_request_id(request: Request) -> str:
    """The id Serve gave this request: the client's X-Request-Id if it is a valid id, else a server-made one."""
    try:
        request_id = serve.context._get_serve_request_context().request_id
    except Exception:
        request_id = ""
    return valid_request_id(request_id) if request_id else header_request_id(request)


@serve.deployment(name="Router")
@serve.ingress()
class RouterDeployment:
    """One router replica: its backends, its telemetry, and a background task that keeps readiness gauges fresh."""

    async def __init__(self, args: RouterArgs) -> None:
        self._args = args
        local = LocalBackend(args.local, args.routing)
        telemetry = Telemetry.from_args(args)
        backends: dict[str, Any] = {"local": local}
        if args.cloud.enabled:
            from serve_app.backends.anthropic import AnthropicBackend

            backends["cloud"] = AnthropicBackend(args.cloud, tracer_provider=telemetry.client_tracer_provider)
        self._keys = ApiKeys.load(args.auth)
        self._tenancy = Tenancy(
            args, ledger=build_ledger(args.tenants.ledger), metrics=RayMetricsSink(), file_limits=self._keys.file_limits
        )
        self._tenancy.start()
        counter = await asyncio.to_thread(PromptCounter.load, args.routing, args.local, environ=os.environ)
        self._service = ChatService(
            args,
            backends=backends,
            telemetry=telemetry,
            local_rate=local.usd_per_token,
            tenancy=self._tenancy,
            prompt_counter=counter,
        )
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_readiness())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(
            self._service,
            keys=self._keys,
            max_request_bytes=self._args.max_request_bytes,
            request_id_of=serve_request_id,
            echo_request_id=False,
            cloud_standin=os.environ.get("HYBRID_LLM_CLOUD_STANDIN") == "1",
        )

    async def _refresh_readiness(self) -> None:
        while True:
            try:
                self._service.readiness()
            except Exception:
                logger.debug("readiness refresh failed", exc_info=True)
            await asyncio.sleep(_READINESS_PERIOD_S)

    async def debug_counts(self, top_types: int = 0) -> dict[str, Any]:
        """The replica's asyncio tasks, Python objects tracked by the GC (and the `top_types` most common types) and
        PID, for a leak check (bench/soak.py). Reached only through a DeploymentHandle (no HTTP route maps to it) and
        only with `debug_introspection` on in the router's args. Walking the GC's objects takes the loop a few ms."""
        if not self._args.debug_introspection:
            raise PermissionError("debug_introspection is off in the router's args")
        objects = gc.get_objects()
        counts: dict[str, Any] = {"asyncio_tasks": len(asyncio.all_tasks()), "gc_objects": len(objects)}
        if top_types:
            counts["top_types"] = Counter(type(o).__name__ for o in objects).most_common(top_types)
        return counts | {"pid": os.getpid()}

    async def __del__(self) -> None:
        """Serve's graceful shutdown (awaited, like Ray's own ASGI wrapper's): stops the readiness task, closes the
        backends' upstream connections and flushes telemetry."""
        refresher = getattr(self, "_refresher", None)
        if refresher is not None:
            refresher.cancel()
        tenancy = getattr(self, "_tenancy", None)
        if tenancy is not None:
            await tenancy.aclose()
        service = getattr(self, "_service", None)
        if service is not None:
            await service.aclose()
            service.telemetry.shutdown()
