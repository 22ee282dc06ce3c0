"""The cloud backend: Anthropic Messages API through `anthropic.AsyncAnthropic`, and the one error map.

It owns the client (on aiohttp or httpx2), the upstream HTTP stream and the SDK and transport exceptions;
translation lives in `anthropic_mapping` (pure). It never logs the API key and never lets it into an error message.
Its HTTP client is instrumented on its own (never globally): each upstream call is a CLIENT span, child of the
router span, on the router's TracerProvider, and sends `traceparent` upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import httpx2
from aiohttp.http_exceptions import HttpProcessingError
from anthropic._response import StreamAlreadyConsumed
from anthropic.lib._extras._common import MissingDependencyError
from anthropic.lib.credentials._workload import WorkloadIdentityError
from anthropic.lib.foundry import MutuallyExclusiveAuthError
from anthropic.lib.tools._toolsets._errors import ToolsetUsageError
from opentelemetry import propagate
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, Span, TracerProvider

from serve_app.backends.anthropic_errors import parse_retry_after, redact, upstream_error
from serve_app.backends.anthropic_mapping import new_stream_state, to_anthropic_request, translate_event
from serve_app.backends.base import BackendName, BackendState
from serve_app.config import CloudBackendArgs
from serve_app.errors import (
    RouterError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serve_app.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)

BACKEND: BackendName = "cloud"
PEER_SERVICE = "anthropic"  # `peer.service` of the HTTP client span: Tempo's service graph names the edge by it


# ---------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class _Rule:
    exc_type: type[BaseException]
    build: Callable[[Any, str, str | None], RouterError]  # (exc, backend, secret) -> RouterError


def _from_status(exc: anthropic.APIStatusError, backend: str, secret: str | None) -> RouterError:
    return upstream_error(
        status=exc.status_code,
        error_type=exc.type,
        message=redact(exc.api_message or exc.message, secret) + _request_id(exc.request_id),
        backend=backend,
        retry_after=parse_retry_after(exc.response.headers, now=time.time()),
    )


def _fixed(cls: type[UpstreamError], message: str) -> Callable[[Any, str, str | None], RouterError]:
    def build(exc: BaseException, backend: str, secret: str | None) -> RouterError:
        return cls(f"{message}: {redact(_text(exc), secret)}", backend=backend)

    return build


def _internal(exc: BaseException, backend: str, secret: str | None) -> RouterError:
    return RouterError(f"internal error using the Anthropic SDK ({type(exc).__name__}): {redact(_text(exc), secret)}")


def _text(exc: BaseException) -> str:
    """`str(exc)`, or the class name when the exception cannot describe itself (the error path must not raise)."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


# Most specific first; the first rule whose type the exception is an instance of wins. The last two are the
# roots: tests/unit/test_anthropic_errors.py fails if any SDK exception class only reaches those.
RULES: tuple[_Rule, ...] = (
    _Rule(anthropic.APITimeoutError, _fixed(UpstreamTimeout, "Anthropic request timed out")),
    _Rule(anthropic.APIConnectionError, _fixed(UpstreamUnavailable, "cannot reach the Anthropic API")),
    _Rule(anthropic.APIStatusError, _from_status),
    _Rule(anthropic.APIResponseValidationError, _fixed(UpstreamError, "Anthropic sent an invalid response")),
    _Rule(anthropic.APIWebhookValidationError, _fixed(UpstreamError, "Anthropic webhook validation failed")),
    _Rule(anthropic.RetryableError, _fixed(UpstreamUnavailable, "Anthropic request failed (retries exhausted)")),
    _Rule(anthropic.CredentialsError, _fixed(UpstreamAuthFailed, "no usable Anthropic credentials")),
    _Rule(WorkloadIdentityError, _fixed(UpstreamAuthFailed, "Anthropic workload identity exchange failed")),
    _Rule(MutuallyExclusiveAuthError, _fixed(UpstreamAuthFailed, "conflicting Anthropic credentials")),
    # Misuse of the SDK by this process (a bug here, not an upstream failure): a plain 500.
    _Rule(StreamAlreadyConsumed, _internal),
    _Rule(MissingDependencyError, _internal),
    _Rule(ToolsetUsageError, _internal),
    # Raised by the HTTP layer while the body streams, after the SDK has handed the response over.
    _Rule(httpx2.TimeoutException, _fixed(UpstreamTimeout, "Anthropic stream timed out")),
    _Rule(httpx2.TransportError, _fixed(UpstreamUnavailable, "Anthropic stream broke off")),
    _Rule(httpx2.StreamError, _fixed(UpstreamUnavailable, "Anthropic stream unusable")),
    _Rule(httpx2.HTTPError, _fixed(UpstreamUnavailable, "Anthropic response unusable")),  # decoding, redirects
    # aiohttp transport (cloud.http_client): the SDK's transport translates most aiohttp errors into the httpx2
    # ones above; these are what it lets through while the body streams.
    _Rule(aiohttp.ServerTimeoutError, _fixed(UpstreamTimeout, "Anthropic stream timed out")),
    _Rule(aiohttp.ClientError, _fixed(UpstreamUnavailable, "Anthropic stream broke off")),
    _Rule(HttpProcessingError, _fixed(UpstreamUnavailable, "Anthropic sent a malformed HTTP response")),
    _Rule(anthropic.APIError, _fixed(UpstreamError, "Anthropic API error")),
    _Rule(anthropic.AnthropicError, _fixed(UpstreamError, "Anthropic client error")),
)
ROOTS: tuple[type[BaseException], ...] = (anthropic.APIError, anthropic.AnthropicError)


def rule_for(exc_type: type[BaseException]) -> _Rule | None:
    """The rule that maps `exc_type`, or None when nothing does."""
    return next((rule for rule in RULES if issubclass(exc_type, rule.exc_type)), None)


def to_router_error(exc: BaseException, *, backend: str = BACKEND, secret: str | None = None) -> RouterError | None:
    """The RouterError for an SDK or HTTP exception, or None if `exc` is not one."""
    rule = rule_for(type(exc))
    return None if rule is None else rule.build(exc, backend, secret)


@contextmanager
def map_anthropic_errors(*, backend: str = BACKEND, secret: str | None = None) -> Iterator[None]:
    """Re-raises SDK and transport exceptions as the most specific `RouterError`, `from` the original."""
    try:
        yield
    except (anthropic.AnthropicError, httpx2.HTTPError, aiohttp.ClientError, HttpProcessingError) as exc:
        error = to_router_error(exc, backend=backend, secret=secret)
        if error is None:  # pragma: no cover - every AnthropicError/HTTPError has a rule
            raise
        raise error from exc


def _decode(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise UpstreamError(f"Anthropic sent a malformed stream event: {data[:200]!r}", backend=BACKEND) from exc
    if not isinstance(event, dict):
        raise UpstreamError(f"Anthropic sent a stream event that is not an object: {data[:200]!r}", backend=BACKEND)
    return event


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _request_id(request_id: str | None) -> str:
    return f" (request-id {request_id})" if request_id else ""


# --------------------------------------------------------------------------------------------- backend


class AnthropicBackend:
    """Backend over the Anthropic Messages API; always streams upstream (the router aggregates)."""

    name: BackendName = BACKEND
    provider = "anthropic"

    def __init__(
        self,
        args: CloudBackendArgs,
        *,
        api_key: str | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`tracer_provider`: the router's; with it every upstream HTTP call is a span of its own (see
        `http_client`). A given `client` is used as it is."""
        self._args = args
        self.model_ids = args.model_ids
        self._key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY") or None
        if client is None and self._key:
            client = anthropic.AsyncAnthropic(
                http_client=http_client(args.http_client, tracer_provider),
                api_key=self._key,  # explicit: the SDK then reads no credential files or other env
                base_url=args.base_url,  # None: the SDK reads ANTHROPIC_BASE_URL
                timeout=anthropic.Timeout(args.timeout_s, connect=args.connect_timeout_s),
                max_retries=args.max_retries,
                open_telemetry=False,  # the router's span is the one span (and Langfuse generation) per request
            )
        self._client = client
        # Shares the connection pool; used when another backend can take the request right away.
        self._no_retry_client = client.with_options(max_retries=0) if client is not None else None

    def state(self) -> BackendState:
        if self._client is None:
            return BackendState(ready=False, detail="no Anthropic API key configured (ANTHROPIC_API_KEY)")
        if not (getattr(self._client, "api_key", None) or getattr(self._client, "auth_token", None)):
            return BackendState(ready=False, detail="the Anthropic client has no API key")
        return BackendState(ready=True, detail="anthropic")

    async def stream(
        self, request: ChatCompletionRequest, *, model: str, request_id: str, fail_fast: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Streams the answer; with `fail_fast` (a local fallback is ready) the SDK does not retry, so a 429 or
        529 hands the request to the local model at once instead of after the SDK's backoff."""
        if self._client is None:
            raise UpstreamAuthFailed("no Anthropic API key configured", backend=BACKEND)
        call = to_anthropic_request(
            request,
            model=model,
            default_max_tokens=self._args.default_max_tokens,
            cache_system_min_tokens=self._args.cache_system_prompt_min_tokens,
        )
        state = new_stream_state(completion_id=f"chatcmpl-{request_id}", model=model, created=int(time.time()))
        client = self._no_retry_client if fail_fast and self._no_retry_client is not None else self._client
        create = client.messages.with_streaming_response.create
        idle_s = self._args.timeout_s
        try:
            with map_anthropic_errors(backend=BACKEND, secret=self._key):
                # `async with` closes the upstream response however this generator ends (aclose, cancel, error)
                async with create(**call.params, stream=True) as response:
                    logger.debug("anthropic stream %s started, request-id %s", request_id, response.request_id)
                    events = anthropic.AsyncStream.raw_events(response.http_response)
                    try:
                        while True:
                            # The router's own deadline between events, beside the transport's read timeout: a
                            # transport can wait past its own (aiohttp does on a malformed chunked body). Entered
                            # and left inside each wait, so it cancels the task that waits (the body may be
                            # iterated by another task than the one that took the first event) and never runs
                            # across a yield (the consumer's pace is not the upstream's).
                            async with asyncio.timeout(idle_s):
                                sse = await anext(events, None)
                            if sse is None:
                                break
                            if sse.data:
                                state, chunks = translate_event(state, _decode(sse.data), backend=BACKEND)
                                for chunk in chunks:
                                    yield chunk
                    finally:
                        await _aclose(events)
        except TimeoutError:
            raise UpstreamTimeout(f"no data from the Anthropic stream for {idle_s:g}s", backend=BACKEND) from None
        if not state.finished:
            raise UpstreamUnavailable(
                "the Anthropic stream ended before message_stop (connection dropped)", backend=BACKEND
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def http_client(kind: str, tracer_provider: TracerProvider | None) -> Any:
    """The SDK's own httpx2 client for `kind` (same defaults as it builds itself), instrumented when a provider is
    given. Both kinds are httpx2 clients (aiohttp only as the transport), so one instrumentation covers both; it
    wraps this client's transports only and leaves every other client of the process alone. The API's no-op
    provider (the router's telemetry without HTTP client spans) means the trace context only: a request hook
    injects `traceparent` (the router span's), without the instrumentation's per-request attribute work."""
    # The aiohttp session inside opens lazily, on the event loop of the first request.
    client = anthropic.DefaultAioHttpClient() if kind == "aiohttp" else anthropic.DefaultAsyncHttpxClient()
    if isinstance(tracer_provider, NoOpTracerProvider):
        client.event_hooks["request"].append(_inject_trace_context)
    elif tracer_provider is not None:
        HTTPX2ClientInstrumentor.instrument_client(
            client,
            tracer_provider=tracer_provider,
            meter_provider=NoOpMeterProvider(),  # the router's metrics are its own; no global meter is used
            request_hook=_name_peer,
        )
    return client


async def _inject_trace_context(request: httpx2.Request) -> None:
    if is_http_instrumentation_enabled():  # the router suppresses it for a request it does not record
        propagate.inject(request.headers)


async def _name_peer(span: Span, _request: Any) -> None:
    span.set_attribute("peer.service", PEER_SERVICE)
