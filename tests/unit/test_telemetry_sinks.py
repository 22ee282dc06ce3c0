"""Every telemetry sink raising, hanging or refusing: the request path sees nothing, the loss is counted."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.chat_stream import Pricer, Tally, finished_result
from serve_app.config import RouterArgs
from serve_app.telemetry import ChatResult, InMemoryMetricsSink, Telemetry
from serve_app.telemetry.metrics import Instrument
from serve_app.telemetry.tracing import AccountedBatchProcessor, AccountedExporter, ExportAccounting

ARGS = RouterArgs.model_validate(
    {
        "pricing": {
            "source": "test",
            "as_of": "2026-11-30",
            "models": {"claude-sonnet-4-6": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}},
        }
    }
)


class RaisingMetricsSink:
    def __init__(self, *, on_register: bool = False) -> None:
        self.on_register = on_register

    def register(self, instruments: Iterable[Instrument]) -> None:
        if self.on_register:
            raise RuntimeError("registry down")

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        raise RuntimeError("metrics agent down")


class RaisingProcessor(SpanProcessor):
    def __init__(self, *, on_start: bool = False, on_end: bool = False) -> None:
        self._start, self._end = on_start, on_end

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self._start:
            raise RuntimeError("processor on_start")

    def on_end(self, span: ReadableSpan) -> None:
        if self._end:
            raise RuntimeError("processor on_end")


class RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionRefusedError("collector down")

    def shutdown(self) -> None:
        raise RuntimeError("shutdown failed too")


class BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.received += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


async def chunks() -> AsyncIterator[dict]:
    yield {"model": "claude-sonnet-4-6", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    yield {"model": "claude-sonnet-4-6", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


async def run_request(telemetry: Telemetry, outcome: str = "ok") -> list[dict]:
    obs = telemetry.begin(
        request_id="r", headers={}, requested_model="cloud", stream=True, max_tokens=8, prompt_tokens_estimated=5
    )
    obs.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
    )
    tally = Tally(clock=telemetry.clock)
    seen = []
    async for c in chunks():
        tally.add(c)
        seen.append(c)
    pricer = Pricer(telemetry.args)
    price = lambda usage: pricer(backend="cloud", model="claude-sonnet-4-6", usage=usage)  # noqa: E731
    obs.record(finished_result(tally, outcome=outcome, error=None, price=price, prompt_tokens_estimated=5))
    return seen


def provider_with(*processors: SpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    for p in processors:
        provider.add_span_processor(p)
    return provider


async def test_metrics_sink_raising_on_every_record_costs_the_request_nothing() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.from_args(
        ARGS, tracer_provider=provider_with(SimpleSpanProcessor(exporter)), meter=RaisingMetricsSink(), environ={}
    )
    assert len(await run_request(telemetry)) == 2
    telemetry.set_backend_state("local", ready=True, inflight=3)
    assert len(exporter.get_finished_spans()) == 1  # the span sink still works
    assert telemetry.metrics.dropped["metrics"] > 0


async def test_metrics_sink_raising_at_registration_leaves_metrics_off_only() -> None:
    telemetry = Telemetry.from_args(ARGS, meter=RaisingMetricsSink(on_register=True), environ={})
    assert len(await run_request(telemetry)) == 2
    assert telemetry.metrics.dropped["metrics"] > 0


async def test_span_processor_raising_on_start_gives_a_request_without_a_span() -> None:
    sink = InMemoryMetricsSink()
    telemetry = Telemetry.from_args(
        ARGS, tracer_provider=provider_with(RaisingProcessor(on_start=True)), meter=sink, environ={}
    )
    assert len(await run_request(telemetry)) == 2
    assert telemetry.metrics.dropped["span"] >= 1
    assert sink.counter("router_requests", outcome="ok") == 1  # metrics still recorded


async def test_span_processor_raising_on_end_is_counted_and_metrics_still_recorded() -> None:
    sink = InMemoryMetricsSink()
    exporter = InMemorySpanExporter()
    provider = provider_with(RaisingProcessor(on_end=True), SimpleSpanProcessor(exporter))
    telemetry = Telemetry.from_args(ARGS, tracer_provider=provider, meter=sink, environ={})
    assert len(await run_request(telemetry)) == 2
    assert telemetry.metrics.dropped["span"] == 1
    assert sink.counter("router_requests", outcome="ok") == 1
    assert sink.counter("router_telemetry_dropped", sink="span") == 1


def test_a_malformed_chunk_is_counted_as_unreadable_and_never_raises() -> None:
    tally = Tally(clock=lambda: 0.0)
    tally.add({"usage": {"prompt_tokens": "many"}, "choices": "not-a-list"})
    tally.add({"choices": [None]})
    assert tally.unreadable == 2


def test_exporter_raising_is_a_counted_drop_never_an_exception() -> None:
    drops: list[int] = []
    accounting = ExportAccounting(capacity=8, on_drop=drops.append)
    exporter = AccountedExporter(RaisingExporter(), accounting)
    assert exporter.export([object(), object()]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert drops == [2] and accounting.dropped == 2


def test_drop_callback_raising_is_swallowed() -> None:
    def boom(n: int) -> None:
        raise RuntimeError("metrics gone")

    accounting = ExportAccounting(capacity=1, on_drop=boom)
    accounting.admit()
    accounting.admit()  # over capacity: a drop whose callback raises
    assert accounting.dropped == 1


def test_bounded_queue_drops_and_counts_while_the_exporter_hangs() -> None:
    blocking = BlockingExporter()
    drops: list[int] = []
    accounting = ExportAccounting(capacity=4, on_drop=drops.append)
    provider = provider_with(AccountedBatchProcessor(blocking, accounting))
    tracer = provider.get_tracer("t")
    started = time.perf_counter()
    for i in range(50):
        tracer.start_span(f"s{i}").end()
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # ending spans never waited for the hanging exporter
    assert accounting.admitted == 50
    assert 40 <= sum(drops) <= 46  # at most one batch in the exporter plus a full queue survive
    blocking.release.set()
    provider.force_flush()
    assert accounting.exported + accounting.dropped == 50
    assert blocking.received == accounting.exported
    provider.shutdown()


def test_shutdown_with_hanging_or_raising_sinks_returns_quickly() -> None:
    class HangingLangfuse:
        def shutdown(self) -> None:
            time.sleep(30)

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(RaisingExporter()))
    telemetry = Telemetry.from_args(
        ARGS,
        tracer_provider=provider,
        meter=InMemoryMetricsSink(),
        langfuse=HangingLangfuse(),
        environ={},
        shutdown_timeout_s=0.3,
    )
    started = time.perf_counter()
    telemetry.shutdown()
    telemetry.shutdown()
    assert time.perf_counter() - started < 1.0


async def test_otlp_exporter_construction_failure_leaves_tracing_off(monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> SpanExporter:
        raise ValueError("bad OTLP settings")

    monkeypatch.setattr("serve_app.telemetry.sink.build_otlp_exporter", broken)
    sink = InMemoryMetricsSink()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    telemetry = Telemetry.from_args(ARGS, meter=sink, environ=env, shutdown_timeout_s=0.5)
    assert len(await run_request(telemetry)) == 2
    assert telemetry.metrics.dropped["otlp"] == 1
    assert sink.counter("router_requests", outcome="ok") == 1
    telemetry.shutdown()


class PositiveCountersSink(InMemoryMetricsSink):
    """Like Ray's: a counter increment must be > 0."""

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        if self._kinds[name] == "counter" and value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        super().record(name, value, tags)


async def test_zero_cost_requests_never_send_a_zero_counter_increment() -> None:
    args = RouterArgs.model_validate({"cloud": {"enabled": False}})  # no prices: local costs 0 or unknown
    sink = PositiveCountersSink()
    telemetry = Telemetry.from_args(args, meter=sink, environ={})
    obs = telemetry.begin(
        request_id="r", headers={}, requested_model="local", stream=False, max_tokens=None, prompt_tokens_estimated=1
    )
    obs.routed(backend="local", provider="vllm", model="local-model", reason="explicit_local", fallback=False)
    obs.record(ChatResult(outcome="ok"))
    assert telemetry.metrics.dropped["metrics"] == 0
    assert sink.counter("router_requests", backend="local") == 1
