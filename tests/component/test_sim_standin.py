"""The Anthropic stand-in's two servers: the same answers, the fault window the simulator opens, the model label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from serve_app.sim.standin import AnthropicStandIn
from serve_app.sim.standin_server import create_app

MODEL = "claude-sonnet-4-6"


@pytest_asyncio.fixture(loop_scope="function")
async def aio() -> AsyncIterator[tuple[AnthropicStandIn, str]]:
    standin = AnthropicStandIn(record_requests=False, token_delay_s=0.0, model_suffix="-standin")
    runner = web.AppRunner(create_app(standin))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield standin, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def stdlib() -> Any:
    with AnthropicStandIn(token_delay_s=0.0) as standin:
        yield standin


def _client(base_url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0)


@pytest.mark.parametrize(
    "text", ["one two three", "tools please #scenario=tool_use", "#tokens=7 go", "#scenario=cache a b"]
)
async def test_standin_servers_answer_alike(aio, stdlib, text):
    _, aio_url = aio
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": text}]}
    kwargs["tools"] = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    fast = await _client(aio_url).messages.create(**kwargs)
    slow = await _client(stdlib.base_url).messages.create(**kwargs)
    assert fast.model == MODEL + "-standin" and slow.model == MODEL
    assert fast.model_dump(exclude={"id", "model"}) == slow.model_dump(exclude={"id", "model"})
    fast_events = [e.type async for e in await _client(aio_url).messages.create(stream=True, **kwargs)]
    slow_events = [e.type async for e in await _client(stdlib.base_url).messages.create(stream=True, **kwargs)]
    assert fast_events == slow_events and fast_events[-1] == "message_stop"


@pytest.mark.parametrize("server", ["aio", "stdlib"])
@pytest.mark.parametrize(("status", "error"), [(429, anthropic.RateLimitError), (529, anthropic.InternalServerError)])
async def test_standin_fault_window_fails_every_request_then_closes(aio, stdlib, server, status, error):
    standin, url = aio if server == "aio" else (stdlib, stdlib.base_url)
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/_standin/fault", json={"status": status, "seconds": 600})
        assert answer.status_code == 200 and answer.json()["ok"] is True
        refused = await http.post(f"{url}/_standin/fault", json={"status": 500, "seconds": 5})
        assert refused.json()["ok"] is False
    client = _client(url)
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(error) as caught:
        await client.messages.create(**kwargs)
    assert caught.value.status_code == status
    assert caught.value.response.headers.get("retry-after") or caught.value.response.headers.get("retry-after-ms")
    standin.fault_until = 0.0  # the window ends
    assert (await client.messages.create(**kwargs)).stop_reason == "end_turn"


async def test_standin_aio_rejects_what_the_api_rejects(aio):
    _, url = aio
    async with httpx.AsyncClient() as http:
        no_key = await http.post(f"{url}/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"})
        no_tokens = await http.post(
            f"{url}/v1/messages",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    assert no_tokens.status_code == 400 and "max_tokens" in no_tokens.json()["error"]["message"]
