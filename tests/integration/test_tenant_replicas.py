"""Tenants on the real platform: two router replicas share one spend ledger (a Ray actor) under concurrent clients.

Two tenants send cloud-bound requests concurrently through both API styles until well past a daily cloud budget,
then one at a time until three in a row are turned away: `alpha` is refused at its limit (429), `beta` is diverted
to the local model, and what each was billed comes within a reservation or two of the limit. The spend the ledger
recorded per tenant must equal the sum of the per-request costs the clients were billed, and stay within the limit:
the stated bound is the sum of what requests cost beyond their reservation, and the stand-in never bills more (its
prompt count is the words, below the router's estimate; its output stays within max_tokens), so here the bound is 0.
After the router is redeployed (new replicas), the ledger still holds the spend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_app.tenants_report import main as tenants_report
from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.ray_platform import RayPlatform, http_json

pytestmark = pytest.mark.integration

ANTHROPIC_KEY = "sk-ant-test-upstream-key"
KEYS = {"alpha": "key-alpha", "beta": "key-beta"}
LIMIT_USD = 0.004
MAX_TOKENS = 16
# "please answer tenant request N" estimated at int(30/3.5) + 4 = 12 tokens, at the cache-write price
RESERVED_USD = (12 * 3.75 + MAX_TOKENS * 15.0) / 1e6
REQUESTS_PER_TENANT = 60


@dataclass
class Answer:
    tenant: str
    status: int
    backend: str | None
    reason: str | None
    cost: float | None
    limit: str | None
    retry_after: str | None


@dataclass
class TenantPlatform:
    ray: RayPlatform
    standin: AnthropicStandIn
    snapshot: Path


@pytest.fixture(scope="module")
def tenant_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantPlatform]:
    standin = AnthropicStandIn(api_key=ANTHROPIC_KEY, token_delay_s=0.001).start()
    workdir = tmp_path_factory.mktemp("tenants")
    snapshot = workdir / "ledger.json"
    ray = RayPlatform(
        workdir=workdir,
        env={
            "HYBRID_LLM_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": standin.base_url,
        },
        overrides={
            "cloud": {"max_retries": 0, "timeout_s": 10},
            "routing": {"rules": [{"name": "to_cloud", "backend": "cloud", "min_prompt_tokens": 0}]},
            "deployment": {"num_replicas": 2},
            "tenants": {
                "limits": {
                    "alpha": {"usd_per_day": {"usd": LIMIT_USD, "over": "reject"}},
                    "beta": {"usd_per_day": {"usd": LIMIT_USD, "over": "local"}},
                },
                "ledger": {
                    "snapshot_path": str(snapshot),
                    "snapshot_interval_s": 0.2,
                    "sync_interval_s": 0.2,
                    "lease_fraction": 0.2,
                },
            },
        },
    )
    try:
        ray.start()
        yield TenantPlatform(ray=ray, standin=standin, snapshot=snapshot)
    finally:
        ray.stop()
        standin.stop()


def _router_replicas(ray: RayPlatform) -> set[str]:
    """The router's RUNNING replicas (none while a redeploy has not yet listed its deployment)."""
    _, body = http_json(f"{ray.dashboard_url}/api/serve/applications/", timeout=10)
    app = body.get("applications", {}).get("router", {}) if isinstance(body, dict) else {}
    router = app.get("deployments", {}).get("Router", {})
    return {r["replica_id"] for r in router.get("replicas", []) if r["state"] == "RUNNING"}


async def _one(client: httpx.AsyncClient, tenant: str, i: int) -> Answer:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    text = f"please answer tenant request {i:02d}"
    if i % 3 == 2:  # the Anthropic style
        body = {"model": "auto", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": text}]}
        response = await client.post("/v1/messages", json=body, headers=headers)
        cost = response.headers.get("x-router-cost-usd")
        cost_usd = float(cost) if cost else None
    elif i % 3 == 1:  # streamed, the cost in the final usage chunk
        body = {
            "model": "auto",
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}],
        }
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        cost_usd = None
        if response.status_code == 200:
            events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
            usage = [json.loads(e)["usage"] for e in events if e != "[DONE]" and json.loads(e).get("usage")]
            cost_usd = usage[-1].get("cost_usd")
    else:
        body = {"model": "auto", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": text}]}
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        cost_usd = response.json()["usage"].get("cost_usd") if response.status_code == 200 else None
    return Answer(
        tenant=tenant,
        status=response.status_code,
        backend=response.headers.get("x-router-backend"),
        reason=response.headers.get("x-router-reason"),
        cost=cost_usd,
        limit=response.headers.get("x-router-limit"),
        retry_after=response.headers.get("retry-after"),
    )


async def _clients(base_url: str, *, per_tenant: int, concurrency: int) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)

    async def bounded(client: httpx.AsyncClient, tenant: str, i: int) -> Answer:
        async with gate:
            return await _one(client, tenant, i)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        jobs = [bounded(client, tenant, i) for i in range(per_tenant) for tenant in KEYS]
        return list(await asyncio.gather(*jobs))


def _ledger_spent(snapshot: Path, tenant: str) -> float:
    spent = json.loads(snapshot.read_text())["spent"]
    return sum(value for key, value in spent.items() if key.startswith(f"{tenant}/cloud_usd/day/"))


def _settled(snapshot: Path, expected: dict[str, float], timeout: float = 20) -> dict[str, float]:
    """The ledger's spend per tenant once the replicas' reports reached its snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        found = {t: _ledger_spent(snapshot, t) if snapshot.exists() else 0.0 for t in expected}
        if all(abs(found[t] - expected[t]) < 1e-7 for t in expected) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


async def _top_up(base_url: str, tenant: str) -> list[Answer]:
    """One request at a time after the burst until three in a row are refused or diverted, each a second after the
    last (the replicas' reports give unused leases back meanwhile): what the burst's in-flight reservations and the
    replicas' leases held back is then spent."""
    found: list[Answer] = []
    misses = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for i in range(REQUESTS_PER_TENANT, 100):
            answer = await _one(client, tenant, i)
            found.append(answer)
            misses = 0 if answer.status == 200 and answer.backend == "cloud" else misses + 1
            if misses == 3:
                break
            if misses:
                await asyncio.sleep(1.0)
    return found


@pytest.fixture(scope="module")
def answers(tenant_platform: TenantPlatform) -> list[Answer]:
    assert len(_router_replicas(tenant_platform.ray)) == 2
    base_url = tenant_platform.ray.base_url
    burst = asyncio.run(_clients(base_url, per_tenant=REQUESTS_PER_TENANT, concurrency=8))
    return burst + [answer for tenant in KEYS for answer in asyncio.run(_top_up(base_url, tenant))]


def _billed(answers: list[Answer], tenant: str) -> float:
    return sum(a.cost or 0.0 for a in answers if a.tenant == tenant and a.backend == "cloud" and a.status == 200)


def test_spend_per_tenant_equals_what_the_clients_were_billed(tenant_platform, answers):
    expected = {tenant: _billed(answers, tenant) for tenant in KEYS}
    assert all(value > 0 for value in expected.values())
    recorded = _settled(tenant_platform.snapshot, expected)
    for tenant in KEYS:
        assert recorded[tenant] == pytest.approx(expected[tenant], abs=1e-7), tenant
    assert all(a.cost is not None for a in answers if a.status == 200 and a.backend == "cloud")


def test_spend_stays_within_the_limit_and_uses_it(tenant_platform, answers):
    for tenant in KEYS:
        billed = _billed(answers, tenant)
        assert billed <= LIMIT_USD  # the bound: cost beyond reservations, 0 with this upstream
        # after the top-up, what is left (pooled at the ledger once a grant was refused) is less than a reservation;
        # one more for a report that came late
        assert billed > LIMIT_USD - 2 * RESERVED_USD


def test_tenant_over_a_reject_limit_gets_429_naming_it(answers):
    alpha = [a for a in answers if a.tenant == "alpha"]
    refused = [a for a in alpha if a.status == 429]
    assert refused and all(a.status in (200, 429) for a in alpha)
    assert all(a.limit == "usd_per_day" and a.retry_after and int(a.retry_after) >= 1 for a in refused)
    assert all(a.backend == "cloud" for a in alpha if a.status == 200)


def test_tenant_over_a_local_limit_is_diverted(answers):
    beta = [a for a in answers if a.tenant == "beta"]
    assert all(a.status == 200 for a in beta), [a for a in beta if a.status != 200]
    diverted = [a for a in beta if a.backend == "local"]
    assert diverted and all(a.reason == "tenant_budget_local" for a in diverted)


def test_spend_survives_a_router_redeploy(tenant_platform, answers):
    ray = tenant_platform.ray
    before = _router_replicas(ray)
    ray.overrides["tenants"]["ledger"]["sync_interval_s"] = 0.25  # a config change: Serve replaces the replicas
    ray.write_config()
    ray.deploy()
    deadline = time.monotonic() + 180
    while True:
        now = _router_replicas(ray)
        if len(now) == 2 and not now & before:
            break
        assert time.monotonic() < deadline, f"router replicas not replaced: {before} -> {now}"
        time.sleep(1)
    after = asyncio.run(_clients(ray.base_url, per_tenant=20, concurrency=4))
    # The new replicas start from the ledger's spend: with a budget reset to zero, 20 requests (0.0015 USD) would
    # all be answered by the cloud; with the spend kept, only what was left of the limit is, the rest is refused or
    # diverted.
    for tenant in KEYS:
        assert _billed(answers, tenant) + _billed(after, tenant) <= LIMIT_USD
    assert any(a.status == 429 and a.limit == "usd_per_day" for a in after if a.tenant == "alpha")
    assert all(a.status == 200 for a in after if a.tenant == "beta")
    assert any(a.backend == "local" and a.reason == "tenant_budget_local" for a in after if a.tenant == "beta")
    answers.extend(after)  # the operator command's figures below include them


def test_operator_command_lists_spend_and_remaining(tenant_platform, answers, capsys):
    assert tenants_report(["--config", str(tenant_platform.ray.config_path), "--json"]) == 0
    rows = {row["tenant"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    for tenant in KEYS:
        assert rows[tenant]["today_usd"] == pytest.approx(_billed(answers, tenant), abs=1e-7)
        assert rows[tenant]["day_limit_usd"] == LIMIT_USD
        assert rows[tenant]["day_remaining_usd"] == pytest.approx(LIMIT_USD - _billed(answers, tenant), abs=1e-7)
