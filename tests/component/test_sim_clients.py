"""The simulator's two clients against the real router app served over HTTP: records match the router's counts.

The router (real ChatService, FakeBackends, in-memory metrics) runs under uvicorn on loopback, so the SDK clients
and the wire client talk to it exactly as to a deployment. Each record must hold the router's headers and the
usage it counted, also when an answer fails half-way, and both clients must record the same thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import uvicorn

from serve_app.errors import UpstreamUnavailable
from serve_app.records import RequestRecord
from serve_app.sim.client import Clients, send
from serve_app.sim.prompts import PlannedRequest
from serve_app.sim.wire import WireClients
from tests.component.conftest import MakeRouter, Router
from tests.component.fakes import API_KEY, reply
from tests.support.prometheus import free_port

CHAT = {"messages": [{"role": "user", "content": "Hello there, how are you today?"}]}
TOOLS = {
    **CHAT,
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}
MESSAGES = {"messages": [{"role": "user", "content": "Hello there, how are you today?"}]}
DETERMINISTIC = (
    "backend", "route_reason", "fallback", "model_served", "status", "outcome", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_creation_tokens", "cost_usd", "api", "stream", "model_requested", "workload",
)  # fmt: skip


@pytest_asyncio.fixture(loop_scope="function")
async def served(make_router: MakeRouter) -> AsyncIterator[tuple[Router, str]]:
    router = make_router()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(router.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes no start event)
        await asyncio.sleep(0.01)
    yield router, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


def _clients(kind: str, url: str) -> Any:
    return Clients.create(url, API_KEY) if kind == "sdk" else WireClients(url, API_KEY, timeout_s=30)


def _planned(api: str, stream: bool, body: dict[str, Any], model: str = "auto") -> PlannedRequest:
    return PlannedRequest("test", api, stream, model, 32, body, 30, has_tools="tools" in body)


async def _send(kind: str, url: str, request: PlannedRequest) -> RequestRecord:
    clients = _clients(kind, url)
    try:
        return await send(clients, request)
    finally:
        await clients.aclose()


def _counted(router: Router) -> tuple[float, float]:
    return (
        router.metrics.counter("router_tokens", token_type="input"),
        router.metrics.counter("router_tokens", token_type="output"),
    )


@pytest.mark.parametrize("kind", ["sdk", "http"])
@pytest.mark.parametrize(
    ("api", "stream", "body", "backend", "reason"),
    [
        ("openai", False, CHAT, "local", "policy_local"),
        ("openai", True, CHAT, "local", "policy_local"),
        ("openai", True, TOOLS, "cloud", "has_tools"),
        ("anthropic", False, MESSAGES, "local", "policy_local"),
        ("anthropic", True, MESSAGES, "local", "policy_local"),
    ],
)
async def test_sim_client_records_what_the_router_counted(served, kind, api, stream, body, backend, reason):
    router, url = served
    record = await _send(kind, url, _planned(api, stream, body))
    assert (record.backend, record.route_reason, record.status, record.outcome) == (backend, reason, 200, "ok")
    assert (record.input_tokens, record.output_tokens) == _counted(router) and record.output_tokens > 0
    assert record.request_id != "" and not record.request_id.startswith("sim-")  # the router's X-Request-Id
    assert (record.ttft_s is not None) is stream
    assert record.model_served in ("local-model", "claude-sonnet-4-6")


@pytest.mark.parametrize("kind", ["sdk", "http"])
@pytest.mark.parametrize(
    ("api", "stream"), [("openai", True), ("openai", False), ("anthropic", True), ("anthropic", False)]
)
async def test_sim_client_counts_what_was_billed_for_an_answer_that_failed(served, kind, api, stream):
    router, url = served
    first, second, *_ = reply("local-model", "a", "b")
    router.local.script(first, second, UpstreamUnavailable("local replica died", backend="local"))  # type: ignore[union-attr]
    # The concrete local model id pins it: nothing falls back (a non-streamed `auto` answer would be the cloud's)
    body = CHAT if api == "openai" else MESSAGES
    record = await _send(kind, url, _planned(api, stream, body, model="local-model"))
    assert record.outcome == "error" and record.backend == "local"
    assert record.status == (200 if stream else 503)
    assert (record.input_tokens, record.output_tokens) == _counted(router) and record.input_tokens > 0


@pytest.mark.parametrize("kind", ["sdk", "http"])
async def test_sim_client_names_the_backend_of_an_upstream_error(served, kind):
    router, url = served
    router.cloud.script(UpstreamUnavailable("cloud down", backend="cloud"))  # type: ignore[union-attr]
    record = await _send(kind, url, _planned("openai", False, CHAT, model="cloud"))
    assert (record.backend, record.status, record.outcome) == ("cloud", 503, "error")
    assert record.error_type


async def test_sim_clients_sdk_and_wire_record_the_same(served):
    _, url = served
    requests = [_planned(api, stream, CHAT) for api in ("openai", "anthropic") for stream in (False, True)]
    sdk = [await _send("sdk", url, r) for r in requests]
    wire = [await _send("http", url, r) for r in requests]
    for a, b in zip(sdk, wire, strict=True):
        assert {f: getattr(a, f) for f in DETERMINISTIC} == {f: getattr(b, f) for f in DETERMINISTIC}
