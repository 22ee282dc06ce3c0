"""ingress: the `local` alias while the model loads or is saturated (cloud answers, or 503 under a strict pin),
the `claude` alias, and the `requested` metric label that makes "requested local, served cloud" a query."""

from __future__ import annotations

import json

import pytest

from serve_app.errors import UpstreamUnavailable
from tests.component.fakes import chat_body, local_backend, router_args, sse_events

pytestmark = pytest.mark.timeout(30)

SONNET = "claude-sonnet-4-6"


def route_of(response) -> tuple[str, str]:
    return response.headers["x-router-backend"], response.headers["x-router-reason"]


def the_span(router):
    (span,) = router.spans.get_finished_spans()
    return dict(span.attributes or {})


@pytest.mark.parametrize("stream", [False, True])
async def test_local_while_the_model_loads_is_answered_by_the_cloud(make_router, cloud, stream):
    local = local_backend(ready=False, detail="no running replica (loading or restarting)")
    router = make_router(local=local, cloud=cloud)
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="local", stream=stream))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_not_ready")
    if stream:
        first = json.loads(sse_events(response.text)[0])
        assert first["model"] == SONNET
    else:
        assert response.json()["model"] == SONNET
    assert local.calls == [] and [c.model for c in cloud.calls] == [SONNET]
    # the cloud answers right away: no fail-fast, so the SDK's own retries still apply
    assert cloud.calls[0].fail_fast is False
    metrics = router.metrics
    assert metrics.counter("router_requests", requested="local", backend="cloud") == 1
    assert metrics.counter("router_requests", route_reason="fallback_local_not_ready", outcome="ok") == 1
    assert metrics.counter("router_fallbacks") == 0  # a decision, not a retry after a failure
    span = the_span(router)
    assert span["llm.model.requested"] == "local" and span["llm.backend"] == "cloud"
    assert span["llm.route.reason"] == "fallback_local_not_ready" and span["llm.fallback"] is False
    assert span["gen_ai.response.model"] == SONNET


async def test_local_while_saturated_is_answered_by_the_cloud(make_router, cloud):
    local = local_backend(inflight=8)  # router_args: saturation_inflight 8
    router = make_router(local=local, cloud=cloud)
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="local"))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_saturated")
    assert local.calls == []
    assert router.metrics.counter("router_requests", requested="local", backend="cloud") == 1


async def test_local_failing_before_the_first_byte_falls_back_to_the_cloud(router, client, local, cloud):
    local.script(UpstreamUnavailable("replica died", backend="local"))
    response = await client.post("/v1/chat/completions", json=chat_body(model="local"))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "fallback_local_error")
    assert local.calls[0].fail_fast is True  # the cloud was ready to take over
    assert router.metrics.counter("router_fallbacks", route_reason="fallback_local_error") == 1
    assert router.metrics.counter("router_requests", requested="local", backend="cloud") == 1


async def test_strict_pin_while_the_model_loads_is_503_at_once(make_router, cloud):
    local = local_backend(ready=False)
    router = make_router(local=local, cloud=cloud, args=router_args(routing={"local_pin": "strict"}))
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="local"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "local_pin: strict" in response.json()["error"]["message"]
    assert local.calls == [] and cloud.calls == []
    assert router.metrics.counter("router_requests", requested="local", backend="none", outcome="error") == 1


async def test_strict_pin_saturated_and_failing_stays_local(make_router, cloud):
    local = local_backend(inflight=99)
    router = make_router(local=local, cloud=cloud, args=router_args(routing={"local_pin": "strict"}))
    client = router.client()
    response = await client.post("/v1/chat/completions", json=chat_body(model="local"))
    assert route_of(response) == ("local", "explicit_local")
    local.script(UpstreamUnavailable("replica died", backend="local"))
    response = await client.post("/v1/chat/completions", json=chat_body(model="local"))
    assert response.status_code == 503
    assert cloud.calls == []


async def test_concrete_local_model_is_always_a_strict_pin(make_router, cloud):
    local = local_backend(ready=False)
    router = make_router(local=local, cloud=cloud)
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="local-model"))
    assert response.status_code == 503 and cloud.calls == []
    assert router.metrics.counter("router_requests", requested="concrete") == 1


async def test_claude_alias_is_the_cloud(router, client, cloud):
    response = await client.post("/v1/chat/completions", json=chat_body(model="claude"))
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "explicit_cloud")
    assert response.json()["model"] == SONNET and [c.model for c in cloud.calls] == [SONNET]
    assert router.metrics.counter("router_requests", requested="cloud", backend="cloud") == 1
    # the model label stays closed: the alias is a known value, an unknown id is `other`
    await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"))
    assert router.metrics.counter("router_requests", requested="concrete", model="other", backend="none") == 1


async def test_claude_alias_on_the_messages_route(router, client, cloud):
    body = {"model": "claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200
    assert route_of(response) == ("cloud", "explicit_cloud")
    assert response.json()["model"] == SONNET


async def test_claude_alias_without_a_cloud_backend_is_not_listed_and_404(make_router):
    client = make_router(cloud=None).client()
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert "claude" not in ids
    response = await client.post("/v1/chat/completions", json=chat_body(model="claude"))
    assert response.status_code == 404


async def test_requested_label_for_auto(router, client):
    await client.post("/v1/chat/completions", json=chat_body())
    assert router.metrics.counter("router_requests", requested="auto", backend="local") == 1
