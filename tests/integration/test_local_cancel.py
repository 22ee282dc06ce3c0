"""A client that leaves a local stream stops the model replica's work on it.

The router's cancel of its handle call must reach the model replica (over Ray's generator, or over Serve's gRPC
with `local.handle_transport: grpc`), or the engine would go on generating for nobody. The model replica's own
span says how its stream ended (`llm.cancelled`), read from the OTLP stand-in.
"""

from __future__ import annotations

import uuid

import httpx

from tests.support.waiting import wait_for


def test_a_client_leaving_a_local_stream_cancels_the_model_replicas_stream(platform) -> None:
    request_id = f"cancel-local-{uuid.uuid4().hex[:12]}"
    body = {"model": "local", "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": "go on"}]}
    headers = {"Authorization": f"Bearer {platform.api_key}", "X-Request-Id": request_id}
    with httpx.stream("POST", f"{platform.base_url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.headers["x-router-backend"] == "local"
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # Leaving the block closed the connection mid-stream.
    (router,) = wait_for(
        lambda: [s for s in platform.otlp.spans if s.attributes.get("llm.request_id") == request_id],
        "the router span",
    )
    (model,) = wait_for(
        lambda: [s for s in platform.otlp.spans if s.parent_span_id == router.span_id and s.name == "model chat"],
        "the model replica's span",
    )
    assert model.attributes.get("llm.cancelled") is True, model.attributes
