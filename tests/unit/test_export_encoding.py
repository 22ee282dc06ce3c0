"""The export process's encoder savings: the SDK's OTLP bytes exactly, memo bounded, and undone cleanly."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common import _internal as encoder
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.telemetry.export_encoding import OneResource, memoize_attribute_encoding
from serve_app.telemetry.export_process import readable_span, span_record

RESOURCE_ATTRIBUTES = {"service.name": "router-test", "k8s.pod.name": "router-abc"}


def _router_like_spans(n: int, seed: int = 0) -> list[ReadableSpan]:
    """Spans shaped like the router's: constant attributes, per-request ones, and values of every kind."""
    rng = random.Random(seed)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource(RESOURCE_ATTRIBUTES))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("hybrid_llm.router")
    for i in range(n):
        tokens = rng.randint(1, 3000)
        tenant = rng.choice(["alpha", "beta"])
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.stream": i % 2 == 0,
            "llm.request_id": f"req-{i}",
            "gen_ai.usage.input_tokens": tokens,
            "gen_ai.usage.cache_read.input_tokens": 0,
            "llm.fallback": rng.random() < 0.3,
            "llm.flag_or_count": rng.choice([True, 1, False, 0]),  # equal in Python, encoded differently
            "llm.pair": rng.choice([(1, 0), (True, False)]),  # so are these
            "llm.cost_usd": tokens * 3e-6,
            "llm.latency_ms": rng.choice([1.5, float("nan"), math.inf, -0.0, 0.0]),
            "llm.tenant": tenant,
            "langfuse.trace.tags": (f"tenant:{tenant}",),
            "langfuse.observation.usage_details": json.dumps({"input": tokens}),
            "gen_ai.response.finish_reasons": rng.choice([("stop",), ("length",), ("stop", "length")]),
        }
        with tracer.start_as_current_span("chat auto", attributes=attributes) as span:
            span.add_event("retry", {"attempt": i % 3})
    return list(memory.get_finished_spans())


@pytest.fixture
def memo() -> Iterator[None]:
    undo = memoize_attribute_encoding(max_values_per_key=8)
    assert undo is not None, "the SDK's encoder changed shape: the export process no longer memoizes"
    try:
        yield
    finally:
        undo()


def _bytes(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString(deterministic=True)


def test_memoized_encoding_gives_the_sdks_bytes_for_router_like_spans() -> None:
    spans = _router_like_spans(300)
    batches = range(0, len(spans), 64)
    expected = [_bytes(spans[k : k + 64]) for k in batches]  # the SDK alone
    rebuilt = [readable_span(span_record(s), OneResource(RESOURCE_ATTRIBUTES)) for s in spans]
    undo = memoize_attribute_encoding(max_values_per_key=8)
    assert undo is not None, "the SDK's encoder changed shape: the export process no longer memoizes"
    try:
        assert encoder._encode_key_value.__name__ == "encode_key_value"  # the memo encodes
        first = [_bytes(rebuilt[k : k + 64]) for k in batches]  # the memo filled
        again = [_bytes(rebuilt[k : k + 64]) for k in batches]  # and used
    finally:
        undo()
    assert first == expected
    assert again == expected


def test_a_value_is_reused_per_key_and_type_and_a_varying_key_stops_being_kept(memo: None) -> None:
    first = encoder._encode_key_value("llm.backend", "cloud")
    assert encoder._encode_key_value("llm.backend", "cloud") is first
    assert encoder._encode_key_value("llm.fallback", True).value.bool_value is True
    assert encoder._encode_key_value("llm.fallback", 1).value.int_value == 1  # not the memo of True
    listed = encoder._encode_key_value("llm.params", ["seed", "n"])  # unhashable: encoded each time
    assert [v.string_value for v in listed.value.array_value.values] == ["seed", "n"]
    ids = [encoder._encode_key_value("llm.request_id", f"r{i}") for i in range(9)]  # 8 kept, the 9th ends it
    assert [kv.value.string_value for kv in ids] == [f"r{i}" for i in range(9)]
    assert encoder._encode_key_value("llm.request_id", "r0") is not ids[0]  # no longer kept
    assert encoder._encode_key_value("llm.backend", "cloud") is first  # other keys keep theirs


def test_undo_restores_the_sdks_function() -> None:
    original = encoder._encode_key_value
    undo = memoize_attribute_encoding()
    assert undo is not None and encoder._encode_key_value is not original
    undo()
    assert encoder._encode_key_value is original


def test_an_encoder_of_another_shape_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def newer(key: str, value: object, allow_null: bool = False) -> object:  # a signature this was not written for
        raise AssertionError("not called")

    monkeypatch.setattr(encoder, "_encode_key_value", newer)
    assert memoize_attribute_encoding() is None
    assert encoder._encode_key_value is newer


def test_one_resource_hashes_and_compares_as_the_sdks() -> None:
    one = OneResource(RESOURCE_ATTRIBUTES, "https://schema/1")
    sdk = Resource(RESOURCE_ATTRIBUTES, "https://schema/1")
    assert hash(one) == hash(sdk) and one == sdk and sdk == one
    assert one != Resource(RESOURCE_ATTRIBUTES) and one.attributes == sdk.attributes


def test_rebuilt_spans_share_one_scope_object() -> None:
    spans = _router_like_spans(3)
    rebuilt = [readable_span(span_record(s), OneResource(RESOURCE_ATTRIBUTES)) for s in spans]
    assert rebuilt[0].instrumentation_scope is rebuilt[2].instrumentation_scope is not None
