"""X-Request-Id through real Ray Serve (HAProxy to the router replica): invalid ids are replaced, never echoed.

A router-only platform (no model application): the cloud stand-in answers, which is all an id needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.ray_platform import RayPlatform

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

API_KEY = "sk-test-request-id"
ANTHROPIC_KEY = "sk-ant-test-request-id"
SERVER_MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with AnthropicStandIn(api_key=ANTHROPIC_KEY) as upstream:
        ray = RayPlatform(
            workdir=tmp_path_factory.mktemp("request-id"),
            apps=("router",),
            env={
                "RAY_SERVE_ENABLE_HA_PROXY": "1",
                # Serve's proxy actor reads the header before any replica does: the guard goes in front of it
                # too (`make serve` exports the same); the router's runtime_env covers the replica's own server.
                "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.ingress:serve_http_middlewares",
                "HYBRID_LLM_API_KEYS": API_KEY,
                "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
                "ANTHROPIC_BASE_URL": upstream.base_url,
            },
            overrides={"cloud": {"max_retries": 0, "timeout_s": 5}},
        )
        try:
            ray.start(ready_timeout=240)
            yield ray.base_url
        finally:
            ray.stop()


@pytest.mark.parametrize(
    "supplied",
    [
        pytest.param(b"id-\xff", id="not-utf8"),
        pytest.param("caf\u00e9".encode(), id="utf8-non-ascii"),
        pytest.param(b"id with space", id="spaces"),
        pytest.param(b"a" * 5000, id="5000-chars"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_an_invalid_request_id_gets_a_server_made_one_under_serve(router_url, path, supplied):
    body = {"model": "cloud", "max_tokens": 16, "messages": [{"role": "user", "content": "hello there"}]}
    headers = [("authorization", f"Bearer {API_KEY}"), ("x-request-id", supplied)]
    response = httpx.post(f"{router_url}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id = response.headers["x-request-id"]
    assert SERVER_MADE.fullmatch(request_id), request_id
    answer_id = response.json()["id"]
    assert answer_id == (f"msg_{request_id}" if path == "/v1/messages" else f"chatcmpl-{request_id}")


def test_a_valid_request_id_is_kept_under_serve(router_url):
    body = {"model": "cloud", "messages": [{"role": "user", "content": "hello"}]}
    headers = {"authorization": f"Bearer {API_KEY}", "x-request-id": "req-42.a_b"}
    response = httpx.post(f"{router_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42.a_b"
    assert response.json()["id"] == "chatcmpl-req-42.a_b"
