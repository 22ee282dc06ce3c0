"""The local model deployment: Ray Serve LLM's LLMServer with a JSON-in, SSE-strings-out entry point.

The router must never import vLLM (ray.serve.llm needs it at import time), so it cannot build vLLM's
request class. This subclass takes the OpenAI request as a plain dict, builds the request inside the
model replica, and yields flat SSE strings. Only the model replica and `build_llm_app` import this module.
Each request continues the router's trace here (`replica_tracing`) and hands vLLM the context to continue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator
from contextlib import nullcontext
from typing import Any

from ray.llm._internal.serve.core.protocol import RawRequestInfo  # how LLMServer takes headers (Ray 2.60 pin)
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest, ErrorResponse

from serve_app.protocol import LOCAL_TRACE_KEY
from serve_app.telemetry.gpu import GpuLedger, LoadingSpend, tokens_in_last_usage, trailer_event
from serve_app.telemetry.metrics import RayMetricsSink, RouterMetrics
from serve_app.telemetry.replica_tracing import ModelTracing, engine_tracing

logger = logging.getLogger(__name__)

# Ray drops a gauge not set again within two metric exports (2 s at the shortest interval): stay below that.
_SPEND_PERIOD_S = 1.0


class RouterLLMServer(LLMServer):
    """LLMServer reachable through a DeploymentHandle with JSON-ready arguments only, keeping its GPU ledger."""

    async def __init__(self, llm_config: LLMConfig, **kwargs: Any) -> None:
        metrics = RouterMetrics(RayMetricsSink(), models=())
        self._ledger = GpuLedger.from_experimental(dict(llm_config.experimental_configs or {}), metrics)
        # vLLM exports its request spans where the router's go (before the engine starts: it reads both then)
        engine_kwargs, engine_env = engine_tracing(llm_config.engine_kwargs or {}, os.environ)
        os.environ.update(engine_env)
        if engine_env:  # this replica's copy of the config (also any engine config already derived from it)
            llm_config.update_engine_kwargs(**engine_kwargs)
        self._tracing = ModelTracing.from_environ(
            os.environ,
            engine_traced=bool(engine_kwargs.get("otlp_traces_endpoint")),
            model=llm_config.model_id,
            on_drop=lambda n: metrics.dropped_items("otlp", n),
        )
        # The GPU is paid while the model loads too (all of it idle): its gauges are published from the start.
        with LoadingSpend(self._ledger, period_s=_SPEND_PERIOD_S) if self._ledger is not None else nullcontext():
            await super().__init__(llm_config, **kwargs)
        self._spend_task = None  # held so the task is not garbage-collected while it runs
        if self._ledger is not None:
            self._spend_task = asyncio.get_running_loop().create_task(self._publish_spend(self._ledger))

    @staticmethod
    async def _publish_spend(ledger: GpuLedger) -> None:
        """Keeps the spend gauges current while idle too: idle GPU time is spend nobody's request paid for."""
        while True:
            ledger.publish()
            await asyncio.sleep(_SPEND_PERIOD_S)

    async def chat_json(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """Streams a chat completion for `body` (must have stream=true) as SSE `data:` strings.

        Engine-side rejections (prompt longer than the context window, bad parameters) come back as one
        `data: {"error": ...}` string so the router can answer with their status instead of a 500.
        """
        spans = self._tracing.begin(body.pop(LOCAL_TRACE_KEY, None))
        try:
            request = ChatCompletionRequest.model_validate(body)
        except ValueError as exc:
            spans.end(exc)
            yield _error_event(str(exc), "invalid_request_error", 400)
            return
        ledger = self._ledger
        started = ledger.begin() if ledger is not None else 0.0
        usage_text, done = "", ""
        completed = False
        error: BaseException | None = None
        try:
            raw = RawRequestInfo(headers=spans.engine_headers) if spans.engine_headers else None
            results = await self.chat(request, raw)
            async for item in results:
                # One handle item per LLMServer batch (stream_batching_interval_ms), not one per token: each
                # streamed item costs a Ray round of its own, and the router parses several events per string.
                text = "".join(_event(entry) for entry in (item if isinstance(item, list) else [item]))
                if '"usage"' in text:  # cumulative on every chunk
                    usage_text = text
                if ledger is not None and text.endswith(_DONE):
                    done = text  # held back: the ledger's trailer travels in the same item, no extra round
                    continue
                yield text
            completed = True
        except BaseException as exc:  # a cancellation too: it ends the spans as cancelled, then goes on
            error = exc
            raise
        finally:
            spans.end(error)
            rate = self._settle(started, usage_text)
        if completed and ledger is not None:
            yield trailer_event(rate) + done

    def _settle(self, started: float, usage_text: str) -> float | None:
        """Books the request in the GPU ledger (busy time counts however the stream ended); never raises."""
        if self._ledger is None:
            return None
        try:
            return self._ledger.served(started=started, tokens=tokens_in_last_usage(usage_text))
        except Exception:
            logger.warning("GPU ledger update failed; this request's local cost is unknown", exc_info=True)
            return None


_DONE = "data: [DONE]\n\n"


def _event(entry: object) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, ErrorResponse):
        error = entry.error
        return _error_event(error.message, error.type, int(error.code or 500))
    # A whole response although stream=true was asked: re-emit it as one event.
    return f"data: {entry.model_dump_json()}\n\n"  # type: ignore[attr-defined]


def _error_event(message: str, error_type: str, status: int) -> str:
    payload = {"error": {"message": message, "type": error_type, "code": status}}
    return f"data: {json.dumps(payload)}\n\n"
