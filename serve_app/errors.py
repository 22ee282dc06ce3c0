"""The router's error tree and its one rendering as an OpenAI error body; no provider SDK imports.

    RouterError                      500 server_error
    ├── InvalidRequest               400 invalid_request_error
    │   ├── ModelNotFound            404 invalid_request_error / model_not_found
    │   └── ContextLengthExceeded    400 invalid_request_error / context_length_exceeded
    ├── RequestTooLarge              413 invalid_request_error / request_too_large
    ├── Unauthenticated              401 authentication_error / invalid_api_key
    ├── NoBackendAvailable           503 service_unavailable
    └── UpstreamError                502 upstream_error            (a backend failed; carries `backend`)
        ├── UpstreamRejected         400 invalid_request_error     (the upstream refused this request)
        │   └── UpstreamContextExceeded  400 / context_length_exceeded (the other backend may still fit it)
        ├── UpstreamAuthFailed       502 upstream_error            (our credentials; never the client's fault)
        ├── UpstreamRateLimited      429 rate_limit_error          (+ Retry-After)
        ├── UpstreamOverloaded       503 overloaded_error          (+ Retry-After; Anthropic 529)
        ├── UpstreamTimeout          504 timeout
        └── UpstreamUnavailable      503 service_unavailable       (connect failed, replica died, backpressure)

`UpstreamError.retryable_elsewhere` tells the router whether the other backend may take the request.
"""

from __future__ import annotations

from typing import ClassVar

from serve_app.protocol import ErrorBody, ErrorDetail


class RouterError(Exception):
    """Base of every error the router renders; subclasses fix the status and OpenAI error type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    default_retry_after: ClassVar[float | None] = None  # when the cause gave none (e.g. no retry-after header)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    @property
    def kind(self) -> str:
        """A stable, low-cardinality name for `error.type` and metric labels."""
        return type(self).__name__


class InvalidRequest(RouterError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(InvalidRequest):
    status_code = 404
    default_code = "model_not_found"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class RequestTooLarge(RouterError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class Unauthenticated(RouterError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NoBackendAvailable(RouterError):
    status_code = 503
    error_type = "service_unavailable"


class UpstreamError(RouterError):
    """A backend failed. `backend` names it ("local" or "cloud")."""

    status_code = 502
    error_type = "upstream_error"
    retryable_elsewhere: ClassVar[bool] = True

    def __init__(self, message: str, *, backend: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.backend = backend


class UpstreamRejected(UpstreamError):
    status_code = 400
    error_type = "invalid_request_error"
    retryable_elsewhere = False


class UpstreamContextExceeded(UpstreamRejected):
    default_code = "context_length_exceeded"
    retryable_elsewhere = True


class UpstreamAuthFailed(UpstreamError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_authentication_failed"


class UpstreamRateLimited(UpstreamError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    # No default Retry-After: Anthropic's 429 for a spend cap has no retry-after, and retrying will not help.


class UpstreamOverloaded(UpstreamError):
    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"
    default_retry_after = 5.0  # overload is transient: tell the client when to come back even without a header


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "upstream_unavailable"


def error_body(exc: RouterError) -> dict:
    """The OpenAI error body for `exc`, as a JSON-ready dict."""
    detail = ErrorDetail(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    return ErrorBody(error=detail).model_dump()


def error_headers(exc: RouterError) -> dict[str, str]:
    """Headers that belong with the error response (`Retry-After` in whole seconds, rounded up)."""
    if exc.retry_after is None:
        return {}
    seconds = max(1, int(-(-exc.retry_after // 1)))
    return {"Retry-After": str(seconds)}
