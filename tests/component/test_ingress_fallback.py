"""ingress: fallback before the first chunk, in-band errors after it, upstream 429/529, client disconnects;
and the real AnthropicBackend (real SDK) behind the app against the scripted stand-in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import pytest_asyncio

from serve_app.backends.anthropic import AnthropicBackend
from serve_app.errors import (
    UpstreamContextExceeded,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.component.conftest import MakeRouter, Router
from tests.component.fakes import API_KEY, HANG, chat_body, http_scope, reply, router_args, sse_events
from tests.support.anthropic_standin import AnthropicStandIn

pytestmark = pytest.mark.timeout(30)

SONNET = "claude-sonnet-4-6"


def down(backend: str = "local") -> UpstreamUnavailable:
    return UpstreamUnavailable(f"{backend} replica died", backend=backend)


def route_of(response: Any) -> tuple[str, str]:
    return response.headers["x-router-backend"], response.headers["x-router-reason"]


def answer_text(response: Any, *, stream: bool) -> str:
    if not stream:
        return response.json()["choices"][0]["message"]["content"]
    events = [json.loads(e) for e in sse_events(response.text)[:-1]]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


# ---- before the first chunk: fallback where the request allows it -----------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_local_unavailable_cloud_answers(router, client, local, cloud, stream):
    local.script(down())
    response = await client.post("/v1/chat/completions", json=chat_body(stream=stream))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_error")
    assert answer_text(response, stream=stream) == "Hello from cloud"
    assert [c.model for c in cloud.calls] == [SONNET]
    assert local.streams[0].aclosed
    assert router.metrics.counter("router_fallbacks", backend="cloud", route_reason="fallback_local_error") == 1


async def test_fallback_answer_reports_the_model_that_answered(router, client, local):
    local.script(down())
    body = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert body["model"] == SONNET
    assert body["choices"][0]["message"]["content"] == "Hello from cloud"


@pytest.mark.parametrize(
    "error", [UpstreamTimeout("slow", backend="local"), UpstreamContextExceeded("long", backend="local")]
)
async def test_fallback_other_retryable_local_errors(router, client, local, error):
    local.script(error)
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert route_of(response) == ("cloud", "fallback_local_error")


async def test_fallback_not_for_a_rejected_request(router, client, local, cloud):
    local.script(UpstreamRejected("bad grammar spec", backend="local"))
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert cloud.calls == []


@pytest.mark.parametrize(("model", "failing"), [("local-model", "local"), ("cloud", "cloud"), ("claude", "cloud")])
async def test_fallback_not_for_an_explicit_model(router, client, local, cloud, model, failing):
    (local if failing == "local" else cloud).script(down(failing))
    response = await client.post("/v1/chat/completions", json=chat_body(model=model))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    other = cloud if failing == "local" else local
    assert other.calls == []


async def test_fallback_not_when_policy_disables_it(make_router, local, cloud):
    args = router_args(routing={"fallback": False})
    client = make_router(local=local, cloud=cloud, args=args).client()
    local.script(down())
    assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 503
    assert cloud.calls == []


async def test_fallback_cloud_error_local_answers(make_router, local, cloud):
    args = router_args(routing={"rules": [{"name": "everything", "backend": "cloud"}]})
    client = make_router(local=local, cloud=cloud, args=args).client()
    cloud.script(UpstreamOverloaded("overloaded", backend="cloud", retry_after=2.5))
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert route_of(response) == ("local", "fallback_cloud_error")
    assert response.json()["model"] == "local-model"
    assert cloud.calls[0].fail_fast is True  # the ready local model takes it: no waiting on SDK retries


async def test_cloud_keeps_its_retries_when_nothing_could_take_over(make_router, local, cloud):
    args = router_args(routing={"rules": [{"name": "everything", "backend": "cloud"}]})
    client = make_router(local=local, cloud=cloud, args=args).client()
    local.ready = False  # loading or restarting: nothing to fall back to
    assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200
    local.ready = True  # ready, but the request is one the local model cannot take
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and route_of(response) == ("cloud", "rule_everything")
    assert [call.fail_fast for call in cloud.calls] == [False, False]
    assert local.calls == []


async def test_fallback_only_once_then_the_second_error_is_returned(router, client, local, cloud):
    local.script(down())
    cloud.script(UpstreamRateLimited("slow down", backend="cloud", retry_after=7))
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert len(local.calls) == len(cloud.calls) == 1


async def test_fallback_local_stream_ending_without_a_chunk(router, client, local, cloud):
    local.script()  # ends at once: no first chunk
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_error")


# ---- upstream rate limits and overload --------------------------------------------------------------------


async def test_cloud_429_keeps_retry_after(router, client, cloud):
    cloud.script(UpstreamRateLimited("rate limited by Anthropic", backend="cloud", retry_after=7))
    response = await client.post("/v1/chat/completions", json=chat_body(model="cloud"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"] == {
        "message": "rate limited by Anthropic",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


async def test_cloud_429_seen_by_the_openai_sdk(router, cloud):
    cloud.script(UpstreamRateLimited("rate limited", backend="cloud", retry_after=7))
    with pytest.raises(openai.RateLimitError) as info:
        await router.openai().chat.completions.create(model="cloud", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-router-backend"] == "cloud"  # which backend failed, as metrics count it
    assert info.value.code == "rate_limit_exceeded"


# ---- after the first chunk: an in-band error, never a silent cut --------------------------------------------


async def test_stream_failure_after_first_chunk_is_an_in_band_error(router, client, local, cloud):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2]) == {
        "error": {
            "message": "local replica died",
            "type": "service_unavailable",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
    assert [json.loads(e)["choices"][0]["delta"] for e in events[:2]] == [
        first["choices"][0]["delta"],
        {"content": "a"},
    ]
    assert cloud.calls == []  # bytes were sent: no fallback
    assert router.metrics.counter("router_requests", outcome="error") == 1


async def test_stream_failure_sends_the_billed_usage_before_the_error(router, client, local):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    body = chat_body(stream=True, stream_options={"include_usage": True})
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])
    usage = json.loads(events[-3])["usage"]
    assert json.loads(events[-3])["choices"] == []
    # Exactly what the router counted for this request (an estimate it flags on the span), so client totals match.
    assert usage["prompt_tokens"] == router.metrics.counter("router_tokens", token_type="input") > 0
    assert usage["completion_tokens"] == router.metrics.counter("router_tokens", token_type="output") > 0


async def test_messages_stream_failure_sends_the_billed_usage_before_the_error(router, client, local):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    body = {"model": "auto", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    text = (await client.post("/v1/messages", json=body)).text
    data = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert [d["type"] for d in data[-2:]] == ["message_delta", "error"]
    assert data[-2]["usage"]["output_tokens"] == router.metrics.counter("router_tokens", token_type="output") > 0
    assert data[-2]["usage"]["input_tokens"] == router.metrics.counter("router_tokens", token_type="input")


async def test_stream_failure_after_first_chunk_raises_in_the_openai_sdk(router, local):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    stream = await router.openai().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    assert info.value.message == "local replica died"
    assert info.value.code == "upstream_unavailable"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_non_stream_failure_after_first_chunk_says_what_was_billed(router, client, local, path):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    # pinned to the local model: nothing falls back (an `auto` answer would be the cloud's, see below)
    body = {"model": "local-model", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
    response = await client.post(path, json=body)
    assert response.status_code == 503
    usage = json.loads(response.headers["x-router-usage"])
    assert usage["prompt_tokens"] == router.metrics.counter("router_tokens", token_type="input") > 0
    assert usage["completion_tokens"] == router.metrics.counter("router_tokens", token_type="output") > 0


async def test_non_stream_failure_after_first_chunk_gets_a_real_status_when_pinned(router, client, local, cloud):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    response = await client.post("/v1/chat/completions", json=chat_body(model="local-model"))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert cloud.calls == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_non_stream_failure_after_first_chunk_is_answered_by_the_cloud(router, client, local, cloud, path):
    """The client of a non-streamed answer has seen nothing before its end: a failure on the way is a failure before
    the first byte, and the other backend answers; one request counted, as a fallback, the local upstream closed."""
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, down())
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}
    response = await client.post(path, json=body)
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_error")
    assert [c.model for c in cloud.calls] == [SONNET]
    assert local.streams[0].aclosed
    assert router.metrics.counter("router_requests") == 1
    assert router.metrics.counter("router_requests", backend="cloud", outcome="ok") == 1
    assert router.metrics.counter("router_fallbacks", backend="cloud", route_reason="fallback_local_error") == 1


# ---- client disconnect -------------------------------------------------------------------------------------


async def _disconnect_after_first_body(router: Router, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Drives the ASGI app like a server whose client goes away once the first body bytes are out."""
    raw = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    body_sent = asyncio.Event()
    request_read = False

    async def receive() -> dict[str, Any]:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await body_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            body_sent.set()

    headers = [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-type", b"application/json")]
    scope = http_scope("/v1/chat/completions", headers)
    await router.app(scope, receive, send)
    return sent


async def test_client_disconnect_mid_stream_closes_the_backend_stream(router, local):
    first, second, *_ = reply("local-model", "a", "b")
    local.script(first, second, HANG)
    sent = await _disconnect_after_first_body(router, chat_body(stream=True))
    assert sent[0]["status"] == 200
    assert local.streams[0].aclosed
    assert not any(b"[DONE]" in m.get("body", b"") for m in sent)
    assert router.metrics.counter("router_requests", backend="local", outcome="cancelled") == 1


# ---- the real AnthropicBackend behind the app, against the stand-in -----------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(token_delay_s=0.0) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="function")
async def anthropic_router(make_router: MakeRouter, standin: AnthropicStandIn, local) -> AsyncIterator[Router]:
    args = router_args()
    cloud_args = args.cloud.model_copy(update={"base_url": standin.base_url, "timeout_s": 5.0, "max_retries": 0})
    backend = AnthropicBackend(cloud_args, api_key="sk-ant-test-0123456789")
    yield make_router(local=local, cloud=backend, args=args)
    await backend.aclose()


def cloud_chat(text: str, **body: Any) -> dict[str, Any]:
    return chat_body(text, model="cloud", **body)


async def test_anthropic_cloud_non_stream(anthropic_router, standin):
    response = await anthropic_router.client().post("/v1/chat/completions", json=cloud_chat("one two three"))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "explicit_cloud")
    body = response.json()
    assert body["model"] == SONNET
    assert body["choices"][0]["message"]["content"] == "You sent 3 words."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert {k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens")} == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }
    assert float(response.headers["x-router-cost-usd"]) == pytest.approx((3 * 3.0 + 4 * 15.0) / 1e6)
    assert standin.requests[-1].body["model"] == SONNET


async def test_anthropic_messages_non_stream_reports_its_cost(anthropic_router):
    body = {"model": "cloud", "max_tokens": 32, "messages": [{"role": "user", "content": "one two three"}]}
    response = await anthropic_router.client().post("/v1/messages", json=body)
    assert response.status_code == 200
    assert float(response.headers["x-router-cost-usd"]) == pytest.approx((3 * 3.0 + 4 * 15.0) / 1e6)


async def test_anthropic_cloud_stream_with_the_openai_sdk(anthropic_router):
    stream = await anthropic_router.openai().chat.completions.create(
        model="cloud",
        messages=[{"role": "user", "content": "one two"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You sent 2 words."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_anthropic_tool_use_becomes_openai_tool_calls(anthropic_router):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    completion = await anthropic_router.openai().chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "weather? #scenario=tool_use"}], tools=tools
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == "toolu_standin_01" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize(
    ("scenario", "status", "retry_after", "error_type"),
    [("rate_limit", 429, "7", "rate_limit_error"), ("overloaded", 503, "3", "overloaded_error")],
)
async def test_anthropic_upstream_limits_map_to_status_and_retry_after(
    anthropic_router, scenario, status, retry_after, error_type
):
    client = anthropic_router.client()
    response = await client.post("/v1/chat/completions", json=cloud_chat(f"hi #scenario={scenario}"))
    assert response.status_code == status
    assert response.headers["retry-after"] == retry_after
    assert response.json()["error"]["type"] == error_type
    assert anthropic_router.local.calls == []  # type: ignore[attr-defined]


async def test_anthropic_error_after_200_is_an_in_band_error(anthropic_router):
    response = await anthropic_router.client().post(
        "/v1/chat/completions", json=cloud_chat("a b #scenario=error_after_200", stream=True)
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "overloaded_error"
    assert any("content" in json.loads(e)["choices"][0]["delta"] for e in events[:-2])
