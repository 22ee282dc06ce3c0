"""A started answer and the one owner of its result: tally the chunks, price them, close the upstream once, record.

`ChatStream` accumulates usage from the chunks into a `Tally`, prices it with what the service gave it (cloud list
prices, or the local GPU rate as last reported, through `Pricer`), closes the upstream exactly once (`aclose`, or
`async with`) and then hands the finished `ChatResult` to telemetry, which only records it, and settles the tenant's
reservations from it. Choosing and starting the backend is `serve_app.chat`'s; rendering is the HTTP edge's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from serve_app.config import RouterArgs
from serve_app.routing import RouteDecision
from serve_app.telemetry import ChatResult, Observation
from serve_app.telemetry.cost import RequestCost, request_cost
from serve_app.tenancy import Admission
from serve_app.usage import Usage, accumulate_openai_chunk

logger = logging.getLogger(__name__)

LocalRate = Callable[[], float | None]  # the local GPU's amortised USD per token, as last reported; None: unknown


@dataclass
class Tally:
    """What the chunks of one answer said: usage (cumulative, assigned), model, finish reasons, first token."""

    clock: Callable[[], float]
    capture_text: bool = False
    usage: Usage = field(default_factory=Usage)
    usage_known: bool = False
    chunks: int = 0
    content_chunks: int = 0
    first_token_at: float | None = None
    first_token_ns: int | None = None
    response_model: str | None = None
    finish_reasons: dict[int, str] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)

    unreadable: int = 0  # chunks whose accounting failed (malformed): they still reach the client

    def add(self, chunk: Mapping[str, Any]) -> None:
        try:
            self._add(chunk)
        except Exception:
            self.unreadable += 1
            logger.debug("a chunk could not be accounted", exc_info=True)

    def _add(self, chunk: Mapping[str, Any]) -> None:
        self.chunks += 1
        if chunk.get("usage"):
            self.usage = accumulate_openai_chunk(chunk=chunk, snapshot=self.usage)
            self.usage_known = True
        if model := chunk.get("model"):
            self.response_model = model
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or choice.get("message") or {}
            content = delta.get("content")
            if content or delta.get("tool_calls") or delta.get("reasoning_content"):
                self.content_chunks += 1
                if self.first_token_at is None:
                    self.first_token_at, self.first_token_ns = self.clock(), time.time_ns()
                if self.capture_text and isinstance(content, str):
                    self.text.append(content)
            if reason := choice.get("finish_reason"):
                self.finish_reasons[int(choice.get("index") or 0)] = reason

    def final_usage(self, outcome: str, *, prompt_tokens_estimated: int) -> tuple[Usage, bool]:
        """Reported usage if any, else an estimate (flagged). A stream that ended early may have streamed more than
        its last count says (Anthropic reports output tokens only at the end); every content chunk carries at least
        one token, so the output is then at least the content chunks seen (flagged)."""
        if self.chunks == 0:
            return self.usage, False
        if not self.usage_known:
            return Usage(input=prompt_tokens_estimated, output=self.content_chunks), True
        if outcome != "ok" and self.content_chunks > self.usage.output:
            return replace(self.usage, output=self.content_chunks), True
        return self.usage, False


class Pricer:
    """A request's cost on the backend that answered and its counterfactual on the other; None if it cannot tell.
    Cloud tokens at the configured list prices; local ones at the GPU rate `local_rate` reports when asked."""

    def __init__(self, args: RouterArgs, local_rate: LocalRate | None = None) -> None:
        self._prices = dict(args.pricing.models) if args.pricing else {}
        self._default_cloud_model = args.cloud.model if args.cloud.enabled else None
        self._local_rate = local_rate

    def __call__(self, *, backend: str, model: str, usage: Usage) -> RequestCost | None:
        try:
            rate = self._local_rate() if self._local_rate is not None else None
            return request_cost(
                backend=backend,
                model=model,
                usage=usage,
                prices=self._prices,
                default_cloud_model=self._default_cloud_model,
                local_usd_per_token=rate,
            )
        except Exception:
            logger.debug("pricing failed", exc_info=True)
            return None


def finished_result(
    tally: Tally,
    *,
    outcome: str,
    error: BaseException | None,
    price: Callable[[Usage], RequestCost | None],
    prompt_tokens_estimated: int,
) -> ChatResult:
    """The result of an answer whose chunks made `tally`, ended with `outcome`."""
    usage, estimated = tally.final_usage(outcome, prompt_tokens_estimated=prompt_tokens_estimated)
    return ChatResult(
        outcome=outcome,
        error=error,
        usage=usage,
        usage_estimated=estimated,
        cost=price(usage),
        response_model=tally.response_model,
        finish_reasons=tuple(tally.finish_reasons[i] for i in sorted(tally.finish_reasons)),
        first_token_at=tally.first_token_at,
        first_token_ns=tally.first_token_ns,
        text="".join(tally.text) if tally.capture_text else None,
        started=tally.chunks > 0,
    )


class ChatStream:
    """A started answer and the one owner of its result; an async context manager that closes it on exit."""

    def __init__(
        self,
        *,
        decision: RouteDecision,
        observation: Observation,
        first: dict[str, Any],
        upstream: AsyncIterator[dict[str, Any]],
        tally: Tally,
        price: Callable[[Usage], RequestCost | None],
        prompt_tokens_estimated: int,
        dropped_params: tuple[str, ...] = (),
        admission: Admission | None = None,
        tallied: bool = False,
    ) -> None:
        self.decision = decision
        self.first = first
        self.dropped_params = dropped_params  # request fields the answering backend did not get
        self._admission = admission  # the tenant's reservations, settled with the result
        self._observation = observation
        self._upstream = upstream
        self._tally = tally
        self._tallied = tallied  # the upstream's chunks are in the tally already (a non-streamed answer, read whole)
        self._price = price
        self._prompt_tokens_estimated = prompt_tokens_estimated
        self._outcome, self._error = "cancelled", None  # until the chunks say otherwise
        self._closed = False
        self.result: ChatResult | None = None

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The answer's chunks, the first included; an upstream error is raised and becomes the outcome."""
        yield self.first
        try:
            while True:
                with self._observation.backend_step():
                    try:
                        chunk = await anext(self._upstream)
                    except StopAsyncIteration:
                        break
                if not self._tallied:
                    self._tally.add(chunk)
                yield chunk
        except Exception as exc:
            self._outcome, self._error = "error", exc
            raise
        self._outcome = "ok"

    def billed(self) -> ChatResult:
        """The result as it stands: once the chunks have ended (an error included), exactly what `aclose` hands to
        telemetry, so the usage and cost the client is told match the router's metrics and generation."""
        return self.result if self.result is not None else self._result()

    async def aclose(self) -> None:
        """Closes the upstream, then hands the result to telemetry; once (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            await close_upstream(self._upstream)
        finally:
            self.result = self._result()
            self._observation.record(self.result)
            settle(self._admission, self.result)

    def _result(self) -> ChatResult:
        return finished_result(
            self._tally,
            outcome=self._outcome,
            error=self._error,
            price=self._price,
            prompt_tokens_estimated=self._prompt_tokens_estimated,
        )


def settle(admission: Admission | None, result: ChatResult) -> None:
    """Books what the request cost against its tenant's limits, from the result telemetry recorded."""
    if admission is not None:
        cost = result.cost
        admission.settle(
            backend=admission.decision.backend,
            outcome=result.outcome,
            tokens=result.usage.total_tokens,
            cost_usd=None if cost is None or cost.actual is None else cost.actual.total,
        )


async def close_upstream(iterator: AsyncIterator[Any]) -> None:
    """Closes a backend stream if it can be closed; a failing close is logged, never raised."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # closing must not mask the error that ended the stream
        logger.debug("closing a backend stream failed", exc_info=True)
