"""ingress: chat completions (JSON and SSE), models, health and auth, over FakeBackends and with the openai SDK."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.auth import ApiKeys
from serve_app.config import AuthArgs
from tests.component.fakes import (
    API_KEY,
    FakeBackend,
    chat_body,
    cloud_backend,
    http_scope,
    local_backend,
    reply,
    router_args,
    sse_events,
)

pytestmark = pytest.mark.timeout(30)

FINAL_USAGE = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def tokens(usage: dict) -> dict:
    """The token counts of a usage object (the router adds `cost_usd` next to them)."""
    return {key: usage[key] for key in TOKEN_KEYS}


def tool_call_reply(model: str) -> list[dict]:
    def chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [choice],
        } | extra

    def call(**fields: object) -> dict:
        return {"tool_calls": [{"index": 0, **fields}]}

    return [
        chunk({"role": "assistant"}),
        chunk(call(id="call_1", type="function", function={"name": "lookup", "arguments": ""})),
        chunk(call(function={"arguments": '{"city": '})),
        chunk(call(function={"arguments": '"Paris"}'})),
        chunk({}, "tool_calls", usage=FINAL_USAGE),
    ]


# ---- non-streamed -------------------------------------------------------------------------------------------


async def test_ingress_non_stream_answers_from_local(router, client, local, cloud):
    local.script(*reply("local-model", "Hi", " there", usage=FINAL_USAGE))
    response = await client.post("/v1/chat/completions", json=chat_body("say hi"))
    assert response.status_code == 200
    assert response.headers["x-router-backend"] == "local"
    assert response.headers["x-router-reason"] == "policy_local"
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "local-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert tokens(body["usage"]) == FINAL_USAGE
    assert [c.model for c in local.calls] == ["local-model"] and cloud.calls == []
    assert local.calls[0].request.messages[0].content == "say hi"


@pytest.mark.parametrize(("model", "answered_by"), [("cloud", "claude-sonnet-4-6"), ("claude-haiku-4-5",) * 2])
async def test_ingress_non_stream_explicit_cloud_model(router, client, local, cloud, model, answered_by):
    response = await client.post("/v1/chat/completions", json=chat_body(model=model))
    assert response.status_code == 200
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "explicit_cloud")
    assert response.json()["model"] == answered_by
    assert [c.model for c in cloud.calls] == [answered_by] and local.calls == []


async def test_ingress_non_stream_usage_is_the_backends_final_usage(router, client, local):
    chunks = reply("local-model", "a", "b", "c", usage=FINAL_USAGE)
    chunks[1]["usage"] = {"prompt_tokens": 21, "completion_tokens": 1, "total_tokens": 22}  # cumulative, earlier
    local.script(*chunks)
    body = (await client.post("/v1/chat/completions", json=chat_body())).json()
    assert tokens(body["usage"]) == FINAL_USAGE


async def test_ingress_non_stream_assembles_tool_calls(router, client, local):
    local.script(*tool_call_reply("local-model"))
    body = (await client.post("/v1/chat/completions", json=chat_body())).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}
    ]


async def test_ingress_routes_long_prompts_to_the_cloud(make_router):
    client = make_router(args=router_args(local={"model_id": "local-model", "context_window": 256})).client()
    response = await client.post("/v1/chat/completions", json=chat_body("word " * 400))
    assert response.status_code == 200
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "prompt_too_long")


async def test_ingress_routes_big_output_budgets_to_the_cloud(router, client):
    response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=3000))
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "output_too_long")


async def test_ingress_local_not_ready_goes_cloud(router, client, local):
    local.ready = False
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "local_not_ready")


@pytest.mark.parametrize(("local_tools", "route"), [(False, ("cloud", "has_tools")), (True, ("local", "policy_local"))])
async def test_ingress_routes_tool_requests_by_policy(make_router, local_tools, route):
    client = make_router(args=router_args(routing={"local_tools": local_tools})).client()
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    response = await client.post("/v1/chat/completions", json=chat_body(tools=tools))
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == route


# ---- streamed -----------------------------------------------------------------------------------------------


async def test_ingress_stream_without_include_usage_has_no_usage(router, client, local):
    local.script(*reply("local-model", "Hi", " there", usage=FINAL_USAGE))
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-router-backend"] == "local"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hi there"
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("include_usage", [False, None])
async def test_ingress_stream_include_usage_false_has_no_usage(router, client, include_usage):
    body = chat_body(stream=True, stream_options={"include_usage": include_usage})
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert all("usage" not in json.loads(e) for e in events[:-1])


async def test_ingress_stream_include_usage_adds_one_final_usage_chunk(router, client, local):
    local.script(*reply("local-model", "Hi", usage=FINAL_USAGE))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_usage = [c for c in chunks if "usage" in c]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["model"] == "local-model"
    assert tokens(chunks[-1]["usage"]) == FINAL_USAGE


# ---- request ids --------------------------------------------------------------------------------------------


async def test_ingress_echoes_a_valid_client_request_id(router, client, local):
    response = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "req-42.a_b"})
    assert response.headers["x-request-id"] == "req-42.a_b"
    assert local.calls[0].request_id == "req-42.a_b"


@pytest.mark.parametrize("supplied", [None, "has space", "x" * 129, "semi;colon"])
async def test_ingress_generates_a_request_id_otherwise(router, client, local, supplied):
    headers = {"X-Request-Id": supplied} if supplied else {}
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    request_id = response.headers["x-request-id"]
    assert request_id != supplied and len(request_id) == 32 and int(request_id, 16) >= 0
    assert local.calls[0].request_id == request_id


# ---- models, health, readiness ------------------------------------------------------------------------------


async def test_ingress_models_lists_aliases_and_concrete_ids(router, client):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [
        ("auto", "hybrid-llm"),
        ("local", "hybrid-llm"),
        ("cloud", "hybrid-llm"),
        ("claude", "hybrid-llm"),
        ("local-model", "local"),
        ("claude-sonnet-4-6", "anthropic"),
        ("claude-haiku-4-5", "anthropic"),
    ]


async def test_ingress_models_without_cloud_lists_local_only(make_router):
    client = make_router(cloud=None).client()
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["auto", "local", "local-model"]


async def test_ingress_healthz_needs_no_key(router):
    response = await router.client(api_key=None).get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_ingress_readyz_reports_each_backend(router, local):
    local.inflight, local.detail = 3, "LLMServer RUNNING"
    response = await router.client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "backends": {
            "local": {"ready": True, "inflight": 3, "detail": "LLMServer RUNNING"},
            "cloud": {"ready": True, "inflight": 0, "detail": "fake"},
        },
        "prompt_tokens": {"counter": "estimate", "detail": "routing.tokenizer is not set"},
    }
    assert router.metrics.gauge("router_backend_ready", backend="local") == 1


async def test_ingress_readyz_labels_the_offline_stand_in(make_router):
    labelled = (await make_router(cloud_standin=True).client(api_key=None).get("/readyz")).json()
    assert labelled["backends"]["cloud"]["standin"] is True
    assert "stand-in" in labelled["cloud_standin"]
    plain = (await make_router().client(api_key=None).get("/readyz")).json()
    assert "standin" not in plain["backends"]["cloud"] and "cloud_standin" not in plain


async def test_ingress_readyz_ready_when_one_backend_is(router, local):
    local.ready = False
    response = await router.client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["backends"]["local"]["ready"] is False


async def test_ingress_readyz_503_when_no_backend_is_ready(make_router):
    router = make_router(local=local_backend(ready=False), cloud=cloud_backend(ready=False, detail="no key"))
    response = await router.client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert response.json()["backends"]["cloud"] == {"ready": False, "inflight": 0, "detail": "no key"}


# ---- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [None, "wrong-key"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/v1/models")])
async def test_ingress_missing_or_wrong_key_is_401(router, local, api_key, method, path):
    client = router.client(api_key=api_key)
    response = await client.request(method, path, json=chat_body() if method == "POST" else None)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert local.calls == []


async def test_ingress_wrong_auth_scheme_is_401(router):
    client = router.client(api_key=None)
    response = await client.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"})
    assert response.status_code == 401 and "Bearer" in response.json()["error"]["message"]


async def test_ingress_open_mode_needs_no_key(make_router):
    client = make_router(keys=ApiKeys.load(AuthArgs(allow_unauthenticated=True), environ={})).client(api_key=None)
    assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200


async def test_ingress_without_configured_keys_explains_the_401(make_router):
    client = make_router(keys=ApiKeys.load(AuthArgs(), environ={})).client(api_key="any")
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 401
    assert "no API keys configured" in response.json()["error"]["message"]


# ---- the openai SDK as client -------------------------------------------------------------------------------


async def test_ingress_openai_sdk_non_stream(router, local):
    local.script(*reply("local-model", "Hi", " there", usage=FINAL_USAGE))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=20
    )
    completion = raw.parse()
    assert raw.headers["x-router-backend"] == "local"
    assert completion.choices[0].message.content == "Hi there"
    assert completion.usage is not None and completion.usage.total_tokens == 24
    assert local.calls[0].request.output_budget == 20


async def test_ingress_openai_sdk_stream_with_usage(router, local):
    local.script(*reply("local-model", "Hi", " there", usage=FINAL_USAGE))
    stream = await router.openai().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (21, 3)


async def test_ingress_openai_sdk_tool_calls(router, local):
    local.script(*tool_call_reply("local-model"))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    completion = await router.openai().chat.completions.create(
        model="local", messages=[{"role": "user", "content": "weather?"}], tools=tools, tool_choice="auto"
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert local.calls[0].request.tools is not None


async def test_ingress_counts_one_ok_request_per_answer(router, client):
    for stream in (False, True):
        await client.post("/v1/chat/completions", json=chat_body(stream=stream))
    assert router.metrics.counter("router_requests", backend="local", outcome="ok") == 2


@pytest.mark.parametrize("capture", [False, True])
async def test_prompt_and_completion_reach_the_span_only_when_capture_is_opted_in(make_router, capture):
    router = make_router(args=router_args(telemetry={"capture_content": capture}))
    response = await router.client().post("/v1/chat/completions", json=chat_body("the secret plan"))
    assert response.status_code == 200
    (span,) = router.spans.get_finished_spans()
    attributes = span.attributes or {}
    if not capture:
        assert "langfuse.observation.input" not in attributes and "langfuse.observation.output" not in attributes
        assert all("the secret plan" not in str(value) for value in attributes.values())
        return
    assert json.loads(attributes["langfuse.observation.input"]) == [{"role": "user", "content": "the secret plan"}]
    answer = response.json()["choices"][0]["message"]["content"]
    assert json.loads(attributes["langfuse.observation.output"])["content"] == answer


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_client_gone_before_the_body_still_ends_its_observation_and_upstream(router, local, path):
    """The client left between the first upstream chunk and the response start: the body iterator never ran."""
    body = json.dumps(chat_body("bye", stream=True, max_tokens=8)).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {API_KEY}".encode())]
    scope = http_scope(path, headers)
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client is gone")

    with pytest.raises(OSError, match="client is gone"):
        await router.app(scope, receive, send)
    (upstream,) = local.streams
    for _ in range(100):  # the backend stream is closed in the background
        if upstream.aclosed:
            break
        await asyncio.sleep(0.01)
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "cancelled"
    assert router.metrics.counter("router_requests", outcome="cancelled") == 1
    assert upstream.aclosed


async def test_a_saturated_local_model_spills_auto_to_the_cloud_with_the_reason(make_router):
    local, cloud = local_backend(inflight=8), cloud_backend()  # router_args: saturation_inflight 8
    client = make_router(local=local, cloud=cloud).client()
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "local_saturated")
    assert local.calls == [] and len(cloud.calls) == 1
    local.inflight = 7  # one slot free: local again
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("local", "policy_local")


async def test_service_aclose_closes_every_backend_even_when_one_fails(make_router):
    """Replica shutdown: each backend's upstream connections are released, whatever another backend's close does."""

    class FailingClose(FakeBackend):
        async def aclose(self) -> None:
            raise RuntimeError("close failed")

    cloud = cloud_backend()
    router = make_router(local=FailingClose(name="local", provider="vllm", model_ids=["local-model"]), cloud=cloud)
    await router.service.aclose()
    assert cloud.closed
