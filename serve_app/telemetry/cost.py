"""What a request cost in USD, on the backend that answered and on the other one; pure, no clock, no I/O.

Cloud cost applies a price table (USD per million tokens) to the exclusive usage buckets. Local cost is
amortised: the GPU's price per hour, for the time it was actually busy in a recent window, is spread over the
tokens it served in that window; the idle rest is reported on its own and never charged to requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import ModelPrice
from serve_app.usage import Usage

_PER_MILLION = 1_000_000.0
_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """USD per exclusive usage bucket; `total` is their sum (Langfuse `cost_details`)."""

    input: float = 0.0
    output: float = 0.0
    cache_read: float = 0.0
    cache_creation: float = 0.0

    @property
    def total(self) -> float:
        return self.input + self.output + self.cache_read + self.cache_creation

    def to_details(self) -> dict[str, float]:
        """Langfuse `cost_details`: the same keys as `Usage.to_buckets()`, plus `total`."""
        return {
            "input": self.input,
            "input_cache_read": self.cache_read,
            "input_cache_creation": self.cache_creation,
            "output": self.output,
            "total": self.total,
        }


def cloud_cost(*, usage: Usage, price: ModelPrice) -> CostBreakdown:
    """List-price cost of `usage`; `usage.input` already excludes cached tokens (Anthropic's `input_tokens`)."""
    return CostBreakdown(
        input=usage.input * price.input / _PER_MILLION,
        output=usage.output * price.output / _PER_MILLION,
        cache_read=usage.cache_read * price.cache_read / _PER_MILLION,
        cache_creation=usage.cache_creation * price.cache_write / _PER_MILLION,
    )


def per_token_cost(*, usage: Usage, usd_per_token: float) -> CostBreakdown:
    """Cost of `usage` at one flat rate for every token (the local GPU's amortised rate)."""
    return CostBreakdown(
        input=usage.input * usd_per_token,
        output=usage.output * usd_per_token,
        cache_read=usage.cache_read * usd_per_token,
        cache_creation=usage.cache_creation * usd_per_token,
    )


@dataclass(frozen=True, slots=True)
class GpuSpend:
    """How one replica's GPU price per hour splits right now: busy (charged to requests) vs idle."""

    allocated_usd_per_hour: float
    idle_usd_per_hour: float


@dataclass(frozen=True, slots=True)
class LocalUsageWindow:
    """Tokens the local engine served and the time it was busy, over the last `window_s` seconds.

    Timestamps are the caller's monotonic seconds; `origin` is when observation started, so a young window
    is not counted as idle for time before it existed. `add` returns a new window; nothing mutates.
    `tokens` holds (whole second, tokens) pairs; `busy` holds disjoint, sorted (start, end) intervals.
    """

    window_s: float
    origin: float
    tokens: tuple[tuple[int, int], ...] = ()
    busy: tuple[tuple[float, float], ...] = ()

    def add(self, *, now: float, tokens: int, busy_from: float | None = None) -> LocalUsageWindow:
        """The window after a local request that ended at `now`, served `tokens`, and began at `busy_from`.

        A request longer than the window keeps only its in-window share of tokens (served evenly over its
        life), as only that share of its busy time is in the window; otherwise it would make the rate too low.
        """
        horizon = now - self.window_s
        second = int(now)
        if tokens > 0 and busy_from is not None and now - busy_from > self.window_s:
            tokens = max(1, round(tokens * self.window_s / (now - busy_from)))
        kept = [(s, n) for s, n in self.tokens if s >= horizon - 1]
        if tokens > 0:
            if kept and kept[-1][0] == second:
                kept[-1] = (second, kept[-1][1] + tokens)
            else:
                kept.append((second, tokens))
        intervals = [(a, b) for a, b in self.busy if b > horizon]
        if busy_from is not None and now > busy_from:
            intervals = _merge([*intervals, (max(busy_from, self.origin), now)])
        return LocalUsageWindow(window_s=self.window_s, origin=self.origin, tokens=tuple(kept), busy=tuple(intervals))

    def tokens_in_window(self, *, now: float) -> int:
        horizon = now - self.window_s
        return sum(n for s, n in self.tokens if s + 1 > horizon)

    def busy_seconds(self, *, now: float, busy_since: float | None = None) -> float:
        """Busy seconds in the window; `busy_since` adds requests still running since then (up to `now`)."""
        horizon = max(now - self.window_s, self.origin)
        intervals = list(self.busy)
        if busy_since is not None and now > busy_since:
            intervals = _merge([*intervals, (busy_since, now)])
        return sum(max(0.0, min(b, now) - max(a, horizon)) for a, b in intervals)

    def observed_seconds(self, *, now: float) -> float:
        return max(0.0, min(self.window_s, now - self.origin))

    def usd_per_token(self, *, now: float, gpu_usd_per_hour: float) -> float | None:
        """Busy GPU spend in the window divided by the tokens served in it; None when nothing was served."""
        served = self.tokens_in_window(now=now)
        if served <= 0:
            return None
        return gpu_usd_per_hour * self.busy_seconds(now=now) / _SECONDS_PER_HOUR / served

    def spend(self, *, now: float, gpu_usd_per_hour: float, busy_since: float | None = None) -> GpuSpend:
        """The GPU price per hour split by the busy fraction of the observed part of the window (requests still
        running since `busy_since` count as busy now, not only once they end)."""
        observed = self.observed_seconds(now=now)
        busy = self.busy_seconds(now=now, busy_since=busy_since)
        busy_fraction = min(1.0, busy / observed) if observed > 0 else 0.0
        allocated = gpu_usd_per_hour * busy_fraction
        return GpuSpend(allocated_usd_per_hour=allocated, idle_usd_per_hour=gpu_usd_per_hour - allocated)


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class RequestCost:
    """A request's cost on the backend that answered, and what it would have cost on the other one."""

    actual: CostBreakdown | None
    counterfactual: CostBreakdown | None


def request_cost(
    *,
    backend: str,
    model: str,
    usage: Usage,
    prices: dict[str, ModelPrice],
    default_cloud_model: str | None,
    local_usd_per_token: float | None,
) -> RequestCost:
    """Cost of a request that `backend` ("local" | "cloud") answered with `model`.

    A cloud request's counterfactual is the local amortised rate for its tokens; a local request's is the
    default cloud model's list price for its buckets. Unknown prices give None, never a guess.
    """
    if usage.total_tokens == 0:
        return RequestCost(actual=CostBreakdown(), counterfactual=CostBreakdown())
    local = None if local_usd_per_token is None else per_token_cost(usage=usage, usd_per_token=local_usd_per_token)
    if backend == "cloud":
        price = prices.get(model)
        actual = None if price is None else cloud_cost(usage=usage, price=price)
        return RequestCost(actual=actual, counterfactual=local)
    cloud_price = prices.get(default_cloud_model) if default_cloud_model else None
    counterfactual = None if cloud_price is None else cloud_cost(usage=usage, price=cloud_price)
    return RequestCost(actual=local, counterfactual=counterfactual)
