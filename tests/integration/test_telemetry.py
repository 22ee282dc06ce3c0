"""Telemetry of the running platform: one span and one Langfuse generation per request, Prometheus totals.

Values are compared with what the client itself received (model, backend, tokens, finish reason, cost).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from tests.support.prometheus import ExpositionServer, PrometheusServer, all_expressions, rule_files
from tests.support.ray_platform import LOCAL_CONFIG, METRICS_REPORT_INTERVAL_MS

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class Seen:
    """What one client saw."""

    request_id: str
    status: int
    backend: str | None = None
    reason: str | None = None
    model: str | None = None
    usage: dict = field(default_factory=dict)
    finish: list[str] = field(default_factory=list)
    error: bool = False


def _send(platform, body: dict, headers: dict | None = None) -> Seen:
    headers = {"Authorization": f"Bearer {platform.api_key}"} | (headers or {})
    url = f"{platform.base_url}/v1/chat/completions"
    if not body.get("stream"):
        response = httpx.post(url, json=body, headers=headers, timeout=60)
        seen = Seen(response.headers["x-request-id"], response.status_code)
        data = response.json()
        if response.status_code != 200:
            seen.error = True
            return seen
        seen.backend, seen.reason = response.headers["x-router-backend"], response.headers["x-router-reason"]
        seen.model, seen.usage = data["model"], data["usage"]
        seen.finish = [data["choices"][0]["finish_reason"]]
        return seen
    body = body | {"stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        seen = Seen(response.headers["x-request-id"], response.status_code)
        seen.backend, seen.reason = response.headers["x-router-backend"], response.headers["x-router-reason"]
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                seen.error = True
            seen.model = chunk.get("model", seen.model)
            seen.usage = chunk.get("usage") or seen.usage
            seen.finish += [c["finish_reason"] for c in chunk.get("choices", []) if c.get("finish_reason")]
    return seen


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def traffic(platform) -> list[Seen]:
    cases = [
        ({"model": "local", "max_tokens": 6, "messages": _user("telemetry local")}, None),
        ({"model": "local", "max_tokens": 6, "stream": True, "messages": _user("telemetry local stream")}, None),
        ({"model": "cloud", "messages": _user("telemetry cloud a b")}, {"traceparent": TRACEPARENT}),
        ({"model": "cloud", "stream": True, "messages": _user("#scenario=cache telemetry cloud stream")}, None),
        ({"model": "auto", "max_tokens": 100, "messages": _user("#scenario=overloaded telemetry fallback")}, None),
        ({"model": "cloud", "messages": _user("#scenario=rate_limit telemetry error")}, None),
        ({"model": "cloud", "stream": True, "messages": _user("#scenario=error_after_200 telemetry late error")}, None),
    ]
    return [_send(platform, body, headers) for body, headers in cases]


def _wait(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _router_spans(receiver, request_id: str) -> list:
    return [s for s in receiver.spans if s.attributes.get("llm.request_id") == request_id]


def test_every_request_leaves_exactly_one_router_span_matching_the_client(platform, traffic):
    ids = [seen.request_id for seen in traffic]
    _wait(lambda: all(_router_spans(platform.otlp, i) for i in ids), what="router spans for every request")
    time.sleep(1)  # a duplicate would arrive in the same or the next export batch
    for seen in traffic:
        spans = _router_spans(platform.otlp, seen.request_id)
        assert len(spans) == 1, (seen, spans)
        span = spans[0]
        attrs = span.attributes
        assert span.name.startswith("chat ")
        assert span.kind == 3  # SPAN_KIND_CLIENT
        assert attrs["gen_ai.operation.name"] == "chat"
        assert span.resource["service.name"] == "hybrid-llm-router"
        if seen.error and seen.status != 200:
            assert span.status_code == 2 and attrs["error.type"]
            continue
        assert attrs["llm.backend"] == seen.backend
        assert attrs["llm.route.reason"] == seen.reason
        assert attrs["gen_ai.provider.name"] == {"local": "vllm", "cloud": "anthropic"}[seen.backend]
        if seen.error:  # failed after the first byte: an error span, whatever usage was seen
            assert span.status_code == 2
            continue
        assert attrs["gen_ai.response.model"] == seen.model
        assert attrs["gen_ai.usage.input_tokens"] == seen.usage["prompt_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == seen.usage["completion_tokens"]
        cached = (seen.usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == cached
        assert list(attrs["gen_ai.response.finish_reasons"]) == seen.finish
        assert attrs["llm.cost_usd"] == pytest.approx(seen.usage["cost_usd"], abs=1e-9)
        assert attrs["llm.fallback"] is (seen.reason.startswith("fallback_"))


def test_client_traceparent_is_continued(platform, traffic):
    spans = _router_spans(platform.otlp, traffic[2].request_id)
    assert spans and spans[0].trace_id == TRACE_ID


def test_prompt_text_is_not_captured_by_default(platform, traffic):
    ids = [seen.request_id for seen in traffic]
    _wait(lambda: all(_router_spans(platform.otlp, i) for i in ids), what="router spans for every request")
    spans = [s for i in ids for s in _router_spans(platform.otlp, i)]
    assert len(spans) == len(traffic)  # checked on the spans of this traffic, not on whatever had arrived
    for span in platform.otlp.spans:  # the engine's and Serve's spans as well as the router's
        flat = json.dumps(span.attributes, default=str)
        assert "telemetry local" not in flat and "telemetry cloud" not in flat
    for generation in platform.langfuse.generations():
        flat = json.dumps(generation.attributes, default=str)
        assert "telemetry local" not in flat and "telemetry cloud" not in flat


def test_every_request_is_one_langfuse_generation_with_exact_cost(platform, traffic):
    def generations(request_id: str) -> list:
        return [g for g in platform.langfuse.generations() if g.attributes.get("llm.request_id") == request_id]

    ids = [seen.request_id for seen in traffic]
    _wait(lambda: all(generations(i) for i in ids), what="a Langfuse generation for every request")
    time.sleep(1)
    for seen in traffic:
        found = generations(seen.request_id)
        assert len(found) == 1, seen
        generation = found[0]
        if seen.status != 200 or seen.error:
            continue
        buckets = platform.langfuse.usage_details(generation)
        cached = (seen.usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        written = (seen.usage.get("prompt_tokens_details") or {}).get("cache_write_tokens", 0)
        assert buckets["input"] == seen.usage["prompt_tokens"] - cached - written
        assert buckets["input_cache_read"] == cached
        assert buckets["output"] == seen.usage["completion_tokens"]
        cost = platform.langfuse.cost_details(generation)
        assert cost["total"] == pytest.approx(seen.usage["cost_usd"], abs=1e-9)
        metadata = platform.langfuse.metadata(generation)
        assert metadata["backend"] == seen.backend and metadata["route_reason"] == seen.reason
    # Only router spans become generations: the engine's and Serve's own spans never do.
    assert {g.attributes.get("gen_ai.operation.name") for g in platform.langfuse.generations()} == {"chat"}


def test_client_disconnect_mid_stream_still_yields_one_generation_with_partial_usage(platform):
    url = f"{platform.base_url}/v1/chat/completions"
    body = {"model": "cloud", "stream": True, "messages": _user("#scenario=slow #tokens=200 disconnect me")}
    with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {platform.api_key}"}) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # Leaving the block closed the connection mid-stream.
    _wait(
        lambda: [g for g in platform.langfuse.generations() if g.attributes.get("llm.request_id") == request_id],
        what="the cancelled request's generation",
    )
    (generation,) = [g for g in platform.langfuse.generations() if g.attributes.get("llm.request_id") == request_id]
    assert generation.attributes["llm.outcome"] == "cancelled"
    assert platform.langfuse.usage_details(generation)["input"] > 0
    assert platform.langfuse.cost_details(generation)["total"] > 0


def _total(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(f"sum({expr})")
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_totals_equal_what_clients_received_and_every_dashboard_query_runs(platform):
    metrics = f"127.0.0.1:{platform.ray.metrics_port}"
    with (
        ExpositionServer() as dcgm,
        PrometheusServer({"ray": [metrics], "dcgm": [dcgm.address]}, rules=rule_files()) as prom,
    ):
        prom.wait_for_targets_up(timeout=60)
        queries = {
            "requests": 'ray_router_requests_total{outcome="ok"}',
            "output": 'ray_router_tokens_total{token_type="output"}',
            "prompt": 'ray_router_tokens_total{token_type=~"input|cache_read|cache_creation"}',
        }
        _wait(lambda: _total(prom, queries["requests"]) > 0, timeout=60, what="router metrics in Prometheus")
        before = _stable(prom, queries)
        sent = [
            _send(platform, {"model": "local", "max_tokens": 5, "messages": _user("prometheus local")}),
            _send(platform, {"model": "local", "max_tokens": 7, "stream": True, "messages": _user("prom stream")}),
            _send(platform, {"model": "cloud", "messages": _user("prometheus cloud words here")}),
            _send(platform, {"model": "cloud", "stream": True, "messages": _user("#scenario=cache prom cache")}),
        ]
        expected = {
            "requests": len(sent),
            "output": sum(s.usage["completion_tokens"] for s in sent),
            "prompt": sum(s.usage["prompt_tokens"] for s in sent),
        }

        deltas: dict[str, float] = {}

        def matches() -> bool:
            deltas.update({k: _total(prom, q) - before[k] for k, q in queries.items()})
            return all(deltas[k] == pytest.approx(expected[k]) for k in queries)

        try:
            _wait(matches, timeout=90, what="Prometheus deltas equal to what clients received")
        except AssertionError:
            pytest.fail(f"Prometheus deltas {deltas} never equalled what the clients received {expected}")
        prom.wait_for_samples("ray_router_requests_total", samples=3, timeout=60)

        # GPU spend comes from the model replica's own ledger, once per GPU, and splits its whole price.
        llm = next(a for a in yaml.safe_load(LOCAL_CONFIG.read_text())["applications"] if a["name"] == "llm")
        price = llm["args"]["gpu_usd_per_hour"]
        spend: list[dict] = []

        def whole_price_split() -> bool:  # the two gauges are set one after the other: wait out a torn export
            spend[:] = prom.query("ray_router_gpu_cost_usd_per_hour")
            return sum(float(r["value"][1]) for r in spend) == pytest.approx(price)

        _wait(whole_price_split, timeout=30, what="GPU spend gauges that add up to the GPU's price")
        assert {r["metric"].get("application") for r in spend} == {"llm"}, spend
        assert {r["metric"]["kind"] for r in spend} == {"allocated", "idle"}

        # Fallback and error panels may be empty when none happened in the last minute; everything else the
        # running app feeds must show data. A gauge can be missing for a moment (Ray drops one whose export
        # came late), so a panel counts as empty only if it stays empty over five reads two seconds apart.
        # Tenant panels are fed only where tenants have limits (test_tenant_replicas.py exercises them).
        allowed = ("allback", "rror", "ropped", "xemplar", "Tenant")
        expressions = all_expressions()
        empty = {e.location for e in expressions if e.kind == "panel" and not any(a in e.location for a in allowed)}
        for _ in range(5):
            for expression in expressions:
                result = prom.query(expression.promql)  # raises if it does not parse or run
                if result:
                    empty.discard(expression.location)
            if not empty:
                break
            time.sleep(2)
        assert sorted(empty) == []


def _stable(prom: PrometheusServer, queries: dict[str, str]) -> dict[str, float]:
    """Totals once they have not moved for longer than two of Ray's metric exports.

    A shorter quiet window can fall between two exports while increments from earlier tests are still on
    their way, and then every later delta is off by them.
    """
    window = 2.5 * METRICS_REPORT_INTERVAL_MS / 1000
    previous, since = None, time.monotonic()
    deadline = since + 120
    while time.monotonic() < deadline:
        current = {k: _total(prom, q) for k, q in queries.items()}
        if current != previous:
            previous, since = current, time.monotonic()
        elif time.monotonic() - since >= window:
            return current
        time.sleep(0.5)
    raise AssertionError(f"router metrics never settled: last {previous}")
