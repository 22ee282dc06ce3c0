"""Baseline Serve application for the cloud benchmark: a bare FastAPI forwarder, the floor Ray Serve sets.

It takes the router's request body, posts one Messages API call to the upstream with a pooled
`httpx.AsyncClient` and returns the upstream's JSON (or relays its SSE bytes) unchanged: no validation,
routing, translation, auth or telemetry. `bench.common.session()` deploys it at FORWARDER_PREFIX in the
benchmark cluster, so router minus forwarder is what the router's own work costs under the same Serve
machinery.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve

app = FastAPI()


@serve.deployment(name="Forwarder")
@serve.ingress(app)
class Forwarder:
    def __init__(self, model: str) -> None:
        self._model = model
        self._client = httpx.AsyncClient(
            base_url=os.environ["ANTHROPIC_BASE_URL"],
            headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"},
            timeout=30,
        )

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        call = {"model": self._model, "max_tokens": body.get("max_tokens", 16), "messages": body["messages"]}
        if not body.get("stream"):
            upstream = await self._client.post("/v1/messages", json=call)
            return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")
        upstream = await self._client.send(
            self._client.build_request("POST", "/v1/messages", json=call | {"stream": True}), stream=True
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for part in upstream.aiter_raw():
                    yield part
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code, media_type="text/event-stream")


def build(args: dict[str, Any]) -> serve.Application:
    return Forwarder.bind(str(args.get("model", "claude-sonnet-4-6")))
