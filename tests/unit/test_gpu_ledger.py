"""The model replica's GPU ledger: rate per token, spend gauges, the trailer event and the router's reading of it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from serve_app.backends.local import _rate
from serve_app.config import LLMAppArgs, RouterArgs
from serve_app.protocol import LOCAL_COST_KEY
from serve_app.sse import iter_data
from serve_app.telemetry.gpu import (
    PRICE_KEY,
    WINDOW_KEY,
    GpuLedger,
    LoadingSpend,
    tokens_in_last_usage,
    trailer_event,
)
from serve_app.telemetry.metrics import InMemoryMetricsSink, RouterMetrics

EPS = 1e-12


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ledger(price: float = 3.6, window_s: float = 300.0) -> tuple[GpuLedger, InMemoryMetricsSink, Clock]:
    clock = Clock()
    sink = InMemoryMetricsSink()
    gpu = GpuLedger(usd_per_hour=price, window_s=window_s, metrics=RouterMetrics(sink, models=()), clock=clock)
    return gpu, sink, clock


def test_rate_is_busy_gpu_spend_over_every_token_served_whoever_sent_them() -> None:
    gpu, sink, clock = ledger(price=3.6)
    # Two router replicas' requests overlap on the one GPU: busy time is their union (100-104), not the sum.
    a_start = clock()
    clock.t = 101.0
    b_start = clock()
    clock.t = 103.0
    gpu.served(started=a_start, tokens=300)  # from router A
    clock.t = 104.0
    rate = gpu.served(started=b_start, tokens=100)  # from router B
    # 4 busy seconds of a 3.60 USD/h GPU = 0.004 USD over 400 tokens, the same rate whichever router asks
    assert rate == pytest.approx(0.004 / 400, abs=EPS)
    assert gpu.usd_per_token() == pytest.approx(rate, abs=EPS)
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="allocated") == pytest.approx(3.6)  # busy since origin
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="idle") == pytest.approx(0.0, abs=EPS)


def test_idle_time_is_its_own_gauge_and_never_charged_to_requests() -> None:
    gpu, sink, clock = ledger(price=2.0)
    start = clock()
    clock.t += 2.0
    gpu.served(started=start, tokens=100)
    clock.t += 8.0  # idle for 8 of the 10 observed seconds
    gpu.publish()
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="idle") == pytest.approx(2.0 * 0.8)
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="allocated") == pytest.approx(2.0 * 0.2)
    assert gpu.usd_per_token() == pytest.approx(2.0 * 2 / 3600 / 100, abs=EPS)  # idle time not in the rate


def test_a_cancelled_stream_counts_its_busy_time_and_partial_tokens() -> None:
    gpu, _, clock = ledger(price=3.6)
    start = clock()
    clock.t += 1.0
    assert gpu.served(started=start, tokens=0) is None  # busy, nothing served yet: no rate to report
    clock.t += 1.0
    assert gpu.served(started=clock.t - 1.0, tokens=20) == pytest.approx(0.002 / 20, abs=EPS)


def test_a_running_request_counts_as_busy_before_it_ends() -> None:
    gpu, sink, clock = ledger(price=2.0)
    clock.t += 10.0  # 10 s idle since the ledger started
    started = gpu.begin()
    clock.t += 30.0  # a long generation, still running
    gpu.publish()
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="allocated") == pytest.approx(2.0 * 30 / 40)
    assert gpu.usd_per_token() is None  # its tokens are not known yet, so there is no rate
    gpu.served(started=started, tokens=300)
    clock.t += 10.0
    gpu.publish()  # ended: busy 30 of 50 observed seconds, no longer open-ended
    assert sink.gauge("router_gpu_cost_usd_per_hour", kind="allocated") == pytest.approx(2.0 * 30 / 50)


def test_a_request_longer_than_the_window_keeps_only_its_in_window_share_of_tokens() -> None:
    gpu, _, clock = ledger(price=3.6, window_s=300.0)
    started = gpu.begin()
    clock.t += 1000.0
    rate = gpu.served(started=started, tokens=1000)
    # 300 of its 1000 busy seconds are in the window, and so are 300 of its 1000 tokens: 0.3 USD / 300 tokens
    assert rate == pytest.approx(3.6 * 300 / 3600 / 300, abs=EPS)


def test_ledger_only_exists_when_the_model_application_sets_a_price() -> None:
    assert GpuLedger.from_experimental({}, None) is None
    assert GpuLedger.from_experimental({PRICE_KEY: 0.0, WINDOW_KEY: 60}, None) is None
    gpu = GpuLedger.from_experimental({PRICE_KEY: 0.8048, WINDOW_KEY: 60}, None)
    assert gpu is not None and gpu.usd_per_hour == 0.8048
    gpu.publish()  # no metrics: nothing to do, nothing raised


def test_gpu_price_lives_in_the_model_application_and_the_router_says_where_it_went() -> None:
    assert LLMAppArgs.model_validate({"gpu_usd_per_hour": 0.8, "gpu_window_s": 60}).gpu_usd_per_hour == 0.8
    pricing = {"source": "s", "as_of": "2026-11-28", "models": {}, "gpu_usd_per_hour": 1.0}
    with pytest.raises(ValueError, match="llm application's args"):
        RouterArgs.model_validate({"pricing": pricing})


def test_tokens_come_from_the_last_cumulative_usage_in_the_final_item() -> None:
    def event(usage: dict | None) -> str:
        return f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"

    text = event({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}) + event(
        {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    )
    assert tokens_in_last_usage(text) == 8
    assert tokens_in_last_usage("data: [DONE]\n\n") == 0
    assert tokens_in_last_usage("") == 0
    assert tokens_in_last_usage(event(None)) == 0


@pytest.mark.parametrize("rate", [1.25e-7, None])
def test_the_router_reads_the_trailer_the_model_replica_writes(rate: float | None) -> None:
    (payload,) = list(iter_data(trailer_event(rate)))
    assert _rate(payload[LOCAL_COST_KEY]) == rate


@pytest.mark.parametrize("report", [{"usd_per_token": -1.0}, {"usd_per_token": "x"}, "junk", None, {}])
def test_a_malformed_trailer_gives_no_rate(report: object) -> None:
    assert _rate(report) is None


def test_spend_is_published_from_a_thread_while_the_model_loads_and_stops_after() -> None:
    """The model replica's constructor blocks its event loop for the whole model load; the GPU is paid (all idle)
    during it, so LoadingSpend publishes the gauges from a thread until the constructor returns."""
    gpu, sink, clock = ledger(price=3.6)
    clock.t += 30.0  # thirty seconds into the load, nothing served
    with LoadingSpend(gpu, period_s=0.01):
        deadline = time.monotonic() + 10.0
        while len(sink.gauges) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocking, as the engine build is: only the thread can publish meanwhile
        published = dict(sink.gauges)
    assert published == {
        ("router_gpu_cost_usd_per_hour", (("kind", "allocated"),)): pytest.approx(0.0, abs=EPS),
        ("router_gpu_cost_usd_per_hour", (("kind", "idle"),)): pytest.approx(3.6),
    }
    assert not [t for t in threading.enumerate() if t.name == "gpu-spend-while-loading"]
    sink.gauges.clear()
    time.sleep(0.1)  # ten periods: a thread that outlived the constructor would have published again
    assert sink.gauges == {}
