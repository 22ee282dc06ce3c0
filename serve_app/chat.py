"""The chat service: decide the backend, admit, start it, fall back before the first chunk; no HTTP here.

`ChatService.start` returns once the answering backend has produced its first chunk (a non-streamed answer: all of
it, as its client sees nothing before the end), so the HTTP edge can still send a real status, or the other backend
answer, for any failure up to that point. The `ChatStream` it returns (serve_app.chat_stream) is the one owner of the
request's result from then on; a request that fails before that has its result recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from serve_app.backends.anthropic_params import dropped_params, translated_params
from serve_app.backends.base import Backend
from serve_app.chat_stream import ChatStream, LocalRate, Pricer, Tally, close_upstream, finished_result, settle
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
from serve_app.telemetry.request_log import RequestFeatures
from serve_app.tenancy import Admission, Tenancy
from serve_app.usage import Usage

logger = logging.getLogger(__name__)


class ChatService:
    """Decides, admits and starts each request of one router replica; owns its backends and their closing."""

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
                    await close_upstream(upstream)
                    if not (exc.retryable_elsewhere and decision.fallback_backend):
                        raise
                    logger.info("falling back from %s: %s", decision.backend, exc.kind)
                    decision = decision.after_failure()
                    if admission is not None and await admission.fall_back(decision) is None:
                        raise  # the other backend is over the tenant's limits: the original error stands
                    continue
                except BaseException:
                    await close_upstream(upstream)
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
            settle(admission, result)
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
        await close_upstream(upstream)
    return _replay(chunks, failure)


async def _replay(chunks: list[dict[str, Any]], failure: UpstreamError | None) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk
    if failure is not None:
        raise failure
