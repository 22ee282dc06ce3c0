"""errors: every RouterError renders the OpenAI error body with its status, type and code; Retry-After rounding."""

from __future__ import annotations

import pytest

from serve_app import errors
from serve_app.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    RequestTooLarge,
    RouterError,
    Unauthenticated,
    UpstreamAuthFailed,
    UpstreamContextExceeded,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
    error_headers,
)

# (class, status, OpenAI type, default code): the table in the errors module docstring.
EXPECTED: list[tuple[type[RouterError], int, str, str | None]] = [
    (RouterError, 500, "server_error", None),
    (InvalidRequest, 400, "invalid_request_error", None),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    (RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
    (Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (NoBackendAvailable, 503, "service_unavailable", None),
    (UpstreamError, 502, "upstream_error", None),
    (UpstreamRejected, 400, "invalid_request_error", None),
    (UpstreamContextExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    (UpstreamAuthFailed, 502, "upstream_error", "upstream_authentication_failed"),
    (UpstreamRateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (UpstreamOverloaded, 503, "overloaded_error", "overloaded"),
    (UpstreamTimeout, 504, "timeout", "upstream_timeout"),
    (UpstreamUnavailable, 503, "service_unavailable", "upstream_unavailable"),
]


def make(cls: type[RouterError], message: str = "boom", **kwargs: object) -> RouterError:
    if issubclass(cls, UpstreamError):
        return cls(message, backend="cloud", **kwargs)
    return cls(message, **kwargs)  # type: ignore[arg-type]


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_error_table_covers_every_router_error():
    in_module = {cls for cls in _all_subclasses(RouterError) if cls.__module__ == errors.__name__}
    assert in_module | {RouterError} == {row[0] for row in EXPECTED}


@pytest.mark.parametrize(("cls", "status", "error_type", "code"), EXPECTED, ids=lambda v: getattr(v, "__name__", ""))
def test_error_body_renders_status_type_and_code(cls, status, error_type, code):
    exc = make(cls, "something went wrong")
    assert exc.status_code == status
    assert error_body(exc) == {
        "error": {"message": "something went wrong", "type": error_type, "param": None, "code": code}
    }


def test_error_body_carries_param_and_explicit_code():
    exc = InvalidRequest("bad temperature", param="temperature", code="out_of_range")
    assert error_body(exc)["error"] == {
        "message": "bad temperature",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "out_of_range",
    }


def test_error_explicit_code_overrides_default():
    assert make(UpstreamRateLimited, code="tokens_per_minute").code == "tokens_per_minute"
    assert make(UpstreamRateLimited).code == "rate_limit_exceeded"


def test_upstream_error_keeps_backend_and_kind():
    exc = UpstreamTimeout("slow", backend="local")
    assert exc.backend == "local"
    assert exc.kind == "UpstreamTimeout"
    assert str(exc) == "slow"


@pytest.mark.parametrize(
    ("cls", "elsewhere"),
    [
        (UpstreamError, True),
        (UpstreamRejected, False),
        (UpstreamContextExceeded, True),
        (UpstreamAuthFailed, True),
        (UpstreamRateLimited, True),
        (UpstreamOverloaded, True),
        (UpstreamTimeout, True),
        (UpstreamUnavailable, True),
    ],
)
def test_upstream_error_retryable_elsewhere(cls, elsewhere):
    assert cls.retryable_elsewhere is elsewhere


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(7, "7"), (7.0, "7"), (2.5, "3"), (0.2, "1"), (0, "1"), (0.0, "1"), (7.000001, "8"), (59.99, "60")],
)
def test_error_headers_retry_after_rounds_up_to_whole_seconds(retry_after, header):
    assert error_headers(make(UpstreamOverloaded, retry_after=retry_after)) == {"Retry-After": header}


def test_error_headers_empty_without_retry_after():
    assert error_headers(make(UpstreamUnavailable)) == {}
    assert error_headers(make(UpstreamRateLimited)) == {}  # a spend-cap 429: retrying soon will not help
    assert error_headers(InvalidRequest("x")) == {}


def test_overloaded_always_carries_retry_after():
    assert error_headers(make(UpstreamOverloaded)) == {"Retry-After": "5"}  # the upstream sent no header
    assert error_headers(make(UpstreamOverloaded, retry_after=30)) == {"Retry-After": "30"}  # its own wins


def test_no_backend_available_can_carry_retry_after():
    assert error_headers(NoBackendAvailable("none", retry_after=5)) == {"Retry-After": "5"}
