"""ingress: every bad request gets a real 4xx status with the OpenAI error body, and the app keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from serve_app.errors import InvalidRequest, UpstreamRejected
from serve_app.ingress import parse_chat_request
from tests.component.fakes import chat_body, cloud_backend, local_backend, router_args

pytestmark = pytest.mark.timeout(30)

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    """A JSON request body: a valid one with `fields` replaced (a value of ... removes the field)."""
    data: dict[str, Any] = {"model": "auto", "messages": [USER], **fields}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


# (id, raw body, status, param): each is a distinct way to get the request wrong.
BAD_REQUESTS: list[tuple[str, bytes, int, str | None]] = [
    ("invalid_json", b'{"model": "auto", "messages": [', 400, None),
    ("empty_body", b"", 400, None),
    ("whitespace_body", b" \n\t ", 400, None),
    ("json_array", b"[]", 400, None),
    ("json_string", b'"hello"', 400, None),
    ("json_null", b"null", 400, None),
    ("non_utf8", b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("nested_past_recursion_limit", b"[" * 4000, 400, None),  # within the test app's 4096-byte limit
    ("missing_model", body(model=...), 400, "model"),
    ("empty_model", body(model=""), 400, "model"),
    ("model_not_string", body(model=7), 400, "model"),
    ("missing_messages", body(messages=...), 400, "messages"),
    ("empty_messages", body(messages=[]), 400, "messages"),
    ("messages_not_list", body(messages="hi"), 400, "messages"),
    ("bad_role", body(messages=[{"role": "robot", "content": "hi"}]), 400, "messages.0.role"),
    ("user_without_content", body(messages=[{"role": "user"}]), 400, "messages.0"),
    ("tool_without_tool_call_id", body(messages=[USER, {"role": "tool", "content": "42"}]), 400, "messages.1"),
    (
        "system_with_image",
        body(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, USER]),
        400,
        "messages.0",
    ),
    (
        "unknown_content_part",
        body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
        400,
        "messages.0.content*",
    ),
    ("n_2", body(n=2), 400, "n"),
    ("temperature_3", body(temperature=3), 400, "temperature"),
    (
        "temperature_nan",
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        "temperature",
    ),
    ("top_p_0", body(top_p=0), 400, "top_p"),
    ("max_tokens_0", body(max_tokens=0), 400, "max_tokens"),
    ("max_completion_tokens_negative", body(max_completion_tokens=-5), 400, "max_completion_tokens"),
    ("stop_5_entries", body(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("stream_options_without_stream", body(stream_options={"include_usage": True}), 400, None),
    ("tool_choice_without_tools", body(tool_choice="required"), 400, None),
    ("tool_without_name", body(tools=[{"type": "function", "function": {"name": ""}}]), 400, "tools.0.function.name"),
    ("unknown_model", body(model="gpt-4o"), 404, "model"),
]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert list(payload) == ["error"]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from local"


def test_bad_requests_are_distinct_and_many():
    assert len({raw for _, raw, _, _ in BAD_REQUESTS}) == len(BAD_REQUESTS) >= 20


@pytest.mark.parametrize(
    ("raw", "status", "param"), [row[1:] for row in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
async def test_ingress_bad_request_gets_openai_error_then_serves(router, client, local, raw, status, param):
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json", "X-Request-Id": "bad-1"}
    )
    error = assert_openai_error(response, status)
    assert error["type"] == "invalid_request_error"
    if param is not None and param.endswith("*"):
        assert error["param"].startswith(param[:-1])
    else:
        assert error["param"] == param
    assert response.headers["x-request-id"] == "bad-1"
    assert local.calls == []
    await assert_still_serving(client)


def _resolves(data: Any, path: str) -> bool:
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return False
    return True


async def test_ingress_error_param_is_a_path_into_the_request(router, client):
    sent = {"model": "auto", "messages": [{"role": "user", "content": [{"type": "audio", "audio": "AAAA"}]}]}
    error = assert_openai_error(await client.post("/v1/chat/completions", json=sent), 400)
    assert _resolves(sent, error["param"]), error["param"]


async def test_ingress_unknown_model_is_model_not_found(router, client):
    error = assert_openai_error(await client.post("/v1/chat/completions", content=body(model="gpt-4o")), 404)
    assert error["code"] == "model_not_found" and "auto" in error["message"]


def _body_in_pieces(pulled: list[int], pieces: int = 10, size: int = 1000) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(pieces):
            pulled.append(size)
            yield b" " * size

    return gen()


async def test_ingress_oversized_body_with_content_length_is_413_unread(router, client):
    pulled: list[int] = []
    response = await client.post(
        "/v1/chat/completions", content=_body_in_pieces(pulled), headers={"Content-Length": "10000"}
    )
    error = assert_openai_error(response, 413)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert "10000" in error["message"] and "4096" in error["message"]
    assert pulled == []  # refused on the declared length, before reading
    await assert_still_serving(client)


async def test_ingress_oversized_json_body_is_413(router, client):
    raw = body(messages=[{"role": "user", "content": "x" * 5000}])
    response = await client.post("/v1/chat/completions", content=raw)
    assert response.request.headers["content-length"] == str(len(raw))
    assert assert_openai_error(response, 413)["code"] == "request_too_large"


async def test_ingress_oversized_body_without_content_length_is_413(router, client):
    pulled: list[int] = []
    response = await client.post("/v1/chat/completions", content=_body_in_pieces(pulled))
    assert "content-length" not in response.request.headers
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large"
    assert sum(pulled) < 10_000  # stopped reading once past the limit
    await assert_still_serving(client)


async def test_ingress_body_at_the_limit_is_read(router, client):
    raw = body()
    padded = raw[:-1] + b" " * (4096 - len(raw)) + b"}"
    assert len(padded) == 4096
    assert (await client.post("/v1/chat/completions", content=padded)).status_code == 200


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/chat/completions"), ("POST", "/v1/models")])
async def test_ingress_wrong_method_is_405(router, client, method, path):
    response = await client.request(method, path)
    error = assert_openai_error(response, 405)
    assert error["type"] == "invalid_request_error"
    await assert_still_serving(client)


async def test_ingress_wrong_method_405_names_the_allowed_method(router, client):
    response = await client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers.get("allow") == "POST"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completion", "/", "/v2/models"])
async def test_ingress_unknown_path_is_404(router, client, path):
    error = assert_openai_error(await client.post(path, json=chat_body()), 404)
    assert error["type"] == "not_found_error"
    await assert_still_serving(client)


async def test_ingress_auth_is_checked_before_the_body(router):
    response = await router.client(api_key=None).post("/v1/chat/completions", content=b"{not json")
    assert assert_openai_error(response, 401)["type"] == "authentication_error"


async def test_ingress_no_backend_ready_is_503_with_retry_after(make_router):
    router = make_router(local=local_backend(ready=False), cloud=cloud_backend(ready=False))
    response = await router.client().post("/v1/chat/completions", json=chat_body())
    error = assert_openai_error(response, 503)
    assert error["type"] == "service_unavailable"
    assert response.headers["retry-after"] == "5"


async def test_ingress_cloud_alias_without_cloud_backend_is_404(make_router):
    router = make_router(cloud=None)
    response = await router.client().post("/v1/chat/completions", json=chat_body(model="cloud"))
    assert assert_openai_error(response, 404)["code"] == "model_not_found"


async def test_ingress_cloud_without_a_key_is_503_and_auto_stays_local(make_router):
    local, cloud = local_backend(), cloud_backend(ready=False, detail="no Anthropic API key configured")
    # A rule sends every `auto` request to the cloud, so only the cloud's readiness keeps it local.
    args = router_args(routing={"rules": [{"name": "all_cloud", "backend": "cloud", "min_prompt_tokens": 1}]})
    client = make_router(local=local, cloud=cloud, args=args).client()
    response = await client.post("/v1/chat/completions", json=chat_body(model="cloud"))
    error = assert_openai_error(response, 503)
    assert "no Anthropic API key" in error["message"] and cloud.calls == []
    response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("local", "cloud_unavailable")
    assert cloud.calls == [] and len(local.calls) == 1


async def test_ingress_explicit_local_while_the_model_loads_is_503_at_once(make_router):
    local = local_backend(ready=False, detail="no running replica (loading or restarting)")
    client = make_router(local=local).client()
    response = await client.post("/v1/chat/completions", json=chat_body(model="local-model"))  # a strict pin
    error = assert_openai_error(response, 503)
    assert response.headers["retry-after"] == "5" and "not serving" in error["message"]
    assert local.calls == []  # never sent to a handle with no replica


async def test_ingress_upstream_rejection_keeps_its_status_and_message(router, client, local):
    local.script(UpstreamRejected("prompt contains a forbidden token", backend="local", param="messages"))
    response = await client.post("/v1/chat/completions", json=chat_body(model="local"))
    error = assert_openai_error(response, 400)
    assert error == {
        "message": "prompt contains a forbidden token",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    await assert_still_serving(client)


async def test_ingress_unexpected_backend_exception_is_a_500_openai_body(router, local):
    local.script(RuntimeError("bug in a backend"))
    client = router.client(raise_app_exceptions=False)
    response = await client.post("/v1/chat/completions", json=chat_body(model="local"))
    error = assert_openai_error(response, 500)
    assert error["type"] == "server_error" and "bug in a backend" not in error["message"]
    await assert_still_serving(client)


MESSAGES_OK = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
BAD_MESSAGES: list[tuple[str, bytes, str | None]] = [
    ("tool_choice_string", json.dumps(MESSAGES_OK | {"tool_choice": "auto"}).encode(), "tool_choice"),
    ("metadata_string", json.dumps(MESSAGES_OK | {"metadata": "x"}).encode(), "metadata"),
    ("tools_number", json.dumps(MESSAGES_OK | {"tools": 5}).encode(), "tools"),
    ("stop_sequences_number", json.dumps(MESSAGES_OK | {"stop_sequences": 5}).encode(), "stop_sequences"),
    ("nested_past_recursion_limit", b"[" * 4000, None),
]


@pytest.mark.parametrize(("raw", "param"), [row[1:] for row in BAD_MESSAGES], ids=[r[0] for r in BAD_MESSAGES])
async def test_messages_bad_request_gets_anthropic_400_then_serves(router, client, local, raw, param):
    response = await client.post("/v1/messages", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert param in payload["error"]["message"]
    assert local.calls == []
    await assert_still_serving(client)


def test_a_number_past_pythons_digit_limit_is_a_400_not_a_500():
    raw = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"1" * 5000 + b"}"
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.status_code == 400
