"""What the client is told it was billed: usage, cost and counterfactual cost, read from the stream's result.

The HTTP edge renders these; they all come from `ChatStream.billed()`, the result telemetry records, so a client's
totals match the router's metrics and generations, also for answers that failed half-way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from serve_app.assemble import usage_chunk
from serve_app.chat_stream import ChatStream
from serve_app.errors import RouterError
from serve_app.sse import encode_data


@contextlib.asynccontextmanager
async def billed_on_error(stream: ChatStream) -> AsyncIterator[None]:
    """A non-stream answer that failed after its first chunk: the error response says what the router billed for
    the part that was generated (X-Router-Usage, X-Router-Cost-USD), so a client's totals can match the router's."""
    try:
        yield
    except RouterError as exc:
        usage = stream.billed().usage
        if usage.total_tokens:
            exc.billing_headers = {  # type: ignore[attr-defined]
                "X-Router-Usage": json.dumps(usage.to_openai(), separators=(",", ":")),
                **({} if (cost := _cost_usd(stream)) is None else {"X-Router-Cost-USD": f"{cost:.9f}"}),
            }
        raise


def billed_usage_chunk(stream: ChatStream, first: dict[str, Any]) -> bytes:
    """Before an in-band error: the usage the router bills for what was streamed (what its metrics and generation
    count), so a client's totals can still match the router's."""
    model = str(first.get("model") or stream.decision.model)
    chunk = usage_chunk(
        chunk_id=str(first.get("id", "")),
        created=int(first.get("created") or 0),
        model=model,
        usage=client_usage(stream),
    )
    return encode_data(chunk)


def client_usage(stream: ChatStream) -> dict[str, Any]:
    usage = stream.billed().usage.to_openai()
    cost = _cost_usd(stream)
    if cost is not None:
        usage["cost_usd"] = round(cost, 9)
    if (counterfactual := _counterfactual_usd(stream)) is not None:
        usage["counterfactual_cost_usd"] = round(counterfactual, 9)
    return usage


def cost_headers(stream: ChatStream) -> dict[str, str]:
    """X-Router-Cost-USD and X-Router-Counterfactual-Cost-USD (the same tokens on the other backend), when known."""
    headers = {}
    if (cost := _cost_usd(stream)) is not None:
        headers["X-Router-Cost-USD"] = f"{cost:.9f}"
    if (counterfactual := _counterfactual_usd(stream)) is not None:
        headers["X-Router-Counterfactual-Cost-USD"] = f"{counterfactual:.9f}"
    return headers


def _counterfactual_usd(stream: ChatStream) -> float | None:
    cost = stream.billed().cost
    return None if cost is None or cost.counterfactual is None else cost.counterfactual.total


def _cost_usd(stream: ChatStream) -> float | None:
    """What the router bills for the answer on the backend that gave it; None when it cannot price it."""
    cost = stream.billed().cost
    return None if cost is None or cost.actual is None else cost.actual.total
