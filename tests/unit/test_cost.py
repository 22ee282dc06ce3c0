"""Cost model: cloud list prices on exclusive buckets, local amortised GPU cost, idle spend, counterfactuals."""

from __future__ import annotations

import pytest

from serve_app.config import ModelPrice
from serve_app.telemetry.cost import (
    CostBreakdown,
    LocalUsageWindow,
    cloud_cost,
    per_token_cost,
    request_cost,
)
from serve_app.usage import Usage

SONNET = ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)
HAIKU = ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10)
PRICES = {"claude-sonnet-4-6": SONNET, "claude-haiku-4-5": HAIKU}
EPS = 1e-9


def test_cloud_cost_applies_each_price_to_its_exclusive_bucket() -> None:
    usage = Usage(input=1000, output=500, cache_read=2000, cache_creation=300)
    cost = cloud_cost(usage=usage, price=SONNET)
    assert cost.input == pytest.approx(0.003, abs=EPS)
    assert cost.output == pytest.approx(0.0075, abs=EPS)
    assert cost.cache_read == pytest.approx(0.0006, abs=EPS)
    assert cost.cache_creation == pytest.approx(0.001125, abs=EPS)
    assert cost.total == pytest.approx(0.012225, abs=EPS)


def test_cloud_cost_details_use_langfuse_keys_and_total_is_the_sum() -> None:
    details = cloud_cost(usage=Usage(input=7, output=11, cache_read=13, cache_creation=17), price=HAIKU).to_details()
    assert set(details) == {"input", "input_cache_read", "input_cache_creation", "output", "total"}
    parts = details["input"] + details["input_cache_read"] + details["input_cache_creation"] + details["output"]
    assert details["total"] == pytest.approx(parts, abs=1e-15)
    assert details["input_cache_creation"] == pytest.approx(17 * 1.25 / 1e6, abs=1e-15)


def test_cloud_cost_of_nothing_is_zero() -> None:
    assert cloud_cost(usage=Usage(), price=SONNET) == CostBreakdown()


def test_local_window_spreads_busy_gpu_time_over_served_tokens() -> None:
    window = LocalUsageWindow(window_s=300, origin=0.0)
    window = window.add(now=10.0, tokens=1000, busy_from=8.0)
    window = window.add(now=20.0, tokens=3000, busy_from=15.0)
    assert window.tokens_in_window(now=20.0) == 4000
    assert window.busy_seconds(now=20.0) == pytest.approx(7.0)
    # 3.60 USD/h for 7 busy seconds = 0.007 USD, over 4000 tokens
    assert window.usd_per_token(now=20.0, gpu_usd_per_hour=3.6) == pytest.approx(0.007 / 4000, abs=1e-15)


def test_local_window_counts_concurrent_requests_once() -> None:
    window = LocalUsageWindow(window_s=300, origin=0.0)
    window = window.add(now=10.0, tokens=100, busy_from=8.0)
    window = window.add(now=12.0, tokens=100, busy_from=9.0)
    window = window.add(now=11.0, tokens=100, busy_from=10.5)
    assert window.busy == ((8.0, 12.0),)
    assert window.busy_seconds(now=12.0) == pytest.approx(4.0)


def test_local_window_reports_idle_gpu_spend_separately() -> None:
    window = LocalUsageWindow(window_s=100, origin=0.0).add(now=50.0, tokens=500, busy_from=25.0)
    spend = window.spend(now=100.0, gpu_usd_per_hour=2.0)
    assert spend.allocated_usd_per_hour == pytest.approx(0.5, abs=EPS)  # busy 25 of 100 s
    assert spend.idle_usd_per_hour == pytest.approx(1.5, abs=EPS)
    # idle time is not in the per-token rate: 25 busy seconds of 2 USD/h over 500 tokens
    assert window.usd_per_token(now=100.0, gpu_usd_per_hour=2.0) == pytest.approx(2.0 * 25 / 3600 / 500, abs=1e-15)


def test_young_window_counts_only_time_since_origin() -> None:
    window = LocalUsageWindow(window_s=300, origin=1000.0).add(now=1010.0, tokens=10, busy_from=990.0)
    assert window.busy_seconds(now=1010.0) == pytest.approx(10.0)  # clipped at origin
    assert window.observed_seconds(now=1010.0) == pytest.approx(10.0)
    assert window.spend(now=1010.0, gpu_usd_per_hour=1.0).idle_usd_per_hour == pytest.approx(0.0, abs=EPS)


def test_idle_gpu_with_no_traffic_is_all_idle_and_has_no_rate() -> None:
    window = LocalUsageWindow(window_s=300, origin=0.0)
    assert window.usd_per_token(now=500.0, gpu_usd_per_hour=4.0) is None
    spend = window.spend(now=500.0, gpu_usd_per_hour=4.0)
    assert (spend.allocated_usd_per_hour, spend.idle_usd_per_hour) == (0.0, 4.0)


def test_old_traffic_leaves_the_window() -> None:
    window = LocalUsageWindow(window_s=60, origin=0.0).add(now=10.0, tokens=100, busy_from=5.0)
    window = window.add(now=100.0, tokens=50, busy_from=99.0)
    assert window.tokens_in_window(now=100.0) == 50
    assert window.busy_seconds(now=100.0) == pytest.approx(1.0)
    assert (5.0, 10.0) not in window.busy
    assert window.usd_per_token(now=200.0, gpu_usd_per_hour=1.0) is None


def test_window_interval_straddling_the_horizon_counts_its_inside_part() -> None:
    window = LocalUsageWindow(window_s=100, origin=0.0).add(now=110.0, tokens=10, busy_from=90.0)
    assert window.busy_seconds(now=195.0) == pytest.approx(15.0)  # horizon 95


def test_per_token_cost_is_flat_over_buckets() -> None:
    cost = per_token_cost(usage=Usage(input=10, output=20, cache_read=30, cache_creation=40), usd_per_token=1e-6)
    assert cost.total == pytest.approx(100e-6, abs=1e-15)
    assert cost.cache_read == pytest.approx(30e-6, abs=1e-15)


def test_cloud_request_counterfactual_is_the_local_amortised_rate() -> None:
    usage = Usage(input=100, output=50, cache_read=20)
    cost = request_cost(
        backend="cloud",
        model="claude-haiku-4-5",
        usage=usage,
        prices=PRICES,
        default_cloud_model="claude-sonnet-4-6",
        local_usd_per_token=2e-7,
    )
    assert cost.actual is not None and cost.counterfactual is not None
    assert cost.actual.total == pytest.approx((100 * 1.0 + 50 * 5.0 + 20 * 0.1) / 1e6, abs=EPS)
    assert cost.counterfactual.total == pytest.approx(170 * 2e-7, abs=EPS)


def test_local_request_counterfactual_is_the_default_cloud_models_price() -> None:
    usage = Usage(input=400, output=100)
    cost = request_cost(
        backend="local",
        model="local-model",
        usage=usage,
        prices=PRICES,
        default_cloud_model="claude-sonnet-4-6",
        local_usd_per_token=1e-7,
    )
    assert cost.actual is not None and cost.counterfactual is not None
    assert cost.actual.total == pytest.approx(500 * 1e-7, abs=EPS)
    assert cost.counterfactual.total == pytest.approx((400 * 3.0 + 100 * 15.0) / 1e6, abs=EPS)


def test_unknown_prices_give_none_not_a_guess() -> None:
    usage = Usage(input=1, output=1)
    cloud = request_cost(
        backend="cloud",
        model="claude-x",
        usage=usage,
        prices=PRICES,
        default_cloud_model=None,
        local_usd_per_token=None,
    )
    assert (cloud.actual, cloud.counterfactual) == (None, None)
    local = request_cost(
        backend="local", model="m", usage=usage, prices={}, default_cloud_model=None, local_usd_per_token=None
    )
    assert (local.actual, local.counterfactual) == (None, None)


def test_a_request_with_no_tokens_costs_nothing_anywhere() -> None:
    cost = request_cost(
        backend="cloud", model="claude-x", usage=Usage(), prices={}, default_cloud_model=None, local_usd_per_token=None
    )
    assert cost.actual == CostBreakdown() and cost.counterfactual == CostBreakdown()


def test_window_is_a_value_add_does_not_mutate() -> None:
    window = LocalUsageWindow(window_s=10, origin=0.0)
    window.add(now=1.0, tokens=5, busy_from=0.5)
    assert window.tokens == () and window.busy == ()
