"""A span flattened for the export process and rebuilt there encodes to the same OTLP bytes as the original."""

from __future__ import annotations

import pickle

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from serve_app.telemetry.export_process import readable_span, span_record

RESOURCE = Resource({"service.name": "router-test", "deployment.environment.name": "test"}, "https://schema/1")


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, span_limits=SpanLimits(max_attributes=6, max_events=1))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("hybrid_llm.router", "1.2.3", schema_url="https://schema/2")
    remote = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1), TraceState([("vendor", "x")])
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    link = Link(SpanContext(0xABC, 0xDEF, False, TraceFlags(0)), {"link.kind": "retry"})
    span = tracer.start_span("chat auto", context=parent, kind=SpanKind.CLIENT, links=[link])
    span.set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 12,
            "llm.fallback": True,
            "llm.cost_usd": 0.000124,
            "gen_ai.response.finish_reasons": ("stop",),
            "llm.request.dropped_params": ["seed", "n"],
            "over.the.limit": "dropped",  # the 7th attribute: counted as dropped
        }
    )
    span.add_event("first", {"n": 1}, timestamp=1_700_000_000_000_000_000)
    span.add_event("second")  # beyond max_events: counted as dropped
    span.set_status(Status(StatusCode.ERROR, "upstream_timeout"))
    span.end()
    with tracer.start_as_current_span("plain root"):
        pass
    return list(exporter.get_finished_spans())


def test_a_rebuilt_span_encodes_to_the_same_otlp_bytes_as_the_original() -> None:
    originals = _spans()
    assert originals[0].dropped_attributes == 1 and originals[0].dropped_events == 1  # the case is exercised
    records = pickle.loads(pickle.dumps([span_record(s) for s in originals]))
    rebuilt = [readable_span(r, Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)) for r in records]
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) == encode_spans(originals).SerializeToString(
        deterministic=True
    )


def test_a_rebuilt_span_keeps_parent_trace_state_status_and_counts() -> None:
    original = _spans()[0]
    span = readable_span(span_record(original), RESOURCE)
    assert span.parent is not None and span.parent.is_remote and span.parent.span_id == 0x00F067AA0BA902B7
    assert span.context is not None and span.context.trace_state.get("vendor") == "x"
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "upstream_timeout"
    assert (span.dropped_attributes, span.dropped_events, span.dropped_links) == (1, 1, 0)
    assert span.attributes["llm.request.dropped_params"] == ("seed", "n")
    assert span.instrumentation_scope is not None and span.instrumentation_scope.version == "1.2.3"
