"""A lean client for high request rates (`--client http`): the same wire requests as the SDKs, on one aiohttp session.

The SDK clients (the default) spend about 0.8 ms of CPU per request building and parsing; this one sends the same
JSON to /v1/chat/completions and /v1/messages with the headers the SDKs send, reads JSON or SSE itself and fills
the same record, so a single process can offer several thousand requests per second
(bench/bench_sim_generator.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from serve_app.records import RequestRecord
from serve_app.sim.client import Result, anthropic_usage, error_type, openai_usage, to_record
from serve_app.sim.prompts import PlannedRequest

ANTHROPIC_VERSION = "2023-06-01"


class WireClients:
    """One aiohttp session for both APIs; `send` never raises for an HTTP or connection error (it is recorded)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float) -> None:
        self._base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            json_serialize=json.dumps,
        )
        self._openai = {"Authorization": f"Bearer {api_key}"}
        self._anthropic = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}

    async def aclose(self) -> None:
        await self._session.close()

    async def send(self, request: PlannedRequest) -> RequestRecord:
        start_wall, start = time.time(), time.perf_counter()
        result = Result()
        body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, **request.body}
        anthropic = request.api == "anthropic"
        if request.stream:
            body["stream"] = True
            if not anthropic:
                body["stream_options"] = {"include_usage": True}
        url = f"{self._base}/v1/messages" if anthropic else f"{self._base}/v1/chat/completions"
        try:
            async with self._session.post(
                url, json=body, headers=self._anthropic if anthropic else self._openai
            ) as response:
                result.headers, result.status = response.headers, response.status
                if response.status != 200:
                    result.outcome = "error"
                    result.error_type = error_type(await _json(response)) or f"http_{response.status}"
                elif not request.stream:
                    data = await response.json(content_type=None)
                    result.model = data.get("model")
                    (anthropic_usage if anthropic else openai_usage)(data.get("usage"), result)
                elif anthropic:
                    await _anthropic_stream(response, result, start)
                else:
                    await _openai_stream(response, result, start)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result.outcome, result.error_type = "error", type(exc).__name__
        return to_record(request, result, start_wall, time.perf_counter() - start)


async def _json(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


async def _openai_stream(response: aiohttp.ClientResponse, result: Result, start: float) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        chunk = json.loads(payload)
        if "error" in chunk:
            result.outcome, result.error_type = "error", error_type(chunk) or "stream_error"
            continue
        result.model = chunk.get("model") or result.model
        if result.ttft is None and any(
            (choice.get("delta") or {}).get("content") or (choice.get("delta") or {}).get("tool_calls")
            for choice in chunk.get("choices") or ()
        ):
            result.ttft = time.perf_counter() - start
        if chunk.get("usage"):
            openai_usage(chunk["usage"], result)
    result.outcome, result.error_type = "error", "stream_ended_without_done"


async def _anthropic_stream(response: aiohttp.ClientResponse, result: Result, start: float) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        event = json.loads(line[5:])
        kind = event.get("type")
        if kind == "message_start":
            result.model = event["message"].get("model")
            anthropic_usage(event["message"].get("usage"), result)
        elif kind == "content_block_delta" and result.ttft is None:
            result.ttft = time.perf_counter() - start
        elif kind == "message_delta":
            anthropic_usage(event.get("usage"), result, partial=True)
        elif kind == "error":
            result.outcome, result.error_type = "error", error_type(event) or "stream_error"
        elif kind == "message_stop":
            return
    result.outcome, result.error_type = "error", "stream_ended_without_message_stop"
