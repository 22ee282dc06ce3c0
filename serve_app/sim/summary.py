"""A run's totals from its request records, and the router's Prometheus counters over the same window; pure.

`summarise` is what summary.json holds; `counters` reads the router's own counters out of a Prometheus text
exposition (Ray's metrics endpoint), and `compare` puts the client's totals next to the counters' increase.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from serve_app.records import RequestRecord

COUNTERS = ("ray_router_requests_total", "ray_router_tokens_total", "ray_router_cost_usd_total")
GPU_SPEND = "ray_router_gpu_cost_usd_per_hour"  # gauge by kind (allocated, idle), one series per model replica
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarise(records: list[RequestRecord], *, start: float, end: float) -> dict[str, Any]:
    """Counts, tokens, cost, latency and TTFT percentiles per backend, reasons and errors over [start, end]."""
    by_backend = Counter(r.backend for r in records if r.backend)
    cost = {"local": 0.0, "cloud": 0.0}
    for r in records:
        if r.backend in cost and r.cost_usd is not None:
            cost[r.backend] += r.cost_usd
    latency: dict[str, Any] = {}
    for backend in ("local", "cloud"):
        mine = [r for r in records if r.backend == backend and r.outcome == "ok"]
        ttfts = [r.ttft_s for r in mine if r.ttft_s is not None]
        latencies = [r.latency_s for r in mine if r.latency_s is not None]
        latency[backend] = {
            **{f"latency_p{q}_s": _round(percentile(latencies, q)) for q in (50, 95, 99)},
            **{f"ttft_p{q}_s": _round(percentile(ttfts, q)) for q in (50, 95, 99)},
            "output_tokens_per_s": _round(sum(r.output_tokens for r in mine) / max(end - start, 1e-9) if mine else 0.0),
        }
    return {
        "requests": len(records),
        "by_backend": {"local": by_backend.get("local", 0), "cloud": by_backend.get("cloud", 0)},
        "unrouted": sum(1 for r in records if not r.backend),
        "by_reason": dict(sorted(Counter(r.route_reason or "none" for r in records).items())),
        "fallbacks": sum(1 for r in records if r.fallback),
        "outcomes": dict(sorted(Counter(r.outcome for r in records).items())),
        "errors": dict(sorted(Counter(str(r.status) for r in records if r.outcome != "ok").items())),
        "tokens": {
            "input": sum(r.input_tokens for r in records),
            "output": sum(r.output_tokens for r in records),
            "cache_read": sum(r.cache_read_tokens for r in records),
            "cache_creation": sum(r.cache_creation_tokens for r in records),
        },
        "cost_usd": {k: round(v, 9) for k, v in cost.items()},
        "cost_unknown": sum(1 for r in records if r.backend and r.outcome == "ok" and r.cost_usd is None),
        "latency": latency,
        "by_workload": dict(sorted(Counter(r.workload or "none" for r in records).items())),
        "window": {"start": iso(start), "end": iso(end), "seconds": round(end - start, 3)},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def counters(exposition: str) -> dict[str, float]:
    """The router's counters from a Prometheus text exposition, summed into the keys `compare` uses, and the model
    replicas' GPU spend rate right now (`gpu_usd_per_hour.<kind>`, summed over replicas)."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith("ray_router_"):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group("name") not in (*COUNTERS, GPU_SPEND):
            continue
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        value = float(match.group("value"))
        name = match.group("name")
        if name == GPU_SPEND:
            keys = [f"gpu_usd_per_hour.{labels.get('kind', '')}"]
        elif name == "ray_router_requests_total":
            keys = ["requests", f"requests.{labels.get('backend', '')}"]
        elif name == "ray_router_tokens_total":
            keys = [f"tokens.{labels.get('token_type', '')}"]
        else:
            keys = [f"cost_usd.{labels.get('backend', '')}"]
        for key in keys:
            out[key] = out.get(key, 0.0) + value
    return out


def compare(summary: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Client totals, the counters' increase over the run, and their difference (client minus router)."""
    client = {
        "requests": summary["requests"],
        "requests.local": summary["by_backend"]["local"],
        "requests.cloud": summary["by_backend"]["cloud"],
        **{f"tokens.{k}": v for k, v in summary["tokens"].items()},
        **{f"cost_usd.{k}": v for k, v in summary["cost_usd"].items()},
    }
    router = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in client}
    difference = {key: round(client[key] - router[key], 9 if key.startswith("cost") else 0) for key in client}
    return {
        "client": client,
        "router": {k: (round(v, 9) if k.startswith("cost") else round(v)) for k, v in router.items()},
        "difference": difference,
        "counts_and_tokens_agree": all(difference[k] == 0 for k in difference if k.startswith(("requests", "tokens"))),
    }
