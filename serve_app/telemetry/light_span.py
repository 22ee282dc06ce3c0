"""The router span as plain values in the replica; the export process builds the SDK's span from them.

With `telemetry.export_process` and OTLP as the only span sink, the router's span is a `LightSpan`. Its context
is decided as the SDK's `Tracer.start_span` decides it, with the provider's own sampler and ID generator, so the
trace context sent upstream and the sampling are the SDK's. Its attributes go into a plain dict: strings and
numbers as they are, any other value cleaned by the SDK's own attribute mapping, the OTEL_*_LIMIT variables
applied as the SDK applies them. When it ends it becomes the record that `export_process.span_record` makes of an
SDK span: the BatchSpanProcessor queues it, the export process rebuilds it as the SDK's ReadableSpan and the SDK's
exporter encodes it. Attributes the router sets after the span's start can be deferred (`defer`): a mapping
from span_attributes.py and its plain facts travel in the record, and the export process builds the attributes
(`fold`), with the same limits, in the order of every update. In process, the SDK span alone (locks, validation
of every attribute) added about 90 µs to a request's 1.4 ms of CPU, the whole deployed path with this one about
50 µs (docs/benchmarks.md, finding 11).

Everything else (client spans of the backends' HTTP calls, the direct Langfuse exporter, a provider a caller
passes in) keeps the SDK's span.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from types import NoneType
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue, Attributes

logger = logging.getLogger(__name__)

Record = tuple[Any, ...]
_SCALARS = (bool, int, float, bytes, NoneType)


def _clean(value: object, max_len: int | None) -> AnyValue:
    """`value` as the SDK's attribute mapping would store it: the common shapes here, the rest by the SDK itself."""
    kind = type(value)
    if kind is str:
        return value if max_len is None or len(value) <= max_len else value[:max_len]  # type: ignore[index,return-value]
    if kind in _SCALARS:
        return value  # type: ignore[return-value]
    if kind in (list, tuple) and max_len is None and all(type(item) in (str, *_SCALARS) for item in value):  # type: ignore[attr-defined]
        return tuple(value)  # type: ignore[arg-type]
    return BoundedAttributes(attributes={"v": value}, max_value_len=max_len)["v"]  # type: ignore[dict-item]


def attribute_limits() -> tuple[int, int | None]:
    """The span attribute count and value length limits: the OTEL_*_LIMIT variables, as the SDK reads them."""
    limits = SpanLimits()
    count = limits.max_span_attributes if limits.max_span_attributes is not None else sys.maxsize
    return count, limits.max_span_attribute_length


def _apply(attrs: dict[str, AnyValue], attributes: Mapping[str, Any], max_attributes: int, max_len: int | None) -> int:
    """Sets `attributes` on `attrs` as the SDK's bounded mapping does; the number dropped."""
    dropped = 0
    for key, value in attributes.items():
        if not key or not max_attributes:
            dropped += 1
            continue
        if key not in attrs and len(attrs) >= max_attributes:
            del attrs[next(iter(attrs))]  # as the SDK's bounded mapping: the oldest gives way
            dropped += 1
        attrs[key] = _clean(value, max_len)
    return dropped


def _given(attributes: dict[str, AnyValue]) -> dict[str, AnyValue]:
    return attributes


Update = tuple[Callable[..., Mapping[str, Any]], tuple[Any, ...]]


def fold(
    attributes: dict[str, AnyValue], dropped: int, updates: tuple[Update, ...], limits: tuple[int, int | None]
) -> tuple[dict[str, AnyValue], int]:
    """The attributes of a record with its deferred updates applied in order (the export process's side); an
    update whose mapping fails is left out and logged, the span keeps the rest."""
    max_attributes, max_len = limits
    for mapping, facts in updates:
        try:
            dropped += _apply(attributes, mapping(*facts), max_attributes, max_len)
        except Exception:
            logger.warning("a deferred span attribute mapping (%s) failed", getattr(mapping, "__name__", mapping))
    return attributes, dropped


class LightTracer:
    """Starts `LightSpan`s for one instrumentation scope; the same context decisions as the SDK's tracer."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, *, name: str, version: str) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self.processor = processor
        self.scope = (name, version, None, {})  # as `span_record` flattens the SDK's InstrumentationScope
        self.max_attributes, self.max_value_len = attribute_limits()

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        start_time: int | None = None,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
            random_id = self._ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
        flags = TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=result.trace_state,
        )
        if not result.decision.is_recording():
            return trace.NonRecordingSpan(span_context)
        span = LightSpan(self, name, span_context, parent, kind, start_time)
        if result.attributes:
            span.set_attributes(result.attributes)
        return span


class LightSpan(trace.Span):
    """A recording span of plain values; `record()` is what the export process rebuilds. Not thread-safe: one
    request's task owns it, as it owns the request."""

    def __init__(
        self,
        tracer: LightTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_time: int | None = None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self.context = context  # read by the batch processor, as on a ReadableSpan
        self._parent = parent
        self._kind = kind
        self._start = start_time or time.time_ns()
        self._end: int | None = None
        self._attributes: dict[str, AnyValue] = {}
        self._dropped_attributes = 0
        self._updates: list[Update] = []  # deferred attribute updates, applied by the export process
        self._events: list[tuple[str, int, dict[str, AnyValue]]] = []
        self._status = (StatusCode.UNSET, None)

    # ---- the API's span ---------------------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._end is not None:
            return
        tracer = self._tracer
        if self._updates:  # an earlier update waits for the export process: this one follows it there, in order
            self._updates.append((_given, ({k: _clean(v, tracer.max_value_len) for k, v in attributes.items()},)))
            return
        self._dropped_attributes += _apply(self._attributes, attributes, tracer.max_attributes, tracer.max_value_len)

    def defer(self, mapping: Callable[..., Mapping[str, Any]], facts: tuple[Any, ...]) -> None:
        """Sets the attributes `mapping(*facts)` gives when the export process rebuilds the span, in the order of
        every update; `mapping` is a module-level function and `facts` picklable (span_attributes.py)."""
        if self._end is None:
            self._updates.append((mapping, facts))

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end is not None:
            return
        max_len = self._tracer.max_value_len
        clean = {k: _clean(v, max_len) for k, v in (attributes or {}).items() if k}
        self._events.append((name, timestamp or time.time_ns(), clean))

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        event = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        self.add_event("exception", {**event, **(attributes or {})}, timestamp)

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None or self._status[0] is StatusCode.OK:
            return  # as in the SDK: OK is final
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self._status = (code, description if code is StatusCode.ERROR else None)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time.time_ns()
        self._tracer.processor.on_end(self)  # type: ignore[arg-type]

    # ---- for the export process ------------------------------------------------------------------------------

    def record(self) -> Record:
        """The ended span in `export_process.span_record`'s shape, its deferred updates last."""
        ctx, parent = self.context, self._parent
        return (
            self._name,
            (ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.trace_state.to_header()),
            (parent.trace_id, parent.span_id, int(parent.trace_flags), parent.is_remote) if parent else None,
            self._kind.value,
            self._start,
            self._end,
            self._status[0].value,
            self._status[1],
            self._attributes,
            self._dropped_attributes,
            tuple(self._events),
            0,
            (),
            0,
            self._tracer.scope,
            tuple(self._updates),
        )
