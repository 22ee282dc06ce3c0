"""The router's Prometheus instruments: names, closed label sets, explicit buckets, and the sinks behind them.

`RouterMetrics` is the only writer; it closes every label value before recording and never raises. The sink
is injected: `RayMetricsSink` (ray.serve.metrics, which adds the `ray_` prefix and `_total` on counters) in a
replica, `InMemoryMetricsSink` in tests and benchmarks.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from serve_app.routing import CLOUD_ALIASES

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

# GenAI semconv v1.41 advice: client operation duration, server time to first token.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

BACKENDS = frozenset({"local", "cloud", "none"})
REQUESTED = ("auto", "local", "cloud", "concrete")  # what the client asked for: an alias, or a concrete model id
OUTCOMES = frozenset({"ok", "error", "cancelled"})
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")
DROP_SINKS = frozenset({"otlp", "langfuse", "span", "metrics", "observe", "request_log"})
OTHER = "other"
_REASON = re.compile(r"^[a-z0-9_]{1,40}$")


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str  # without `ray_` and, for counters, without `_total`: Ray adds both
    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(
        "router_requests",
        "counter",
        "Requests answered, by outcome and by what the client asked for (`requested`).",
        ("backend", "model", "route_reason", "outcome", "stream", "requested"),
    ),
    Instrument("router_fallbacks", "counter", "Requests retried on the other backend.", ("backend", "route_reason")),
    Instrument("router_tokens", "counter", "Tokens by exclusive bucket.", ("backend", "model", "token_type")),
    Instrument("router_cost_usd", "counter", "USD spent on answered requests.", ("backend", "model")),
    Instrument(
        "router_counterfactual_cost_usd", "counter", "USD the other backend would have cost.", ("backend", "model")
    ),
    Instrument(
        "router_request_duration_seconds",
        "histogram",
        "Request latency, begin to finish.",
        ("backend", "stream", "outcome"),
        DURATION_BUCKETS,
    ),
    Instrument(
        "router_time_to_first_token_seconds",
        "histogram",
        "Time to the first content chunk (streams).",
        ("backend",),
        TTFT_BUCKETS,
    ),
    Instrument(
        "router_overhead_seconds", "histogram", "Router work before calling a backend.", ("backend",), OVERHEAD_BUCKETS
    ),
    Instrument("router_backend_ready", "gauge", "1 when the backend can take requests.", ("backend",)),
    Instrument("router_inflight_requests", "gauge", "Requests in flight per backend.", ("backend",)),
    Instrument("router_gpu_cost_usd_per_hour", "gauge", "GPU spend rate split into allocated and idle.", ("kind",)),
    Instrument(
        "router_telemetry_dropped",
        "counter",
        "Telemetry items lost (queue full, export failed, hook error).",
        ("sink",),
    ),
)


class MetricsSink(Protocol):
    """Where instrument values go. Implementations may raise; `RouterMetrics` guards every call."""

    def register(self, instruments: Iterable[Instrument]) -> None: ...

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...


class InMemoryMetricsSink:
    """Keeps every value in memory: counters sum, gauges keep the last value, histograms keep all samples."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}

    def register(self, instruments: Iterable[Instrument]) -> None:
        self._kinds.update({i.name: i.kind for i in instruments})

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        with self._lock:
            match self._kinds[name]:
                case "counter":
                    self.counters[key] = self.counters.get(key, 0.0) + value
                case "gauge":
                    self.gauges[key] = value
                case "histogram":
                    self.histograms.setdefault(key, []).append(value)

    def counter(self, name: str, **tags: str) -> float:
        """Sum of a counter over every series whose labels include `tags`."""
        return sum(v for (n, t), v in self.counters.items() if n == name and tags.items() <= dict(t).items())

    def gauge(self, name: str, **tags: str) -> float | None:
        return self.gauges.get((name, tuple(sorted(tags.items()))))

    def samples(self, name: str, **tags: str) -> list[float]:
        return [x for (n, t), v in self.histograms.items() if n == name and tags.items() <= dict(t).items() for x in v]


class RayMetricsSink:
    """ray.serve.metrics instruments, created once per replica; Serve adds application/deployment/replica tags."""

    def __init__(self) -> None:
        self._instruments: dict[str, Callable[[float, dict[str, str]], None]] = {}

    def register(self, instruments: Iterable[Instrument]) -> None:
        from ray.serve import metrics as serve_metrics  # imported here: tests and tools run without Ray

        for spec in instruments:
            match spec.kind:
                case "counter":
                    counter = serve_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
                    self._instruments[spec.name] = lambda v, t, m=counter: m.inc(v, tags=t)
                case "gauge":
                    gauge = serve_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
                    self._instruments[spec.name] = lambda v, t, m=gauge: m.set(v, tags=t)
                case "histogram":
                    histogram = serve_metrics.Histogram(
                        spec.name,
                        description=spec.description,
                        boundaries=list(spec.boundaries),
                        tag_keys=spec.tag_keys,
                    )
                    self._instruments[spec.name] = lambda v, t, m=histogram: m.observe(v, tags=t)

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._instruments[name](value, dict(tags))


class RouterMetrics:
    """Typed recording methods over a sink; label values are closed here, failures are counted, never raised."""

    def __init__(self, sink: MetricsSink, *, models: Iterable[str]) -> None:
        self._sink = sink
        self._models = frozenset(models)
        self.dropped: dict[str, int] = dict.fromkeys(sorted(DROP_SINKS), 0)
        self._lock = threading.Lock()
        try:
            sink.register(INSTRUMENTS)
        except Exception:
            logger.exception("metrics sink failed to register instruments; metrics are off")
            self.dropped_items("metrics")

    # closing label values: anything unexpected becomes `other`, so series stay bounded
    def model(self, model: str | None) -> str:
        return model if model in self._models else OTHER

    @staticmethod
    def backend(backend: str | None) -> str:
        return backend if backend in BACKENDS else ("none" if backend is None else OTHER)

    @staticmethod
    def requested(model: str | None) -> str:
        """The `requested` label: the alias the client named (`claude` counts as `cloud`), else `concrete`."""
        if model in CLOUD_ALIASES:
            return "cloud"
        return model if model in ("auto", "local") else "concrete"

    @staticmethod
    def reason(reason: str | None) -> str:
        if reason is None:
            return "none"
        return reason if _REASON.match(reason) else OTHER

    def request_finished(
        self,
        *,
        backend: str | None,
        model: str | None,
        route_reason: str | None,
        outcome: str,
        requested: str | None = None,
        stream: bool,
        duration_s: float,
        ttft_s: float | None,
        token_buckets: Mapping[str, int],
        cost_usd: float | None,
        counterfactual_usd: float | None,
    ) -> None:
        b, m = self.backend(backend), self.model(model)
        out = outcome if outcome in OUTCOMES else OTHER
        s = "true" if stream else "false"
        self._record(
            "router_requests",
            1,
            backend=b,
            model=m,
            route_reason=self.reason(route_reason),
            outcome=out,
            stream=s,
            requested=self.requested(requested),
        )
        self._record("router_request_duration_seconds", duration_s, backend=b, stream=s, outcome=out)
        if ttft_s is not None:
            self._record("router_time_to_first_token_seconds", ttft_s, backend=b)
        for token_type in TOKEN_TYPES:
            if count := token_buckets.get(token_type, 0):
                self._record("router_tokens", count, backend=b, model=m, token_type=token_type)
        if cost_usd:  # Ray counters take only positive increments; zero adds nothing anyway
            self._record("router_cost_usd", cost_usd, backend=b, model=m)
        if counterfactual_usd:
            self._record("router_counterfactual_cost_usd", counterfactual_usd, backend=b, model=m)

    def fallback(self, *, backend: str, route_reason: str) -> None:
        self._record("router_fallbacks", 1, backend=self.backend(backend), route_reason=self.reason(route_reason))

    def overhead(self, *, backend: str, seconds: float) -> None:
        self._record("router_overhead_seconds", seconds, backend=self.backend(backend))

    def backend_state(self, *, backend: str, ready: bool, inflight: int) -> None:
        b = self.backend(backend)
        self._record("router_backend_ready", 1.0 if ready else 0.0, backend=b)
        self._record("router_inflight_requests", float(inflight), backend=b)

    def gpu_spend(self, *, allocated_usd_per_hour: float, idle_usd_per_hour: float) -> None:
        self._record("router_gpu_cost_usd_per_hour", allocated_usd_per_hour, kind="allocated")
        self._record("router_gpu_cost_usd_per_hour", idle_usd_per_hour, kind="idle")

    def dropped_items(self, sink: str, count: int = 1) -> None:
        """Counts telemetry lost in `sink`; safe from any thread."""
        if count <= 0:
            return
        sink = sink if sink in DROP_SINKS else "span"
        with self._lock:
            self.dropped[sink] += count
        try:
            self._sink.record("router_telemetry_dropped", count, {"sink": sink})
        except Exception:  # the metrics sink itself is failing: the in-process count is all that is left
            if sink != "metrics":
                with self._lock:
                    self.dropped["metrics"] += 1

    def _record(self, name: str, value: float, **tags: str) -> None:
        try:
            self._sink.record(name, value, tags)
        except Exception:
            self.dropped_items("metrics")
