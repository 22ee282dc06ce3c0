"""Telemetry fully on versus off in the real router, in one run on one cluster: req/s and latency.

Three router applications run side by side in the same cluster on the same LLMServer and Anthropic stand-in:
`router` with telemetry on (OTLP/HTTP to a loopback receiver and Langfuse to its loopback stand-in, both in a
child process), `router-otlp` at /otlp-only with `telemetry.langfuse: false` (OTLP only: the deployment in
which the OTel Collector overlay feeds Langfuse, so the replica exports each span once), and `router-notel` at
/notel with `telemetry.tracing: false, telemetry.langfuse: false`. Ray metrics stay on in all three (they
cannot be switched off). The cloud path is used, with an upstream that answers at once, so the engine does not
dominate.

    latency   c=1, non-stream and stream, the routers interleaved request by request (raw httpx)
    req/s     wrk, 16 connections, non-stream; off, on, otlp (then otlp, on, off again when not --quick)

The receivers' span counts are read before and after, to show that the "on" side really exported.

Run alone: python -m bench.bench_router_telemetry [--quick] [--proxy default|haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

import httpx

from bench import common
from bench.bench_cloud import ROUTER_HEADERS, http_call, router_body

MODES = ("off", "on", "otlp")  # telemetry off; OTLP + Langfuse from the replica; OTLP only (Langfuse via Collector)


def _urls(s: common.Session) -> dict[str, str]:
    path = "/v1/chat/completions"
    return {"off": s.notel_url + path, "on": s.router_url + path, "otlp": s.otlp_only_url + path}


async def latency(s: common.Session, *, quick: bool) -> dict[str, Any]:
    rounds = 120 if quick else 500
    urls = _urls(s)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in (False, True):
            body = router_body(stream)
            calls = {
                name: (lambda url=url, body=body: http_call(client, url, body, ROUTER_HEADERS))
                for name, url in urls.items()
            }
            samples = await common.interleaved(calls, concurrency=1, rounds=rounds, warmup_rounds=20)
            out["stream" if stream else "json"] = {name: common.stats_of(v) for name, v in samples.items()}
    return out


def throughput(s: common.Session, *, quick: bool) -> dict[str, Any]:
    if not common.wrk_available():
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    seconds = 4 if quick else 10
    urls = _urls(s)
    order = list(MODES) if quick else [*MODES, *reversed(MODES)]
    for name in MODES:
        common.wrk(urls[name], router_body(False), ROUTER_HEADERS, connections=16, seconds=1)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MODES}
    meter = common.CpuMeter(s.platform)
    replica = {"on": "router", "otlp": "router-otlp", "off": "router-notel"}
    for name in order:
        before = meter.snapshot()
        result = common.wrk(urls[name], router_body(False), ROUTER_HEADERS, connections=16, seconds=seconds)
        result["cpu_ms_per_request"] = meter.per_request_ms(before, meter.snapshot(), result["requests"])
        runs[name].append(result)
    out: dict[str, Any] = {}
    for name, results in runs.items():
        out[name] = {
            "req_per_s": round(statistics.fmean(r["req_per_s"] for r in results), 1),
            "router_cpu_ms_per_request": round(
                statistics.fmean(r["cpu_ms_per_request"].get(replica[name], 0.0) for r in results), 3
            ),
            "runs": results,
        }
    return out


def run(s: common.Session, *, quick: bool) -> dict[str, Any]:
    common.banner(f"router telemetry on vs off, {s.proxy} proxy")
    load_before = common.load_average()
    spans_before = s.receivers.counts()
    data: dict[str, Any] = {"latency_c1": asyncio.run(latency(s, quick=quick))}
    data["throughput_c16"] = throughput(s, quick=quick)
    spans_after = s.receivers.counts()
    data["exported_during_run"] = {
        "otlp_spans": spans_after[0] - spans_before[0],
        "langfuse_generations": spans_after[1] - spans_before[1],
    }
    summary: dict[str, Any] = {}
    for mode, block in data["latency_c1"].items():
        metric = "ttft_ms" if mode == "stream" else "total_ms"
        off = block["off"][metric]
        for side, suffix in (("on", ""), ("otlp", " (otlp only)")):
            on = block[side][metric]
            summary[f"c1 {mode} {metric[:-3]} p50 added ms{suffix}"] = round(on["p50"] - off["p50"], 3)
            summary[f"c1 {mode} {metric[:-3]} p99 added ms{suffix}"] = round(on["p99"] - off["p99"], 3)
        print(f" c1 {mode}")
        for name in MODES:
            print(common.fmt_row(f"telemetry {name} {metric[:-3]}", block[name][metric]))
    tp = data["throughput_c16"]
    if "skipped" not in tp:
        off_cpu = tp["off"]["router_cpu_ms_per_request"]
        summary["router cpu ms/request off"] = off_cpu
        for side, suffix in (("on", ""), ("otlp", " (otlp only)")):
            summary[f"c16 req/s on/off{suffix}"] = common.ratio(tp[side]["req_per_s"], tp["off"]["req_per_s"])
            on_cpu = tp[side]["router_cpu_ms_per_request"]
            summary[f"router cpu ms/request {side}"] = on_cpu
            # what one replica with a core of its own would lose: throughput scales with 1 / CPU per request
            summary[f"router cpu-bound req/s on/off{suffix}"] = common.ratio(off_cpu, on_cpu)
        for name in MODES:
            runs = [r["req_per_s"] for r in tp[name]["runs"]]
            p50s = [r["latency_ms"]["p50"] for r in tp[name]["runs"]]
            print(f"  wrk c16 telemetry {name:<4} {tp[name]['req_per_s']:8.1f} req/s  (runs {runs}, p50 ms {p50s})")
    data["summary"] = summary
    data["load_before"], data["load_after"] = load_before, common.load_average()
    for key, value in summary.items():
        print(f"  {key:<34} {value}")
    print(f"  exported while measuring: {data['exported_during_run']}")
    common.write_result(f"router-telemetry-{s.proxy}", {"bench": "router_telemetry", "proxy": s.proxy} | data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--proxy", choices=("default", "haproxy"), default="default")
    opts = parser.parse_args()
    with common.session(opts.proxy, with_model=False) as s:
        run(s, quick=opts.quick)


if __name__ == "__main__":
    main()
