"""How a streamed answer ends through the app: an upstream that stalls, a client gone while `send` blocks.

Starlette iterates a streaming body in the handler's task from ASGI spec 2.4 on and in a task of its own below
it; every test here runs in both modes, since a deadline or a close bound to the wrong task only fails in one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import ClientDisconnect

from serve_app.backends.anthropic import AnthropicBackend
from serve_app.config import CloudBackendArgs
from tests.component.fakes import API_KEY, HANG, chat_body, http_scope, reply, sse_events
from tests.support.anthropic_standin import AnthropicStandIn

pytestmark = pytest.mark.timeout(60)

SPEC_VERSIONS = ["2.3", "2.4"]  # the body in a task of its own / in the handler's task


def with_spec_version(app: Any, version: str) -> Any:
    """The app as a server speaking ASGI `version` would call it."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {"version": "3.0", "spec_version": version}}
        await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def stalling_upstream() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(token_delay_s=0.05, hang_s=30.0) as server:
        yield server


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_a_stalled_upstream_stream_ends_with_a_timeout_event_and_done(
    make_router, stalling_upstream, spec_version, http_client
):
    """The upstream sends a few events, then only keep-alives: the transport's read timeout never fires, so the
    router's own deadline between upstream events must end the stream, whichever task iterates the body."""
    args = CloudBackendArgs(base_url=stalling_upstream.base_url, max_retries=0, timeout_s=0.5, http_client=http_client)
    cloud = AnthropicBackend(args, api_key="sk-ant-test")
    router = make_router(cloud=cloud)
    transport = httpx.ASGITransport(app=with_spec_version(router.app, spec_version))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router.test", headers=headers) as client:
            async with asyncio.timeout(15):  # a guard against a hang, far above timeout_s
                response = await client.post(
                    "/v1/chat/completions", json=chat_body("a b #scenario=stall", model="cloud", stream=True)
                )
    finally:
        await cloud.aclose()
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "timeout" and "no data from the Anthropic stream" in error["message"]
    assert any("choices" in json.loads(e) for e in events[:-2])  # content came before the stall
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "error"
    assert span.attributes["error.type"] == "UpstreamTimeout"


def _usage_chunks(model: str, count: int) -> list[dict[str, Any]]:
    """Chunks that carry cumulative usage, as the local backend's do."""
    chunks = reply(model, *(f"w{i} " for i in range(count)))[1:-1]
    for n, chunk in enumerate(chunks, start=1):
        chunk["usage"] = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
    return chunks


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("ending", ["disconnect-2.3", "oserror-2.4", "cancelled-2.4"])
async def test_a_client_gone_while_send_blocks_closes_the_upstream_and_counts_its_tokens(router, local, path, ending):
    """The client stops reading, `send` blocks, then the client is gone: the server reports it as a disconnect
    message (below 2.4), as an OSError from `send` (2.4) or by cancelling the request's task. The app closes the
    upstream itself, then records the request as cancelled with the tokens it had produced."""
    local.script(*_usage_chunks("local-model", 3), HANG)
    version = ending.rsplit("-", 1)[1]
    body = json.dumps(chat_body("bye", stream=True, max_tokens=8)).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {API_KEY}".encode())]
    scope = {**http_scope(path, headers), "asgi": {"version": "3.0", "spec_version": version}}
    gone = asyncio.Event()
    blocked = asyncio.Event()
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if requests:
            return requests.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            blocked.set()
            await gone.wait()  # a client that reads nothing more: the socket's buffers are full
            if ending.startswith("oserror"):
                raise OSError("the client is gone")

    task = asyncio.create_task(router.app(scope, receive, send))
    await asyncio.wait_for(blocked.wait(), 5)
    (upstream,) = local.streams
    close, spans_at_close = upstream.aclose, []

    async def recording_close() -> None:
        spans_at_close.append(len(router.spans.get_finished_spans()))
        await close()

    upstream.aclose = recording_close  # type: ignore[method-assign]
    gone.set()
    if ending.startswith("cancelled"):
        task.cancel()
    with contextlib.suppress(ClientDisconnect, asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert upstream.aclosed
    assert spans_at_close == [0]  # closed before the request was recorded, not later by the garbage collector
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "cancelled"
    assert span.attributes["gen_ai.usage.output_tokens"] >= 1
    assert router.metrics.counter("router_requests", outcome="cancelled") == 1
