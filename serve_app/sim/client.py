"""Sends one planned request through the real `openai` or `anthropic` SDK and turns what came back into a record.

The router's response headers (X-Router-Backend, X-Router-Reason, X-Request-Id, X-Router-Cost-USD) and the usage
the client received (the usage chunk of a stream, with stream_options.include_usage) are what the record holds:
the client-side view that the run's summary compares with the router's Prometheus counters.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import openai

from serve_app.records import RequestRecord
from serve_app.sim.prompts import PlannedRequest

_TIMEOUT_S = 180.0


@dataclass
class Clients:
    """One OpenAI and one Anthropic async client against the router (both on aiohttp, no SDK retries)."""

    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    @classmethod
    def create(cls, base_url: str, api_key: str, *, timeout_s: float = _TIMEOUT_S) -> Clients:
        base = base_url.rstrip("/")
        return cls(
            openai=openai.AsyncOpenAI(
                base_url=f"{base}/v1",
                api_key=api_key,
                max_retries=0,
                timeout=timeout_s,
                http_client=openai.DefaultAioHttpClient(timeout=timeout_s),
            ),
            anthropic=anthropic.AsyncAnthropic(
                base_url=base,
                api_key=api_key,
                max_retries=0,
                timeout=timeout_s,
                http_client=anthropic.DefaultAioHttpClient(timeout=timeout_s),
            ),
        )

    async def aclose(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


@dataclass
class Result:
    """What came back for one request, filled in as it arrives (by either client)."""

    headers: Any = None
    status: int = 0
    outcome: str = "ok"
    error_type: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    cost: float | None = None
    counterfactual: float | None = None  # the same tokens on the other backend, as the router priced them
    ttft: float | None = None


async def send(clients: Any, request: PlannedRequest) -> RequestRecord:
    """Sends `request` and returns its record; never raises for an HTTP or connection error (it is recorded)."""
    if not isinstance(clients, Clients):
        return await clients.send(request)  # serve_app.sim.wire.WireClients
    start_wall, start = time.time(), time.perf_counter()
    result = Result()
    try:
        if request.api == "anthropic":
            await _anthropic(clients.anthropic, request, result, start)
        else:
            await _openai(clients.openai, request, result, start)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        result.headers, result.status, result.outcome = exc.response.headers, exc.status_code, "error"
        result.error_type = error_type(exc.body) or type(exc).__name__
    except (openai.APIError, anthropic.APIError) as exc:
        # In-band error after the first byte (status stays 200), or no response at all (status 0).
        result.outcome = "error"
        result.error_type = error_type(getattr(exc, "body", None)) or type(exc).__name__
    return to_record(request, result, start_wall, time.perf_counter() - start)


def to_record(request: PlannedRequest, result: Result, start_wall: float, latency: float) -> RequestRecord:
    headers = result.headers or {}
    reason = headers.get("x-router-reason")
    if headers.get("x-router-usage") and not (result.input_tokens or result.output_tokens):
        # An answer that failed after its first chunk: the usage the router billed for it.
        with contextlib.suppress(ValueError):
            openai_usage(json.loads(headers["x-router-usage"]), result)
    if result.cost is None and headers.get("x-router-cost-usd"):
        result.cost = float(headers["x-router-cost-usd"])
    if result.counterfactual is None and headers.get("x-router-counterfactual-cost-usd"):
        result.counterfactual = float(headers["x-router-counterfactual-cost-usd"])
    return RequestRecord(
        request_id=headers.get("x-request-id") or f"sim-{uuid.uuid4().hex}",
        source="sim",
        t_start=start_wall,
        t_end=start_wall + latency,
        api=request.api,  # type: ignore[arg-type]
        stream=request.stream,
        model_requested=request.model,
        prompt_chars=request.prompt_chars,
        prompt_tokens_estimated=None,
        max_tokens=request.max_tokens,
        has_tools=request.has_tools,
        has_images=request.has_images,
        backend=headers.get("x-router-backend"),
        route_reason=reason,
        fallback=bool(reason and reason.startswith("fallback_")),
        model_served=result.model,
        status=result.status,
        outcome=result.outcome,  # type: ignore[arg-type]
        error_type=result.error_type,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        cache_read_tokens=result.cache_read,
        cache_creation_tokens=result.cache_creation,
        latency_s=latency,
        ttft_s=result.ttft,
        cost_usd=result.cost,
        counterfactual_cost_usd=result.counterfactual,
        workload=request.workload,
    )


async def _openai(client: openai.AsyncOpenAI, request: PlannedRequest, result: Result, start: float) -> None:
    kwargs: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, **request.body}
    if not request.stream:
        raw = await client.chat.completions.with_raw_response.create(**kwargs)
        result.headers, result.status = raw.headers, raw.status_code
        body = raw.http_response.json()
        result.model = body.get("model")
        openai_usage(body.get("usage"), result)
        return
    kwargs |= {"stream": True, "stream_options": {"include_usage": True}}
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    result.headers, result.status = raw.headers, raw.status_code
    stream = raw.parse()
    try:
        async for chunk in stream:
            result.model = chunk.model or result.model
            if result.ttft is None and any(_has_content(choice.delta) for choice in chunk.choices):
                result.ttft = time.perf_counter() - start
            if chunk.usage is not None:
                openai_usage(chunk.usage.model_dump(), result)
    finally:
        await stream.close()


def _has_content(delta: Any) -> bool:
    return bool(delta is not None and (delta.content or delta.tool_calls))


def openai_usage(usage: dict[str, Any] | None, result: Result) -> None:
    if not usage:
        return
    details = usage.get("prompt_tokens_details") or {}
    result.cache_read = int(details.get("cached_tokens") or 0)
    result.cache_creation = int(details.get("cache_write_tokens") or 0)
    result.input_tokens = int(usage.get("prompt_tokens") or 0) - result.cache_read - result.cache_creation
    result.output_tokens = int(usage.get("completion_tokens") or 0)
    if usage.get("cost_usd") is not None:
        result.cost = float(usage["cost_usd"])
    if usage.get("counterfactual_cost_usd") is not None:
        result.counterfactual = float(usage["counterfactual_cost_usd"])


async def _anthropic(client: anthropic.AsyncAnthropic, request: PlannedRequest, result: Result, start: float) -> None:
    kwargs: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, **request.body}
    if not request.stream:
        raw = await client.messages.with_raw_response.create(**kwargs)
        result.headers, result.status = raw.headers, raw.status_code
        body = await raw.json()
        result.model = body.get("model")
        anthropic_usage(body.get("usage"), result)
        return
    raw = await client.messages.with_raw_response.create(stream=True, **kwargs)
    result.headers, result.status = raw.headers, raw.status_code
    stream = await raw.parse()
    try:
        async for event in stream:
            if event.type == "message_start":
                result.model = event.message.model
                anthropic_usage(event.message.usage.model_dump(), result)
            elif event.type == "content_block_delta" and result.ttft is None:
                result.ttft = time.perf_counter() - start
            elif event.type == "message_delta":  # the final usage; before an in-band error, what was billed
                anthropic_usage(event.usage.model_dump(exclude_none=True), result, partial=True)
    finally:
        await stream.close()


def anthropic_usage(usage: dict[str, Any] | None, result: Result, *, partial: bool = False) -> None:
    """Anthropic usage into the result; `partial` (message_delta): only the counts it carries replace ours."""
    if not usage:
        return
    for key, attr in _ANTHROPIC_USAGE:
        if usage.get(key) is not None or not partial:
            setattr(result, attr, int(usage.get(key) or 0))


_ANTHROPIC_USAGE = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_creation"),
)


def error_type(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error.get("type") or error.get("code")
    return None
