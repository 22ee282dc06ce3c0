"""The local backend: the vLLM engine (RouterLLMServer) reached through a DeploymentHandle.

Readiness is read from the handle's own replica set (microseconds, no controller round trip), which drops
to zero within milliseconds of a replica dying and comes back the moment a new one is ready. The handle streams
over Ray's generator or Serve's inter-deployment gRPC (`handle_transport`). Every call is
bounded: the first chunk within `first_chunk_timeout_s`, each later one within `chunk_timeout_s`. The model
replica ends each stream with its GPU's amortised USD per token (`LOCAL_COST_KEY`), kept here for pricing for
at most `cost_rate_max_age_s`. The request's trace context (the router span, current while a step runs) travels
in the body to the model replica, which continues the trace there and into vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle

from serve_app.backends.base import BackendState
from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.errors import (
    UpstreamContextExceeded,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serve_app.protocol import LOCAL_COST_KEY, LOCAL_TRACE_KEY, ChatCompletionRequest
from serve_app.sse import iter_data

logger = logging.getLogger(__name__)


class LocalBackend:
    name = "local"
    provider = "vllm"

    def __init__(
        self,
        args: LocalBackendArgs,
        policy: RoutingPolicy,
        handle: DeploymentHandle | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._args = args
        self._policy = policy
        self.model_ids = [args.model_id]
        self._inflight = 0
        self._clock = clock
        self._usd_per_token: float | None = None
        self._rate_at = 0.0
        # By name and unchecked: the model application may not exist yet while the router starts, and the
        # router must come up (serving cloud traffic) anyway. Pinned to Ray 2.60 like the replica-set read.
        handle = handle or serve.get_deployment_handle(
            args.deployment_name, app_name=args.app_name, _check_exists=False
        )
        if not handle.is_initialized:
            handle._init()  # so the replica set is tracked before the first request
        self._handle = handle
        # `grpc`: each streamed item is a message on one gRPC stream instead of an object of Ray's streaming generator
        self._stream_handle = handle.options(
            stream=True, method_name="chat_json", _by_reference=args.handle_transport == "ray"
        )

    def state(self) -> BackendState:
        replicas = self._replica_count()
        return BackendState(
            ready=replicas > 0,
            inflight=self._inflight,
            detail=f"{replicas} running replica(s)" if replicas else "no running replica (loading or restarting)",
        )

    def usd_per_token(self) -> float | None:
        """The local GPU's amortised USD per token as the model replica last reported it; None before the first
        report and once the last one is older than `cost_rate_max_age_s` (the price or the load may have changed
        since: an unknown counterfactual is better than a stale one)."""
        if self._usd_per_token is None or self._clock() - self._rate_at > self._args.cost_rate_max_age_s:
            return None
        return self._usd_per_token

    def _replica_count(self) -> int:
        try:  # private path, pinned to Ray 2.60 (see tests/integration); the public fallback never resets
            return len(self._handle._router._asyncio_router.request_router.curr_replicas)
        except Exception:
            return 1 if self._handle.running_replicas_populated() else 0

    async def stream(
        self, request: ChatCompletionRequest, *, model: str, request_id: str, fail_fast: bool = False
    ) -> AsyncIterator[dict[str, Any]]:  # no retries here, so failing fast is the only way it fails
        body = self._engine_body(request, model)
        self._inflight += 1
        response = self._stream_handle.remote(body)
        finished = False
        try:
            timeout = self._args.first_chunk_timeout_s
            while True:
                try:
                    # asyncio.timeout, not wait_for: no extra Task per chunk (measured: ~20 µs a chunk).
                    async with asyncio.timeout(timeout):
                        text = await response.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                timeout = self._args.chunk_timeout_s
                for payload in iter_data(text):
                    if "error" in payload:
                        raise _engine_error(payload["error"])
                    if LOCAL_COST_KEY in payload:
                        rate = _rate(payload[LOCAL_COST_KEY])
                        if rate is not None:  # None (nothing served in the window yet) keeps the last known rate
                            self._usd_per_token, self._rate_at = rate, self._clock()
                        continue
                    yield payload
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the local model sent nothing for {timeout:g}s", backend="local") from exc
        except BackPressureError as exc:
            raise UpstreamUnavailable(
                "the local model's queue is full",
                backend="local",
                code="local_saturated",
                retry_after=getattr(exc, "retry_after_s", None) or 1,  # Serve's own hint when it gives one
            ) from exc
        except (RayError, RayServeException, DeploymentUnavailableError, grpc.RpcError) as exc:
            logger.warning("local backend call failed: %s", type(exc).__name__)
            raise UpstreamUnavailable(
                f"the local model failed: {type(exc).__name__}", backend="local", retry_after=5
            ) from exc
        finally:
            self._inflight -= 1
            if not finished:
                response.cancel()

    def _engine_body(self, request: ChatCompletionRequest, model: str) -> dict[str, Any]:
        body = request.model_dump(exclude_none=True, include=_ENGINE_FIELDS)
        body["model"] = model
        body["stream"] = True
        # Usage on every chunk (cumulative): a cancelled stream still has exact counts.
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        body["max_tokens"] = request.output_budget or self._policy.default_local_output_tokens
        trace_context: dict[str, str] = {}
        _W3C.inject(trace_context)  # W3C trace context only: the router sends no baggage to the engine
        if trace_context:
            body[LOCAL_TRACE_KEY] = trace_context
        return body

    async def aclose(self) -> None:
        return None


# What reaches the engine of a client's request: the fields the router models (less the ones it rewrites) and
# the standard sampling fields vLLM honours. Anything else a client sends (vLLM's own scheduling, template and
# transfer knobs such as `priority`, `chat_template_kwargs`, `prompt_logprobs`) is dropped, as the cloud path does.
_ENGINE_FIELDS = (set(ChatCompletionRequest.model_fields) - {"stream_options", "max_completion_tokens", "user"}) | {
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "response_format",
    "top_k",
    "min_p",
    "repetition_penalty",
}


_W3C = TraceContextTextMapPropagator()


def _rate(report: object) -> float | None:
    rate = report.get("usd_per_token") if isinstance(report, dict) else None
    return float(rate) if isinstance(rate, int | float) and rate >= 0 else None


def _engine_error(error: dict[str, Any]) -> UpstreamError:
    message = str(error.get("message") or "the local model rejected the request")
    status = int(error.get("code") or 500)
    # A prompt that fills the window exactly leaves vLLM no output token: it clamps max_tokens to 0 and rejects
    # that (the router never sends max_tokens < 1), so that too is a context overflow, which the cloud may take.
    overflow = ("context length", "maximum context", "too long", "max_tokens must be at least 1, got 0")
    if status == 400 and any(text in message for text in overflow):
        return UpstreamContextExceeded(message, backend="local", param="messages")
    if 400 <= status < 500:
        return UpstreamRejected(message, backend="local")
    return UpstreamUnavailable(f"the local model failed: {message}", backend="local")
