"""The router replica's telemetry: one TracerProvider, metrics and Langfuse per process; it records, never computes.

Built once in the deployment's `__init__`; hands out one `Observation` per request. Exporters run in
background threads behind bounded queues, so a telemetry backend that is down or hanging never reaches the
request path, and `shutdown()` gives up after a short, fixed wait.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind

from serve_app.config import RouterArgs
from serve_app.routing import ALIASES
from serve_app.telemetry.export_process import ChildProcessExporter
from serve_app.telemetry.langfuse import build_langfuse, langfuse_configured
from serve_app.telemetry.light_span import LightSpan, LightTracer
from serve_app.telemetry.metrics import MetricsSink, RayMetricsSink, RouterMetrics
from serve_app.telemetry.observation import Observation
from serve_app.telemetry.request_log import RequestLog
from serve_app.telemetry.span_attributes import span_json, start_attributes
from serve_app.telemetry.tracing import (
    TRACER_NAME,
    AccountedBatchProcessor,
    ExportAccounting,
    bounded_call,
    build_otlp_exporter,
    build_tracer_provider,
    client_tracer_provider,
    otlp_configured,
    service_version,
    span_name,
)

logger = logging.getLogger(__name__)


class Telemetry:
    """One per router replica process. Collaborators are injectable; by default they come from `args` + env."""

    def __init__(
        self,
        *,
        args: RouterArgs,
        provider: TracerProvider,
        owns_provider: bool,
        tracing_active: bool,
        metrics: RouterMetrics,
        langfuse: Any,
        clock: Callable[[], float],
        otlp_accounting: ExportAccounting | None = None,
        langfuse_accounting: ExportAccounting | None = None,
        shutdown_timeout_s: float = 2.0,
        request_log: RequestLog | None = None,
        export_process: ChildProcessExporter | None = None,
        light_processor: SpanProcessor | None = None,
    ) -> None:
        self.args = args
        self.export_process = export_process  # the OTLP export process, when spans leave through one
        self.request_log = request_log
        self.provider = provider
        self.metrics = metrics
        self.langfuse = langfuse
        self.clock = clock
        self.capture_content = args.telemetry.capture_content
        self.otlp_accounting = otlp_accounting
        self.langfuse_accounting = langfuse_accounting
        self._owns_provider = owns_provider
        tracer = provider.get_tracer(TRACER_NAME, service_version()) if tracing_active else trace.NoOpTracer()
        # The router span as plain values when the export process is its only sink (light_span.py); the SDK's
        # span when anything in this process reads it (the direct Langfuse exporter, a caller's provider).
        if light_processor is not None and langfuse is None and not isinstance(tracer, trace.NoOpTracer):
            tracer = LightTracer(provider, light_processor, name=TRACER_NAME, version=service_version())
        self._tracer: trace.Tracer | LightTracer = tracer
        self._tracer_is_noop = isinstance(tracer, trace.NoOpTracer)  # no span: no attributes to build for one
        # The start's attributes too are built in the export process when the sampler cannot read them: the
        # provider this class built has the router's sampler (`build_sampler`), which reads none.
        self._defer_start = isinstance(tracer, LightTracer) and owns_provider
        # For the backends' HTTP client instrumentation: with `http_client_spans` each upstream call is a span,
        # child of the router span, exported with it; without, the call carries the router span's `traceparent`
        # and records nothing. None when no span leaves the process (then there is nothing to be a child of).
        self.client_tracer_provider: trace.TracerProvider | None = (
            client_tracer_provider(provider, spans=args.telemetry.http_client_spans) if tracing_active else None
        )
        self._span_models = frozenset({args.local.model_id, *args.cloud.model_ids, *ALIASES})
        self._shutdown_timeout_s = shutdown_timeout_s
        self._shut = False
        atexit.register(self.shutdown)

    @classmethod
    def from_args(
        cls,
        args: RouterArgs,
        *,
        tracer_provider: TracerProvider | None = None,
        meter: MetricsSink | None = None,
        langfuse: Any = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        shutdown_timeout_s: float = 2.0,
    ) -> Telemetry:
        """Builds the process's telemetry. A given `tracer_provider` is used as is (the caller owns its
        processors and shutdown); otherwise one is built with an OTLP exporter when the OTel endpoint variables
        are set. Langfuse is built from its key variables unless a client is given (or `langfuse=False`)."""
        env = os.environ if environ is None else environ
        models = {args.local.model_id, *args.cloud.model_ids, *ALIASES}
        metrics = RouterMetrics(meter if meter is not None else RayMetricsSink(), models=models)
        owns = tracer_provider is None
        provider = tracer_provider or build_tracer_provider(args.telemetry, env)
        accounting = None
        export_process: ChildProcessExporter | None = None
        light_processor: SpanProcessor | None = None
        exporting = not owns
        if owns and args.telemetry.tracing and otlp_configured(env):
            try:
                accounting = ExportAccounting(
                    capacity=args.telemetry.export_queue_size,
                    # a batch the processor has popped but not yet handed to our exporter wrapper
                    slack=min(args.telemetry.export_batch_size, args.telemetry.export_queue_size),
                    on_drop=lambda n: metrics.dropped_items("otlp", n),
                )
                exporter: SpanExporter = build_otlp_exporter(args.telemetry, env)  # bad settings raise here
                if args.telemetry.export_process:
                    exporter.shutdown()  # the export process builds its own from the same settings
                    exporter = export_process = ChildProcessExporter(
                        resource=provider.resource,
                        telemetry_args=args.telemetry.model_dump(),
                        timeout_s=args.telemetry.export_timeout_s,
                        environ=env if env is os.environ else {**os.environ, **env},
                    )
                processor = AccountedBatchProcessor(
                    exporter,
                    accounting,
                    batch_size=args.telemetry.export_batch_size,
                    schedule_delay_ms=args.telemetry.export_schedule_delay_ms,
                )
                provider.add_span_processor(processor)
                if export_process is not None:
                    light_processor = processor
                exporting = True
            except Exception:
                logger.exception("OTLP exporter could not be built; traces are off")
                metrics.dropped_items("otlp")
        langfuse_accounting = None
        if langfuse is None and langfuse_configured(args.telemetry, env):
            langfuse, langfuse_accounting = build_langfuse(
                args.telemetry, provider, env, on_drop=lambda n: metrics.dropped_items("langfuse", n)
            )
        if langfuse is False:
            langfuse = None
        exporting = exporting or langfuse is not None
        request_log = None
        if args.telemetry.request_log_path:
            try:
                request_log = RequestLog(
                    args.telemetry.request_log_path,
                    capacity=args.telemetry.request_log_queue_size,
                    on_drop=lambda n: metrics.dropped_items("request_log", n),
                )
            except OSError:
                logger.exception("request log %s cannot be opened; it is off", args.telemetry.request_log_path)
                metrics.dropped_items("request_log")
        return cls(
            args=args,
            provider=provider,
            owns_provider=owns,
            tracing_active=exporting,
            metrics=metrics,
            langfuse=langfuse,
            clock=clock or time.perf_counter,
            otlp_accounting=accounting,
            langfuse_accounting=langfuse_accounting,
            shutdown_timeout_s=shutdown_timeout_s,
            request_log=request_log,
            export_process=export_process,
            light_processor=light_processor,
        )

    # ---- per request ----------------------------------------------------------------------------------------

    def begin(
        self,
        *,
        request_id: str,
        headers: Mapping[str, str],
        requested_model: str,
        stream: bool,
        max_tokens: int | None,
        prompt_tokens_estimated: int,
        user: str | None = None,
        session_id: str | None = None,
        messages: list[dict] | None = None,
        tenant: str | None = None,
    ) -> Observation:
        """Starts the request's CLIENT span (`chat {model}` for a model the router serves, else `chat`),
        continuing the client's `traceparent` (or Ray Serve's trace context when Serve tracing is on). Never
        raises."""
        started = self.clock()
        span: trace.Span = trace.INVALID_SPAN  # as the no-op tracer's, without the context and attributes it ignores
        if not self._tracer_is_noop:
            try:
                facts = (  # `start_attributes`' arguments
                    request_id,
                    requested_model,
                    stream,
                    max_tokens,
                    prompt_tokens_estimated,
                    user,
                    session_id,
                    tenant,
                    self._input_json(messages),
                )
                name = span_name("chat", requested_model, known_models=self._span_models)
                context = self._parent_context(headers)
                if self._defer_start:
                    span = self._tracer.start_span(name, context=context, kind=SpanKind.CLIENT)
                    if isinstance(span, LightSpan):
                        span.defer(start_attributes, facts)
                else:
                    span = self._tracer.start_span(
                        name, context=context, kind=SpanKind.CLIENT, attributes=start_attributes(*facts)
                    )
            except Exception:
                self.metrics.dropped_items("span")
        return Observation(
            telemetry=self,
            span=span,
            started=started,
            request_id=request_id,
            requested_model=requested_model,
            stream=stream,
            prompt_tokens_estimated=prompt_tokens_estimated,
        )

    @staticmethod
    def _parent_context(headers: Mapping[str, str]) -> Any:
        """The client's remote span if it sent one (baggage is not trusted), else the current context."""
        extracted = propagate.extract({k.lower(): v for k, v in headers.items()})
        remote = trace.get_current_span(extracted)
        if remote.get_span_context().is_valid:
            return trace.set_span_in_context(remote)
        return None  # start_span then uses the current context: Ray Serve's span when its tracing is on

    def _input_json(self, messages: list[dict] | None) -> str | None:
        """The prompt as Langfuse's input, only with content capture."""
        if not self.capture_content or messages is None:
            return None
        try:
            return span_json(messages)
        except Exception:
            self.metrics.dropped_items("span")
            return None

    # ---- state and lifecycle --------------------------------------------------------------------------------

    def set_backend_state(self, backend: str, *, ready: bool, inflight: int) -> None:
        """Gauges router_backend_ready / router_inflight_requests."""
        self.metrics.backend_state(backend=backend, ready=ready, inflight=inflight)

    def shutdown(self) -> None:
        """Flushes and stops exporters, waiting at most `shutdown_timeout_s`; idempotent, never hangs."""
        if self._shut:
            return
        self._shut = True
        atexit.unregister(self.shutdown)
        langfuse, provider, owns = self.langfuse, self.provider, self._owns_provider

        def stop() -> None:
            if langfuse is not None:
                langfuse.shutdown()
            if owns:
                provider.shutdown()

        if not bounded_call(stop, timeout_s=self._shutdown_timeout_s, name="shutdown"):
            logger.warning("telemetry shutdown gave up after %.1fs; unsent spans are lost", self._shutdown_timeout_s)
        if self.request_log is not None:
            self.request_log.close(self._shutdown_timeout_s)
        for accounting in (self.otlp_accounting, self.langfuse_accounting):
            if accounting is not None:
                accounting.abandon()  # after a complete shutdown nothing is left, so this counts nothing
