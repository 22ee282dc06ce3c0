"""Aggregates of request records (a simulator run or a router request log): totals, percentiles, series; pure.

No I/O and no plotting: the report renders what these functions return, and the unit tests check them on
records with a known answer. Percentiles interpolate linearly between ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.records import RequestRecord

BACKENDS = ("local", "cloud")
PERCENTILES = (50, 95, 99)
GPU_METRIC = "ray_router_gpu_cost_usd_per_hour"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        return cls(len(values), *(percentile(values, q) for q in PERCENTILES))


def error_key(record: RequestRecord) -> str | None:
    """How a failed request is counted in 'errors by status': its HTTP status, `in_stream` for a failure after
    the first byte (the status was already 200), `cancelled` when the client left, `no_response` for status 0."""
    if record.outcome == "ok" and (record.status == 0 or record.status < 400):
        return None
    if record.outcome == "cancelled":
        return "cancelled"
    if record.status == 0:
        return "no_response"
    if record.status < 400:
        return "in_stream"
    return str(record.status)


@dataclass(frozen=True, slots=True)
class Savings:
    """Spend against sending every request to the cloud (the counterfactual), in USD over the window."""

    all_cloud_usd: float  # cloud requests' cost plus local requests' counterfactual cloud cost
    cloud_usd: float
    local_allocated_usd: float  # the GPU time the local requests used, as the router priced it
    gpu_usd: float | None  # GPU spend over the window, allocated and idle (None: not measured)
    unpriced: int  # answered requests left out because their cost or counterfactual is unknown

    @property
    def saved_allocated_usd(self) -> float:
        return self.all_cloud_usd - self.cloud_usd - self.local_allocated_usd

    @property
    def saved_with_idle_usd(self) -> float | None:
        return None if self.gpu_usd is None else self.all_cloud_usd - self.cloud_usd - self.gpu_usd


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int
    window_s: float
    by_backend: dict[str, int]  # local, cloud, and none for requests no backend took
    by_reason: dict[str, int]
    fallbacks: int
    errors: dict[str, int]
    tokens: dict[str, int]  # exclusive buckets: input, output, cache_read, cache_creation
    cost_usd: dict[str, float]  # local, cloud
    latency: dict[str, Distribution]
    ttft: dict[str, Distribution]
    output_tokens_per_s: float

    def flat(self) -> dict[str, float]:
        """The counts and sums the router's Prometheus counters also hold, under the summary's key names."""
        out: dict[str, float] = {"requests": self.requests, "fallbacks": self.fallbacks}
        out |= {f"by_backend.{b}": self.by_backend.get(b, 0) for b in BACKENDS}
        out |= {f"tokens.{k}": v for k, v in self.tokens.items()}
        out |= {f"cost_usd.{k}": v for k, v in self.cost_usd.items()}
        return out


def window_of(records: Sequence[RequestRecord]) -> tuple[float, float]:
    if not records:
        return 0.0, 0.0
    return min(r.t_start for r in records), max(r.t_end for r in records)


def totals(records: Sequence[RequestRecord], *, window: tuple[float, float] | None = None) -> Totals:
    start, end = window or window_of(records)
    span = max(end - start, 1e-9)
    by_backend = Counter(r.backend or "none" for r in records)
    return Totals(
        requests=len(records),
        window_s=end - start,
        by_backend={b: by_backend.get(b, 0) for b in (*BACKENDS, "none")},
        by_reason=dict(Counter(r.route_reason or "none" for r in records).most_common()),
        fallbacks=sum(r.fallback for r in records),
        errors=dict(Counter(k for r in records if (k := error_key(r)) is not None).most_common()),
        tokens={
            "input": sum(r.input_tokens for r in records),
            "output": sum(r.output_tokens for r in records),
            "cache_read": sum(r.cache_read_tokens for r in records),
            "cache_creation": sum(r.cache_creation_tokens for r in records),
        },
        cost_usd={b: sum(r.cost_usd or 0.0 for r in records if r.backend == b) for b in BACKENDS},
        latency={b: Distribution.of(_values(records, b, "latency_s")) for b in BACKENDS},
        ttft={b: Distribution.of(_values(records, b, "ttft_s")) for b in BACKENDS},
        output_tokens_per_s=sum(r.output_tokens for r in records) / span,
    )


def _values(records: Iterable[RequestRecord], backend: str, name: str) -> list[float]:
    return [v for r in records if r.backend == backend and (v := getattr(r, name)) is not None]


def all_cloud_cost(record: RequestRecord) -> float | None:
    """What this request cost (or would have cost) on the cloud; None when unknown or never answered."""
    if record.backend == "cloud":
        return record.cost_usd
    if record.backend == "local":
        return record.counterfactual_cost_usd
    return None


def savings(
    records: Sequence[RequestRecord], *, gpu_usd_per_hour: float | None = None, window_s: float = 0.0
) -> Savings:
    """Savings against the all-cloud counterfactual; only requests priced both ways count (the rest: `unpriced`)."""
    all_cloud = cloud = local = 0.0
    unpriced = 0
    for r in records:
        if r.backend is None:
            continue
        counterfactual = all_cloud_cost(r)
        if counterfactual is None or r.cost_usd is None:
            unpriced += 1
            continue
        all_cloud += counterfactual
        if r.backend == "cloud":
            cloud += r.cost_usd
        else:
            local += r.cost_usd
    gpu = None if gpu_usd_per_hour is None else gpu_usd_per_hour * window_s / 3600.0
    return Savings(all_cloud, cloud, local, gpu, unpriced)


@dataclass(frozen=True, slots=True)
class Series:
    """Per time bucket (`t` holds bucket starts in seconds from the window start)."""

    t: list[float]
    width_s: float
    by_backend: dict[str, list[int]]
    by_reason: dict[str, list[int]]
    fallbacks: list[int]
    errors: dict[str, list[int]]
    latency: dict[str, dict[int, list[float | None]]]  # backend -> percentile -> value per bucket
    ttft: dict[str, dict[int, list[float | None]]]
    output_tokens_per_s: list[float]
    usd_per_hour: dict[str, list[float]]  # local (allocated) and cloud spend rate
    all_cloud_usd_per_hour: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


def bucket_width(duration_s: float, *, buckets: int = 60) -> float:
    """A round bucket width giving about `buckets` buckets (at least 1 s)."""
    raw = max(duration_s / buckets, 1.0)
    for width in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if width >= raw:
            return float(width)
    return float(math.ceil(raw / 3600) * 3600)


def series(
    records: Sequence[RequestRecord], *, window: tuple[float, float] | None = None, width_s: float | None = None
) -> Series:
    """Time series: arrivals (by backend, reason, fallbacks, errors) and latencies by start time; tokens and spend
    by end time, as rates over the bucket."""
    start, end = window or window_of(records)
    width = width_s or bucket_width(end - start)
    n = max(1, math.ceil((end - start) / width))

    def index(t: float) -> int:
        return min(n - 1, max(0, int((t - start) // width)))

    by_backend = {b: [0] * n for b in (*BACKENDS, "none")}
    reasons = sorted({r.route_reason or "none" for r in records})
    by_reason = {k: [0] * n for k in reasons}
    errors = {k: [0] * n for k in sorted({error_key(r) or "" for r in records} - {""})}
    fallbacks, tokens = [0] * n, [0.0] * n
    spend = {b: [0.0] * n for b in BACKENDS}
    all_cloud = [0.0] * n
    lat: dict[str, list[list[float]]] = {b: [[] for _ in range(n)] for b in BACKENDS}
    ttft: dict[str, list[list[float]]] = {b: [[] for _ in range(n)] for b in BACKENDS}
    for r in records:
        i, j = index(r.t_start), index(r.t_end)
        by_backend[r.backend or "none"][i] += 1
        by_reason[r.route_reason or "none"][i] += 1
        fallbacks[i] += r.fallback
        if (key := error_key(r)) is not None:
            errors[key][i] += 1
        tokens[j] += r.output_tokens
        if r.backend is not None:
            spend[r.backend][j] += r.cost_usd or 0.0
            all_cloud[j] += all_cloud_cost(r) or 0.0
            if r.latency_s is not None:
                lat[r.backend][i].append(r.latency_s)
            if r.ttft_s is not None:
                ttft[r.backend][i].append(r.ttft_s)
    per_hour = 3600.0 / width
    return Series(
        t=[k * width for k in range(n)],
        width_s=width,
        by_backend=by_backend,
        by_reason=by_reason,
        fallbacks=fallbacks,
        errors=errors,
        latency={b: {q: [percentile(v, q) for v in lat[b]] for q in PERCENTILES} for b in BACKENDS},
        ttft={b: {q: [percentile(v, q) for v in ttft[b]] for q in PERCENTILES} for b in BACKENDS},
        output_tokens_per_s=[x / width for x in tokens],
        usd_per_hour={b: [x * per_hour for x in spend[b]] for b in BACKENDS},
        all_cloud_usd_per_hour=[x * per_hour for x in all_cloud],
    )


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`{"a": {"b": 1}}` -> `{"a.b": 1}`)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


def gpu_usd_per_hour(prometheus: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The GPU spend rate by kind (allocated, idle) from the summary's Prometheus block, or None if not measured.

    Accepts `{GPU_METRIC: {"allocated": x, "idle": y}}` anywhere in the block, or a bare number (then `total`)."""
    if not prometheus:
        return None
    found: dict[str, float] = {}
    for key, value in flatten(prometheus).items():
        if GPU_METRIC not in key or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        kind = key.split(GPU_METRIC, 1)[1].strip(".") or "total"
        found[kind.split(".")[-1]] = float(value)
    return found or None


def gpu_total(gpu: Mapping[str, float] | None) -> float | None:
    if not gpu:
        return None
    if "total" in gpu:
        return gpu["total"]
    return sum(gpu.values())


@dataclass(frozen=True, slots=True)
class Comparison:
    key: str
    records: float
    router: float | None
    difference: float | None  # records minus router; None when the router has no such counter


COUNTER_KEYS = ("counters", "router", "totals")


def compare(flat_totals: Mapping[str, float], prometheus: Mapping[str, Any] | None) -> list[Comparison]:
    """Each total next to the router's counter of the same name: in the block's `counters` (or `router`,
    `totals`) mapping when it has one, else at its top level, under the summary's key names."""
    prometheus = prometheus or {}
    block = next((prometheus[k] for k in COUNTER_KEYS if isinstance(prometheus.get(k), Mapping)), prometheus)
    router = {k: v for k, v in flatten(block).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    rows = []
    for key, value in flat_totals.items():
        theirs = router.get(key)
        rows.append(Comparison(key, value, theirs, None if theirs is None else value - theirs))
    return rows
