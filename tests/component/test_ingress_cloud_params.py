"""ingress + the real AnthropicBackend against the stand-in: no request field lost silently on the cloud path
(dropped ones named in X-Router-Dropped-Params, on the span and in the generation's metadata; translated ones
sent in Anthropic's terms), `/v1/messages` passing Anthropic's own fields through, and prompt-cache breakpoints
with their cost."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
import pytest_asyncio

from serve_app.auth import ApiKeys
from serve_app.backends.anthropic import AnthropicBackend
from serve_app.backends.anthropic_params import JSON_OBJECT_INSTRUCTION
from serve_app.chat import ChatService
from serve_app.config import AuthArgs
from serve_app.ingress import create_app
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from tests.component.conftest import MakeRouter, Router
from tests.component.fakes import API_KEY, PRICE, chat_body, local_backend, router_args
from tests.support.anthropic_standin import SIGNATURE, THINKING, AnthropicStandIn, prompt_tokens
from tests.support.langfuse_standin import LangfuseStandin

pytestmark = pytest.mark.timeout(30)

SONNET = "claude-sonnet-4-6"
LONG_SYSTEM = "policy " * 700  # 4900 characters: 1400 estimated tokens


@pytest.fixture(scope="module")
def standin() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(token_delay_s=0.0) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="function")
async def cloud_router(make_router: MakeRouter, standin: AnthropicStandIn, local) -> AsyncIterator[Any]:
    backends: list[AnthropicBackend] = []

    def make(**cloud: Any) -> Router:
        args = router_args(max_request_bytes=65536)
        fields = {"base_url": standin.base_url, "timeout_s": 5.0, "max_retries": 0, **cloud}
        backend = AnthropicBackend(args.cloud.model_copy(update=fields), api_key="sk-ant-test-0123456789")
        backends.append(backend)
        return make_router(local=local, cloud=backend, args=args)

    yield make
    for backend in backends:
        await backend.aclose()


def the_span(router: Router) -> dict[str, Any]:
    (span,) = router.spans.get_finished_spans()
    return dict(span.attributes or {})


def sent(standin: AnthropicStandIn) -> dict[str, Any]:
    return standin.requests[-1].body


# ---- OpenAI route ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_dropped_params_are_named_in_the_header_span_and_generation(cloud_router, standin, stream):
    router = cloud_router()
    body = chat_body("one two", model="cloud", temperature=0.2, seed=7, logprobs=True, stream=stream)
    response = await router.client().post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-router-dropped-params"] == "logprobs,seed,temperature"
    assert not {"temperature", "seed", "logprobs"} & sent(standin).keys()
    span = the_span(router)
    assert span["llm.request.dropped_params"] == ("logprobs", "seed", "temperature")
    assert json.loads(span["langfuse.observation.metadata.dropped_params"]) == ["logprobs", "seed", "temperature"]


async def test_nothing_dropped_no_header(cloud_router):
    router = cloud_router()
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="cloud"))
    assert response.status_code == 200
    assert "x-router-dropped-params" not in response.headers
    assert "llm.request.dropped_params" not in the_span(router)  # absent means none


async def test_the_local_backend_gets_the_sampling_fields_no_header(cloud_router, local):
    router = cloud_router()
    response = await router.client().post("/v1/chat/completions", json=chat_body(temperature=0.2, seed=7))
    assert response.headers["x-router-backend"] == "local"
    assert "x-router-dropped-params" not in response.headers
    assert local.calls[0].request.temperature == 0.2


async def test_response_format_json_schema_is_sent_as_structured_output(cloud_router, standin):
    router = cloud_router()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    response = await router.client().post(
        "/v1/chat/completions", json=chat_body(model="cloud", response_format=response_format)
    )
    assert response.status_code == 200 and "x-router-dropped-params" not in response.headers
    assert sent(standin)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    span = the_span(router)
    assert span["llm.request.translated_params"] == ("response_format",)
    assert json.loads(span["langfuse.observation.metadata.translated_params"]) == ["response_format"]


async def test_response_format_json_object_is_a_system_instruction(cloud_router, standin):
    router = cloud_router()
    body = chat_body(model="cloud", response_format={"type": "json_object"})
    response = await router.client().post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert sent(standin)["system"] == JSON_OBJECT_INSTRUCTION


async def test_long_system_prompt_gets_a_cache_breakpoint_and_cache_buckets_are_priced(cloud_router, standin):
    router = cloud_router(cache_system_prompt_min_tokens=1024)
    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "one two #scenario=cache"}]
    response = await router.client().post("/v1/chat/completions", json={"model": "cloud", "messages": messages})
    assert response.status_code == 200
    body = sent(standin)
    assert body["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    # the stand-in's cache scenario: half the prompt read from the cache, a quarter written to it
    prompt = prompt_tokens(body)
    read, written = prompt // 2, prompt // 4
    fresh, output = prompt - read - written, 4
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == prompt  # OpenAI's prompt_tokens include cached tokens
    assert usage["prompt_tokens_details"]["cached_tokens"] == read
    expected = (
        fresh * PRICE["input"] + read * PRICE["cache_read"] + written * PRICE["cache_write"] + output * PRICE["output"]
    ) / 1e6
    assert float(response.headers["x-router-cost-usd"]) == pytest.approx(expected)
    assert router.metrics.counter("router_tokens", token_type="cache_read") == read
    assert router.metrics.counter("router_tokens", token_type="cache_creation") == written


async def test_short_system_prompt_stays_a_string(cloud_router, standin):
    router = cloud_router(cache_system_prompt_min_tokens=1024)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    await router.client().post("/v1/chat/completions", json={"model": "cloud", "messages": messages})
    assert sent(standin)["system"] == "be brief"


# ---- /v1/messages ----------------------------------------------------------------------------------------------


def messages_body(**body: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **body}


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_cache_control_and_thinking_pass_through_untouched(cloud_router, standin, stream):
    router = cloud_router(cache_system_prompt_min_tokens=1)  # the client's own breakpoints are not doubled
    system = [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Answer in English."},
    ]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "doc text", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": "question"},
    ]
    tools = [{"name": "w", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    body = messages_body(
        system=system,
        messages=messages,
        tools=tools,
        thinking=thinking,
        cache_control={"type": "ephemeral"},
        stream=stream,
    )
    response = await router.client().post("/v1/messages", json=body)
    assert response.status_code == 200
    assert "x-router-dropped-params" not in response.headers
    upstream = sent(standin)
    assert upstream["system"] == system
    assert upstream["messages"][0]["content"] == messages[0]["content"]
    assert upstream["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert upstream["thinking"] == thinking
    assert upstream["cache_control"] == {"type": "ephemeral"}


async def test_messages_fields_the_api_version_rejects_are_reported(cloud_router, standin):
    router = cloud_router()
    body = messages_body(temperature=0.5, top_p=0.9, top_k=20, mcp_servers=[])
    response = await router.client().post("/v1/messages", json=body)
    assert response.status_code == 200
    assert response.headers["x-router-dropped-params"] == "mcp_servers,temperature,top_k,top_p"
    assert not {"temperature", "top_p", "top_k", "mcp_servers"} & sent(standin).keys()
    assert the_span(router)["llm.request.dropped_params"] == ("mcp_servers", "temperature", "top_k", "top_p")


async def test_messages_cache_scenario_reports_cache_usage(cloud_router):
    router = cloud_router()
    body = messages_body(messages=[{"role": "user", "content": "a b c d e f g h #scenario=cache"}])
    response = await router.client().post("/v1/messages", json=body)
    usage = response.json()["usage"]
    assert usage["cache_read_input_tokens"] == 4 and usage["cache_creation_input_tokens"] == 2  # 9 words
    assert usage["input_tokens"] == 3  # Anthropic's input_tokens exclude cached tokens
    assert the_span(router)["llm.cost_usd"] == pytest.approx(
        (3 * PRICE["input"] + 4 * PRICE["cache_read"] + 2 * PRICE["cache_write"] + 4 * PRICE["output"]) / 1e6
    )


# ---- thinking ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_thinking_comes_back_as_a_signed_thinking_block(cloud_router, stream):
    router = cloud_router()
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=router.app))
    client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url="http://router.test", http_client=http, max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages = [{"role": "user", "content": "one two three"}]
    if stream:
        async with client.messages.stream(
            model="claude", max_tokens=2048, messages=messages, thinking=thinking
        ) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(model="claude", max_tokens=2048, messages=messages, thinking=thinking)
    await http.aclose()
    first, second = message.content
    assert first.type == "thinking" and first.thinking == THINKING and first.signature == SIGNATURE
    assert second.type == "text" and second.text == "You sent 3 words."


async def test_openai_route_gets_claudes_thinking_as_reasoning_content(cloud_router):
    router = cloud_router()
    body = chat_body("one two", model="cloud", thinking={"type": "adaptive"})
    response = await router.client().post("/v1/chat/completions", json=body)
    message = response.json()["choices"][0]["message"]
    assert message["reasoning_content"] == THINKING and message["content"] == "You sent 2 words."
    assert "x-router-dropped-params" not in response.headers


# ---- the Langfuse generation, over the wire ----------------------------------------------------------------------


async def test_dropped_params_reach_the_langfuse_generation_metadata(standin):
    secret = "sk-lf-test"
    with LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=secret) as langfuse:
        args = router_args()
        env = {
            "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
            "LANGFUSE_SECRET_KEY": secret,
            "LANGFUSE_BASE_URL": langfuse.base_url,
        }
        telemetry = Telemetry.from_args(args, meter=InMemoryMetricsSink(), environ=env)
        assert telemetry.langfuse is not None
        cloud_args = args.cloud.model_copy(update={"base_url": standin.base_url, "max_retries": 0})
        cloud = AnthropicBackend(cloud_args, api_key="sk-ant-test-0123456789")
        service = ChatService(args, backends={"local": local_backend(), "cloud": cloud}, telemetry=telemetry)
        keys = ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": API_KEY})
        app = create_app(service, keys=keys, max_request_bytes=args.max_request_bytes)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://router.test",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client:
            body = chat_body(model="claude", temperature=0.7, response_format={"type": "json_object"})
            response = await client.post("/v1/chat/completions", json=body)
        await cloud.aclose()
        telemetry.shutdown()
        (generation,) = langfuse.generations()
    assert response.headers["x-router-dropped-params"] == "temperature"
    metadata = LangfuseStandin.metadata(generation)
    assert metadata["dropped_params"] == ["temperature"]
    assert metadata["translated_params"] == ["response_format"]
