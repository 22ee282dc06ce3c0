"""The report's aggregates on synthetic records with known answers: percentiles, splits, errors, savings, series."""

from __future__ import annotations

import pytest

from serve_app.sim.aggregate import (
    compare,
    error_key,
    gpu_total,
    gpu_usd_per_hour,
    percentile,
    savings,
    series,
    totals,
)
from tests.support.sim_runs import T0, record


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_totals_split_by_backend_reason_and_count_fallbacks_and_errors() -> None:
    records = [
        *(record(request_id=f"l{i}", latency_s=float(i + 1), ttft_s=i / 10) for i in range(10)),
        *(record(request_id=f"c{i}", backend="cloud", route_reason="has_tools", latency_s=2.0) for i in range(5)),
        record(request_id="f", backend="cloud", route_reason="fallback_local_error", fallback=True),
        record(request_id="e1", backend=None, route_reason=None, status=503, outcome="error", output_tokens=0),
        record(request_id="e2", status=200, outcome="error"),  # failed after the first byte
        record(request_id="e3", status=0, outcome="error", backend=None),
        record(request_id="x", outcome="cancelled", status=499),
    ]
    t = totals(records)
    assert t.requests == 20
    assert t.by_backend == {"local": 12, "cloud": 6, "none": 2}
    assert t.by_reason["policy_local"] == 13 and t.by_reason["has_tools"] == 5 and t.by_reason["none"] == 1
    assert t.fallbacks == 1
    assert t.errors == {"503": 1, "in_stream": 1, "no_response": 1, "cancelled": 1}
    assert t.tokens["output"] == 19 * 50
    assert t.latency["local"].count == 12
    assert t.latency["cloud"].p50 == pytest.approx(2.0)
    assert t.ttft["local"].count == 12
    assert t.cost_usd["cloud"] == pytest.approx(6 * 0.0001)
    assert t.flat()["by_backend.local"] == 12


def test_error_key_ignores_successes() -> None:
    assert error_key(record()) is None
    assert error_key(record(status=429, outcome="error")) == "429"


def test_totals_throughput_is_output_tokens_over_the_window() -> None:
    records = [record(t_start=T0 + i, t_end=T0 + i + 1, output_tokens=100) for i in range(10)]
    assert totals(records, window=(T0, T0 + 20)).output_tokens_per_s == pytest.approx(1000 / 20)


def test_savings_against_all_cloud_use_cloud_costs_and_local_counterfactuals() -> None:
    records = [
        record(backend="local", cost_usd=0.001, counterfactual_cost_usd=0.010),
        record(backend="local", cost_usd=0.002, counterfactual_cost_usd=0.020),
        record(backend="cloud", route_reason="has_tools", cost_usd=0.005, counterfactual_cost_usd=0.0005),
        record(backend="local", cost_usd=None, counterfactual_cost_usd=0.010),  # no local rate yet: left out
        record(backend=None, status=503, outcome="error"),
    ]
    s = savings(records, gpu_usd_per_hour=3.6, window_s=10.0)
    assert s.all_cloud_usd == pytest.approx(0.035)
    assert s.cloud_usd == pytest.approx(0.005)
    assert s.local_allocated_usd == pytest.approx(0.003)
    assert s.saved_allocated_usd == pytest.approx(0.027)
    assert s.gpu_usd == pytest.approx(0.01)
    assert s.saved_with_idle_usd == pytest.approx(0.035 - 0.005 - 0.01)
    assert s.unpriced == 1
    assert savings(records).saved_with_idle_usd is None


def test_series_buckets_arrivals_and_rates() -> None:
    records = [
        record(t_start=T0 + 0.5, t_end=T0 + 1.5, output_tokens=10, cost_usd=0.001),
        record(t_start=T0 + 0.7, t_end=T0 + 0.9, backend="cloud", route_reason="has_tools", output_tokens=20),
        record(t_start=T0 + 2.5, t_end=T0 + 3.0, latency_s=4.0, status=429, outcome="error"),
    ]
    s = series(records, window=(T0, T0 + 4), width_s=1.0)
    assert s.t == [0.0, 1.0, 2.0, 3.0]
    assert s.by_backend["local"] == [1, 0, 1, 0] and s.by_backend["cloud"] == [1, 0, 0, 0]
    assert s.by_reason["has_tools"] == [1, 0, 0, 0]
    assert s.errors == {"429": [0, 0, 1, 0]}
    assert s.output_tokens_per_s == [20.0, 10.0, 0.0, 50.0]  # by end time
    assert s.usd_per_hour["local"][1] == pytest.approx(0.001 * 3600)
    assert s.latency["local"][95][2] == pytest.approx(4.0)
    assert s.latency["cloud"][50][1] is None


def test_gpu_rate_read_from_the_prometheus_block_or_not_measured() -> None:
    block = {"counters": {"requests": 3}, "ray_router_gpu_cost_usd_per_hour": {"allocated": 0.25, "idle": 0.5}}
    gpu = gpu_usd_per_hour(block)
    assert gpu == {"allocated": 0.25, "idle": 0.5}
    assert gpu_total(gpu) == pytest.approx(0.75)
    assert gpu_usd_per_hour({"ray_router_gpu_cost_usd_per_hour": 1.5}) == {"total": 1.5}
    assert gpu_usd_per_hour({"counters": {"requests": 3}}) is None
    assert gpu_usd_per_hour(None) is None


def test_compare_puts_each_total_next_to_the_router_counter() -> None:
    rows = {c.key: c for c in compare({"requests": 10, "tokens.input": 5}, {"counters": {"requests": 9}})}
    assert rows["requests"].difference == 1
    assert rows["tokens.input"].router is None and rows["tokens.input"].difference is None
