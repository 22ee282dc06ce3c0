"""Bad input at scale, in-process against the FastAPI app over stand-in backends: no request may get a 5xx.

Two sources of requests, on both `/v1/chat/completions` and `/v1/messages`: schemathesis generating from the
app's own OpenAPI document (valid and invalid bodies), and hypothesis strategies for what a schema does not
describe (deep nesting, lone surrogates and other unicode, numbers past any limit, wrong types, duplicate keys,
invalid UTF-8, oversized parts, abusive headers). `make test` runs a few dozen examples of each; `make fuzz`
sets FUZZ_EXAMPLES (and FUZZ_REPORT, a JSON file for the figures in docs/hardening.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.component.conftest import BASE_URL, Router, build_router
from tests.component.fakes import API_KEY, chat_body, router_args

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))  # per strategy and route
REPORT = os.environ.get("FUZZ_REPORT")
ROUTES = ["/v1/chat/completions", "/v1/messages"]
WARM_UP = 1000
LIMIT = 64 * 1024  # max_request_bytes here: big enough that most generated bodies are parsed, not refused
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 100,  # the fast subset is the same every run; the full run explores
    suppress_health_check=list(HealthCheck),
)

pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 4))


@dataclass
class Harness:
    """One app and one event loop for every generated request, and the tally of what came back."""

    router: Router
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    rss_start: int = 0
    rss_warm: int = 0  # after the first WARM_UP requests: imports, caches and pools are filled by then
    started: float = field(default_factory=time.monotonic)

    def count(self, path: str, response: httpx.Response, sent: object) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{path} {response.status_code} {response.text[:300]} <- {sent!r:.300}")
        total = sum(self.statuses.values())
        if total % 500 == 0:
            _forget(self.router)
        if total == WARM_UP:
            self.rss_warm = psutil.Process().memory_info().rss

    def send(self, path: str, *, headers: list[tuple[str, Any]] | None = None, **kwargs: Any) -> httpx.Response:
        sent = [("authorization", f"Bearer {API_KEY}"), *(headers or [])]
        response = self.loop.run_until_complete(self.client.post(path, headers=sent, **kwargs))
        self.count(path, response, kwargs)
        if 400 <= response.status_code < 500:
            error = response.json()["error"]  # an OpenAI or Anthropic error body, never plain text
            assert isinstance(error["message"], str) and error["type"], response.text
        return response


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    router = build_router(args=router_args(max_request_bytes=LIMIT))
    transport = httpx.ASGITransport(app=router.app)
    client = httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30)
    made = Harness(router=router, loop=loop, client=client, rss_start=psutil.Process().memory_info().rss)
    yield made
    alive = made.send("/v1/chat/completions", json=chat_body())
    assert alive.status_code == 200  # the app still answers after everything above
    loop.run_until_complete(client.aclose())
    router.telemetry.shutdown()
    loop.close()
    if REPORT:
        figures = {
            "requests": sum(made.statuses.values()),
            "statuses": dict(sorted(made.statuses.items())),
            "server_errors": len(made.server_errors),
            "rss_start_mib": round(made.rss_start / 2**20, 1),
            "rss_after_warm_up_mib": round(made.rss_warm / 2**20, 1) if made.rss_warm else None,
            "rss_end_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
            "seconds": round(time.monotonic() - made.started, 1),
            "examples_per_strategy": EXAMPLES,
        }
        Path(REPORT).write_text(json.dumps(figures, indent=2) + "\n")


def _forget(router: Router) -> None:
    """Empties what the test's stand-ins record (every span, every backend call and stream): theirs, not the app's."""
    router.spans.clear()
    for backend in (router.local, router.cloud):
        if backend is not None:
            backend.calls.clear()  # type: ignore[attr-defined]
            backend.streams.clear()  # type: ignore[attr-defined]


def _no_server_errors(harness: Harness) -> None:
    assert not harness.server_errors, "\n".join(harness.server_errors[:5])


# ---- schemathesis, from the app's own schema -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ROUTES)
def test_fuzz_from_the_openapi_schema_never_gets_a_5xx(harness, path, mode):
    schema = schemathesis.openapi.from_dict(harness.router.app.openapi())
    operation = schema[path]["POST"]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=BASE_URL)
        body = {"json": kwargs["json"]} if "json" in kwargs else {"content": kwargs.get("data") or b""}
        harness.send(path, headers=[("content-type", "application/json")], **body)

    run()
    _no_server_errors(harness)


# ---- hypothesis, for what a schema does not describe -----------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "n",
    "stop",
    "user",
    "seed",
    "system",
    "stop_sequences",
    "metadata",
]


def _valid(path: str) -> dict[str, Any]:
    body = chat_body("hi there", max_tokens=16)
    return body if path.endswith("completions") else body | {"max_tokens": 16}


@st.composite
def wrong_types(draw: st.DrawFn, path: str) -> bytes:
    """A valid body with some fields (top level or inside the message) replaced by arbitrary JSON."""
    body = _valid(path)
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        body[name] = draw(JSON_VALUES)
    if draw(st.booleans()):
        body["messages"] = [
            {"role": draw(st.sampled_from(["user", "assistant", "tool", "x"])), "content": draw(JSON_VALUES)}
        ]
    return json.dumps(body).encode()


def _nested(depth: int, kind: str) -> str:
    return {"list": "[" * depth + "]" * depth, "object": '{"a":' * depth + "1" + "}" * depth}[kind]


@st.composite
def raw_bodies(draw: st.DrawFn, path: str) -> bytes:
    """Bodies a JSON encoder would never write: each a small edit of a valid one."""
    valid = json.dumps(_valid(path))
    kind = draw(st.sampled_from(["nesting", "number", "duplicate", "surrogate", "bytes", "oversized", "unicode"]))
    if kind == "nesting":
        depth = draw(st.integers(min_value=1, max_value=20_000))
        nested = _nested(depth, draw(st.sampled_from(["list", "object"])))
        return valid.replace('"hi there"', nested).encode()
    if kind == "number":
        digits = draw(st.integers(min_value=1, max_value=20_000))
        number = draw(st.sampled_from(["9" * digits, "-" + "9" * digits, f"1e{digits}", "1e-400", "NaN", "-Infinity"]))
        name = draw(st.sampled_from(["max_tokens", "temperature", "top_p", "seed", "n"]))
        return valid.replace('"max_tokens": 16', f'"{name}": {number}, "max_tokens": 16').encode()
    if kind == "duplicate":
        other = json.dumps(draw(JSON_VALUES))
        name = draw(st.sampled_from(["model", "messages", "max_tokens", "stream"]))
        return valid.replace("{", f'{{"{name}": {other}, ', 1).encode()
    if kind == "surrogate":
        escaped = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\ud800\\u0041"]))
        where = draw(st.sampled_from(['"hi there"', '"auto"', '"user"']))
        return valid.replace(where, where[:-1] + escaped + '"', 1).encode()
    if kind == "bytes":
        return valid.encode().replace(b"hi there", draw(st.binary(min_size=1, max_size=64)))
    if kind == "oversized":
        size = draw(st.sampled_from([LIMIT - len(valid) - 20, LIMIT, 4 * LIMIT]))
        return valid.replace("hi there", "x" * max(size, 1)).encode()
    text = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=200))
    return json.dumps(_valid(path) | {"model": draw(st.sampled_from(["auto", text])), "user": text[:300]}).encode()


HEADER_VALUES = st.one_of(
    st.binary(max_size=64),
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=64),
    st.sampled_from([b"a" * 8000, b"Bearer", b"Bearer ", b"bearer \xff\xfe", b"00-" + b"f" * 60, b"\t"]),
)
HEADER_NAMES = st.sampled_from(
    ["authorization", "x-api-key", "x-request-id", "content-type", "traceparent", "tracestate", "baggage",
     "content-encoding", "transfer-encoding", "accept", "x-anything"]
)  # fmt: skip


@st.composite
def abusive_headers(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), min_size=1, max_size=6))
    return [(name, value.encode("latin-1") if isinstance(value, str) else value) for name, value in headers]


@pytest.mark.parametrize("path", ROUTES)
def test_fuzz_wrong_types_never_get_a_5xx(harness, path):
    @FUZZ
    @given(body=wrong_types(path))
    def run(body: bytes) -> None:
        harness.send(path, content=body, headers=[("content-type", "application/json")])

    run()
    _no_server_errors(harness)


@pytest.mark.parametrize("path", ROUTES)
def test_fuzz_raw_bodies_never_get_a_5xx(harness, path):
    @FUZZ
    @given(body=raw_bodies(path))
    def run(body: bytes) -> None:
        harness.send(path, content=body, headers=[("content-type", "application/json")])

    run()
    _no_server_errors(harness)


@pytest.mark.parametrize("path", ROUTES)
def test_fuzz_abusive_headers_never_get_a_5xx(harness, path):
    @FUZZ
    @given(headers=abusive_headers(), stream=st.booleans())
    def run(headers: list[tuple[str, bytes]], stream: bool) -> None:
        body = json.dumps(_valid(path) | {"stream": stream}).encode()
        response = harness.loop.run_until_complete(harness.client.post(path, content=body, headers=headers))
        harness.count(path, response, headers)

    run()
    _no_server_errors(harness)


# ---- the app's memory without the generators: `python -m tests.component.test_fuzz_ingress [rounds]` -----------

MEMORY_BODIES = [
    json.dumps(chat_body()).encode(),
    b'{"model": "auto", "messages": [',
    json.dumps(chat_body(model="no-such-model")).encode(),
    ("[" * 5000 + "]" * 5000).encode(),
]


async def _memory_round(router: Router, client: httpx.AsyncClient, n: int) -> None:
    """11 requests: 4 fixed bodies on both routes, unknown fields named anew, a stream, abusive id and traceparent."""
    for body in MEMORY_BODIES:
        for path in ROUTES:
            await client.post(path, content=body)
    await client.post("/v1/chat/completions", json=chat_body(**{f"field_{n}_{os.urandom(8).hex()}": 1}))
    await client.post("/v1/chat/completions", json=chat_body(stream=True))
    await client.post(
        "/v1/chat/completions", json=chat_body(), headers={"x-request-id": "a b" * 50, "traceparent": "x"}
    )
    if n % 50 == 0:
        _forget(router)


async def measure_memory(rounds: int) -> dict[str, float]:
    """RSS after a warm-up of `rounds` rounds and after `rounds` more: the app's own growth under bad input."""
    import gc

    router = build_router(args=router_args(max_request_bytes=LIMIT))
    headers = {"authorization": f"Bearer {API_KEY}"}
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=router.app), base_url=BASE_URL, headers=headers)
    rss: list[float] = []
    for phase in range(2):
        for n in range(rounds):
            await _memory_round(router, client, phase * rounds + n)
        gc.collect()
        rss.append(psutil.Process().memory_info().rss / 2**20)
    await client.aclose()
    router.telemetry.shutdown()
    return {"requests_per_phase": rounds * 11, "rss_after_warm_up_mib": rss[0], "rss_at_end_mib": rss[1]}


if __name__ == "__main__":
    import sys

    print(json.dumps(asyncio.run(measure_memory(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)), indent=2))
