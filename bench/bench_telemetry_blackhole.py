"""Telemetry backends that accept connections and never answer: the router's answers, latency and drop counters.

One Ray cluster (router only: no model replica, so `auto` goes to the cloud, the Anthropic stand-in in a process of
its own) runs three copies of the router application side by side:

    hang   /hang  OTLP/HTTP and Langfuse pointed at two blackholes: TCP servers that accept every connection
                  and never read or answer (the application's runtime_env overrides the endpoints)
    sink   /      OTLP/HTTP and Langfuse pointed at a discard sink that answers 200 at once (a healthy backend)
    off    /off   telemetry.tracing and telemetry.langfuse off (Ray metrics stay on)

After a warm-up long enough for the hanging exporters to block and fail, non-streamed `auto` requests go to the
three routers interleaved round by round (c=1: one request per router per round; c=16: a batch of 16 per router
per round, routers in a fresh random order each round). Properties (PASS/FAIL, exit 1 on any FAIL):

    no failures       every answer of the hang router is a 200
    no waiting        no answer of the hang router took as long as one export timeout (telemetry.export_timeout_s)
    latency           hang p50 within 10% and p99 within 50% of the sink router's, at c=1 and at c=16
    drops counted     ray_router_telemetry_dropped_total{sink="otlp"} and {sink="langfuse"} rose for the hang
                      router, and the blackholes did take connections

Run: flock /tmp/ray-integration.lock python -m bench.bench_telemetry_blackhole [--rounds-c1 1000] [--rounds-c16 120]
Figures: bench/results/telemetry-blackhole.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

import httpx

from bench import proof_support as ps
from bench.discard_sink import DiscardSink
from tests.support import chat_load

LANGFUSE_PUBLIC, LANGFUSE_SECRET = "pk-lf-proof", "sk-lf-proof"
PREFIXES = {"hang": "/hang", "sink": "", "off": "/off"}
APPLICATIONS = {"hang": "router-hang", "sink": "router", "off": "router-off"}
P50_TOLERANCE, P99_TOLERANCE = 0.10, 0.50


async def one(client: httpx.AsyncClient, url: str, index: int) -> tuple[int, float]:
    body = chat_load.chat_body(index, stream=False, max_tokens=16)
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body, headers=ps.HEADERS)
        status = response.status_code
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - started


async def interleaved(base_url: str, *, concurrency: int, rounds: int, seed: int) -> dict[str, list[tuple[int, float]]]:
    urls = {mode: f"{base_url}{prefix}/v1/chat/completions" for mode, prefix in PREFIXES.items()}
    out: dict[str, list[tuple[int, float]]] = {mode: [] for mode in urls}
    order = list(urls)
    rng = random.Random(seed)
    index = 0
    limits = httpx.Limits(max_connections=3 * concurrency, max_keepalive_connections=3 * concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(rounds):
            rng.shuffle(order)
            for mode in order:
                batch = await asyncio.gather(*(one(client, urls[mode], index + i) for i in range(concurrency)))
                index += concurrency
                out[mode].extend(batch)
    return out


def stats(samples: list[tuple[int, float]]) -> dict[str, Any]:
    ok = [s for status, s in samples if status == 200]
    return {
        "n": len(samples),
        "failed": len(samples) - len(ok),
        "p50_ms": round((ps.percentile(ok, 50) or 0) * 1000, 3),
        "p99_ms": round((ps.percentile(ok, 99) or 0) * 1000, 3),
        "max_ms": round(max(ok, default=0) * 1000, 3),
    }


def dropped(exposition: str, application: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for tags, value in chat_load.samples(exposition, "ray_router_telemetry_dropped_total"):
        if tags.get("application") == application:
            out[tags.get("sink", "")] = out.get(tags.get("sink", ""), 0.0) + value
    return out


def verdicts(figures: dict[str, Any], export_timeout_s: float) -> ps.Verdicts:
    v = ps.Verdicts()
    latency = figures["latency"]
    failed = {c: latency[c]["hang"]["failed"] for c in latency}
    v.check("zero failed responses with telemetry hanging", not any(failed.values()), f"failed per phase {failed}")
    longest = max(latency[c]["hang"]["max_ms"] for c in latency)
    v.check(
        "no request waited on an export",
        longest < export_timeout_s * 1000,
        f"longest answer of the hang router {longest:.1f} ms; export timeout {export_timeout_s:g} s",
    )
    for c, block in latency.items():
        hang, sink = block["hang"], block["sink"]
        p50, p99 = hang["p50_ms"] / sink["p50_ms"], hang["p99_ms"] / sink["p99_ms"]
        v.check(
            f"latency unchanged at {c} (hang vs healthy sink)",
            p50 <= 1 + P50_TOLERANCE and p99 <= 1 + P99_TOLERANCE,
            f"p50 {hang['p50_ms']} vs {sink['p50_ms']} ms (x{p50:.3f}), p99 {hang['p99_ms']} vs {sink['p99_ms']} ms "
            f"(x{p99:.3f}); telemetry off p50 {block['off']['p50_ms']} p99 {block['off']['p99_ms']} ms",
        )
    drops, accepted = figures["dropped"]["hang"], figures["blackhole_connections"]
    v.check(
        "drops counted in router_telemetry_dropped_total{sink}",
        drops.get("otlp", 0) > 0 and drops.get("langfuse", 0) > 0 and min(accepted.values()) > 0,
        f"hang router {drops}, healthy sink router {figures['dropped']['sink']}; connections the blackholes took "
        f"{accepted}",
    )
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-c1", type=int, default=1000)
    parser.add_argument("--rounds-c16", type=int, default=120)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="Load before measuring (exporters block).")
    parser.add_argument("--seed", type=int, default=5)
    opts = parser.parse_args(argv)
    export_timeout_s = 5.0  # telemetry.export_timeout_s, the router's default
    load_before = ps.load_average()
    with ps.Blackhole() as otlp_hole, ps.Blackhole() as langfuse_hole, DiscardSink() as sink:
        telemetry_env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "LANGFUSE_PUBLIC_KEY": LANGFUSE_PUBLIC,
            "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
        }
        routers = {
            "router-hang": (
                "/hang",
                {},
                {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_hole.base_url, "LANGFUSE_BASE_URL": langfuse_hole.base_url},
            ),
            "router-off": ("/off", {"telemetry": {"tracing": False, "langfuse": False}}, {}),
        }
        env = telemetry_env | {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.base_url, "LANGFUSE_BASE_URL": sink.base_url}
        with ps.StandinProcess() as standin, ps.platform(standin, apps=("router",), env=env, routers=routers) as ray:
            for prefix in PREFIXES.values():
                ps.wait_http(f"{ray.base_url}{prefix}/healthz", 120)
            before = chat_load.scrape(ray)
            print(f"warm-up {opts.warmup_s:g}s at c=8 on every router (load average {ps.load_average()})", flush=True)
            deadline = time.monotonic() + opts.warmup_s
            while time.monotonic() < deadline:
                asyncio.run(interleaved(ray.base_url, concurrency=8, rounds=5, seed=opts.seed))
            latency: dict[str, Any] = {}
            for concurrency, rounds in ((1, opts.rounds_c1), (16, opts.rounds_c16)):
                started = time.monotonic()
                raw = asyncio.run(interleaved(ray.base_url, concurrency=concurrency, rounds=rounds, seed=opts.seed))
                latency[f"c={concurrency}"] = {mode: stats(samples) for mode, samples in raw.items()}
                latency[f"c={concurrency}"]["seconds"] = round(time.monotonic() - started, 1)
                print(f"  c={concurrency}: {latency[f'c={concurrency}']}", flush=True)
            time.sleep(12)  # one Ray metrics export interval, and the exports that were under way
            after = chat_load.scrape(ray)
        figures: dict[str, Any] = {
            "latency": latency,
            "dropped": {mode: _minus(dropped(after, app), dropped(before, app)) for mode, app in APPLICATIONS.items()},
            "blackhole_connections": {"otlp": otlp_hole.accepted, "langfuse": langfuse_hole.accepted},
            "discard_sink_received": dict(zip(("spans", "router_spans", "generations"), sink.counts(), strict=True)),
            "load_average_before": load_before,
            "load_average_after": ps.load_average(),
        }
    for key, value in figures.items():
        print(f"  {key}: {value}")
    result = verdicts(figures, export_timeout_s)
    ps.write_result("telemetry-blackhole", {"bench": "telemetry_blackhole", **figures, "checks": result.checks})
    print("PASS" if result.passed else "FAIL")
    return 0 if result.passed else 1


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {key: round(value - before.get(key, 0.0)) for key, value in sorted(after.items())}


if __name__ == "__main__":
    sys.exit(main())
