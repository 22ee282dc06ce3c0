"""How a streamed answer ends through the app: an upstream that stalls, a client gone while `send` blocks.

Starlette iterates a streaming body in the handler's task from ASGI spec 2.4 on and in a task of its own below
it; every test here runs in both modes, since a deadline or a close bound to the wrong task only fails in one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.backends.anthropic import AnthropicBackend
from serve_app.config import CloudBackendArgs
from tests.component.fakes import API_KEY, chat_body, sse_events
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
