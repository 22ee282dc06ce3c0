"""Telemetry backends down or hanging cost the responses nothing: 600 requests, zero errors, bounded memory.

A second platform (router only) exports spans to a closed port and Langfuse generations to a server that
accepts connections and never answers; the cloud stand-in answers at once.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import psutil
import pytest

from tests.integration.conftest import ANTHROPIC_KEY, API_KEY, LANGFUSE_PUBLIC, LANGFUSE_SECRET
from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.prometheus import free_port
from tests.support.ray_platform import RayPlatform

REQUESTS = 600
CONCURRENCY = 8
MEMORY_BOUND_MB = 64  # growth of the router replica's RSS over the whole load


@pytest.fixture(scope="module")
def outage_platform(tmp_path_factory):
    upstream = AnthropicStandIn(api_key=ANTHROPIC_KEY, token_delay_s=0, record_requests=False).start()
    hanging_langfuse = LangfuseStandin(public_key=LANGFUSE_PUBLIC, secret_key=LANGFUSE_SECRET, mode="hang")
    hanging_langfuse.__enter__()
    closed_port = free_port()  # nothing listens here
    ray = RayPlatform(
        workdir=tmp_path_factory.mktemp("outage"),
        apps=("router",),
        env={
            "HYBRID_LLM_API_KEYS": API_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": upstream.base_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LANGFUSE_PUBLIC_KEY": LANGFUSE_PUBLIC,
            "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
            "LANGFUSE_BASE_URL": hanging_langfuse.base_url,
            "LANGFUSE_FLUSH_INTERVAL": "0.1",
        },
        overrides={"cloud": {"max_retries": 0}},
    )
    try:
        yield ray.start(ready_timeout=180)
    finally:
        ray.stop()
        hanging_langfuse.__exit__(None, None, None)
        upstream.stop()


def _router_process() -> psutil.Process:
    found = [
        p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:router:Router" in " ".join(p.info["cmdline"] or [])
    ]
    assert len(found) >= 1
    return max(found, key=lambda p: p.create_time())  # the outage platform's replica is the newest


async def _load(base_url: str, count: int) -> list[int]:
    statuses: list[int] = []
    body = {"model": "auto", "messages": [{"role": "user", "content": "telemetry is down"}]}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            response = await client.post(f"{base_url}/v1/chat/completions", json=body, headers=headers)
            statuses.append(response.status_code)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return statuses


def _dropped(metrics_text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = re.match(r'ray_router_telemetry_dropped_total\{.*sink="([a-z_]+)".*\} ([0-9.e+]+)', line)
        if match:
            found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(2))
    return found


def test_load_with_telemetry_down_has_no_errors_bounded_memory_and_counted_drops(outage_platform):
    base_url = outage_platform.base_url
    asyncio.run(_load(base_url, 50))  # warm up connections, imports and the SDK
    router = _router_process()
    rss_before = router.memory_info().rss
    statuses = asyncio.run(_load(base_url, REQUESTS))
    rss_after = router.memory_info().rss
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    growth_mb = (rss_after - rss_before) / 2**20
    print(f"router RSS {rss_before / 2**20:.0f} MB -> {rss_after / 2**20:.0f} MB (+{growth_mb:.1f} MB)")
    assert growth_mb < MEMORY_BOUND_MB

    def drops() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{outage_platform.metrics_port}/metrics", timeout=10).text
        return _dropped(text)

    deadline_reads = 40
    seen: dict[str, float] = {}
    for _ in range(deadline_reads):
        seen = drops()
        if seen.get("otlp", 0) > 0 and seen.get("langfuse", 0) > 0:
            break
        asyncio.run(asyncio.sleep(1))
    print(f"telemetry dropped: {seen}")
    assert seen.get("otlp", 0) > 0 and seen.get("langfuse", 0) > 0, seen
