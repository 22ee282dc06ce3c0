"""One request's telemetry: its span (also its Langfuse generation), usage, cost and metrics; never raises.

The router calls `routed()` (once, or twice on fallback), wraps the backend stream in `observe()` and calls
`finish()` from `finally`. Chunks pass through untouched; every hook is guarded and a failing sink costs the
response nothing but a count in `router_telemetry_dropped_total{sink}`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from serve_app.errors import RouterError
from serve_app.telemetry.cost import RequestCost
from serve_app.telemetry.request_log import RequestFeatures, build_record, http_status
from serve_app.telemetry.tracing import backend_context
from serve_app.usage import Usage, accumulate_openai_chunk

if TYPE_CHECKING:
    from serve_app.telemetry.sink import Telemetry

logger = logging.getLogger(__name__)

OUTCOMES = ("ok", "error", "cancelled")
_LF = "langfuse.observation."


def error_type(error: BaseException | None) -> str:
    """`error.type`: the RouterError kind, else the exception class name, else `_OTHER`."""
    if error is None:
        return "_OTHER"
    if isinstance(error, RouterError):
        return error.kind
    return type(error).__name__


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
        self._usage = Usage()
        self._usage_known = False
        self._chunks = 0
        self._content_chunks = 0
        self._first_token_at: float | None = None
        self._first_token_ns: int | None = None
        self._response_model: str | None = None
        self._finish_reasons: dict[int, str] = {}
        self._text: list[str] | None = [] if telemetry.capture_content else None
        self._cost: RequestCost | None = None
        self._features: RequestFeatures | None = None
        self._finished = False

    # ---- what the router tells us -------------------------------------------------------------------------

    def routed(self, *, backend: str, provider: str, model: str, reason: str, fallback: bool) -> None:
        """Records the backend chosen; a second call (fallback) replaces the first and counts a fallback."""
        try:
            now = self._tel.clock()
            first = self._routed_at is None
            self._backend, self._model, self._reason = backend, model, reason
            self._routed_at = now
            if self._chunks == 0:  # a failure before the first chunk leaves nothing to carry over
                self._usage, self._usage_known = Usage(), False
            self._span.set_attributes(
                {
                    "llm.backend": backend,
                    "llm.route.reason": reason,
                    "llm.fallback": fallback,
                    "gen_ai.provider.name": provider,
                    _LF + "model.name": model,
                    _LF + "metadata.backend": json.dumps(backend),
                    _LF + "metadata.route_reason": json.dumps(reason),
                }
            )
        except Exception:
            self._tel.metrics.dropped_items("span")
            return
        if first:
            self._tel.metrics.overhead(backend=backend, seconds=now - self._started)
        if fallback:
            self._tel.metrics.fallback(backend=backend, route_reason=reason)

    def request_params(self, *, dropped: tuple[str, ...], translated: tuple[str, ...]) -> None:
        """Records the request fields the chosen backend will not get, and those it gets translated (names only)."""
        try:
            self._span.set_attributes(
                {
                    "llm.request.dropped_params": list(dropped),
                    "llm.request.translated_params": list(translated),
                    _LF + "metadata.dropped_params": json.dumps(list(dropped)),
                    _LF + "metadata.translated_params": json.dumps(list(translated)),
                }
            )
        except Exception:
            self._tel.metrics.dropped_items("span")

    def saw(self, features: RequestFeatures) -> None:
        """What the policy saw (request features, backend state at decision time), for the request log."""
        self._features = features

    async def observe(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Yields every chunk of `chunks` untouched while accumulating usage, model, finish reasons and TTFT.

        Closing this iterator (or cancelling its task) closes `chunks` too. It never ends the observation:
        the router calls `finish()` with the outcome it knows. Each step of `chunks` runs with the request's
        span as the current span, so the backend's calls (HTTP client spans, the trace context sent to the
        model replica) join its trace; the context is restored before each chunk is handed on.
        """
        scope = backend_context(self._span)
        try:
            while True:
                token = otel_context.attach(scope)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                self._on_chunk(chunk)
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.debug("closing the backend stream failed", exc_info=True)

    def _on_chunk(self, chunk: Mapping[str, Any]) -> None:
        try:
            self._chunks += 1
            if chunk.get("usage"):
                self._usage = accumulate_openai_chunk(chunk=chunk, snapshot=self._usage)
                self._usage_known = True
            if model := chunk.get("model"):
                self._response_model = model
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or choice.get("message") or {}
                content = delta.get("content")
                if content or delta.get("tool_calls") or delta.get("reasoning_content"):
                    self._content_chunks += 1
                    if self._first_token_at is None:
                        self._first_token_at = self._tel.clock()
                        self._first_token_ns = time.time_ns()
                    if self._text is not None and isinstance(content, str):
                        self._text.append(content)
                if reason := choice.get("finish_reason"):
                    self._finish_reasons[int(choice.get("index") or 0)] = reason
        except Exception:
            self._tel.metrics.dropped_items("observe")

    # ---- what the router reads ----------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def cost_usd(self) -> float | None:
        """Cost on the backend that answered; None until usage is known (or when no price applies)."""
        if self._cost is not None:
            return None if self._cost.actual is None else self._cost.actual.total
        if not self._usage_known or self._backend is None or self._model is None:
            return None
        try:
            cost = self._tel.price(backend=self._backend, model=self._model, usage=self._usage)
        except Exception:
            return None
        return None if cost.actual is None else cost.actual.total

    def trace_headers(self) -> dict[str, str]:
        """W3C trace context of this request's span, for a backend call that should join the trace."""
        headers: dict[str, str] = {}
        try:
            propagate.inject(headers, context=trace.set_span_in_context(self._span))
        except Exception:
            self._tel.metrics.dropped_items("span")
        return headers

    # ---- the end ------------------------------------------------------------------------------------------

    def finish(self, *, outcome: str, error: BaseException | None = None) -> None:
        """Ends the observation once (later calls do nothing); safe in `finally`, after CancelledError too."""
        if self._finished:
            return
        self._finished = True
        now = self._tel.clock()
        usage, estimated = self._final_usage(outcome)
        cost = self._settle_cost(usage)
        self._usage = usage
        ttft = None if self._first_token_at is None else self._first_token_at - self._started
        try:
            self._end_span(
                outcome=outcome,
                error=error,
                usage=usage,
                estimated=estimated,
                cost=cost,
                latency=now - self._started,
                ttft=ttft,
            )
        except Exception:
            self._tel.metrics.dropped_items("span")
            self._end_span_quietly()
        self._tel.metrics.request_finished(
            backend=self._backend,
            model=self._model if self._backend else self._requested_model,
            route_reason=self._reason,
            outcome=outcome,
            requested=self._requested_model,
            stream=self._stream,
            duration_s=now - self._started,
            ttft_s=ttft if self._stream else None,
            token_buckets=_token_buckets(usage),
            cost_usd=None if cost is None or cost.actual is None else cost.actual.total,
            counterfactual_usd=None if cost is None or cost.counterfactual is None else cost.counterfactual.total,
        )
        if self._tel.request_log is not None:
            self._log(outcome=outcome, error=error, usage=usage, cost=cost, latency=now - self._started, ttft=ttft)

    def _log(
        self,
        *,
        outcome: str,
        error: BaseException | None,
        usage: Usage,
        cost: RequestCost | None,
        latency: float,
        ttft: float | None,
    ) -> None:
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
                model_served=self._response_model or self._model,
                status=http_status(outcome=outcome, error=error, stream=self._stream, started=self._chunks > 0),
                outcome=outcome,
                error_type=None if outcome == "ok" else error_type(error),
                usage=usage,
                ttft_s=ttft,
                cost=cost,
            )
        except Exception:
            self._tel.metrics.dropped_items("request_log")
            return
        log.write(record)

    def _final_usage(self, outcome: str) -> tuple[Usage, bool]:
        """Reported usage if any; else, once a backend produced chunks, an estimate (flagged); else nothing.

        A stream that ended early may have streamed more than its last count says: Anthropic reports output
        tokens in `message_start` (about 1) and then only in `message_delta` at the end. Every content chunk
        carries at least one token, so the output is then at least the content chunks seen (flagged).
        """
        if self._chunks == 0 or self._backend is None:
            return self._usage, False
        if not self._usage_known:
            return Usage(input=self._prompt_tokens_estimated, output=self._content_chunks), True
        if outcome != "ok" and self._content_chunks > self._usage.output:
            return replace(self._usage, output=self._content_chunks), True
        return self._usage, False

    def _settle_cost(self, usage: Usage) -> RequestCost | None:
        if self._backend is None or self._model is None:
            return None
        try:
            self._cost = self._tel.price(backend=self._backend, model=self._model, usage=usage)
        except Exception:
            self._tel.metrics.dropped_items("span")
            return None
        return self._cost

    def _end_span(
        self,
        *,
        outcome: str,
        error: BaseException | None,
        usage: Usage,
        estimated: bool,
        cost: RequestCost | None,
        latency: float,
        ttft: float | None,
    ) -> None:
        attrs: dict[str, Any] = {
            "llm.outcome": outcome,
            "llm.latency_ms": latency * 1000.0,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.output,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read,
            "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation,
            _LF + "usage_details": json.dumps(usage.to_buckets()),
        }
        if estimated:
            attrs["llm.usage.estimated"] = True
        if self._response_model:
            attrs["gen_ai.response.model"] = self._response_model
        if self._finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = [self._finish_reasons[i] for i in sorted(self._finish_reasons)]
        if ttft is not None:
            attrs["llm.ttft_ms"] = ttft * 1000.0
            if self._stream:
                attrs["gen_ai.response.time_to_first_chunk"] = ttft
            if self._first_token_ns is not None:
                when = datetime.fromtimestamp(self._first_token_ns / 1e9, tz=UTC)
                attrs[_LF + "completion_start_time"] = json.dumps(when.isoformat())
        if cost is not None and cost.actual is not None:
            attrs["llm.cost_usd"] = cost.actual.total
            attrs[_LF + "cost_details"] = json.dumps(cost.actual.to_details())
        if cost is not None and cost.counterfactual is not None:
            attrs["llm.counterfactual_cost_usd"] = cost.counterfactual.total
        if self._text is not None:
            attrs[_LF + "output"] = json.dumps({"role": "assistant", "content": "".join(self._text)})
        match outcome:
            case "ok":
                pass
            case "cancelled":
                attrs[_LF + "level"] = "WARNING"
                attrs[_LF + "status_message"] = "cancelled by the client"
            case _:
                kind = error_type(error)
                attrs["error.type"] = kind
                attrs[_LF + "status_message"] = kind
                self._span.set_status(Status(StatusCode.ERROR, kind))
        self._span.set_attributes(attrs)
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
