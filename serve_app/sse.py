"""Server-sent-event framing for OpenAI streams: encode chunks, errors and `[DONE]`, decode `data:` lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

DONE = b"data: [DONE]\n\n"


def encode_data(payload: dict[str, Any]) -> bytes:
    """One `data:` event; compact JSON keeps per-chunk cost low."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def encode_event(event: str, payload: dict[str, Any]) -> bytes:
    """A named event (the Anthropic wire format names every event)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


def iter_data(text: str) -> Iterator[dict[str, Any]]:
    """The JSON payloads of the `data:` lines in `text`; `[DONE]` and comments are skipped.

    vLLM's chunks arrive as pre-encoded SSE strings, sometimes several in one string.
    """
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        yield json.loads(data)
