"""Every anthropic SDK exception maps to the most specific RouterError; retry-after and secrets are handled."""

from __future__ import annotations

import inspect
import typing
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import anthropic
import httpx2
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from anthropic._error_classes import ERROR_CLASSES
from anthropic.types.shared.error_type import ErrorType

from serve_app.backends.anthropic import ROOTS, map_anthropic_errors, rule_for, to_router_error
from serve_app.backends.anthropic_errors import ERROR_TYPES, STATUS_ERRORS, parse_retry_after, upstream_error
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

KEY = "sk-ant-api03-SECRETSECRETSECRET"
_REQUEST = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
_STATUS_OF = {cls: status for (status, _), cls in ERROR_CLASSES.items()}


def _all_exception_classes() -> set[type[BaseException]]:
    """Every exception class the SDK exports or can raise from a status response, and their subclasses."""
    found: set[type[BaseException]] = set()
    for name in dir(anthropic):
        value = getattr(anthropic, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            found.add(value)
    found.update(ERROR_CLASSES.values())
    todo = list(found)
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return {cls for cls in found if cls.__module__.startswith("anthropic")}


def _status_of(cls: type[BaseException]) -> int:
    if cls in _STATUS_OF:
        return _STATUS_OF[cls]
    status = getattr(cls, "status_code", None)
    return status if isinstance(status, int) else 500


def _instance(cls: type[BaseException], headers: dict[str, str] | None = None, message: str = "boom"):
    if issubclass(cls, anthropic.APIStatusError):
        status = _status_of(cls)
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        response = httpx2.Response(status, request=_REQUEST, headers=headers or {"request-id": "req_1"})
        return cls(f"Error code: {status}", response=response, body=body)
    if issubclass(cls, anthropic.APITimeoutError):
        return cls(_REQUEST)
    if issubclass(cls, anthropic.APIConnectionError):
        return cls(request=_REQUEST)
    if issubclass(cls, anthropic.APIResponseValidationError):
        return cls(httpx2.Response(200, request=_REQUEST), body=None)
    if issubclass(cls, anthropic.APIError):
        return cls(message, _REQUEST, body=None)
    try:
        return cls(message)
    except TypeError:  # a constructor with its own keyword arguments: the mapping only needs type and text
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        return exc


CLASSES = sorted(_all_exception_classes() - set(ROOTS), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_anthropic_exception_is_mapped():
    unmapped = [cls.__qualname__ for cls in CLASSES if (rule := rule_for(cls)) is None or rule.exc_type in ROOTS]
    assert not unmapped, f"anthropic exception classes without a deliberate mapping: {unmapped}"
    assert len(CLASSES) > 50  # the walk really found the SDK's classes


def test_every_anthropic_status_is_mapped():
    statuses = {status for status, _ in ERROR_CLASSES}
    assert statuses <= set(STATUS_ERRORS), f"statuses without a mapping: {sorted(statuses - set(STATUS_ERRORS))}"


def test_every_anthropic_error_type_is_mapped():
    assert set(typing.get_args(ErrorType)) <= set(ERROR_TYPES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_to_router_error_every_class_gives_specific_error(cls):
    error = to_router_error(_instance(cls), backend="cloud")
    assert isinstance(error, RouterError)
    if isinstance(error, UpstreamError):
        assert error.backend == "cloud"
    if issubclass(cls, anthropic.APIStatusError):
        assert isinstance(error, STATUS_ERRORS[_status_of(cls)])


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (anthropic.BadRequestError, UpstreamRejected),
        (anthropic.NotFoundError, UpstreamRejected),
        (anthropic.ContentTooLargeError, UpstreamRejected),
        (anthropic.UnprocessableEntityError, UpstreamRejected),
        (anthropic.AuthenticationError, UpstreamAuthFailed),
        (anthropic.PermissionDeniedError, UpstreamAuthFailed),
        (anthropic.PaymentRequiredError, UpstreamAuthFailed),
        (anthropic.RateLimitError, UpstreamRateLimited),
        (anthropic.OverloadedError, UpstreamOverloaded),
        (anthropic.InternalServerError, UpstreamUnavailable),
        (anthropic.ServiceUnavailableError, UpstreamUnavailable),
        (anthropic.GatewayTimeoutError, UpstreamTimeout),
        (anthropic.APITimeoutError, UpstreamTimeout),
        (anthropic.APIConnectionError, UpstreamUnavailable),
        (anthropic.CredentialsError, UpstreamAuthFailed),
    ],
)
def test_map_anthropic_errors_documented_classes(cls, expected):
    original = _instance(cls)
    with pytest.raises(expected) as info, map_anthropic_errors(backend="cloud"):
        raise original
    assert type(info.value) is expected
    assert info.value.__cause__ is original


def test_map_anthropic_errors_rate_limit_retry_after_seconds():
    exc = _instance(anthropic.RateLimitError, headers={"retry-after": "7"})
    error = to_router_error(exc)
    assert isinstance(error, UpstreamRateLimited) and error.retry_after == 7
    assert error.status_code == 429


def test_map_anthropic_errors_retry_after_ms_and_http_date():
    error = to_router_error(_instance(anthropic.OverloadedError, headers={"retry-after-ms": "2500"}))
    assert isinstance(error, UpstreamOverloaded) and error.retry_after == 2.5
    date = format_datetime(datetime.fromtimestamp(1_000_030, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(30)
    assert parse_retry_after({}, now=0) is None
    assert parse_retry_after({"retry-after": "soon"}, now=0) is None


def test_map_anthropic_errors_spend_cap_429_has_no_retry_after():
    error = to_router_error(_instance(anthropic.ContractSpendLimitReachedError, headers={}))
    assert isinstance(error, UpstreamRateLimited) and error.retry_after is None


def test_map_anthropic_errors_context_too_long():
    exc = _instance(anthropic.BadRequestError, message="prompt is too long: 208326 tokens > 200000 maximum")
    error = to_router_error(exc)
    assert isinstance(error, ContextLengthExceeded) and error.code == "context_length_exceeded"


def test_map_anthropic_errors_transport_errors_while_streaming():
    assert isinstance(to_router_error(httpx2.ReadTimeout("slow", request=_REQUEST)), UpstreamTimeout)
    cut = httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
    assert isinstance(to_router_error(cut), UpstreamUnavailable)


def test_map_anthropic_errors_never_leaks_the_key():
    exc = _instance(anthropic.AuthenticationError, message=f"invalid x-api-key {KEY}")
    error = to_router_error(exc, secret=KEY)
    assert isinstance(error, UpstreamAuthFailed) and KEY not in error.message and "[redacted]" in error.message
    conn = anthropic.APIConnectionError(message=f"failed with {KEY}", request=_REQUEST)
    assert KEY not in to_router_error(conn, secret=KEY).message
    # shaped like a key but not ours: still redacted
    assert "sk-ant-" not in to_router_error(_instance(anthropic.BadRequestError, message="sk-ant-xyz")).message


def test_map_anthropic_errors_leaves_other_exceptions_alone():
    with pytest.raises(KeyError), map_anthropic_errors():
        raise KeyError("x")


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", UpstreamOverloaded),
        ("rate_limit_error", UpstreamRateLimited),
        ("api_error", UpstreamUnavailable),
        ("timeout_error", UpstreamTimeout),
        ("invalid_request_error", UpstreamRejected),
        ("authentication_error", UpstreamAuthFailed),
        ("something_new", UpstreamUnavailable),
    ],
)
def test_upstream_error_in_band_error_types(error_type, expected):
    error = upstream_error(status=200, error_type=error_type, message="m", backend="cloud")
    assert type(error) is expected


def test_upstream_error_unknown_statuses_fall_back_by_range():
    assert type(upstream_error(status=418, error_type=None, message="m", backend="b")) is UpstreamRejected
    assert type(upstream_error(status=599, error_type=None, message="m", backend="b")) is UpstreamUnavailable


def _subclasses(root: type[BaseException]) -> list[type[BaseException]]:
    found, todo = {root}, [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


AIOHTTP_CLASSES = [
    cls
    for cls in _subclasses(aiohttp.ClientError) + _subclasses(HttpProcessingError)
    if cls.__module__.startswith("aiohttp")
]


@pytest.mark.parametrize("cls", AIOHTTP_CLASSES, ids=lambda c: c.__qualname__)
def test_aiohttp_errors_the_sdk_transport_lets_through_are_upstream_errors(cls):
    """With `cloud.http_client: aiohttp` a cut or malformed body can surface as a raw aiohttp error: it must be an
    upstream failure of the cloud backend (retryable elsewhere, an in-band error event), never a router 500."""
    original = cls.__new__(cls)
    Exception.__init__(original, "boom")
    with pytest.raises(UpstreamError) as info, map_anthropic_errors(backend="cloud", secret=KEY):
        raise original
    expected = UpstreamTimeout if issubclass(cls, aiohttp.ServerTimeoutError) else UpstreamUnavailable
    assert type(info.value) is expected
    assert info.value.backend == "cloud" and info.value.__cause__ is original


HTTPX2_CLASSES = [cls for cls in _subclasses(httpx2.HTTPError) if cls.__module__.startswith("httpx2")]


@pytest.mark.parametrize("cls", HTTPX2_CLASSES, ids=lambda c: c.__qualname__)
def test_every_httpx2_error_is_an_upstream_error(cls):
    """Transport errors raised while the body streams (after the SDK handed the response over) never escape raw."""
    original = cls.__new__(cls)
    Exception.__init__(original, "boom")
    with pytest.raises(UpstreamError) as info, map_anthropic_errors(backend="cloud"):
        raise original
    assert info.value.__cause__ is original
    assert isinstance(info.value, UpstreamTimeout) == issubclass(cls, httpx2.TimeoutException)


def test_the_transport_error_walks_found_the_classes():
    assert len(AIOHTTP_CLASSES) > 20 and len(HTTPX2_CLASSES) > 15
