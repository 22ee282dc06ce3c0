"""A LightSpan is the span the SDK would have made: same context decisions, same OTLP bytes once rebuilt."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from serve_app.config import TelemetryArgs
from serve_app.telemetry.export_process import readable_span
from serve_app.telemetry.light_span import LightSpan, LightTracer
from serve_app.telemetry.tracing import build_sampler

RESOURCE = Resource({"service.name": "router-test"})
T0, T1 = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000

ATTRS_BEGIN = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "auto",
    "gen_ai.request.stream": True,
    "llm.prompt_tokens_estimated": 22,
    "langfuse.trace.tags": ["tenant:team-a"],
}
ATTRS_END = {
    "llm.cost_usd": 0.000267,
    "gen_ai.response.finish_reasons": ["stop"],
    "langfuse.observation.input": "x" * 40,
    "llm.empty": [],
}


class CountingIds(IdGenerator):
    """The same IDs for every provider built in a test, so two spans can be compared byte for byte."""

    def __init__(self) -> None:
        self._next = 0x1000

    def generate_span_id(self) -> int:
        self._next += 1
        return self._next

    def generate_trace_id(self) -> int:
        self._next += 1
        return 0xABC0000 + self._next


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[LightSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)  # type: ignore[arg-type]


def _parents() -> Iterator[tuple[str, object]]:
    state = TraceState([("vendor", "x")])
    yield "root", None
    yield (
        "remote sampled",
        SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True, TraceFlags(1), state),
    )
    yield "remote unsampled", SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4737, 0xF067AA0BA902B8, True, TraceFlags(0))
    yield "remote random id", SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4738, 0xF067AA0BA902B9, True, TraceFlags(3))
    yield "local", SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4739, 0xF067AA0BA902BA, False, TraceFlags(1))


def _context(parent: object) -> object:
    return None if parent is None else trace.set_span_in_context(trace.NonRecordingSpan(parent))  # type: ignore[arg-type]


def _fill(span: trace.Span, *, error: bool) -> None:
    span.set_attributes({"llm.backend": "cloud", "llm.fallback": False})
    span.set_attribute("gen_ai.usage.input_tokens", 9)
    span.add_event("retry", {"attempt": 1, "reason": "overloaded"}, timestamp=T0 + 5)
    span.set_attributes(ATTRS_END)
    if error:
        span.set_status(Status(StatusCode.ERROR, "upstream_timeout"))
    span.end(end_time=T1)


def _both(sampler: object, parent: object, *, error: bool) -> tuple[ReadableSpan | None, LightSpan | None]:
    exporter = InMemorySpanExporter()
    sdk_provider = TracerProvider(resource=RESOURCE, sampler=sampler, id_generator=CountingIds())  # type: ignore[arg-type]
    sdk_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk_span = sdk_provider.get_tracer("hybrid_llm.router", "1.2.3").start_span(
        "chat auto", context=_context(parent), kind=SpanKind.CLIENT, attributes=ATTRS_BEGIN, start_time=T0
    )
    _fill(sdk_span, error=error)
    collect = Collect()
    light_provider = TracerProvider(resource=RESOURCE, sampler=sampler, id_generator=CountingIds())  # type: ignore[arg-type]
    light = LightTracer(light_provider, collect, name="hybrid_llm.router", version="1.2.3").start_span(
        "chat auto", context=_context(parent), kind=SpanKind.CLIENT, attributes=ATTRS_BEGIN, start_time=T0
    )
    _fill(light, error=error)
    assert (sdk_span.get_span_context(), sdk_span.is_recording()) == (light.get_span_context(), light.is_recording())
    finished = exporter.get_finished_spans()
    return (finished[0] if finished else None), (collect.ended[0] if collect.ended else None)


SAMPLERS = {
    "router's, ratio 1": build_sampler(TelemetryArgs()),
    "router's, ratio 0": build_sampler(TelemetryArgs(sampling_ratio=0.0)),
    "SDK's parent-based, ratio 0": ParentBased(TraceIdRatioBased(0.0)),
}


@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
@pytest.mark.parametrize(("name", "parent"), list(_parents()), ids=[n for n, _ in _parents()])
@pytest.mark.parametrize("error", [False, True], ids=["ok", "error"])
def test_a_light_span_encodes_to_the_bytes_of_the_sdk_span(sampler: object, name: str, parent: object, error: bool):
    sdk_span, light = _both(sampler, parent, error=error)
    assert (sdk_span is None) == (light is None)  # sampled out alike: nothing reaches the processor
    if sdk_span is None or light is None:
        return
    rebuilt = readable_span(pickle.loads(pickle.dumps(light.record())), RESOURCE)
    assert encode_spans([rebuilt]).SerializeToString(deterministic=True) == encode_spans([sdk_span]).SerializeToString(
        deterministic=True
    )


def test_some_parents_are_sampled_out_so_the_comparison_covers_both_cases() -> None:
    outcomes = {_both(s, p, error=False)[1] is None for s in SAMPLERS.values() for _, p in _parents()}
    assert outcomes == {True, False}


def test_every_kind_of_value_is_kept_cleaned_or_dropped_as_the_sdk_does() -> None:
    kept = {"ok.str": "a", "ok.list": ["a", "b"], "none": None, "map": {"a": [1, 2], "": 3}, "mixed": ["a", 1]}
    odd = {"": "no key", "obj": object(), "bytes": b"x", "when": __import__("datetime").date(2026, 12, 5)}
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk_span = provider.get_tracer("t").start_span("s", attributes={**kept, **odd})
    sdk_span.end()
    collect = Collect()
    light = LightTracer(provider, collect, name="t", version="").start_span("s", attributes={**kept, **odd})
    light.end()
    record = collect.ended[0].record()
    sdk = exporter.get_finished_spans()[0]
    assert record[8] == dict(sdk.attributes) and record[9] == sdk.dropped_attributes == 1
    assert record[8]["map"] == {"a": (1, 2)} and record[8]["when"] == "2026-12-05" and record[8]["obj"] is None


def test_attribute_limits_from_the_environment_apply_as_in_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    sdk_span, light = _both(build_sampler(TelemetryArgs()), None, error=False)
    assert sdk_span is not None and light is not None
    rebuilt = readable_span(light.record(), RESOURCE)
    assert dict(rebuilt.attributes) == dict(sdk_span.attributes) and len(rebuilt.attributes) == 3
    assert rebuilt.dropped_attributes == sdk_span.dropped_attributes > 0
    assert all(len(v) <= 4 for v in rebuilt.attributes.values() if isinstance(v, str))


def test_an_ended_span_takes_nothing_more_and_ends_once() -> None:
    collect = Collect()
    span = LightTracer(TracerProvider(), collect, name="t", version="").start_span("s")
    span.end()
    span.set_attribute("late", 1)
    span.set_status(Status(StatusCode.ERROR, "late"))
    span.end()
    assert len(collect.ended) == 1 and not span.is_recording()
    record = collect.ended[0].record()
    assert record[8] == {} and record[6] == StatusCode.UNSET.value


def test_ok_is_final_and_a_description_is_kept_only_for_errors() -> None:
    span = LightTracer(TracerProvider(), Collect(), name="t", version="").start_span("s")
    span.set_status(StatusCode.OK, "ignored")
    span.set_status(Status(StatusCode.ERROR, "too late"))
    span.end()
    assert span.record()[6:8] == (StatusCode.OK.value, None)  # type: ignore[attr-defined]
