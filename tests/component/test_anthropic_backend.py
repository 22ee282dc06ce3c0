"""AnthropicBackend with the real anthropic SDK against the scripted stand-in on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_asyncio

from serve_app.backends.anthropic import AnthropicBackend
from serve_app.config import CloudBackendArgs
from serve_app.errors import (
    UpstreamAuthFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serve_app.protocol import ChatCompletionRequest
from serve_app.usage import Usage, accumulate_openai_chunk
from tests.support.anthropic_standin import AnthropicStandIn

KEY = "sk-ant-test-0123456789"
MODEL = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
def standin() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(token_delay_s=0.02, hang_s=10.0) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="function", params=["aiohttp", "httpx"])
async def backend_for(standin: AnthropicStandIn, request: pytest.FixtureRequest):
    """Backends on the stand-in, over each HTTP transport the SDK can use (`cloud.http_client`)."""
    made: list[AnthropicBackend] = []

    def make(**overrides: Any) -> AnthropicBackend:
        fields = {
            "base_url": standin.base_url,
            "max_retries": 0,
            "timeout_s": 5.0,
            "http_client": request.param,
            **overrides,
        }
        backend = AnthropicBackend(CloudBackendArgs(**fields), api_key=KEY)
        transport = type(backend._client._client._transport).__name__  # the SDK's httpx2 client, its transport
        assert transport == {"aiohttp": "AiohttpTransport", "httpx": "AsyncHTTPTransport"}[request.param], transport
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


def _request(text: str, **body: Any) -> ChatCompletionRequest:
    body.setdefault("messages", [{"role": "user", "content": text}])
    return ChatCompletionRequest.model_validate({"model": "cloud", **body})


async def _collect(backend: AnthropicBackend, request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in backend.stream(request, model=MODEL, request_id="r1")]


def _last_body(standin: AnthropicStandIn) -> dict[str, Any]:
    return standin.requests[-1].body


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_anthropic_backend_streams_text(standin, backend_for):
    backend = backend_for()
    request = _request(
        "one two three",
        messages=[{"role": "system", "content": "sys words"}, {"role": "user", "content": "one two three"}],
        temperature=0.3,
    )
    chunks = await _collect(backend, request)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["usage"]["prompt_tokens"] == 5  # known from message_start, before any text
    assert _text(chunks) == "You sent 3 words."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert all(c["model"] == MODEL and c["id"] == "chatcmpl-r1" for c in chunks)
    recorded = standin.requests[-1]
    assert recorded.body["stream"] is True and recorded.body["system"] == "sys words"
    assert "temperature" not in recorded.body  # 2026-10-21 would reject it
    assert recorded.headers["anthropic-version"] == "2026-10-21"
    assert recorded.headers["authorization"] == f"Bearer {KEY}"


async def test_anthropic_backend_non_stream_request_still_streams_upstream(standin, backend_for):
    chunks = await _collect(backend_for(), _request("hello", stream=False))
    assert _text(chunks) == "You sent 1 words."
    assert _last_body(standin)["stream"] is True


async def test_anthropic_backend_streams_tool_use(standin, backend_for):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    request = _request("weather? #scenario=tool_use", tools=tools, tool_choice="required", parallel_tool_calls=False)
    chunks = await _collect(backend_for(), request)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["id"] == "toolu_standin_01" and calls[0]["function"]["name"] == "lookup"
    assert all("id" not in call for call in calls[1:])
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert _last_body(standin)["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_anthropic_backend_cache_usage_counted_once(backend_for):
    chunks = await _collect(backend_for(), _request("a b c d e f g h #scenario=cache"))
    usage = Usage()
    for chunk in chunks:
        usage = accumulate_openai_chunk(chunk=chunk, snapshot=usage)
    # 9 prompt words (the marker counts): 4 read from cache, 2 written to it, 3 uncached
    assert usage == Usage(input=3, output=4, cache_read=4, cache_creation=2)
    assert chunks[-1]["usage"]["prompt_tokens"] == 9
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 2}


async def test_anthropic_backend_max_tokens_and_stop_sequences(standin, backend_for):
    chunks = await _collect(backend_for(), _request("x #tokens=10", max_completion_tokens=3))
    assert _text(chunks) == "w0 w1 w2" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert _last_body(standin)["max_tokens"] == 3
    chunks = await _collect(backend_for(), _request("x #tokens=10", stop=["w4"]))
    assert _text(chunks) == "w0 w1 w2 w3" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    chunks = await _collect(backend_for(default_max_tokens=7), _request("x"))
    assert _last_body(standin)["max_tokens"] == 7


async def test_anthropic_backend_rate_limit_keeps_retry_after(backend_for):
    with pytest.raises(UpstreamRateLimited) as info:
        await _collect(backend_for(), _request("hi #scenario=rate_limit"))
    assert info.value.retry_after == 7 and info.value.backend == "cloud"
    assert "req_standin_" in info.value.message  # the upstream request id, for support tickets


async def test_anthropic_backend_retries_honour_max_retries(standin, backend_for):
    before = len(standin.requests)
    chunks = await _collect(backend_for(max_retries=1), _request("hi #scenario=rate_limit_once"))
    assert _text(chunks) == "You sent 1 words."
    assert len(standin.requests) - before == 2


async def test_anthropic_backend_fail_fast_skips_the_sdk_retries(standin, backend_for):
    backend = backend_for(max_retries=2)
    before = len(standin.requests)
    with pytest.raises(UpstreamRateLimited):
        request = _request("hi #scenario=rate_limit_once")
        [chunk async for chunk in backend.stream(request, model=MODEL, request_id="r1", fail_fast=True)]
    assert len(standin.requests) - before == 1  # one attempt: a ready fallback answers instead of a backoff
    chunks = await _collect(backend, _request("hi #scenario=rate_limit_once"))
    assert _text(chunks) == "You sent 1 words."  # and the same backend still retries when asked to
    assert len(standin.requests) - before == 3


async def test_anthropic_backend_overloaded(backend_for):
    with pytest.raises(UpstreamOverloaded) as info:
        await _collect(backend_for(), _request("hi #scenario=overloaded"))
    assert info.value.retry_after == 2.5 and info.value.status_code == 503


@pytest.mark.parametrize(
    ("status", "expected"), [(400, UpstreamRejected), (402, UpstreamAuthFailed), (500, UpstreamUnavailable)]
)
async def test_anthropic_backend_status_errors(backend_for, status, expected):
    with pytest.raises(expected):
        await _collect(backend_for(), _request(f"hi #scenario=error={status}"))


async def test_anthropic_backend_bad_key_is_auth_failure_without_the_key(standin):
    server = AnthropicStandIn(api_key="the-right-key").start()
    try:
        backend = AnthropicBackend(CloudBackendArgs(base_url=server.base_url, max_retries=0), api_key=KEY)
        with pytest.raises(UpstreamAuthFailed) as info:
            await _collect(backend, _request("hi"))
        assert KEY not in info.value.message and KEY not in repr(info.value.__cause__.args)
        await backend.aclose()
    finally:
        server.stop()


async def test_anthropic_backend_timeout(backend_for):
    backend = backend_for(timeout_s=0.3)
    with pytest.raises(UpstreamTimeout):
        await _collect(backend, _request("hi #scenario=hang"))


async def test_anthropic_backend_cut_stream_raises(standin, backend_for):
    seen: list[dict[str, Any]] = []
    backend = backend_for()
    with pytest.raises(UpstreamUnavailable, match="broke off") as info:
        async for chunk in backend.stream(_request("a b #scenario=cut"), model=MODEL, request_id="r"):
            seen.append(chunk)
    # An incomplete chunked body: httpx2's own error, or aiohttp's ClientPayloadError as the SDK's transport maps it
    transport = type(backend._client._client._transport).__name__
    cause = {"AsyncHTTPTransport": "RemoteProtocolError", "AiohttpTransport": "ReadError"}[transport]
    assert type(info.value.__cause__).__name__ == cause
    assert _text(seen) == "You sent "  # the first deltas arrived before the connection dropped
    assert seen[0]["usage"]["prompt_tokens"] == 3  # and input usage with them (the marker is a word)


async def test_anthropic_backend_malformed_chunk_is_an_upstream_error_not_a_hang(backend_for):
    """A broken chunked body followed by silence: httpx2 rejects it at once; aiohttp's compiled parser drops the
    error and its read timeout with it, so the backend's own deadline between events is what ends the stream."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(8):  # a guard against a hang, far above timeout_s
        with pytest.raises((UpstreamUnavailable, UpstreamTimeout)):
            stream = backend_for(timeout_s=0.5).stream(_request("a b #scenario=bad_chunk"), model=MODEL, request_id="r")
            async for chunk in stream:
                seen.append(chunk)
    # aiohttp may drop the good events that share a read with the broken chunk; neither transport invents an end
    assert not any(choice.get("finish_reason") for chunk in seen for choice in chunk.get("choices") or ())


async def test_anthropic_backend_slow_consumer_is_not_an_upstream_timeout(backend_for):
    """The deadline between upstream events is not armed while the consumer holds a chunk (a slow client)."""
    chunks: list[dict[str, Any]] = []
    async for chunk in backend_for(timeout_s=0.3).stream(_request("a b c"), model=MODEL, request_id="r"):
        chunks.append(chunk)
        if len(chunks) == 1:
            await asyncio.sleep(0.6)  # twice the deadline, between two events the upstream already sent
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_anthropic_backend_stream_without_message_stop_raises(backend_for):
    with pytest.raises(UpstreamUnavailable, match="message_stop"):
        await _collect(backend_for(), _request("a b #scenario=truncate"))


async def test_anthropic_backend_error_after_200(backend_for):
    seen: list[dict[str, Any]] = []
    with pytest.raises(UpstreamOverloaded):
        async for chunk in backend_for().stream(_request("a b #scenario=error_after_200"), model=MODEL, request_id="r"):
            seen.append(chunk)
    assert _text(seen) == "You sent "


async def test_anthropic_backend_aclose_closes_upstream(standin, backend_for):
    stream = backend_for().stream(_request("x #tokens=500 #scenario=slow"), model=MODEL, request_id="r")
    got = [await anext(stream) for _ in range(3)]
    assert _text(got)
    await stream.aclose()
    assert await asyncio.to_thread(standin.wait_for_outcome, "disconnected", 5.0) is not None


async def test_anthropic_backend_cancel_closes_upstream(standin, backend_for):
    started = asyncio.Event()
    before = sum(1 for r in standin.requests if r.outcome == "disconnected")

    async def consume() -> None:
        async for _ in backend_for().stream(_request("x #tokens=500 #scenario=slow"), model=MODEL, request_id="r"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    def disconnected() -> bool:
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sum(1 for r in standin.requests if r.outcome == "disconnected") > before:
                return True
            time.sleep(0.01)
        return False

    assert await asyncio.to_thread(disconnected)


async def test_anthropic_backend_translates_history_and_images(standin, backend_for):
    messages = [
        {"role": "developer", "content": "be nice"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
        {"role": "user", "content": "and?"},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    chunks = await _collect(backend_for(), _request("", messages=messages, tools=tools, user="u1"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    body = _last_body(standin)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    assert body["metadata"] == {"user_id": "u1"}


def test_anthropic_backend_state_without_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    backend = AnthropicBackend(CloudBackendArgs())
    state = backend.state()
    assert not state.ready and "ANTHROPIC_API_KEY" in state.detail
    assert (backend.name, backend.provider, backend.model_ids) == ("cloud", "anthropic", [MODEL])


async def test_anthropic_backend_without_key_fails_fast(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UpstreamAuthFailed):
        await _collect(AnthropicBackend(CloudBackendArgs()), _request("hi"))


def test_anthropic_backend_reads_key_and_base_url_from_env(monkeypatch, standin):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", standin.base_url)
    backend = AnthropicBackend(CloudBackendArgs(extra_models=["claude-haiku-4-5"]))
    assert backend.state().ready
    assert backend.model_ids == [MODEL, "claude-haiku-4-5"]
    assert str(backend._client.base_url).startswith(standin.base_url)
    assert KEY not in repr(backend.state())
