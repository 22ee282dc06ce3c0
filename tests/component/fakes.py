"""FakeBackend: the Backend protocol with scripted chunks and failures, recording every call and every close.

A script is a list of steps: a chunk dict is yielded, an exception is raised, `HANG` waits until the stream is
closed or cancelled. Each `stream()` call takes the next queued script (or the backend's default reply), so a
test can say "fail first, answer second" without touching the router's internals.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve_app.backends.base import Backend, BackendName, BackendState
from serve_app.config import RouterArgs
from serve_app.protocol import ChatCompletionRequest

HANG = object()
API_KEY = "sk-router-test-key"


def reply(
    model: str,
    *pieces: str,
    usage: dict[str, Any] | None = None,
    finish: str = "stop",
    chunk_id: str = "chatcmpl-fake",
) -> list[dict[str, Any]]:
    """Chunks of a plain text answer: role chunk, one chunk per piece, then finish_reason with the final usage."""
    usage = usage or {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }

    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, finish, usage=usage),
    ]


@dataclass
class Call:
    request: ChatCompletionRequest
    model: str
    request_id: str
    fail_fast: bool = False


class FakeStream:
    """One scripted answer; an async iterator whose `aclose` is recorded (the router must call it)."""

    def __init__(self, steps: list[Any]) -> None:
        self._steps = deque(steps)
        self._closed = asyncio.Event()
        self.aclosed = False
        self.yielded = 0

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self.aclosed or not self._steps:
            raise StopAsyncIteration
        step = self._steps.popleft()
        if step is HANG:
            await self._closed.wait()  # only aclose (or cancellation) ends this
            raise StopAsyncIteration
        if isinstance(step, BaseException):
            raise step
        await asyncio.sleep(0)  # a real backend yields to the loop between chunks
        self.yielded += 1
        return step

    async def aclose(self) -> None:
        self.aclosed = True
        self._closed.set()


@dataclass
class FakeBackend:
    """Implements `serve_app.backends.base.Backend` (checked below) with scripted answers."""

    name: BackendName
    provider: str
    model_ids: list[str]
    ready: bool = True
    inflight: int = 0
    detail: str = "fake"
    scripts: deque[list[Any]] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    closed: bool = False

    def script(self, *steps: Any) -> FakeBackend:
        """Queues the answer to the next `stream()` call."""
        self.scripts.append(list(steps))
        return self

    def default_reply(self, model: str) -> list[dict[str, Any]]:
        return reply(model, "Hello", " from ", self.name)

    def state(self) -> BackendState:
        return BackendState(ready=self.ready, inflight=self.inflight, detail=self.detail)

    def stream(
        self, request: ChatCompletionRequest, *, model: str, request_id: str, fail_fast: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(Call(request=request, model=model, request_id=request_id, fail_fast=fail_fast))
        steps = self.scripts.popleft() if self.scripts else self.default_reply(model)
        stream = FakeStream(steps)
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        self.closed = True


def local_backend(model_id: str = "local-model", **fields: Any) -> FakeBackend:
    return FakeBackend(name="local", provider="vllm", model_ids=[model_id], **fields)


def cloud_backend(model_ids: list[str] | None = None, **fields: Any) -> FakeBackend:
    return FakeBackend(
        name="cloud", provider="anthropic", model_ids=model_ids or ["claude-sonnet-4-6", "claude-haiku-4-5"], **fields
    )


def _conforms(backend: FakeBackend) -> Backend:
    return backend  # a type checker proves FakeBackend satisfies the real protocol here


# ---- args, requests and responses shared by the ingress tests ----------------------------------------------


PRICE = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}


def router_args(**overrides: Any) -> RouterArgs:
    args: dict[str, Any] = {
        "local": {"model_id": "local-model", "context_window": 4096, "saturation_inflight": 8},
        "cloud": {"model": "claude-sonnet-4-6", "extra_models": ["claude-haiku-4-5"], "max_retries": 0},
        "pricing": {
            "source": "test",
            "as_of": "2026-11-30",
            "models": {"claude-sonnet-4-6": PRICE, "claude-haiku-4-5": PRICE},
        },
        "max_request_bytes": 4096,
    }
    args.update(overrides)
    return RouterArgs.model_validate(args)


def chat_body(text: str = "hello there", **body: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **body}


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order, `[DONE]` included."""
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


def http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope for a POST to `path`, for tests that drive the app's ASGI interface directly."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("router.test", 80),
        "client": ("127.0.0.1", 50000),
    }
