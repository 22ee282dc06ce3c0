"""The Backend interface the router calls, and the readiness value each backend reports; no I/O here.

A backend turns a validated OpenAI request into an async iterator of OpenAI `chat.completion.chunk` dicts.
Internal contract, stricter than the wire format:
  - any chunk may carry `usage` (OpenAI shape, cumulative); the last one a backend yields carries the final
    usage (a chunk with `choices: []` is fine). The router decides what the client sees.
  - `model` on each chunk is the concrete model that answered.
  - failures raise `serve_app.errors.UpstreamError` subclasses, before the first chunk or after it.
  - the iterator owns its upstream call: closing it (or cancelling the task) closes the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from serve_app.protocol import ChatCompletionRequest

BackendName = Literal["local", "cloud"]


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the router knows about a backend without waiting: read before every routing decision."""

    ready: bool
    inflight: int = 0
    detail: str = ""


class Backend(Protocol):
    name: BackendName
    provider: str  # gen_ai.provider.name: "vllm" | "anthropic"
    model_ids: list[str]  # concrete model ids this backend answers for; the first is its default

    def state(self) -> BackendState:
        """Readiness and load, answered from memory in microseconds."""
        ...

    def stream(
        self, request: ChatCompletionRequest, *, model: str, request_id: str, fail_fast: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks for `request` sent to `model`; see the module docstring for the contract.

        `fail_fast`: another backend is ready to take the request, so fail at once instead of retrying.
        """
        ...

    async def aclose(self) -> None:
        """Releases clients and connections."""
        ...
