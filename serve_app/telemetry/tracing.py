"""The replica's TracerProvider and its bounded OTLP export; never the global provider, never blocking a request.

Spans leave through a BatchSpanProcessor whose queue is bounded: when the exporter is down, slow or hanging,
the queue fills and the oldest spans are dropped. `ExportAccounting` counts those drops and failed exports, so
the loss is visible as `router_telemetry_dropped_total{sink}`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from importlib import metadata

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from serve_app.config import TelemetryArgs

logger = logging.getLogger(__name__)

TRACER_NAME = "hybrid_llm.router"  # the instrumentation scope of router spans; Langfuse exports only these
# Spans per export and the longest wait for a partial batch (TelemetryArgs' defaults; the SDK's are 512 and 5 s).
# A batch is encoded under the GIL in the export thread while the replica's event loop waits for it: 64 spans
# keep each encode short, so no request stalls behind a 512-span burst (docs/benchmarks.md, telemetry).
EXPORT_BATCH_SIZE = 64
EXPORT_SCHEDULE_DELAY_MS = 200.0


def span_name(operation: str, model: str, *, known_models: Collection[str]) -> str:
    """`{operation} {model}` for a model of the closed set the router serves (aliases and configured ids), else
    `{operation}`: span names are a dimension of Tempo's span metrics, so a client's model string must not be one.
    The requested string itself stays on the span as `gen_ai.request.model`."""
    return f"{operation} {model}" if model in known_models else operation


def service_version() -> str:
    try:
        return metadata.version("hybrid-llm")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def build_resource(args: TelemetryArgs, environ: Mapping[str, str]) -> Resource:
    """Resource attributes; `OTEL_SERVICE_NAME` beats the configured name (Resource.create lets ours win)."""
    return Resource.create(
        {
            "service.name": environ.get("OTEL_SERVICE_NAME") or args.service_name,
            "service.version": service_version(),
            "deployment.environment.name": args.environment,
        }
    )


def build_sampler(args: TelemetryArgs) -> ParentBased:
    """`sampling_ratio` for requests that start a trace; a sampled parent is followed; an unsampled one is not.

    The router's span is also the request's Langfuse generation and cost record, so a client's (or Ray Serve's)
    decision not to sample its own trace must not erase it: under an unsampled parent the span is still
    recorded and exported, in the parent's trace.
    """
    return ParentBased(
        root=TraceIdRatioBased(args.sampling_ratio),
        remote_parent_not_sampled=ALWAYS_ON,
        local_parent_not_sampled=ALWAYS_ON,
    )


def build_tracer_provider(args: TelemetryArgs, environ: Mapping[str, str]) -> TracerProvider:
    return TracerProvider(
        resource=build_resource(args, environ),
        sampler=build_sampler(args),
        shutdown_on_exit=False,  # Telemetry.shutdown bounds the wait; the SDK's atexit hook would not
    )


def otlp_configured(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def otlp_traces_target(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(endpoint, protocol) of the traces exporter `OTEL_EXPORTER_OTLP_(TRACES_)*` name, by the library's rules.

    The protocol defaults to http/protobuf, as the spec says. The traces endpoint is used verbatim; for HTTP the
    generic one is a base URL with `/v1/traces` appended, for gRPC it is used as it is. None: the exporter's own
    default endpoint.
    """
    protocol = (
        (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "")
        .strip()
        .lower()
    ) or "http/protobuf"
    if protocol not in ("grpc", "http/protobuf"):
        logger.warning("OTLP protocol %r is not supported here; using http/protobuf", protocol)
        protocol = "http/protobuf"
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return traces or generic, protocol
    return traces or (f"{generic.removesuffix('/')}/v1/traces" if generic else None), protocol


def build_otlp_exporter(args: TelemetryArgs, environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter for `otlp_traces_target(environ)`. Headers, TLS and compression variables are left to
    the exporter."""
    endpoint, protocol = otlp_traces_target(environ)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, timeout=args.export_timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint, timeout=args.export_timeout_s)


class ExportAccounting:
    """Counts spans a bounded batch processor drops: queue overflow and failed exports.

    The processor's queue is not public, so this keeps its own count of spans waiting (admitted, not yet
    handed to our exporter wrapper). An admission while that count is at `capacity + slack` is a drop: the
    SDK's deque discards its oldest span. `slack` covers spans the processor has popped but not yet handed
    to us (Langfuse transforms a batch before our wrapper sees it): at most one batch, so while the queue is
    saturated up to `slack` real drops are counted late, at `abandon()` on shutdown, never as phantoms.
    """

    def __init__(self, *, capacity: int, on_drop: Callable[[int], None], slack: int = 0) -> None:
        self.capacity = capacity
        self._limit = capacity + slack
        self._on_drop = on_drop
        self._waiting = 0
        self._in_flight = 0
        self._abandoned = False
        self._lock = threading.Lock()
        self.admitted = 0
        self.exported = 0
        self.dropped = 0
        self.overflowed = 0  # of `dropped`: queue full at admission
        self.failed = 0  # of `dropped`: export reported failure or raised

    def admit(self) -> None:
        with self._lock:
            self.admitted += 1
            full = self._waiting >= self._limit
            if full:
                self.overflowed += 1
            else:
                self._waiting += 1
        if full:
            self._drop(1)

    def handed(self, count: int) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - count)
            self._in_flight += count

    def result(self, count: int, ok: bool) -> None:
        with self._lock:
            if self._abandoned:  # already counted as lost when shutdown gave up
                return
            self._in_flight = max(0, self._in_flight - count)
            if ok:
                self.exported += count
            else:
                self.failed += count
        if not ok:
            self._drop(count)

    def abandon(self) -> None:
        """Shutdown gave up: whatever is still queued or in flight is lost; count it once."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            lost = self._waiting + self._in_flight
            self._waiting = self._in_flight = 0
        self._drop(lost)

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self.dropped += count
        try:
            self._on_drop(count)
        except Exception:  # called from exporter threads: nothing may escape
            logger.debug("drop callback failed", exc_info=True)


class AccountedExporter(SpanExporter):
    """Wraps an exporter to tell `ExportAccounting` what left the queue and whether it arrived."""

    def __init__(self, inner: SpanExporter, accounting: ExportAccounting) -> None:
        self._inner = inner
        self._accounting = accounting

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        count = len(spans)
        self._accounting.handed(count)
        try:
            result = self._inner.export(spans)
        except Exception:
            logger.debug("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self._accounting.result(count, result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class AccountedBatchProcessor(SpanProcessor):
    """A bounded BatchSpanProcessor that reports each span it takes to `ExportAccounting`."""

    def __init__(
        self,
        exporter: SpanExporter,
        accounting: ExportAccounting,
        *,
        batch_size: int = EXPORT_BATCH_SIZE,
        schedule_delay_ms: float = EXPORT_SCHEDULE_DELAY_MS,
    ) -> None:
        self._accounting = accounting
        self.batch_size = min(batch_size, accounting.capacity)
        self.schedule_delay_ms = schedule_delay_ms
        self._inner = BatchSpanProcessor(
            AccountedExporter(exporter, accounting),
            max_queue_size=accounting.capacity,
            max_export_batch_size=self.batch_size,
            schedule_delay_millis=schedule_delay_ms,
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self._accounting.admit()
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def bounded_call(fn: Callable[[], object], *, timeout_s: float, name: str) -> bool:
    """Runs `fn` in a daemon thread and waits at most `timeout_s`; True if it finished in time.

    SDK flush and shutdown ignore their timeouts while an export hangs; a daemon thread cannot hold up exit.
    """
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:
            logger.warning("%s failed", name, exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name=f"telemetry-{name}", daemon=True).start()
    return done.wait(timeout_s)


def client_tracer_provider(provider: TracerProvider, *, spans: bool) -> trace.TracerProvider:
    """What the backends' HTTP clients trace with: `provider` when each upstream call is to be a span of its own;
    otherwise the API's no-op provider, which starts no span: the cloud backend then only injects the current
    context (the router span's) as `traceparent`, and nothing is recorded, ended or exported for the call."""
    return provider if spans else trace.NoOpTracerProvider()


def backend_context(span: trace.Span) -> Context:
    """The context a backend call runs in: `span` (the router's) as the parent of its client spans.

    When the router span is not recorded (sampled out), HTTP client instrumentation is suppressed too: its
    spans would otherwise start under the unsampled parent (the sampler keeps those, see `build_sampler`) and
    reach Tempo as fragments of a trace whose root was dropped. The trace context still travels, unsampled.
    """
    context = trace.set_span_in_context(span)
    if not span.is_recording():
        context = otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, context)
    return context


def default_environ() -> Mapping[str, str]:
    return os.environ
