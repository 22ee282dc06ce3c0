"""Anthropic errors as the router's: HTTP statuses and error types to `RouterError`s, Retry-After, key redaction.

Pure, like `anthropic_mapping`: the SDK backend maps its exceptions and in-band stream errors through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from serve_app.errors import (
    ContextLengthExceeded,
    RouterError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# Every status the SDK has an exception class for, mapped deliberately (tests/unit/test_anthropic_errors.py
# fails when the SDK grows a status that is missing here). Others fall back by range.
STATUS_ERRORS: Mapping[int, type[UpstreamError]] = {
    400: UpstreamRejected,
    401: UpstreamAuthFailed,
    402: UpstreamAuthFailed,  # billing: our account, never the client's fault
    403: UpstreamAuthFailed,
    404: UpstreamRejected,  # unknown model id or endpoint
    408: UpstreamTimeout,
    409: UpstreamUnavailable,  # conflict: transient, the SDK retries it
    412: UpstreamRejected,
    413: UpstreamRejected,
    422: UpstreamRejected,
    429: UpstreamRateLimited,
    431: UpstreamRejected,
    499: UpstreamUnavailable,  # the upstream saw the request as cancelled
    500: UpstreamUnavailable,
    501: UpstreamUnavailable,
    502: UpstreamUnavailable,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
    529: UpstreamOverloaded,
}

# `error.type` of an error body; decides for in-band stream errors, which arrive after HTTP 200.
ERROR_TYPES: Mapping[str, type[UpstreamError]] = {
    "invalid_request_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
    "not_found_error": UpstreamRejected,
    "authentication_error": UpstreamAuthFailed,
    "permission_error": UpstreamAuthFailed,
    "billing_error": UpstreamAuthFailed,
    "rate_limit_error": UpstreamRateLimited,
    "overloaded_error": UpstreamOverloaded,
    "timeout_error": UpstreamTimeout,
    "api_error": UpstreamUnavailable,
    "conflict_error": UpstreamUnavailable,
    "memory_precondition_failed_error": UpstreamRejected,  # memory-tool state; not something a retry fixes
    "memory_path_conflict_error": UpstreamRejected,
}

_CONTEXT_TOO_LONG = re.compile(r"prompt is too long|exceeds? (the )?context (limit|window)|context window", re.I)
_SECRET = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


def upstream_error(
    *,
    status: int | None,
    error_type: str | None,
    message: str,
    backend: str,
    retry_after: float | None = None,
) -> RouterError:
    """The most specific `RouterError` for an Anthropic error status and/or body `error.type`."""
    cls: type[UpstreamError] | None = None
    if status is not None and status >= 400:
        cls = STATUS_ERRORS.get(status) or (UpstreamRejected if status < 500 else UpstreamUnavailable)
    if cls is None:
        cls = ERROR_TYPES.get(error_type or "", UpstreamUnavailable)
    text = redact(message)
    if cls is UpstreamRejected and _CONTEXT_TOO_LONG.search(text):
        return ContextLengthExceeded(f"Anthropic: {text}", param="messages")
    if cls is UpstreamAuthFailed:
        text = f"the router's Anthropic credentials were refused ({error_type or status}): {text}"
    label = " ".join(str(x) for x in (status, error_type) if x)
    return cls(
        f"Anthropic {label}: {text}" if label else f"Anthropic: {text}", backend=backend, retry_after=retry_after
    )


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date); None if absent."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def redact(text: str, *secrets: str | None) -> str:
    """`text` without API keys (ours, if given, and anything shaped like an Anthropic key)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _SECRET.sub("[redacted]", text)
