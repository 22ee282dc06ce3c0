"""One model replica's GPU ledger: its busy time and tokens served, its USD per token, and its spend gauges.

It lives in the model replica (`serve_app.engine`), which sees every request its GPU serves whichever router
replica sent it, so the amortised rate and the spend gauges are right for any number of router and model
replicas: each model replica reports its own GPU once, and dashboards sum over replicas. The router learns
the rate from the trailer event the replica appends to each stream (`protocol.LOCAL_COST_KEY`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from serve_app.protocol import LOCAL_COST_KEY
from serve_app.telemetry.cost import LocalUsageWindow
from serve_app.telemetry.metrics import RouterMetrics

logger = logging.getLogger(__name__)

# Keys of LLMConfig.experimental_configs that carry the ledger's settings into the model replica.
PRICE_KEY = "hybrid_llm_gpu_usd_per_hour"
WINDOW_KEY = "hybrid_llm_gpu_window_s"


class GpuLedger:
    """Busy intervals and tokens of one model replica over a sliding window; never raises into a request."""

    def __init__(
        self,
        *,
        usd_per_hour: float,
        window_s: float,
        metrics: RouterMetrics | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.usd_per_hour = usd_per_hour
        self._metrics = metrics
        self._clock = clock
        self._window = LocalUsageWindow(window_s=window_s, origin=clock())
        self._running: list[float] = []  # start times of requests begun and not yet served

    @classmethod
    def from_experimental(cls, configs: dict[str, Any], metrics: RouterMetrics | None) -> GpuLedger | None:
        """The ledger the model application's args asked for, or None when no GPU price is set."""
        price = float(configs.get(PRICE_KEY) or 0.0)
        if price <= 0:
            return None
        return cls(usd_per_hour=price, window_s=float(configs.get(WINDOW_KEY) or 300.0), metrics=metrics)

    def now(self) -> float:
        return self._clock()

    def begin(self) -> float:
        """Marks a request as running from now (the spend gauges count it as busy at once); returns its start,
        to be passed to `served` when it ends however it ends."""
        started = self._clock()
        self._running.append(started)
        return started

    def served(self, *, started: float, tokens: int) -> float | None:
        """Records a request that began at `started` and served `tokens`; returns the USD per token after it."""
        now = self._clock()
        if started in self._running:
            self._running.remove(started)
        self._window = self._window.add(now=now, tokens=max(tokens, 0), busy_from=started)
        self.publish(now)
        return self.usd_per_token(now)

    def usd_per_token(self, now: float | None = None) -> float | None:
        now = self._clock() if now is None else now
        return self._window.usd_per_token(now=now, gpu_usd_per_hour=self.usd_per_hour)

    def publish(self, now: float | None = None) -> None:
        """Sets the allocated/idle spend gauges from the window; idle spend keeps its gauge fresh with no traffic."""
        if self._metrics is None:
            return
        try:
            spend = self._window.spend(
                now=self._clock() if now is None else now,
                gpu_usd_per_hour=self.usd_per_hour,
                busy_since=min(self._running) if self._running else None,
            )
            self._metrics.gpu_spend(
                allocated_usd_per_hour=spend.allocated_usd_per_hour, idle_usd_per_hour=spend.idle_usd_per_hour
            )
        except Exception:
            logger.debug("publishing GPU spend failed", exc_info=True)


class LoadingSpend:
    """Publishes a ledger's spend gauges from a thread while the replica's constructor loads the model.

    vLLM builds its engine synchronously inside LLMServer's constructor, so the replica's event loop (and any
    task on it) is blocked for the whole load, minutes for a large model. The GPU is paid for all that time:
    without this the spend gauges would only appear once the model is ready, and a restart's load would be
    spend nobody sees. Use as a context manager around the constructor; the thread stops on exit.
    """

    def __init__(self, ledger: GpuLedger, *, period_s: float) -> None:
        self._ledger = ledger
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-spend-while-loading", daemon=True)

    def __enter__(self) -> LoadingSpend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._period_s + 1.0)

    def _run(self) -> None:
        while True:
            self._ledger.publish()  # never raises
            if self._stop.wait(self._period_s):
                return


def trailer_event(usd_per_token: float | None) -> str:
    """The SSE event a model replica appends to a finished stream for the router (never sent to clients)."""
    return f"data: {json.dumps({LOCAL_COST_KEY: {'usd_per_token': usd_per_token}})}\n\n"


def tokens_in_last_usage(text: str) -> int:
    """total_tokens of the last event in `text` that carries usage (vLLM's cumulative usage), else 0."""
    for event in reversed(text.split("\n\n")):
        if '"usage"' not in event or not event.startswith("data: "):
            continue
        try:
            usage = json.loads(event[6:]).get("usage")
        except (ValueError, AttributeError):
            continue
        if isinstance(usage, dict) and usage.get("total_tokens"):
            return int(usage["total_tokens"])
    return 0
