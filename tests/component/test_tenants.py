"""Tenants through the HTTP edge: identity in telemetry, and every refusal and diversion by a limit, on both APIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.auth import ApiKeys
from serve_app.config import AuthArgs
from serve_app.errors import UpstreamUnavailable
from tests.component.conftest import MakeRouter, Router
from tests.component.fakes import chat_body, reply, router_args

pytestmark = pytest.mark.asyncio(loop_scope="function")

KEYS = "alpha:key-alpha,beta:key-beta,key-anon"
# 11 input + 3 output tokens at 3 and 15 USD per million (the fakes' default reply on the cloud)
CLOUD_REPLY_USD = (11 * 3.0 + 3 * 15.0) / 1e6
# "hello there" is estimated at 7 prompt tokens: reserved at the cache-write price, max_tokens at the output price
CLOUD_RESERVED_USD = (7 * 3.75 + 10 * 15.0) / 1e6
TO_CLOUD = {"rules": [{"name": "to_cloud", "backend": "cloud", "min_prompt_tokens": 0}]}


class Clock:
    def __init__(self, t: float = 1_780_000_000.0) -> None:  # 2026-05-28, mid-minute of no importance
        self.t = t

    def __call__(self) -> float:
        return self.t


def keys(environ: str = KEYS) -> ApiKeys:
    return ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": environ})


def make(make_router: MakeRouter, *, clock: Clock | None = None, routing: dict | None = None, **tenants: Any) -> Router:
    args = router_args(tenants=tenants, **({"routing": routing} if routing else {}))
    return make_router(args=args, keys=keys(), tenancy=True, clock=clock or Clock())


async def chat(router: Router, key: str, **body: Any) -> httpx.Response:
    client = router.client(api_key=key)
    return await client.post("/v1/chat/completions", json=chat_body(max_tokens=10, **body))


async def messages(router: Router, key: str, *, model: str = "auto", stream: bool = False) -> httpx.Response:
    client = router.client(api_key=key)
    body = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hello there"}]}
    return await client.post("/v1/messages", json=body | ({"stream": True} if stream else {}))


def assert_refused(response: httpx.Response, *, limit: str, max_retry_after: float, api: str = "openai") -> None:
    assert response.status_code == 429, response.text
    assert response.headers["X-Router-Limit"] == limit
    assert 1 <= int(response.headers["Retry-After"]) <= max_retry_after
    body = response.json()
    if api == "openai":
        error = body["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] in ("tenant_limit_exceeded", "cloud_budget_exceeded")
    else:
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        error = body["error"]
    assert limit in error["message"]


# ---- identity ---------------------------------------------------------------------------------------------------


async def test_tenant_on_span_record_and_metrics_never_the_key(make_router: MakeRouter, tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    args = router_args(tenants={"limits": {"alpha": {}}}, telemetry={"request_log_path": str(log)})
    router = make_router(args=args, keys=keys(), tenancy=True)
    for key in ("key-alpha", "key-beta", "key-anon"):
        assert (await chat(router, key, user="client-user")).status_code == 200
    router.telemetry.shutdown()  # flushes the request log
    spans = router.spans.get_finished_spans()
    assert [s.attributes["llm.tenant"] for s in spans] == ["alpha", "beta", "default"]
    assert spans[0].attributes["user.id"] == "client-user"  # the client's own user stays the Langfuse user
    assert list(spans[0].attributes["langfuse.trace.tags"]) == ["tenant:alpha"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["tenant"] for r in records] == ["alpha", "beta", "default"]
    # the metric label is closed: configured tenants and `default`, anything else `other`
    assert router.metrics.counter("router_tenant_requests", tenant="alpha", backend="local", outcome="ok") == 1
    assert router.metrics.counter("router_tenant_requests", tenant="other") == 1
    assert router.metrics.counter("router_tenant_requests", tenant="default") == 1
    exported = repr([dict(s.attributes) for s in spans]) + log.read_text() + repr(router.metrics.counters)
    assert "key-alpha" not in exported and "key-beta" not in exported


async def test_tenant_cost_counted_per_backend(make_router: MakeRouter) -> None:
    router = make(make_router, limits={"alpha": {}})
    await chat(router, "key-alpha", model="cloud")
    await chat(router, "key-alpha")
    assert router.metrics.counter("router_tenant_cost_usd", tenant="alpha", backend="cloud") == pytest.approx(
        CLOUD_REPLY_USD
    )
    assert router.metrics.counter("router_tenant_tokens", tenant="alpha", backend="local") == 14


# ---- refusals ---------------------------------------------------------------------------------------------------


async def test_requests_per_minute_refuses_on_both_apis_and_resets_with_the_minute(make_router: MakeRouter) -> None:
    clock = Clock(1_780_000_040.0)  # 20 s into a minute
    router = make(make_router, clock=clock, limits={"alpha": {"requests_per_minute": 2}})
    assert (await chat(router, "key-alpha")).status_code == 200
    assert (await messages(router, "key-alpha")).status_code == 200
    calls = len(router.local.calls)
    assert_refused(await chat(router, "key-alpha"), limit="requests_per_minute", max_retry_after=40)
    assert_refused(await messages(router, "key-alpha"), limit="requests_per_minute", max_retry_after=40, api="x")
    streamed = await chat(router, "key-alpha", stream=True)
    assert_refused(streamed, limit="requests_per_minute", max_retry_after=40)  # a real status, not an SSE error
    assert len(router.local.calls) == calls  # refused before any backend was called
    assert (await chat(router, "key-beta")).status_code == 200  # another tenant is not limited
    assert router.metrics.counter("router_tenant_limited", tenant="alpha", action="rejected") == 3
    clock.t += 40  # the next minute
    assert (await chat(router, "key-alpha")).status_code == 200


async def test_tokens_per_minute_counts_the_reservation_then_the_actual(make_router: MakeRouter) -> None:
    # each request reserves 7 prompt + 10 output tokens and uses 14 (the fakes' usage)
    router = make(make_router, limits={"alpha": {"tokens_per_minute": 40}})
    assert (await chat(router, "key-alpha")).status_code == 200
    assert (await chat(router, "key-alpha")).status_code == 200  # 14 used + 17 reserved <= 40
    assert_refused(await chat(router, "key-alpha"), limit="tokens_per_minute", max_retry_after=60)
    assert_refused(await messages(router, "key-alpha"), limit="tokens_per_minute", max_retry_after=60, api="x")


async def test_local_tokens_per_minute_limits_only_the_local_model(make_router: MakeRouter) -> None:
    router = make(make_router, limits={"alpha": {"local_tokens_per_minute": 20}})
    assert (await chat(router, "key-alpha")).status_code == 200
    assert_refused(await chat(router, "key-alpha"), limit="local_tokens_per_minute", max_retry_after=60)
    assert_refused(await messages(router, "key-alpha"), limit="local_tokens_per_minute", max_retry_after=60, api="x")
    assert (await chat(router, "key-alpha", model="cloud")).status_code == 200


@pytest.mark.parametrize("limit", ["usd_per_day", "usd_per_month"])
async def test_usd_limit_refuses_cloud_spend_and_names_the_limit(make_router: MakeRouter, limit: str) -> None:
    clock = Clock(1_780_000_000.0)
    router = make(make_router, clock=clock, limits={"alpha": {limit: 0.0003}})
    assert (await chat(router, "key-alpha", model="cloud")).status_code == 200
    assert (await chat(router, "key-alpha", model="cloud")).status_code == 200
    calls = len(router.cloud.calls)
    window = 86400 if limit == "usd_per_day" else 31 * 86400
    assert_refused(await chat(router, "key-alpha", model="cloud"), limit=limit, max_retry_after=window)
    assert_refused(await messages(router, "key-alpha", model="cloud"), limit=limit, max_retry_after=window, api="x")
    assert len(router.cloud.calls) == calls
    assert (await chat(router, "key-alpha")).status_code == 200  # local spend is not cloud spend
    await router.tenancy.sync()
    totals = await router.tenancy._ledger.totals()
    assert sum(v for k, v in totals["spent"].items() if "/cloud_usd/" in k) == pytest.approx(2 * CLOUD_REPLY_USD)


async def test_usd_limit_over_local_diverts_auto_on_both_apis(make_router: MakeRouter) -> None:
    router = make(make_router, routing=TO_CLOUD, limits={"alpha": {"usd_per_day": {"usd": 0.0001, "over": "local"}}})
    for response in (await chat(router, "key-alpha"), await messages(router, "key-alpha", stream=True)):
        assert response.status_code == 200, response.text
        assert response.headers["X-Router-Backend"] == "local"
        assert response.headers["X-Router-Reason"] == "tenant_budget_local"
    assert router.cloud.calls == []
    assert router.metrics.counter("router_tenant_limited", tenant="alpha", limit="usd_per_day", action="diverted") == 2
    assert router.metrics.counter("router_requests", route_reason="tenant_budget_local") == 2
    # a client that asked for the cloud by name is refused, not answered by another model
    assert_refused(await chat(router, "key-alpha", model="cloud"), limit="usd_per_day", max_retry_after=86400)
    assert_refused(
        await messages(router, "key-alpha", model="claude-haiku-4-5"),
        limit="usd_per_day",
        max_retry_after=86400,
        api="x",
    )


async def test_usd_limit_over_local_refuses_when_local_cannot_take_it(make_router: MakeRouter) -> None:
    router = make(make_router, routing=TO_CLOUD, limits={"alpha": {"usd_per_day": {"usd": 0.0001, "over": "local"}}})
    router.local.ready = False
    assert_refused(await chat(router, "key-alpha"), limit="usd_per_day", max_retry_after=86400)
    assert_refused(await messages(router, "key-alpha"), limit="usd_per_day", max_retry_after=86400, api="x")


async def test_global_cloud_budget_diverts_or_refuses_every_tenant(make_router: MakeRouter) -> None:
    router = make(make_router, routing=TO_CLOUD, cloud_usd_per_hour={"usd": 0.0001, "over": "local"})
    for response in (await chat(router, "key-anon"), await messages(router, "key-alpha")):
        assert response.status_code == 200
        headers = response.headers
        assert (headers["X-Router-Backend"], headers["X-Router-Reason"]) == ("local", "cloud_budget_local")
    assert router.cloud.calls == []
    refusing = make(make_router, routing=TO_CLOUD, cloud_usd_per_hour=0.0001)
    for response in (await chat(refusing, "key-beta"), await messages(refusing, "key-alpha", model="cloud")):
        assert response.status_code == 429
        assert response.headers["X-Router-Limit"] == "cloud_usd_per_hour"
        assert 1 <= int(response.headers["Retry-After"]) <= 3600
    assert (await chat(refusing, "key-beta", model="cloud")).json()["error"]["code"] == "cloud_budget_exceeded"


async def test_fallback_to_a_cloud_over_budget_keeps_the_original_error(make_router: MakeRouter) -> None:
    router = make(make_router, limits={"alpha": {"usd_per_day": 0.0001}})
    router.local.script(UpstreamUnavailable("engine gone", backend="local"))
    response = await chat(router, "key-alpha")
    assert response.status_code == 503 and router.cloud.calls == []
    router.local.script(UpstreamUnavailable("engine gone", backend="local"))
    response = await chat(router, "key-beta")  # not limited: falls back to the cloud
    assert response.status_code == 200 and response.headers["X-Router-Reason"] == "fallback_local_error"


async def test_refused_request_is_logged_with_its_status(make_router: MakeRouter, tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    args = router_args(
        tenants={"limits": {"alpha": {"requests_per_minute": 1}}}, telemetry={"request_log_path": str(log)}
    )
    router = make_router(args=args, keys=keys(), tenancy=True)
    await chat(router, "key-alpha")
    await chat(router, "key-alpha")
    router.telemetry.shutdown()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["tenant"], r["status"], r["error_type"]) for r in records] == [
        ("alpha", 200, None),
        ("alpha", 429, "LimitExceeded"),
    ]


async def test_key_file_limits_override_the_config(make_router: MakeRouter, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("tenants:\n  alpha:\n    keys: [file-key]\n    limits: {requests_per_minute: 1}\n")
    api_keys = ApiKeys.load(AuthArgs(api_keys_file=str(path)), environ={})
    args = router_args(tenants={"limits": {"alpha": {"requests_per_minute": 100}}})
    router = make_router(args=args, keys=api_keys, tenancy=True)
    assert (await chat(router, "file-key")).status_code == 200
    assert_refused(await chat(router, "file-key"), limit="requests_per_minute", max_retry_after=60)


async def test_cost_reply_helper_matches_the_fakes() -> None:
    usage = reply("m", "a", "b", "c")[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (11, 3)
