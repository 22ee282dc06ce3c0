"""The model replica's spans: one SERVER span per request, a CLIENT span into vLLM, and the context vLLM continues.

The router sends the request's W3C trace context in the body (`LOCAL_TRACE_KEY`). Here it becomes the parent of
`model chat` (SERVER, service `hybrid-llm-model`), whose child `engine generate` (CLIENT, `peer.service=vllm`) is
the parent handed to vLLM as `traceparent`; vLLM's own `llm_request` span (SERVER, service `vllm`) continues it
when its `otlp_traces_endpoint` is set. Tempo's service graph pairs these CLIENT and SERVER spans into the edges
router → model → engine. The replica's TracerProvider is its own: never the global one (vLLM sets that itself).
No span here carries a `gen_ai.*` attribute, so none can be taken for a Langfuse generation.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serve_app.config import TelemetryArgs
from serve_app.telemetry.tracing import (
    AccountedBatchProcessor,
    ExportAccounting,
    bounded_call,
    build_otlp_exporter,
    otlp_configured,
    otlp_traces_target,
    service_version,
)

logger = logging.getLogger(__name__)

MODEL_TRACER_NAME = "hybrid_llm.model"
MODEL_SERVICE_NAME = "hybrid-llm-model"
ENGINE_SERVICE_NAME = "vllm"  # service.name of vLLM's own spans (its provider reads OTEL_SERVICE_NAME)
ENGINE_ENDPOINT_KEY = "otlp_traces_endpoint"  # vLLM's engine argument
_SHUTDOWN_TIMEOUT_S = 2.0
_W3C = TraceContextTextMapPropagator()


def engine_tracing(
    engine_kwargs: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """vLLM's engine arguments with its span export turned on, and the process variables its exporter reads.

    An `otlp_traces_endpoint` in `engine_kwargs` is the operator's and is kept as it is (nothing else changes).
    Otherwise, when the OTel variables name an endpoint, vLLM exports there too: vLLM reads only
    `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (default gRPC) and takes the endpoint verbatim, so both are resolved
    here as the router's exporter resolves them, and its spans get their own service name.
    """
    kwargs = dict(engine_kwargs)
    if ENGINE_ENDPOINT_KEY in kwargs or not otlp_configured(environ):
        return kwargs, {}
    endpoint, protocol = otlp_traces_target(environ)
    if endpoint is None:
        return kwargs, {}
    kwargs[ENGINE_ENDPOINT_KEY] = endpoint
    return kwargs, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol, "OTEL_SERVICE_NAME": ENGINE_SERVICE_NAME}


class RequestTrace:
    """One request's spans on the model replica; `engine_headers` is the trace context to hand vLLM."""

    def __init__(self, server: trace.Span, client: trace.Span, engine_headers: dict[str, str]) -> None:
        self._server = server
        self._client = client
        self.engine_headers = engine_headers
        self._ended = False

    def end(self, error: BaseException | None = None) -> None:
        """Ends both spans (idempotent, never raises); `error` marks them failed, a cancellation is not one."""
        if self._ended:
            return
        self._ended = True
        try:
            for span in (self._client, self._server):
                if isinstance(error, Exception):
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                    span.set_attribute("error.type", type(error).__name__)
                elif error is not None:
                    span.set_attribute("llm.cancelled", True)
                span.end()
        except Exception:
            logger.debug("ending the model replica's spans failed", exc_info=True)


class ModelTracing:
    """The model replica's tracer (a no-op one without an OTLP endpoint) and whether vLLM exports spans."""

    def __init__(self, *, provider: TracerProvider | None, engine_traced: bool, model: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(MODEL_TRACER_NAME, service_version()) if provider else trace.NoOpTracer()
        self._engine_traced = engine_traced
        self._model = model
        self._shut = False
        if provider is not None:
            atexit.register(self.shutdown)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        engine_traced: bool,
        model: str,
        on_drop: Callable[[int], None],
        args: TelemetryArgs | None = None,
    ) -> ModelTracing:
        """Exports through OTLP when the OTel endpoint variables are set (never raises: no spans then)."""
        provider = None
        if otlp_configured(environ):
            args = args or TelemetryArgs()
            try:
                resource = Resource.create({"service.name": MODEL_SERVICE_NAME, "service.version": service_version()})
                provider = TracerProvider(
                    resource=resource,
                    shutdown_on_exit=False,  # `shutdown` bounds the wait
                )
                accounting = ExportAccounting(capacity=args.export_queue_size, on_drop=on_drop)
                provider.add_span_processor(AccountedBatchProcessor(build_otlp_exporter(args, environ), accounting))
            except Exception:
                logger.exception("the model replica's OTLP exporter could not be built; its spans are off")
                provider = None
        return cls(provider=provider, engine_traced=engine_traced, model=model)

    def begin(self, trace_context: object) -> RequestTrace:
        """Starts the request's spans under the router's `trace_context` (a W3C header dict, or anything else
        for none); never raises."""
        carrier = trace_context if isinstance(trace_context, dict) else {}
        try:
            parent = _W3C.extract({str(k): str(v) for k, v in carrier.items()})
            server = self._tracer.start_span(
                "model chat",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"llm.backend": "local", "llm.model": self._model},
            )
            client = self._tracer.start_span(
                "engine generate",
                context=trace.set_span_in_context(server),
                kind=SpanKind.CLIENT,
                attributes={"peer.service": ENGINE_SERVICE_NAME, "llm.model": self._model},
            )
            headers: dict[str, str] = {}
            if self._engine_traced:
                if client.get_span_context().is_valid:
                    _W3C.inject(headers, context=trace.set_span_in_context(client))
                else:  # no spans here: vLLM continues the router's span directly
                    headers = {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}
            return RequestTrace(server, client, headers)
        except Exception:
            logger.debug("starting the model replica's spans failed", exc_info=True)
            return RequestTrace(trace.INVALID_SPAN, trace.INVALID_SPAN, {})

    def shutdown(self) -> None:
        """Flushes the replica's spans, waiting at most a fixed time; idempotent."""
        if self._shut or self._provider is None:
            return
        self._shut = True
        atexit.unregister(self.shutdown)
        provider = self._provider
        if not bounded_call(provider.shutdown, timeout_s=_SHUTDOWN_TIMEOUT_S, name="model-shutdown"):
            logger.warning("the model replica's span export gave up after %.1fs", _SHUTDOWN_TIMEOUT_S)
