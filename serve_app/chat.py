"""The chat service: decide, call the backend (falling back before the first byte), own each answer; no HTTP here.

`ChatService.start` returns once the answering backend has produced its first chunk (a non-streamed answer: all of
it, as its client sees nothing before the end), so the HTTP edge can still send a real status, or the other backend
answer, for any failure up to that point. The `ChatStream` it returns is the one owner of the
request's result: it accumulates usage from the chunks, prices it (cloud list prices, or the local GPU rate from
the source it was given at the start), closes the upstream exactly once (`aclose`, or `async with`) and then
hands the finished `ChatResult` to telemetry, which only records it. The HTTP edge renders from the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from serve_app.backends.anthropic_params import dropped_params, translated_params
from serve_app.backends.base import Backend
from serve_app.config import DEFAULT_TENANT, RouterArgs
from serve_app.errors import UpstreamError, UpstreamUnavailable
from serve_app.prompt_tokens import PromptCounter
from serve_app.protocol import ChatCompletionRequest, ModelCard, ModelList
from serve_app.routing import (
    ALIASES,
    CLOUD_ALIASES,
    RouteDecision,
    RouteInput,
    decide,
    prompt_chars,
    request_has_images,
)
from serve_app.telemetry import ChatResult, Observation, Telemetry
from serve_app.telemetry.cost import RequestCost, request_cost
from serve_app.telemetry.request_log import RequestFeatures
from serve_app.tenancy import Admission, Tenancy
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
            await _close(self._upstream)
        finally:
            self.result = self._result()
            self._observation.record(self.result)
            _settle(self._admission, self.result)

    def _result(self) -> ChatResult:
        return finished_result(
            self._tally,
            outcome=self._outcome,
            error=self._error,
            price=self._price,
            prompt_tokens_estimated=self._prompt_tokens_estimated,
        )


class ChatService:
    def __init__(
        self,
        args: RouterArgs,
        *,
        backends: Mapping[str, Backend],
        telemetry: Telemetry,
        local_rate: LocalRate | None = None,
        tenancy: Tenancy | None = None,
        prompt_counter: PromptCounter | None = None,
    ) -> None:
        self._args = args
        self._prompt_counter = prompt_counter or PromptCounter(args.routing, args.local)  # default: estimate only
        self._tenancy = tenancy  # None: no limits (tenants are still named in telemetry)
        self._pricer = Pricer(args, local_rate)
        self._backends = dict(backends)
        self._telemetry = telemetry
        self._local = self._backends["local"]
        self._cloud = self._backends.get("cloud")

    @property
    def telemetry(self) -> Telemetry:
        return self._telemetry

    def models(self) -> ModelList:
        cards = [
            ModelCard(id=alias, owned_by="hybrid-llm") for alias in ALIASES if alias not in CLOUD_ALIASES or self._cloud
        ]
        cards.append(ModelCard(id=self._args.local.model_id, owned_by="local"))
        if self._cloud is not None:
            cards += [ModelCard(id=m, owned_by="anthropic") for m in self._cloud.model_ids]
        return ModelList(data=cards)

    async def aclose(self) -> None:
        """Closes every backend's clients and connections (replica shutdown); one failing close skips no other."""
        for name, backend in self._backends.items():
            try:
                await backend.aclose()
            except Exception:
                logger.warning("closing the %s backend failed", name, exc_info=True)

    def readiness(self) -> dict[str, Any]:
        backends = {}
        for name, backend in self._backends.items():
            state = backend.state()
            self._telemetry.set_backend_state(name, ready=state.ready, inflight=state.inflight)
            backends[name] = {"ready": state.ready, "inflight": state.inflight, "detail": state.detail}
        self._prompt_counter.refresh()
        ready = any(b["ready"] for b in backends.values())
        return {"ready": ready, "backends": backends, "prompt_tokens": self._prompt_counter.status()}

    def route_input(self, request: ChatCompletionRequest, *, prompt_tokens: int) -> RouteInput:
        """What the policy sees of `request`, with the backends' state right now."""
        local_state = self._local.state()
        cloud_state = self._cloud.state() if self._cloud else None
        return RouteInput(
            requested_model=request.model,
            local_model_id=self._args.local.model_id,
            cloud_model_ids=tuple(self._cloud.model_ids) if self._cloud else (),
            local_ready=local_state.ready,
            local_inflight=local_state.inflight,
            cloud_ready=bool(cloud_state and cloud_state.ready),
            prompt_tokens=prompt_tokens,
            output_tokens=request.output_budget,
            has_tools=bool(request.tools),
            has_images=request_has_images(request),
        )

    async def start(
        self,
        request: ChatCompletionRequest,
        *,
        request_id: str,
        headers: Mapping[str, str],
        api: str = "openai",
        tenant: str = DEFAULT_TENANT,
    ) -> ChatStream:
        """Routes and starts the request; raises a RouterError when no backend produced a first chunk. `api` names
        the wire format the client used (`openai` or `anthropic`), for the request log; `tenant` owns the key."""
        prompt_tokens = await self._prompt_counter.prompt_tokens(request)
        observation = self._telemetry.begin(
            request_id=request_id,
            headers=headers,
            requested_model=request.model,
            stream=request.stream,
            max_tokens=request.output_budget,
            prompt_tokens_estimated=prompt_tokens,
            user=request.user,
            tenant=tenant,
            messages=_messages_for_telemetry(request) if self._telemetry.capture_content else None,
        )
        decision: RouteDecision | None = None
        admission: Admission | None = None
        tally: Tally | None = None
        try:
            route = self.route_input(request, prompt_tokens=prompt_tokens)
            if self._telemetry.request_log is not None:
                observation.saw(
                    RequestFeatures(api=api, prompt_chars=prompt_chars(request), route=route, tenant=tenant)
                )
            decision = decide(route=route, policy=self._args.routing, local=self._args.local)
            if self._tenancy is not None:  # the tenant's limits, before anything costs: may divert or refuse
                admission = await self._tenancy.admit(
                    tenant=tenant, request=request, prompt_tokens=prompt_tokens, decision=decision
                )
                decision = admission.decision
            while True:
                backend = self._backends[decision.backend]
                observation.routed(
                    backend=decision.backend,
                    provider=backend.provider,
                    model=decision.model,
                    reason=decision.reason,
                    fallback=decision.is_retry,
                )
                dropped = self._report_params(request, decision, observation)
                fail_fast = decision.fallback_backend is not None  # set only when that backend was ready
                upstream = backend.stream(request, model=decision.model, request_id=request_id, fail_fast=fail_fast)
                tally = Tally(clock=self._telemetry.clock, capture_text=self._telemetry.capture_content)
                try:
                    try:
                        with observation.backend_step():
                            first = await anext(upstream)
                    except StopAsyncIteration:
                        raise UpstreamUnavailable(
                            "the backend ended without an answer", backend=decision.backend
                        ) from None
                    tally.add(first)
                    if not request.stream:
                        with observation.backend_step():
                            upstream = await _read_whole(upstream, tally, can_fall_back=bool(decision.fallback_backend))
                except UpstreamError as exc:
                    await _close(upstream)
                    if not (exc.retryable_elsewhere and decision.fallback_backend):
                        raise
                    logger.info("falling back from %s: %s", decision.backend, exc.kind)
                    decision = decision.after_failure()
                    if admission is not None and await admission.fall_back(decision) is None:
                        raise  # the other backend is over the tenant's limits: the original error stands
                    continue
                except BaseException:
                    await _close(upstream)
                    raise
                return ChatStream(
                    decision=decision,
                    observation=observation,
                    first=first,
                    upstream=upstream,
                    tally=tally,
                    price=lambda usage, d=decision: self._pricer(backend=d.backend, model=d.model, usage=usage),
                    prompt_tokens_estimated=prompt_tokens,
                    dropped_params=dropped,
                    admission=admission,
                    tallied=not request.stream,
                )
        except BaseException as exc:
            outcome = "error" if isinstance(exc, Exception) else "cancelled"
            if decision is not None and tally is not None and tally.chunks:  # a non-streamed answer cut while read
                result = finished_result(
                    tally,
                    outcome=outcome,
                    error=exc,
                    price=lambda usage, d=decision: self._pricer(backend=d.backend, model=d.model, usage=usage),
                    prompt_tokens_estimated=prompt_tokens,
                )
            else:
                # No chunk, no tokens: a zero cost on the backend that was tried (Langfuse shows it), none unrouted.
                cost = (
                    None
                    if decision is None
                    else self._pricer(backend=decision.backend, model=decision.model, usage=Usage())
                )
                result = ChatResult(outcome=outcome, error=exc, cost=cost)
            observation.record(result)
            _settle(admission, result)
            raise

    @staticmethod
    def _report_params(
        request: ChatCompletionRequest, decision: RouteDecision, observation: Observation
    ) -> tuple[str, ...]:
        """The request fields the cloud path drops or translates, on the span and generation; what it drops."""
        if decision.backend != "cloud":
            observation.request_params(dropped=(), translated=())
            return ()
        dropped = dropped_params(request)
        observation.request_params(dropped=dropped, translated=translated_params(request))
        return dropped


def _messages_for_telemetry(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The prompt as the client sent it (JSON-ready), for spans only when content capture is opted in."""
    return [message.model_dump(mode="json", exclude_none=True) for message in request.messages]


def _settle(admission: Admission | None, result: ChatResult) -> None:
    """Books what the request cost against its tenant's limits, from the result telemetry recorded."""
    if admission is not None:
        cost = result.cost
        admission.settle(
            backend=admission.decision.backend,
            outcome=result.outcome,
            tokens=result.usage.total_tokens,
            cost_usd=None if cost is None or cost.actual is None else cost.actual.total,
        )


async def _read_whole(
    upstream: AsyncIterator[dict[str, Any]], tally: Tally, *, can_fall_back: bool
) -> AsyncIterator[dict[str, Any]]:
    """Reads a non-streamed answer to its end into `tally`; returns its chunks as a stream again. A failure on the
    way is raised when the other backend may answer instead (the client has seen nothing yet), else it ends the
    returned stream after the chunks that came, so the answer is billed and rendered as a failure after them."""
    chunks: list[dict[str, Any]] = []
    failure: UpstreamError | None = None
    try:
        async for chunk in upstream:
            tally.add(chunk)
            chunks.append(chunk)
    except UpstreamError as exc:
        if exc.retryable_elsewhere and can_fall_back:
            raise
        failure = exc
    finally:
        await _close(upstream)
    return _replay(chunks, failure)


async def _replay(chunks: list[dict[str, Any]], failure: UpstreamError | None) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk
    if failure is not None:
        raise failure


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # closing must not mask the error that ended the stream
        logger.debug("closing a backend stream failed", exc_info=True)
