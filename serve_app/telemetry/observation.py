"""One request's telemetry: its span (also its Langfuse generation) and metrics, recorded from a finished result.

The router calls `routed()` (once, or twice on fallback) and, when the request is over, `record()` with the
`ChatResult` that the request's owner (`chat_stream.ChatStream`) built: usage, cost, outcome. Nothing here reads
chunks, prices tokens or closes streams. Every hook is guarded and a failing sink costs the response nothing but
a count in `router_telemetry_dropped_total{sink}`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from serve_app.errors import RouterError
from serve_app.telemetry.cost import RequestCost
from serve_app.telemetry.light_span import LightSpan
from serve_app.telemetry.request_log import RequestFeatures, build_record, http_status
from serve_app.telemetry.span_attributes import EndFacts, end_attributes, params_attributes, routed_attributes
from serve_app.telemetry.tracing import backend_context
from serve_app.usage import Usage

if TYPE_CHECKING:
    from serve_app.telemetry.sink import Telemetry

logger = logging.getLogger(__name__)

OUTCOMES = ("ok", "error", "cancelled")


def error_type(error: BaseException | None) -> str:
    """`error.type`: the RouterError kind, else the exception class name, else `_OTHER`."""
    if error is None:
        return "_OTHER"
    if isinstance(error, RouterError):
        return error.kind
    return type(error).__name__


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A finished request as its owner saw it; what telemetry records and the client was told."""

    outcome: str  # one of OUTCOMES
    error: BaseException | None = None
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False
    cost: RequestCost | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    first_token_at: float | None = None  # on the telemetry clock
    first_token_ns: int | None = None  # wall clock, for Langfuse's completion start time
    text: str | None = None  # the completion, only when content capture is on
    started: bool = False  # the backend produced at least one chunk (the client got a status and maybe a body)


class Observation:
    """Telemetry of one request; created by `Telemetry.begin`."""

    def __init__(
        self,
        *,
        telemetry: Telemetry,
        span: Span,
        started: float,
        request_id: str,
        requested_model: str,
        stream: bool,
        prompt_tokens_estimated: int,
    ) -> None:
        self._tel = telemetry
        self._span = span
        self._started = started
        self._request_id = request_id
        self._requested_model = requested_model
        self._stream = stream
        self._prompt_tokens_estimated = prompt_tokens_estimated
        self._backend: str | None = None
        self._model: str | None = None
        self._reason: str | None = None
        self._routed_at: float | None = None
        self._features: RequestFeatures | None = None
        self._backend_scope = backend_context(span)
        self._finished = False

    # ---- what the router tells us -------------------------------------------------------------------------

    def routed(self, *, backend: str, provider: str, model: str, reason: str, fallback: bool) -> None:
        """Records the backend chosen; a second call (fallback) replaces the first and counts a fallback."""
        try:
            now = self._tel.clock()
            first = self._routed_at is None
            self._backend, self._model, self._reason = backend, model, reason
            self._routed_at = now
            self._update(routed_attributes, backend, provider, model, reason, fallback)
        except Exception:
            self._tel.metrics.dropped_items("span")
            return
        if first:
            self._tel.metrics.overhead(backend=backend, seconds=now - self._started)
        if fallback:
            self._tel.metrics.fallback(backend=backend, route_reason=reason)

    def request_params(self, *, dropped: tuple[str, ...], translated: tuple[str, ...]) -> None:
        """Records the request fields the chosen backend will not get, and those it gets translated (names only).
        An empty list is not recorded: absent means none (four attributes fewer to encode on most spans)."""
        if not dropped and not translated:
            return
        try:
            self._update(params_attributes, tuple(dropped), tuple(translated))
        except Exception:
            self._tel.metrics.dropped_items("span")

    def saw(self, features: RequestFeatures) -> None:
        """What the policy saw (request features, backend state at decision time), for the request log."""
        self._features = features

    @contextlib.contextmanager
    def backend_step(self) -> Iterator[None]:
        """Runs one step of the backend's stream with the request's span as the current span, so its calls (HTTP
        client spans, the trace context sent to the model replica) join the trace; restored before the chunk goes on.
        """
        token = otel_context.attach(self._backend_scope)
        try:
            yield
        finally:
            otel_context.detach(token)

    # ---- what the router reads ----------------------------------------------------------------------------

    def trace_headers(self) -> dict[str, str]:
        """W3C trace context of this request's span, for a backend call that should join the trace."""
        headers: dict[str, str] = {}
        try:
            propagate.inject(headers, context=trace.set_span_in_context(self._span))
        except Exception:
            self._tel.metrics.dropped_items("span")
        return headers

    # ---- the end ------------------------------------------------------------------------------------------

    def record(self, result: ChatResult) -> None:
        """Ends the observation with `result` once (later calls do nothing); never raises."""
        if self._finished:
            return
        self._finished = True
        now = self._tel.clock()
        cost = result.cost
        ttft = None if result.first_token_at is None else result.first_token_at - self._started
        try:
            self._end_span(result, latency=now - self._started, ttft=ttft)
        except Exception:
            self._tel.metrics.dropped_items("span")
            self._end_span_quietly()
        self._tel.metrics.request_finished(
            backend=self._backend,
            model=self._model if self._backend else self._requested_model,
            route_reason=self._reason,
            outcome=result.outcome,
            requested=self._requested_model,
            stream=self._stream,
            duration_s=now - self._started,
            ttft_s=ttft if self._stream else None,
            token_buckets=_token_buckets(result.usage),
            cost_usd=None if cost is None or cost.actual is None else cost.actual.total,
            counterfactual_usd=None if cost is None or cost.counterfactual is None else cost.counterfactual.total,
        )
        if self._tel.request_log is not None:
            self._log(result, latency=now - self._started, ttft=ttft)

    def _log(self, result: ChatResult, *, latency: float, ttft: float | None) -> None:
        log = self._tel.request_log
        assert log is not None
        try:
            record = build_record(
                request_id=self._request_id,
                t_end=log.wall_clock(),
                latency_s=latency,
                requested_model=self._requested_model,
                stream=self._stream,
                prompt_tokens_estimated=self._prompt_tokens_estimated,
                max_tokens=self._features.route.output_tokens if self._features else None,
                features=self._features,
                backend=self._backend,
                reason=self._reason,
                model_served=result.response_model or self._model,
                status=http_status(
                    outcome=result.outcome, error=result.error, stream=self._stream, started=result.started
                ),
                outcome=result.outcome,
                error_type=None if result.outcome == "ok" else error_type(result.error),
                usage=result.usage,
                ttft_s=ttft,
                cost=result.cost,
            )
        except Exception:
            self._tel.metrics.dropped_items("request_log")
            return
        log.write(record)

    def _update(self, mapping: Callable[..., dict[str, Any]], *facts: Any) -> None:
        """Sets the attributes `mapping(*facts)` gives: now on the SDK's span, in the export process on a LightSpan,
        never on a span that records nothing (sampled out, or telemetry off)."""
        if isinstance(self._span, LightSpan):
            self._span.defer(mapping, facts)
        elif self._span.is_recording():
            self._span.set_attributes(mapping(*facts))

    def _end_span(self, result: ChatResult, *, latency: float, ttft: float | None) -> None:
        if not self._span.is_recording():  # telemetry off, or sampled out: nothing to fill or end
            return
        usage, cost = result.usage, result.cost
        actual = None if cost is None else cost.actual
        counterfactual = None if cost is None else cost.counterfactual
        kind = None
        if result.outcome not in ("ok", "cancelled"):
            kind = error_type(result.error)
            self._span.set_status(Status(StatusCode.ERROR, kind))
        facts = EndFacts(
            outcome=result.outcome,
            latency_ms=latency * 1000.0,
            usage=(usage.input, usage.output, usage.cache_read, usage.cache_creation),
            usage_estimated=result.usage_estimated,
            response_model=result.response_model,
            finish_reasons=result.finish_reasons,
            ttft_s=ttft,
            stream=self._stream,
            first_token_ns=result.first_token_ns,
            cost=None if actual is None else (actual.input, actual.output, actual.cache_read, actual.cache_creation),
            counterfactual_usd=None if counterfactual is None else counterfactual.total,
            text=result.text,
            error_kind=kind,
        )
        self._update(end_attributes, facts)
        self._span.end()

    def _end_span_quietly(self) -> None:
        try:
            if self._span.is_recording():
                self._span.end()
        except Exception:
            logger.debug("span end failed", exc_info=True)


def _token_buckets(usage: Usage) -> dict[str, int]:
    return {
        "input": usage.input,
        "output": usage.output,
        "cache_read": usage.cache_read,
        "cache_creation": usage.cache_creation,
    }
