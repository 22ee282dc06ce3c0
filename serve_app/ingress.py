"""The router's HTTP edge, a FastAPI app without Ray: parse, call the chat service, render JSON or SSE.

Handlers only translate types: bytes to a validated request, a `ChatStream` (held in `async with`, which ends
it) to a JSON body or an SSE stream, a `RouterError` to an OpenAI error body with its status. Up to the first
chunk every failure gets a real status; after it the stream ends with an in-band error event and `[DONE]`, never
a silent cut.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from serve_app.assemble import ChatAssembler, client_chunk, usage_chunk
from serve_app.auth import ApiKeys
from serve_app.billing import billed_on_error, billed_usage_chunk, client_usage, cost_headers
from serve_app.chat import ChatService
from serve_app.chat_stream import ChatStream
from serve_app.errors import InvalidRequest, RequestTooLarge, RouterError, UpstreamError, error_body, error_headers
from serve_app.messages_api import MESSAGES_REQUEST_SCHEMA, to_chat_request
from serve_app.messages_events import (
    error_event,
    events_from_chunk,
    finish_events,
    message_from_chunks,
    new_event_state,
    usage_event,
)
from serve_app.protocol import ChatCompletionRequest, OpenAIBaseModel
from serve_app.sse import DONE, encode_data, encode_event

logger = logging.getLogger(__name__)


def create_app(
    service: ChatService,
    *,
    keys: ApiKeys,
    max_request_bytes: int,
    request_id_of: Callable[[Request], str] | None = None,
    echo_request_id: bool = True,
    cloud_standin: bool = False,
) -> FastAPI:
    """The router's FastAPI app over `service`; usable without Ray (component tests).

    `echo_request_id=False` under Serve: its proxy already returns X-Request-Id (the same id). `cloud_standin`:
    the cloud backend talks to the project's Anthropic stand-in (offline mode), which /readyz says.
    """
    # The schema is served below, behind a key: it maps the attack surface.
    app = FastAPI(title="hybrid-llm router", docs_url=None, redoc_url=None, openapi_url=None)
    request_id_of = request_id_of or header_request_id

    def _error_response(exc: RouterError, request: Request) -> JSONResponse:
        headers = error_headers(exc) | (_id_header(request) if echo_request_id else {})
        if isinstance(exc, UpstreamError):  # the backend that failed, as the request's metrics label it
            headers["X-Router-Backend"] = exc.backend
        headers.update(getattr(exc, "billing_headers", None) or {})
        # The Anthropic-compatible route answers in Anthropic's error format, everything else in OpenAI's.
        body = error_event(exc) if request.url.path == MESSAGES_PATH else error_body(exc)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> JSONResponse:
        return _error_response(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = {"error": {"message": str(exc.detail), "type": error_type, "param": None, "code": None}}
        headers = dict(exc.headers or {}) | (_id_header(request) if echo_request_id else {})  # e.g. Allow on 405
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in the router")
        return _error_response(RouterError("internal error in the router"), request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness, per backend; probes carry no key, so without one only the ready flags (no detail text or
        in-flight counts)."""
        report = service.readiness()
        if cloud_standin and "cloud" in report["backends"]:
            report["backends"]["cloud"]["standin"] = True
            report["cloud_standin"] = "offline mode: the cloud backend is the project's Anthropic stand-in, not Claude"
        status = 200 if report["ready"] else 503
        if not keys.allows(_presented_key(request)):
            flags = {
                name: {key: value for key, value in backend.items() if key in ("ready", "standin")}
                for name, backend in report["backends"].items()
            }
            report = {key: value for key, value in report.items() if key in ("ready", "cloud_standin")} | {
                "backends": flags
            }
        return JSONResponse(report, status_code=status)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        keys.check(_presented_key(request))
        return JSONResponse(app.openapi())

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        keys.check(request.headers.get("authorization"))
        return JSONResponse(service.models().model_dump())

    @app.post("/v1/chat/completions", openapi_extra=_json_body("ChatCompletionRequest"))
    async def chat_completions(request: Request) -> Any:
        request.state.request_id = request_id_of(request)
        tenant = keys.check(request.headers.get("authorization"))
        chat_request = parse_chat_request(await read_body(request, max_request_bytes))
        stream = await service.start(
            chat_request, request_id=request.state.request_id, headers=request.headers, tenant=tenant
        )
        headers = _route_headers(stream)
        if echo_request_id:
            headers["X-Request-Id"] = request.state.request_id
        if chat_request.stream:
            return _ChatStreamResponse(
                stream, _sse(stream, chat_request), media_type="text/event-stream", headers=headers | _NO_BUFFERING
            )
        assembler = ChatAssembler()
        async with billed_on_error(stream), stream:
            async for chunk in stream.chunks():
                assembler.add(chunk)
        body = assembler.completion(usage=client_usage(stream))
        headers |= cost_headers(stream)
        return JSONResponse(body, headers=headers)

    @app.post(MESSAGES_PATH, openapi_extra=_json_body("MessagesRequest"))
    async def messages(request: Request) -> Any:
        """Anthropic Messages API ingress: same routing, backends and telemetry, Anthropic wire format."""
        request.state.request_id = request_id_of(request)
        tenant = keys.check(_presented_key(request))
        body = await read_body(request, max_request_bytes)
        chat_request = to_chat_request(_json_object(body))
        stream = await service.start(
            chat_request, request_id=request.state.request_id, headers=request.headers, api="anthropic", tenant=tenant
        )
        headers = _route_headers(stream)
        if echo_request_id:
            headers["X-Request-Id"] = request.state.request_id
        message_id = f"msg_{request.state.request_id.replace('-', '')}"
        model = str(stream.first.get("model") or stream.decision.model)
        if chat_request.stream:
            events = _anthropic_events(stream, message_id=message_id, model=model)
            return _ChatStreamResponse(stream, events, media_type="text/event-stream", headers=headers | _NO_BUFFERING)
        async with billed_on_error(stream), stream:
            chunks = [chunk async for chunk in stream.chunks()]
        headers |= cost_headers(stream)
        return JSONResponse(message_from_chunks(chunks, message_id=message_id, model=model), headers=headers)

    app.openapi = lambda: _with_request_schemas(app)  # type: ignore[method-assign]
    return app


def _json_body(schema_name: str) -> dict[str, Any]:
    """The route's request body in the OpenAPI document (the handlers read raw bytes, so FastAPI cannot tell)."""
    schema = {"$ref": f"#/components/schemas/{schema_name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _with_request_schemas(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document plus the request body schemas `_json_body` refers to (built once)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        chat = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(chat.pop("$defs", {}))
        schemas["ChatCompletionRequest"] = chat
        schemas["MessagesRequest"] = dict(MESSAGES_REQUEST_SCHEMA)
        app.openapi_schema = document
    return app.openapi_schema


class _ChatStreamResponse(StreamingResponse):
    """A StreamingResponse that owns its ChatStream: however the response ends (done, the client gone before the
    body ran or while `send` blocked), leaving the `async with` closes the upstream and records the result."""

    def __init__(self, stream: ChatStream, content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._chat_stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with self._chat_stream:
            await super().__call__(scope, receive, send)


MESSAGES_PATH = "/v1/messages"
_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them where the length is declared."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # integers past Python's digit limit; nesting past the recursion limit
        raise InvalidRequest(
            "the request body is JSON this server does not accept (too deeply nested or a number too long)"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validates a Chat Completions body; every problem becomes an InvalidRequest naming the field."""
    data = _json_object(body)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        # The error that reaches deepest into the request names the real problem (not a union branch).
        errors = exc.errors(include_url=False)
        paths = [_param_path(data, error["loc"]) or "" for error in errors]
        deepest = max(range(len(errors)), key=lambda i: (paths[i].count(".") + bool(paths[i]), -i))
        first, param = errors[deepest], paths[deepest] or None
        message = first["msg"]
        if len(exc.errors()) > 1:
            message += f" (and {len(exc.errors()) - 1} more problem(s))"
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param) from None


def _param_path(data: Any, loc: tuple[Any, ...]) -> str | None:
    """The error location as a path into the request, without pydantic's union-branch labels ("str", ...)."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part in node:
            parts.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in _TYPE_LABELS and "[" not in part:
            parts.append(part)  # a missing field: name it and stop
            break
    return ".".join(parts) or None


# pydantic labels union branches by type: builtin names and the model classes of the wire module.
_TYPE_LABELS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-plain"}
    | {cls.__name__ for cls in OpenAIBaseModel.__subclasses__()}
)


async def _sse(stream: ChatStream, chat_request: ChatCompletionRequest) -> AsyncIterator[bytes]:
    first: dict[str, Any] = stream.first
    try:
        async for chunk in stream.chunks():
            out = client_chunk(chunk)
            if out is not None:
                yield encode_data(out)
        if chat_request.wants_usage:
            yield encode_data(
                usage_chunk(
                    chunk_id=str(first.get("id", "")),
                    created=int(first.get("created") or 0),
                    model=str(first.get("model") or stream.decision.model),
                    usage=client_usage(stream),
                )
            )
    except RouterError as exc:
        if chat_request.wants_usage:
            yield billed_usage_chunk(stream, first)
        yield encode_data(error_body(exc))
    except Exception:
        logger.exception("stream failed after the first byte")
        if chat_request.wants_usage:
            yield billed_usage_chunk(stream, first)
        yield encode_data(error_body(RouterError("internal error in the router")))
    yield DONE


async def _anthropic_events(stream: ChatStream, *, message_id: str, model: str) -> AsyncIterator[bytes]:
    state = new_event_state(message_id=message_id, model=model)
    try:
        async for chunk in stream.chunks():
            state, events = events_from_chunk(state, chunk)
            for event in events:
                yield encode_event(event["type"], event)
        state, events = finish_events(state)
        for event in events:
            yield encode_event(event["type"], event)
    except RouterError as exc:
        yield encode_event("message_delta", usage_event(stream.billed().usage))  # what is billed, as above
        yield encode_event("error", error_event(exc))
    except Exception:
        logger.exception("messages stream failed after the first byte")
        yield encode_event("message_delta", usage_event(stream.billed().usage))
        yield encode_event("error", error_event(RouterError("internal error in the router")))


def _presented_key(request: Request) -> str | None:
    """The Authorization value, or `x-api-key` as a bearer (Anthropic SDKs 1.x send that; 2.x a bearer token)."""
    api_key = request.headers.get("x-api-key")
    return f"Bearer {api_key}" if api_key else request.headers.get("authorization")


def _route_headers(stream: ChatStream) -> dict[str, str]:
    headers = {"X-Router-Backend": stream.decision.backend, "X-Router-Reason": stream.decision.reason}
    if stream.dropped_params:
        headers["X-Router-Dropped-Params"] = ",".join(stream.dropped_params)
    return headers


def _id_header(request: Request) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", None)
    return {"X-Request-Id": request_id} if request_id else {}


def header_request_id(request: Request) -> str:
    return valid_request_id(request.headers.get("x-request-id"))


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"


def valid_request_id(supplied: str | None) -> str:
    """`supplied` if it is a request id this server passes on (1-128 ASCII letters, digits, `-_.`), else a new one:
    it ends up in response ids, headers, span attributes and Langfuse metadata."""
    if supplied and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


class RequestIdGuard:
    """ASGI middleware in front of the replica's own HTTP server (HAProxy sends requests straight to it): replaces
    any X-Request-Id that is not a valid id with a server-made one before Serve reads it. Serve decodes that header
    as UTF-8 before the app runs (one byte that is not becomes a plain-text 500) and echoes it in the response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope.get("headers") or []
            supplied = [value for name, value in headers if name.lower() == _REQUEST_ID_HEADER]
            if supplied and (len(supplied) > 1 or not _REQUEST_ID.fullmatch(supplied[0].decode("latin-1"))):
                kept = [(name, value) for name, value in headers if name.lower() != _REQUEST_ID_HEADER]
                scope = {**scope, "headers": [*kept, (_REQUEST_ID_HEADER, uuid.uuid4().hex.encode())]}
        await self.app(scope, receive, send)


def serve_http_middlewares() -> list[Middleware]:
    """Ray Serve's HTTP proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, set in the router's
    runtime_env): middlewares for the replica's HTTP server, outermost last, so this guard runs first."""
    return [Middleware(RequestIdGuard)]
