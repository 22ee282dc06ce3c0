"""What a client controls and must not: span names, log volume, request ids, what is readable without a key."""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any

import httpx
import pytest

from serve_app.auth import ApiKeys
from serve_app.config import AuthArgs
from serve_app.ingress import create_app, serve_http_middlewares
from serve_app.router_deployment import serve_request_id
from tests.component.fakes import API_KEY, chat_body, router_args

pytestmark = pytest.mark.timeout(30)


# ---- span names come from a closed set ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "name"),
    [
        ("auto", 200, "chat auto"),
        ("local-model", 200, "chat local-model"),
        ("claude-haiku-4-5", 200, "chat claude-haiku-4-5"),
        ("no-such-model-7f3a", 404, "chat"),
        ("x" * 256, 404, "chat"),
    ],
)
async def test_span_names_come_only_from_the_models_the_router_serves(router, client, model, status, name):
    """A span name is a dimension of Tempo's span metrics: random model names must not create series."""
    response = await client.post("/v1/chat/completions", json=chat_body(model=model))
    assert response.status_code == status
    (span,) = router.spans.get_finished_spans()
    assert span.name == name
    assert span.attributes["gen_ai.request.model"] == model  # the client's string stays an attribute


# ---- log volume per request is bounded ----------------------------------------------------------------------


async def test_unknown_fields_write_at_most_one_short_log_line_per_request(make_router, caplog):
    """Thousands of distinct unknown field names, at the top and nested: one bounded line, then none for names
    already named."""
    tag = uuid.uuid4().hex[:8]  # names no earlier test logged
    body = chat_body(**{f"top_{tag}_{i}": i for i in range(1500)})
    body["messages"][0] |= {f"nested_{tag}_{i}_" + "y" * 200: i for i in range(1500)}
    caplog.set_level(logging.DEBUG, logger="serve_app.protocol")
    client = make_router(args=router_args(max_request_bytes=4 * 1024 * 1024)).client()
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "serve_app.protocol" and r.levelno >= logging.INFO]
    assert len(lines) == 3 and all(len(line) < 1000 for line in lines)
    assert "and 2995 more" in lines[0] and "and 2990 more" in lines[1]


# ---- X-Request-Id: valid or replaced, wherever it enters -------------------------------------------------------

BAD_IDS = [
    pytest.param(b"a" * 5000, id="5000-chars"),
    pytest.param(b"id with space", id="spaces"),
    pytest.param("caf\u00e9".encode(), id="utf8-non-ascii"),
    pytest.param(b"id-\xff", id="not-utf8"),
    pytest.param(b"", id="empty"),
]
SERVER_MADE = re.compile(r"[0-9a-f]{32}")


def _ray_replica_ingress(app: Any) -> Any:
    """The replica's HTTP server as Ray Serve 2.60 builds it (its middlewares around its own ASGI entry, which
    decodes X-Request-Id as UTF-8 into the request context before the app runs), around `app`."""
    from ray.serve import context
    from ray.serve._private.http_util import _apply_middlewares

    async def replica_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("utf-8")  # as Ray's replica does
        context._set_request_context(request_id=request_id)
        await app(scope, receive, send)

    return _apply_middlewares(replica_asgi, serve_http_middlewares())


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("supplied", BAD_IDS)
async def test_an_invalid_request_id_is_replaced_under_serve(make_router, local, path, supplied):
    router = make_router(local=local)
    app = create_app(
        router.service,
        keys=ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": API_KEY}),
        max_request_bytes=4096,
        request_id_of=serve_request_id,
        echo_request_id=False,  # Serve's middleware echoes the id it holds
    )
    transport = httpx.ASGITransport(app=_ray_replica_ingress(app))
    headers = [("authorization", f"Bearer {API_KEY}"), ("x-request-id", supplied)]
    async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
        body = chat_body(max_tokens=16)
        response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    assert SERVER_MADE.fullmatch(request_id) and request_id.encode() != supplied
    assert local.calls[0].request_id == request_id
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.request_id"] == request_id
    if path == "/v1/messages":
        assert response.json()["id"] == f"msg_{request_id}"


@pytest.mark.parametrize("supplied", BAD_IDS)
async def test_an_invalid_request_id_is_replaced_outside_serve(router, local, supplied):
    client = router.client()
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=[("x-request-id", supplied)])
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert SERVER_MADE.fullmatch(request_id) and local.calls[0].request_id == request_id


async def test_a_valid_request_id_passes_through_serve(make_router, local):
    router = make_router(local=local)
    app = create_app(
        router.service,
        keys=ApiKeys.load(AuthArgs(), environ={"HYBRID_LLM_API_KEYS": API_KEY}),
        max_request_bytes=4096,
        request_id_of=serve_request_id,
        echo_request_id=False,
    )
    transport = httpx.ASGITransport(app=_ray_replica_ingress(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
        response = await client.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "req-42.a_b"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42.a_b" == local.calls[0].request_id


# ---- readable only with a key ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [None, "sk-wrong"])
async def test_readyz_without_a_valid_key_gives_status_only(router, local, api_key):
    """Kubernetes probes carry no key: they get the status and ready flags, never backend text or load."""
    local.inflight, local.detail = 3, "LLMServer RUNNING on 10.0.0.7"
    response = await router.client(api_key=api_key).get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "backends": {"local": {"ready": True}, "cloud": {"ready": True}}}
    local.ready = False
    router.cloud.ready = False
    assert (await router.client(api_key=api_key).get("/readyz")).status_code == 503


async def test_readyz_with_a_key_gives_the_detail(router, local):
    local.inflight, local.detail = 3, "LLMServer RUNNING"
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"x-api-key": API_KEY}):
        response = await router.client(api_key=None).get("/readyz", headers=headers)
        assert response.json()["backends"]["local"] == {"ready": True, "inflight": 3, "detail": "LLMServer RUNNING"}


@pytest.mark.parametrize("api_key", [None, "sk-wrong"])
async def test_openapi_schema_needs_a_key(router, api_key):
    response = await router.client(api_key=api_key).get("/openapi.json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert "paths" not in response.json()


async def test_openapi_schema_with_a_key(router):
    response = await router.client().get("/openapi.json")
    assert response.status_code == 200
    assert {"/v1/chat/completions", "/v1/messages", "/v1/models"} <= set(response.json()["paths"])


# ---- key rotation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/models"])
async def test_a_revoked_key_gets_401_on_the_next_request_without_a_restart(make_router, tmp_path, path):
    keys_path = tmp_path / "api-keys"
    keys_path.write_text("sk-old-key\n")
    router = make_router(keys=ApiKeys.load(AuthArgs(api_keys_file=str(keys_path)), environ={}))
    method = "GET" if path == "/v1/models" else "POST"
    body = chat_body(max_tokens=16) if method == "POST" else None

    async def status(key: str) -> int:
        response = await router.client(api_key=key).request(method, path, json=body)
        return response.status_code

    assert await status("sk-old-key") == 200
    staged = tmp_path / "api-keys.new"
    staged.write_text("sk-new-key\n")
    os.replace(staged, keys_path)  # how a rotated Secret's mount swaps its content
    assert await status("sk-old-key") == 401
    assert await status("sk-new-key") == 200
