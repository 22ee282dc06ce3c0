"""What the router's own code costs per cloud request, without Ray: CPU per request of ASGI apps, in one process.

Ray Serve's proxy and replica machinery cost as much as the router on this machine and vary with it, so this
benchmark takes Ray out. Each side is an ASGI app called directly in this process (no HTTP server, no Ray) that
makes one Messages API call to the same Anthropic stand-in, which runs in its own process, answering at once
(16 words):

    forwarder       FastAPI + one pooled httpx POST, upstream bytes returned as they are (bench/forwarder.py's
                    work without Serve): the floor
    sdk-aiohttp     the bare Anthropic SDK call the router makes (streamed upstream, raw SSE events decoded),
    sdk-httpx       on each HTTP transport the SDK offers (`cloud.http_client`), without FastAPI or the router
    router-aiohttp  the router's FastAPI app (validation, routing, the Anthropic backend, translation, assembly,
    router-httpx    Ray-free metrics sink, telemetry off) on each transport; `model: cloud`, non-stream

Sides alternate batch by batch (each batch N requests of one side), and CPU time (process, all threads) and wall
time per request are reported as medians of the batches, with ratios to the forwarder. Router minus forwarder
is what the router's own work costs per request on a CPU of this speed; `1000 / router ms` is the ceiling of one
CPU-bound replica before Ray Serve takes its share.

Run: python -m bench.bench_router_cpu [--requests 500] [--batches 5]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anthropic
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench import common
from serve_app.auth import ApiKeys
from serve_app.backends.anthropic import AnthropicBackend
from serve_app.chat import ChatService
from serve_app.config import RouterArgs
from serve_app.ingress import create_app
from serve_app.telemetry import Telemetry
from serve_app.telemetry.metrics import Instrument
from tests.component.fakes import http_scope, local_backend

PROMPT = "Please answer the benchmark question in sixteen words. #tokens=16"
BODY = json.dumps({"model": "cloud", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}).encode()
PRICING = {
    "source": "bench",
    "as_of": "2026-11-30",
    "models": {common.CLOUD_MODEL: {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
}


class NullMetrics:
    def register(self, instruments: Iterable[Instrument]) -> None:
        pass

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        pass


def _router_app(upstream: str, transport: str) -> tuple[FastAPI, AnthropicBackend]:
    args = RouterArgs.model_validate(
        {
            "cloud": {"base_url": upstream, "max_retries": 0, "http_client": transport},
            "auth": {"allow_unauthenticated": True},
            "telemetry": {"tracing": False, "langfuse": False},
            "pricing": PRICING,
        }
    )
    telemetry = Telemetry.from_args(args, meter=NullMetrics(), langfuse=False, environ={})
    cloud = AnthropicBackend(args.cloud, api_key=common.ANTHROPIC_KEY)
    service = ChatService(args, backends={"local": local_backend(), "cloud": cloud}, telemetry=telemetry)
    return create_app(service, keys=ApiKeys.load(args.auth), max_request_bytes=args.max_request_bytes), cloud


def _forwarder_app(client: httpx.AsyncClient) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        call = {"model": common.CLOUD_MODEL, "max_tokens": body.get("max_tokens", 16), "messages": body["messages"]}
        upstream = await client.post("/v1/messages", json=call)
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")

    return app


def asgi_call(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """One POST /v1/chat/completions straight into the app; raises unless it answered 200."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    scope = http_scope("/v1/chat/completions", headers)

    async def call() -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            return {"type": "http.disconnect"}

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"the app answered {status}")

    return call


def sdk_call(client: anthropic.AsyncAnthropic) -> Callable[[], Awaitable[None]]:
    """The router's upstream call alone: streamed, raw SSE events decoded (AnthropicBackend.stream's SDK use)."""
    params = {"model": common.CLOUD_MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]}

    async def call() -> None:
        async with client.messages.with_streaming_response.create(**params, stream=True) as response:
            async for sse in anthropic.AsyncStream.raw_events(response.http_response):
                if sse.data:
                    json.loads(sse.data)

    return call


async def measure(upstream: str, *, requests: int, batches: int) -> dict[str, Any]:
    headers = {"x-api-key": common.ANTHROPIC_KEY, "anthropic-version": common.ANTHROPIC_VERSION}
    async with contextlib.AsyncExitStack() as stack:  # every client is closed, whichever close fails
        forward_client = await stack.enter_async_context(httpx.AsyncClient(base_url=upstream, headers=headers))
        sides: dict[str, Callable[[], Awaitable[None]]] = {"forwarder": asgi_call(_forwarder_app(forward_client))}
        for transport in ("aiohttp", "httpx"):
            client = anthropic.AsyncAnthropic(
                api_key=common.ANTHROPIC_KEY,
                base_url=upstream,
                max_retries=0,
                open_telemetry=False,
                http_client=anthropic.DefaultAioHttpClient() if transport == "aiohttp" else None,
            )
            stack.push_async_callback(client.close)
            sides[f"sdk-{transport}"] = sdk_call(client)
        for transport in ("aiohttp", "httpx"):
            app, cloud = _router_app(upstream, transport)
            stack.push_async_callback(cloud.aclose)
            sides[f"router-{transport}"] = asgi_call(app)
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        wall: dict[str, list[float]] = {name: [] for name in sides}
        for call in sides.values():  # connections, imports and code paths warm
            for _ in range(30):
                await call()
        for batch in range(batches):
            order = list(sides) if batch % 2 == 0 else list(reversed(sides))
            for name in order:
                call = sides[name]
                gc.collect()  # one side's garbage is not collected on another side's clock
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                for _ in range(requests):
                    await call()
                cpu[name].append((time.process_time() - cpu_started) / requests * 1e6)
                wall[name].append((time.perf_counter() - wall_started) / requests * 1e6)
    out: dict[str, Any] = {}
    floor = statistics.median(cpu["forwarder"])
    for name in sides:
        median = statistics.median(cpu[name])
        out[name] = {
            "cpu_us_per_request": round(median, 1),
            "cpu_us_batches": [round(v, 1) for v in cpu[name]],
            "wall_us_per_request": round(statistics.median(wall[name]), 1),
            "cpu_vs_forwarder": round(median / floor, 3),
            "cpu_minus_forwarder_us": round(median - floor, 1),
        }
    return out


def run(*, quick: bool = False, requests: int | None = None, batches: int | None = None) -> dict[str, Any]:
    common.banner("router CPU per cloud request, in process (no Ray)")
    requests = requests or (200 if quick else 500)
    batches = batches or (3 if quick else 5)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the SDK's transport logs every request at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)
    standin, upstream = common.start_anthropic_standin()
    try:
        load_before = common.load_average()
        sides = asyncio.run(measure(upstream, requests=requests, batches=batches))
    finally:
        standin.stop()
    print(f"  {requests} requests x {batches} batches per side; CPU (all threads) and wall per request, medians")
    for name, r in sides.items():
        print(
            f"  {name:<15} cpu {r['cpu_us_per_request']:7.0f} us  wall {r['wall_us_per_request']:7.0f} us  "
            f"{r['cpu_vs_forwarder']:.2f}x forwarder ({r['cpu_minus_forwarder_us']:+.0f} us)  "
            f"batches {r['cpu_us_batches']}"
        )
    ratios = {
        "router aiohttp/httpx cpu": round(
            sides["router-aiohttp"]["cpu_us_per_request"] / sides["router-httpx"]["cpu_us_per_request"], 3
        ),
        "sdk aiohttp/httpx cpu": round(
            sides["sdk-aiohttp"]["cpu_us_per_request"] / sides["sdk-httpx"]["cpu_us_per_request"], 3
        ),
    }
    for label, value in ratios.items():
        print(f"  {label:<26} {value:.2f}x")
    data = {"requests": requests, "batches": batches, "sides": sides, "ratios": ratios}
    data |= {"load_before": load_before, "load_after": common.load_average()}
    common.write_result("router-cpu", {"bench": "router_cpu", "machine": common.machine()} | data)
    return data


def main() -> None:
    common.run_sized(run, __doc__)


if __name__ == "__main__":
    main()
