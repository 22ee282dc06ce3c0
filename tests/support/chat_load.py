"""Chat requests as a load generator sees them, and the router's Prometheus counters around a load.

`chat` sends one /v1/chat/completions request with raw httpx and records what the client saw (status, route
headers, `[DONE]`, an in-band error event, a timeout); the counter helpers read Ray's metrics endpoint. Used by
the scale proofs in bench/ and their shorter integration tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.ray_platform import RayPlatform

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
REQUESTS_TOTAL = "ray_router_requests_total"


@dataclass
class Answer:
    """One chat request as the client saw it. Times are time.monotonic() seconds."""

    index: int
    stream: bool
    started: float
    ended: float = 0.0
    headers_at: float | None = None  # response headers (the router's first byte)
    status: int = 0
    backend: str | None = None
    reason: str | None = None
    done: bool = False  # a stream's `data: [DONE]`
    error_event: bool = False  # a stream's in-band `data: {"error": ...}`
    timed_out: bool = False  # not finished within the client's bound
    failure: str | None = None  # a transport error (connection reset, ...)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def outcome(self) -> str:
        """The outcome the router records for this request, as far as the client can tell it."""
        return "ok" if self.status == 200 and not self.error_event else "error"


def chat_body(index: int, *, stream: bool, max_tokens: int, model: str = "auto") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"Request {index}: tell me a short story about a lighthouse."}],
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def chat(
    client: httpx.AsyncClient, base_url: str, index: int, body: dict[str, Any], *, api_key: str, bound_s: float
) -> Answer:
    """Sends one /v1/chat/completions request and reads all of it, for at most `bound_s` seconds."""
    answer = Answer(index=index, stream=bool(body.get("stream")), started=time.monotonic())
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with asyncio.timeout(bound_s):
            async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers) as response:
                answer.headers_at = time.monotonic()
                answer.status = response.status_code
                answer.backend = response.headers.get("x-router-backend")
                answer.reason = response.headers.get("x-router-reason")
                if answer.stream and response.status_code == 200:
                    async for line in response.aiter_lines():
                        if line == "data: [DONE]":
                            answer.done = True
                        elif line.startswith('data: {"error"'):
                            answer.error_event = "error" in json.loads(line[6:])
                else:
                    await response.aread()
    except TimeoutError:
        answer.timed_out = True
    except httpx.HTTPError as exc:
        answer.failure = type(exc).__name__
    answer.ended = time.monotonic()
    return answer


# ------------------------------------------------------------------------------------------------ counters


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in a Prometheus text exposition, with its labels."""
    out = []
    for line in exposition.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if match and match.group("name") == name:
            out.append((dict(_LABEL.findall(match.group("labels") or "")), float(match.group("value"))))
    return out


def total(exposition: str, name: str, **labels: str) -> float:
    return sum(v for tags, v in samples(exposition, name) if labels.items() <= tags.items())


def by_label(exposition: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for tags, value in samples(exposition, name):
        out[tags.get(label, "")] = out.get(tags.get(label, ""), 0.0) + value
    return out


def delta(before: str, after: str, name: str, label: str) -> dict[str, int]:
    """The rise of `name` between two expositions per value of `label` (values that did not rise left out)."""
    was, now = by_label(before, name, label), by_label(after, name, label)
    rises = {key: round(now[key] - was.get(key, 0.0)) for key in sorted(now)}
    return {key: rise for key, rise in rises.items() if rise}


def scrape(ray: RayPlatform) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{ray.metrics_port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return ""


def settled(ray: RayPlatform, *, quiet_s: float = 11.0, timeout_s: float = 60.0) -> str:
    """The exposition once the router's request counter stopped moving for `quiet_s` (Ray exports every 10 s)."""
    current = scrape(ray)
    value = total(current, REQUESTS_TOTAL)
    since, deadline = time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(1)
        current = scrape(ray)
        latest = total(current, REQUESTS_TOTAL)
        if latest != value:
            value, since = latest, time.monotonic()
    return current


def counted(ray: RayPlatform, before: str, expected: int, *, timeout_s: float = 45.0) -> str:
    """The exposition once the request counter rose by `expected` since `before` (or after `timeout_s`)."""
    base = total(before, REQUESTS_TOTAL)
    deadline = time.monotonic() + timeout_s
    while True:
        current = scrape(ray)
        if total(current, REQUESTS_TOTAL) - base >= expected or time.monotonic() > deadline:
            return current
        time.sleep(1)
