"""Warm-up and death of the local model: the router keeps serving, never waits on a dead or loading model.

Latency bounds here are deliberately loose (1 s against a 20 s first-chunk timeout): they tell "answered at
once by the cloud" from "waited for the local model", without timing the machine.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
import ray
import yaml
from ray.util.state import list_actors

from tests.support.ray_platform import BIN, METRICS_REPORT_INTERVAL_MS

NO_WAIT_S = 1.0


@pytest.fixture(scope="module")
def driver(platform):
    # tests/conftest.py gives this process the cluster's settings (loopback addresses) before Ray is imported.
    ray.init(address=platform.ray.address, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _auto(platform, text: str = "hello") -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=60,
    )
    return response, time.perf_counter() - start


def _route(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-router-backend"], response.headers["x-router-reason"]


def _kill_model_replica(platform) -> None:
    # The state API is addressed explicitly: other Ray clusters may run on the same machine.
    alive = list_actors(address=platform.ray.dashboard_url, filters=[("state", "=", "ALIVE")])
    actors = [a for a in alive if "ServeReplica:llm:" in a.class_name]
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0].name, namespace="serve"), no_restart=True)


def _wait_local(platform, ready: bool, timeout: float) -> float:
    return platform.ray.wait_local_ready(timeout, ready=ready)


_SPEND_SERIES = re.compile(r"^ray_router_gpu_cost_usd_per_hour\{([^}]*)\} ", re.MULTILINE)


def _replicas_reporting_idle_spend(platform) -> set[str]:
    """Model replicas whose idle GPU spend gauge the node's Ray metrics endpoint exports right now."""
    text = httpx.get(f"http://127.0.0.1:{platform.ray.metrics_port}/metrics", timeout=5).text
    replicas = set()
    for labels in _SPEND_SERIES.findall(text):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if tags.get("kind") == "idle":
            replicas.add(tags.get("replica", ""))
    return replicas


def test_replica_death_mid_stream_gives_error_event_then_cloud_until_back(platform, driver):
    assert _route(_auto(platform)[0]) == ("local", "policy_local")
    events: list[str] = []
    first_chunk = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{platform.base_url}/v1/chat/completions",
            json={"model": "local", "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": "go"}]},
            headers={"Authorization": f"Bearer {platform.api_key}"},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    first_chunk.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(30)
    _kill_model_replica(platform)
    reader.join(60)
    assert not reader.is_alive()
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2], events[-3:]

    _wait_local(platform, ready=False, timeout=10)
    during = [_auto(platform, f"while down {i}") for i in range(5)]
    for response, elapsed in during:
        assert response.status_code == 200
        assert _route(response) == ("cloud", "local_not_ready")
        assert elapsed < NO_WAIT_S, f"{elapsed:.3f}s: the request waited on the dead model"
    print(f"cloud answers while the model restarts: {[round(e * 1000, 1) for _, e in during]} ms")
    # `local` too is answered by the cloud meanwhile (routing.local_pin: fallback, the default); the concrete local
    # model id is a strict pin and gets a 503 at once
    pinned = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": "local", "max_tokens": 8, "messages": [{"role": "user", "content": "while down, local"}]},
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=30,
    )
    assert pinned.status_code == 200 and _route(pinned) == ("cloud", "fallback_local_not_ready")
    strict = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": "local-model", "max_tokens": 8, "messages": [{"role": "user", "content": "while down"}]},
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=30,
    )
    assert strict.status_code == 503 and strict.headers["retry-after"] == "5"

    recovered_after = _wait_local(platform, ready=True, timeout=300)
    print(f"local model back after {recovered_after:.1f}s")
    assert _route(_auto(platform)[0]) == ("local", "policy_local")


def test_model_redeploy_keeps_router_serving_cloud_while_loading(platform, driver):
    config = yaml.safe_load(platform.ray.config_path.read_text())
    router_only = platform.ray.workdir / "router_only.yaml"
    router_only.write_text(yaml.safe_dump({**config, "applications": [config["applications"][1]]}, sort_keys=False))
    assert config["applications"][1]["name"] == "router"

    old_replicas = _replicas_reporting_idle_spend(platform)
    platform.ray.run(str(BIN / "serve"), "deploy", str(router_only), "-a", platform.ray.dashboard_url)
    _wait_local(platform, ready=False, timeout=60)
    platform.ray.deploy()  # the model application comes back and loads from scratch
    samples = []
    loading_started, spend_while_loading = time.monotonic(), set()
    while not platform.ray.readiness().get("backends", {}).get("local", {}).get("ready"):
        spend_while_loading |= _replicas_reporting_idle_spend(platform) - old_replicas
        response, elapsed = _auto(platform, "while loading")
        assert response.status_code == 200
        backend, reason = _route(response)
        if backend == "local":  # became ready between the readiness poll and the request
            break
        assert reason == "local_not_ready"
        assert elapsed < NO_WAIT_S, f"{elapsed:.3f}s: the request waited on the loading model"
        samples.append(elapsed)
        time.sleep(0.5)
    loading_s = time.monotonic() - loading_started
    assert len(samples) >= 3, "the model loaded too fast to observe the warm-up"
    samples.sort()
    p50_ms = samples[len(samples) // 2] * 1000
    print(f"{len(samples)} cloud answers during {loading_s:.1f}s of warm-up, p50 {p50_ms:.1f} ms")
    # The GPU is paid while the model loads: the new replica's spend gauges are exported before it is ready
    # (given a load longer than two metric export intervals; the old replica's series do not count).
    if loading_s > 2 * METRICS_REPORT_INTERVAL_MS / 1000:
        assert spend_while_loading, f"no idle GPU spend exported during {loading_s:.1f}s of model load"
    status = yaml.safe_load(platform.ray.run(str(BIN / "serve"), "status", "-a", platform.ray.dashboard_url).stdout)
    assert status["applications"]["router"]["status"] == "RUNNING"
    _wait_local(platform, ready=True, timeout=300)
    assert _route(_auto(platform)[0]) == ("local", "policy_local")
