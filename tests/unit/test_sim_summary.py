"""A run's totals from records, the router's counters from a Prometheus exposition, and their comparison."""

from __future__ import annotations

import pytest

from serve_app.records import RequestRecord
from serve_app.sim.summary import compare, counters, percentile, summarise

EXPOSITION = """\
# HELP ray_router_requests_total Requests by backend, model, route reason and outcome.
# TYPE ray_router_requests_total counter
ray_router_requests_total{Component="core_worker",backend="local",model="m",route_reason="policy_local"} 7.0
ray_router_requests_total{backend="cloud",model="c",outcome="error",route_reason="has_tools",stream="false"} 2.0
ray_router_requests_total{backend="cloud",model="c",outcome="ok",route_reason="prompt_too_long",stream="false"} 3.0
ray_router_tokens_total{backend="local",model="m",token_type="input"} 100.0
ray_router_tokens_total{backend="cloud",model="c",token_type="input"} 50.0
ray_router_tokens_total{backend="cloud",model="c",token_type="output"} 20.0
ray_router_tokens_total{backend="cloud",model="c",token_type="cache_read"} 4.0
ray_router_cost_usd_total{backend="cloud",model="c"} 0.00045
ray_router_requests_created{backend="local"} 1.7e9
ray_router_request_duration_seconds_bucket{backend="local",le="0.1"} 3.0
ray_serve_num_http_requests_total{route="/"} 99.0
"""


def _record(backend: str | None, **kw: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": "r", "source": "sim", "t_start": 0.0, "t_end": 1.0, "api": "openai", "stream": False,
        "model_requested": "auto", "prompt_chars": 10, "prompt_tokens_estimated": None, "max_tokens": 16,
        "has_tools": False, "has_images": False, "backend": backend, "status": 200,
    }  # fmt: skip
    return RequestRecord(**(base | kw))  # type: ignore[arg-type]


def test_summary_counters_sum_the_routers_series_only():
    got = counters(EXPOSITION)
    assert got == {
        "requests": 12.0,
        "requests.local": 7.0,
        "requests.cloud": 5.0,
        "tokens.input": 150.0,
        "tokens.output": 20.0,
        "tokens.cache_read": 4.0,
        "cost_usd.cloud": 0.00045,
    }


def test_summary_totals_by_backend_reason_and_status():
    records = [
        _record("local", route_reason="policy_local", input_tokens=10, output_tokens=5, cost_usd=0.001, ttft_s=0.2,
                stream=True, latency_s=1.0),
        _record("local", route_reason="policy_local", input_tokens=20, output_tokens=7, cost_usd=0.002, ttft_s=0.4,
                stream=True, latency_s=2.0),
        _record("cloud", route_reason="fallback_local_error", fallback=True, input_tokens=30, output_tokens=9,
                cost_usd=0.01, latency_s=0.5),
        _record("cloud", route_reason="has_tools", status=429, outcome="error"),
        _record(None, status=0, outcome="error"),
    ]  # fmt: skip
    totals = summarise(records, start=100.0, end=110.0)
    assert totals["requests"] == 5
    assert totals["by_backend"] == {"local": 2, "cloud": 2}
    assert totals["unrouted"] == 1
    assert totals["by_reason"] == {"fallback_local_error": 1, "has_tools": 1, "none": 1, "policy_local": 2}
    assert totals["fallbacks"] == 1
    assert totals["errors"] == {"0": 1, "429": 1}
    assert totals["tokens"] == {"input": 60, "output": 21, "cache_read": 0, "cache_creation": 0}
    assert totals["cost_usd"] == {"local": pytest.approx(0.003), "cloud": pytest.approx(0.01)}
    assert totals["latency"]["local"]["ttft_p50_s"] == pytest.approx(0.3)
    assert totals["latency"]["local"]["output_tokens_per_s"] == pytest.approx(1.2)
    assert totals["window"] == {"start": "1970-01-01T00:01:40.000Z", "end": "1970-01-01T00:01:50.000Z", "seconds": 10.0}


def test_summary_compare_zero_difference_when_client_and_router_agree():
    totals = summarise(
        [
            _record("local", input_tokens=100, output_tokens=0),
            _record("cloud", input_tokens=50, output_tokens=20, cache_read_tokens=4, cost_usd=0.00045),
        ],
        start=0.0,
        end=1.0,
    )
    totals["requests"] = 12
    totals["by_backend"] = {"local": 7, "cloud": 5}
    result = compare(totals, before={}, after=counters(EXPOSITION))
    assert result["counts_and_tokens_agree"] is True
    assert set(result["difference"].values()) == {0}


def test_summary_compare_reports_what_the_router_counted_beyond_the_client():
    before = counters(EXPOSITION)
    after = dict(before, requests=before["requests"] + 3, **{"tokens.output": before["tokens.output"] + 11})
    totals = summarise([_record("cloud", output_tokens=11)], start=0.0, end=1.0)
    result = compare(totals, before=before, after=after)
    assert result["router"]["requests"] == 3 and result["difference"]["requests"] == -2
    assert result["difference"]["tokens.output"] == 0
    assert result["counts_and_tokens_agree"] is False


def test_summary_percentile_interpolates():
    assert percentile([], 95) is None
    assert percentile([1.0], 95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(range(101), 95) == 95.0


def test_summary_counters_read_the_gpu_spend_rate_summed_over_model_replicas():
    exposition = EXPOSITION + (
        'ray_router_gpu_cost_usd_per_hour{kind="allocated",replica="a"} 0.25\n'
        'ray_router_gpu_cost_usd_per_hour{kind="idle",replica="a"} 0.55\n'
        'ray_router_gpu_cost_usd_per_hour{kind="idle",replica="b"} 0.80\n'
    )
    got = counters(exposition)
    assert got["gpu_usd_per_hour.allocated"] == 0.25
    assert got["gpu_usd_per_hour.idle"] == pytest.approx(1.35)
    assert got["requests"] == 12.0  # the counters are unchanged
