"""The Langfuse client on the replica's TracerProvider: router spans become generations, nothing else does.

Langfuse 5 is OpenTelemetry-based: its span processor joins our provider, so the router's one span per request
is the generation (its `langfuse.observation.*` attributes are set by `Observation`). The filter admits only
spans of our instrumentation scope, so vLLM's and Ray Serve's spans never become generations. We hand Langfuse
an exporter for its documented OTLP endpoint (Basic auth, `x-langfuse-ingestion-version: 4`) wrapped in
`AccountedExporter`, so spans it loses are counted like every other sink's.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from serve_app.config import TelemetryArgs
from serve_app.telemetry.tracing import TRACER_NAME, AccountedExporter, ExportAccounting, service_version

logger = logging.getLogger(__name__)

OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
_DEFAULT_BASE_URL = "https://cloud.langfuse.com"  # the SDK's own default
_DEFAULT_QUEUE = 2048  # BatchSpanProcessor's default, which Langfuse's processor keeps


def langfuse_configured(args: TelemetryArgs, environ: Mapping[str, str]) -> bool:
    return bool(args.langfuse and environ.get("LANGFUSE_PUBLIC_KEY") and environ.get("LANGFUSE_SECRET_KEY"))


def is_router_span(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name == TRACER_NAME


def router_span_filter(accounting: ExportAccounting) -> Callable[[ReadableSpan], bool]:
    """Langfuse's `should_export_span`: router spans only; each ended, sampled one counts toward the queue.

    Langfuse also asks at span start (to mark app roots); only the call for an ended span is an enqueue.
    """

    def should_export(span: ReadableSpan) -> bool:
        if not is_router_span(span):
            return False
        ended = span.end_time is not None
        if ended and span.context is not None and span.context.trace_flags.sampled:
            accounting.admit()
        return True

    return should_export


def build_langfuse(
    args: TelemetryArgs,
    provider: TracerProvider,
    environ: Mapping[str, str],
    *,
    on_drop: Callable[[int], None],
) -> tuple[Any, ExportAccounting | None]:
    """A Langfuse client sharing `provider` and its export accounting; (None, None) when it cannot be built
    (logged, never raised).

    Langfuse keeps one client per public key per process: build one Telemetry per process.
    """
    try:
        from langfuse import Langfuse
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        public_key = environ["LANGFUSE_PUBLIC_KEY"]
        secret_key = environ["LANGFUSE_SECRET_KEY"]
        base_url = (environ.get("LANGFUSE_BASE_URL") or environ.get("LANGFUSE_HOST") or _DEFAULT_BASE_URL).rstrip("/")
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        exporter = OTLPSpanExporter(
            endpoint=base_url + OTEL_TRACES_PATH,
            headers={
                "Authorization": f"Basic {token}",
                "x-langfuse-ingestion-version": "4",
                "x-langfuse-public-key": public_key,
            },
            timeout=args.export_timeout_s,
            compression=Compression.Gzip,
        )
        # Langfuse's BatchSpanProcessor reads its queue bound from the process environment, whatever `environ`
        # says; the batch size and schedule delay are ours (small batches: see tracing.EXPORT_BATCH_SIZE)
        capacity = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", _DEFAULT_QUEUE)
        batch = min(args.export_batch_size, capacity)
        accounting = ExportAccounting(capacity=capacity, slack=batch, on_drop=on_drop)
        client = Langfuse(
            public_key=public_key,
            secret_key=secret_key,
            base_url=base_url,
            timeout=max(1, round(args.export_timeout_s)),
            environment=args.environment,
            release=service_version(),
            tracer_provider=provider,
            flush_at=batch,
            flush_interval=args.export_schedule_delay_ms / 1000.0,
            should_export_span=router_span_filter(accounting),
            span_exporter=AccountedExporter(exporter, accounting),
        )
        return client, accounting
    except Exception:
        logger.exception("Langfuse client could not be built; generations are off")
        return None, None


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default
