"""The chat service: decide, call the backend (falling back before the first byte), observe; no HTTP here.

`ChatService.start` returns once the answering backend has produced its first chunk, so the HTTP edge can
still send a real status for any failure up to that point. What follows the first chunk is the caller's to
stream; the observation is finished by whoever ends the stream (see `ChatStream.chunks`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.backends.anthropic_params import dropped_params, translated_params
from serve_app.backends.base import Backend
from serve_app.config import DEFAULT_TENANT, RouterArgs
from serve_app.errors import UpstreamError, UpstreamUnavailable
from serve_app.protocol import ChatCompletionRequest, ModelCard, ModelList
from serve_app.routing import (
    ALIASES,
    CLOUD_ALIASES,
    RouteDecision,
    RouteInput,
    decide,
    estimate_prompt_tokens,
    prompt_chars,
    request_has_images,
)
from serve_app.telemetry import Observation, Telemetry
from serve_app.telemetry.request_log import RequestFeatures
from serve_app.tenancy import Admission, Tenancy

logger = logging.getLogger(__name__)


@dataclass
class ChatStream:
    """A started answer: the decision that holds, and the chunks (the first already received)."""

    decision: RouteDecision
    observation: Observation
    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]
    dropped_params: tuple[str, ...] = ()  # request fields the answering backend did not get (X-Router-Dropped-Params)
    admission: Admission | None = None  # the tenant's reservations, settled when the observation finishes
    _iterator: AsyncGenerator[dict[str, Any]] | None = field(default=None, init=False)

    def chunks(self) -> AsyncGenerator[dict[str, Any]]:
        """All chunks, once; finishes the observation however the iteration ends (done, error, cancel)."""
        if self._iterator is None:
            self._iterator = self._chunks()
        return self._iterator

    async def _chunks(self) -> AsyncGenerator[dict[str, Any]]:
        outcome, error = "ok", None
        try:
            yield self.first
            async for chunk in self.rest:
                yield chunk
        except BaseException as exc:  # cancellation included: it is an ending, recorded then re-raised
            outcome = "error" if isinstance(exc, Exception) else "cancelled"
            error = exc
            raise
        finally:
            await _close(self.rest)
            self.observation.finish(outcome=outcome, error=error)
            _settle(self.admission, self.observation, outcome)

    async def aclose(self) -> None:
        """Ends the stream however the response ended (idempotent): closes the upstream before the observation is
        finished, as cancelled unless the chunks already ended, so what the upstream produced is counted."""
        if self._iterator is None:
            await _close(self.rest)
        else:
            await _close(self._iterator)
        self.observation.finish(outcome="cancelled")
        _settle(self.admission, self.observation, "cancelled")


class ChatService:
    def __init__(
        self,
        args: RouterArgs,
        *,
        backends: Mapping[str, Backend],
        telemetry: Telemetry,
        tenancy: Tenancy | None = None,
    ) -> None:
        self._args = args
        self._tenancy = tenancy  # None: no limits (tenants still named in telemetry)
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
        return {"ready": any(b["ready"] for b in backends.values()), "backends": backends}

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
        prompt_tokens = estimate_prompt_tokens(request, chars_per_token=self._args.routing.chars_per_token)
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
        admission: Admission | None = None
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
                chunks = observation.observe(
                    backend.stream(request, model=decision.model, request_id=request_id, fail_fast=fail_fast)
                )
                try:
                    try:
                        first = await anext(chunks)
                    except StopAsyncIteration:
                        raise UpstreamUnavailable(
                            "the backend ended without an answer", backend=decision.backend
                        ) from None
                except UpstreamError as exc:
                    await _close(chunks)
                    if not (exc.retryable_elsewhere and decision.fallback_backend):
                        raise
                    logger.info("falling back from %s: %s", decision.backend, exc.kind)
                    decision = decision.after_failure()
                    if admission is not None and await admission.fall_back(decision) is None:
                        raise  # the other backend is over the tenant's limits: the original error stands
                    continue
                return ChatStream(
                    decision=decision,
                    observation=observation,
                    first=first,
                    rest=chunks,
                    dropped_params=dropped,
                    admission=admission,
                )
        except BaseException as exc:
            outcome = "error" if isinstance(exc, Exception) else "cancelled"
            observation.finish(outcome=outcome, error=exc)
            _settle(admission, observation, outcome)
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


def _settle(admission: Admission | None, observation: Observation, outcome: str) -> None:
    """Books what the request cost against its tenant's limits (after the observation settled usage and cost)."""
    if admission is not None:
        admission.settle(
            backend=admission.decision.backend,
            outcome=outcome,
            tokens=observation.usage.total_tokens,
            cost_usd=observation.cost_usd,
        )


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # closing must not mask the error that ended the stream
        logger.debug("closing a backend stream failed", exc_info=True)
