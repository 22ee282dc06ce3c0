"""Export batches: the configured size bounds every OTLP and Langfuse request, and every span still arrives once."""

from __future__ import annotations

import math
import uuid

from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.telemetry.tracing import TRACER_NAME
from tests.component.test_telemetry_export import langfuse_env, one_request, router_args
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.otlp_receiver import OtlpHttpReceiver


async def test_export_batch_size_bounds_each_export_request_on_both_routes_and_no_span_is_lost() -> None:
    n, batch = 20, 8
    secret = "sk-lf-batch"
    with (
        OtlpHttpReceiver() as tempo,
        LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=secret) as lf,
    ):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url, **langfuse_env(lf, secret)}
        telemetry = Telemetry.from_args(
            router_args(export_batch_size=batch, export_schedule_delay_ms=60_000.0),
            meter=InMemoryMetricsSink(),
            environ=env,
        )
        for i in range(n):
            await one_request(telemetry, f"b{i}", usage={"prompt_tokens": 5, "completion_tokens": 2})
        telemetry.shutdown()
        # a batch leaves when `batch` spans wait (the schedule delay is a minute), so n spans take at least
        # ceil(n / batch) requests on each route; the SDK's default batch (512) would send them in one
        assert len(tempo.recorded.requests) >= math.ceil(n / batch)
        assert len(lf.recorded.requests) >= math.ceil(n / batch)
        # and every request is still one router span and one generation
        assert sorted(s.attributes["llm.request_id"] for s in tempo.spans) == sorted(f"b{i}" for i in range(n))
        assert {s.scope for s in tempo.spans} == {TRACER_NAME}
        assert sorted(s.attributes["llm.request_id"] for s in lf.generations()) == sorted(f"b{i}" for i in range(n))
    assert telemetry.metrics.dropped.get("otlp", 0) == 0 and telemetry.metrics.dropped.get("langfuse", 0) == 0


async def test_with_a_batch_as_large_as_the_queue_every_span_is_received_or_counted_as_dropped() -> None:
    """A batch the processor has popped is not yet handed to the exporter: that window must not turn into drops
    that never happened, nor hide the ones that did (the batch is cut to the queue's size)."""
    n = 64
    with OtlpHttpReceiver() as tempo:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url}
        telemetry = Telemetry.from_args(
            router_args(export_queue_size=16, export_batch_size=1000, export_schedule_delay_ms=60_000.0),
            meter=InMemoryMetricsSink(),
            langfuse=False,
            environ=env,
        )
        for i in range(n):
            await one_request(telemetry, f"q{i}", usage={"prompt_tokens": 5, "completion_tokens": 2})
        telemetry.shutdown()
        received = len(tempo.spans)
    assert received + telemetry.metrics.dropped["otlp"] == n
