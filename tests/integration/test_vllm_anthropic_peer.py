"""The cloud backend and the router's HTTP edge against vLLM's own Anthropic Messages API, a peer we did not write.

vLLM serves the smoke model under the cloud model id. It decodes greedily with a frequency penalty (plain
greedy repeats one special token, which decodes to ""), so each request has one fixed answer and the router's
result is compared with what vLLM itself answers, through the `anthropic` SDK, to the identical request.
Only the local backend is a fake (not ready): the thing under test is the cloud path.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from transformers import AutoTokenizer

from serve_app.auth import ApiKeys
from serve_app.backends.anthropic import AnthropicBackend
from serve_app.backends.anthropic_mapping import FINISH_REASONS
from serve_app.chat import ChatService
from serve_app.config import AuthArgs, CloudBackendArgs
from serve_app.ingress import create_app
from serve_app.protocol import ChatCompletionRequest
from serve_app.smoke_model import ensure_smoke_model
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from tests.component.fakes import API_KEY, PRICE, local_backend, router_args
from tests.support.vllm_server import VllmServer

pytestmark = pytest.mark.integration

MODEL = "claude-sonnet-4-6"
BASE_URL = "http://router.test"
SAMPLING = {"temperature": 0.0, "frequency_penalty": 1.0}  # vLLM's per-server sampling defaults
TERSE = ("You are terse.", "hello there")  # vLLM ends this one itself (end_turn) after a few tokens
LONG = ("Answer briefly.", "Say something about the router.")  # runs on to max_tokens


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(
        model=ensure_smoke_model(),
        served_model_name=MODEL,
        log_path=tmp_path_factory.mktemp("vllm") / "vllm.log",
        extra_args=("--override-generation-config", json.dumps(SAMPLING), "--no-enable-prefix-caching"),
    )
    server.start(timeout=240)  # 50-100 s on a loaded 2-CPU machine
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _vllm_log_on_failure(request: pytest.FixtureRequest, vllm: VllmServer) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:  # the call's report is in by teardown
        print(f"--- vLLM log (tail) ---\n{vllm.log_tail()}", file=sys.stderr)


@dataclass(frozen=True)
class Reference:
    """vLLM's own answer to one Anthropic request, and its own token count of the prompt."""

    text: str
    stop_reason: str | None
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    counted_input_tokens: int


def _anthropic_body(system: str | None, user: str, max_tokens: int, stop: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": user}]}
    if system is not None:
        body["system"] = system
    if stop:
        body["stop_sequences"] = stop
    return body


@pytest_asyncio.fixture(loop_scope="function")
async def reference(vllm: VllmServer) -> AsyncIterator[Any]:
    client = anthropic.AsyncAnthropic(base_url=vllm.base_url, api_key="not-checked", max_retries=0)

    async def ask(system: str | None, user: str, *, max_tokens: int, stop: list[str] | None = None) -> Reference:
        body = _anthropic_body(system, user, max_tokens, stop)
        async with client.messages.stream(**body) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        counted = await client.messages.count_tokens(
            model=MODEL, messages=body["messages"], **({"system": system} if system is not None else {})
        )
        return Reference(
            text=text,
            stop_reason=final.stop_reason,
            stop_sequence=final.stop_sequence,
            input_tokens=final.usage.input_tokens,
            output_tokens=final.usage.output_tokens,
            counted_input_tokens=counted.input_tokens,
        )

    yield ask
    await client.close()


@dataclass
class Router:
    app: Any
    backend: AnthropicBackend
    telemetry: Telemetry
    clients: list[httpx.AsyncClient]

    def http(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=BASE_URL,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        self.clients.append(client)
        return client

    def openai(self) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))
        self.clients.append(http)
        return openai.AsyncOpenAI(api_key=API_KEY, base_url=f"{BASE_URL}/v1", http_client=http, max_retries=0)


def _cloud_args(vllm: VllmServer) -> CloudBackendArgs:
    # default_max_tokens must fit vLLM's 512-token context: vLLM rejects a larger max_tokens outright
    return CloudBackendArgs(
        model=MODEL,
        extra_models=["claude-haiku-4-5"],  # known to the router, not served by vLLM
        base_url=vllm.base_url,
        max_retries=0,
        timeout_s=60,
        default_max_tokens=64,
    )


@pytest_asyncio.fixture(loop_scope="function")
async def backend(vllm: VllmServer) -> AsyncIterator[AnthropicBackend]:
    backend = AnthropicBackend(_cloud_args(vllm), api_key="sk-ant-not-checked")
    yield backend
    await backend.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def router(vllm: VllmServer) -> AsyncIterator[Router]:
    args = router_args(cloud=_cloud_args(vllm).model_dump(), max_request_bytes=1 << 20)
    telemetry = Telemetry.from_args(
        args, tracer_provider=TracerProvider(), meter=InMemoryMetricsSink(), langfuse=False, environ={}
    )
    cloud = AnthropicBackend(args.cloud, api_key="sk-ant-not-checked")
    service = ChatService(args, backends={"local": local_backend(ready=False), "cloud": cloud}, telemetry=telemetry)
    keys = ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": API_KEY})
    made = Router(create_app(service, keys=keys, max_request_bytes=args.max_request_bytes), cloud, telemetry, [])
    yield made
    for client in made.clients:
        await client.aclose()
    await cloud.aclose()
    telemetry.shutdown()


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    return [*([{"role": "system", "content": system}] if system is not None else []), {"role": "user", "content": user}]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ------------------------------------------------------------------------------------------ the reference


async def test_vllm_count_tokens_matches_the_chat_template(reference):
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_smoke_model()))
    for system, user in (TERSE, LONG, (None, "hello there")):
        rendered = tokenizer.apply_chat_template(_messages(system, user), add_generation_prompt=True, tokenize=False)
        ref = await reference(system, user, max_tokens=4)
        assert ref.counted_input_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
        assert ref.input_tokens == ref.counted_input_tokens  # the stream's usage agrees with count_tokens


# ------------------------------------------------------------------------------- AnthropicBackend.stream


@pytest.mark.parametrize("case", [LONG, TERSE], ids=["max_tokens", "end_turn"])
async def test_backend_stream_follows_the_chunk_contract(backend, reference, case):
    system, user = case
    ref = await reference(system, user, max_tokens=24)
    request = ChatCompletionRequest.model_validate(
        {"model": "cloud", "messages": _messages(system, user), "max_tokens": 24}
    )
    chunks = [chunk async for chunk in backend.stream(request, model=MODEL, request_id="peer-1")]

    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert {c["id"] for c in chunks} == {"chatcmpl-peer-1"}
    finishes = [(i, ch["finish_reason"]) for i, c in enumerate(chunks) for ch in c["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1
    finish_at, finish = finishes[0]
    assert all(not c["choices"] for c in chunks[finish_at + 1 :])  # after the finish only usage-only chunks
    assert finish == FINISH_REASONS[ref.stop_reason]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ref.text

    assert chunks[-1]["usage"] == _usage(ref.counted_input_tokens, ref.output_tokens)
    if finish == "length":
        assert (ref.stop_reason, ref.output_tokens) == ("max_tokens", 24)
    else:
        assert ref.stop_reason == "end_turn" and ref.output_tokens < 24


# ------------------------------------------------------------------------ the router's HTTP edge, openai SDK


async def test_router_non_stream_answers_as_vllm_did(router, reference):
    system, user = LONG
    ref = await reference(system, user, max_tokens=24)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="cloud", messages=_messages(system, user), max_tokens=24, temperature=0.7
    )  # temperature is not an Anthropic parameter here: dropped, so vLLM still decodes greedily
    reply = raw.parse()
    assert (raw.headers["x-router-backend"], raw.headers["x-router-reason"]) == ("cloud", "explicit_cloud")
    assert reply.model == MODEL
    assert reply.choices[0].message.content == ref.text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == _usage(
        ref.counted_input_tokens, 24
    )
    cost = (ref.counted_input_tokens * PRICE["input"] + 24 * PRICE["output"]) / 1e6
    assert float(raw.headers["x-router-cost-usd"]) == pytest.approx(cost, abs=1e-9)


async def test_router_stream_with_usage_answers_as_vllm_did(router, reference):
    system, user = TERSE
    ref = await reference(system, user, max_tokens=24)
    stream = await router.openai().chat.completions.create(
        model="cloud",
        messages=_messages(system, user),
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == MODEL for c in chunks)
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["stop"]  # end_turn
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    *_, last = chunks
    assert last.choices == []
    assert last.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == _usage(
        ref.counted_input_tokens, ref.output_tokens
    )
    assert ref.stop_reason == "end_turn" and ref.output_tokens < 24


async def test_router_auto_hoists_every_system_message_into_one(router, reference):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Use plain words."},
        {"role": "user", "content": "hello there"},
    ]
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=8, user="peer-user"
    )  # `user` travels as Anthropic metadata.user_id, which vLLM accepts
    reply = raw.parse()
    assert (raw.headers["x-router-backend"], raw.headers["x-router-reason"]) == ("cloud", "local_not_ready")
    hoisted = await reference("You are terse.\nUse plain words.", "hello there", max_tokens=8)
    without = await reference(None, "hello there", max_tokens=8)
    assert reply.usage.prompt_tokens == hoisted.counted_input_tokens > without.counted_input_tokens
    assert reply.choices[0].message.content == hoisted.text


@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
async def test_router_passes_stop_sequences(router, reference, stream):
    system, user = LONG
    unstopped = await reference(system, user, max_tokens=48)
    stop = re.search(r"[a-z]{2}", unstopped.text[3:]).group(0)  # a string vLLM will meet a few tokens in
    ref = await reference(system, user, max_tokens=48, stop=[stop, "never-seen-##"])
    assert (ref.stop_reason, ref.stop_sequence) == ("stop_sequence", stop)
    assert ref.text == unstopped.text[: unstopped.text.index(stop)]

    client = router.openai()
    body = {"model": "cloud", "messages": _messages(system, user), "max_tokens": 48, "stop": [stop, "never-seen-##"]}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    else:
        reply = await client.chat.completions.create(**body)
        text, finishes = reply.choices[0].message.content, [reply.choices[0].finish_reason]
        assert reply.usage.completion_tokens == ref.output_tokens < 48
    assert text == ref.text
    assert finishes == ["stop"]


REJECTED = {
    "prompt_over_context": {"messages": [{"role": "user", "content": "hello world " * 400}], "max_tokens": 8},
    "max_tokens_over_context": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 600},
    "model_vllm_does_not_serve": {"messages": [{"role": "user", "content": "hello"}], "model": "claude-haiku-4-5"},
}


@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_router_turns_a_vllm_rejection_into_an_openai_4xx(router, vllm, case, stream):
    body = {"model": "cloud", "stream": stream, **REJECTED[case]}
    async with httpx.AsyncClient(base_url=vllm.base_url) as direct:
        upstream = await direct.post("/v1/messages", json=_anthropic_body(None, "x", 8) | _to_anthropic(body))
    assert upstream.status_code in (400, 404) and upstream.json()["type"] == "error"

    response = await router.http().post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")  # a real status, not an SSE stream
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert upstream.json()["error"]["message"] in error["message"]

    with pytest.raises(openai.BadRequestError) as raised:
        await router.openai().chat.completions.create(**body)
    assert raised.value.status_code == 400


def _to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat body that the Anthropic request carries unchanged (for asking vLLM directly)."""
    out = {"messages": body["messages"], "max_tokens": body.get("max_tokens", 8), "stream": body["stream"]}
    if body["model"] != "cloud":
        out["model"] = body["model"]
    return out
