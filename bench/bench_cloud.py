"""Cloud path: the router against a direct call to the same loopback Anthropic upstream, in one run.

Upstream: tests.support.anthropic_standin in its own process, answering at once (16 words, no token delay).
Sides, interleaved request by request at c=1 and in alternating batches at c=16:

    router         POST /v1/chat/completions, model "cloud", through the Ray Serve proxy and the router
                   (telemetry on as deployed: every span over OTLP to a loopback sink, which the Collector would
                   forward to Tempo and, for router spans, to Langfuse)
    router-notel   the same router app with telemetry off, at /notel in the same cluster
    router-httpx   the same router app (telemetry on) with `cloud.http_client: httpx`, the Anthropic SDK's default
                   transport, at /httpx: the A/B for the default aiohttp transport
    forwarder      bench/forwarder.py at /forwarder in the same cluster: a bare FastAPI + httpx forwarder under
                   the same Serve ingress, i.e. what Ray Serve itself costs before the router does anything
    litellm        LiteLLM's proxy (bench/litellm_proxy.py: pinned, its own venv, one worker, no callbacks) on the
                   same stand-in, when the session has one: the usual alternative
    direct         POST /v1/messages straight to the stand-in (what the router itself sends upstream)

Clients: raw httpx for every side (the same client code, so the difference is the router's), and the real
SDKs (openai -> router, anthropic -> stand-in) at c=1. Non-stream latency, and streamed TTFT (first text
delta) and total. Throughput at c=16 with `wrk` (C, one thread): non-stream req/s and its latency.

Run alone: python -m bench.bench_cloud [--quick] [--proxy default|haproxy|both]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anthropic
import httpx
import openai

from bench import common
from bench.common import ANTHROPIC_KEY, ANTHROPIC_VERSION, API_KEY, CLOUD_MODEL, Sample

PROMPT = "Please answer the benchmark question in sixteen words. #tokens=16"
MAX_TOKENS = 16


def router_body(stream: bool) -> dict[str, Any]:
    return {"model": "cloud", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS} | (
        {"stream": True} if stream else {}
    )


def direct_body(stream: bool) -> dict[str, Any]:
    return {"model": CLOUD_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS} | (
        {"stream": True} if stream else {}
    )


ROUTER_HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
DIRECT_HEADERS = {
    "x-api-key": ANTHROPIC_KEY,
    "anthropic-version": ANTHROPIC_VERSION,
    "Content-Type": "application/json",
}


def _first_text(line: str) -> bool:
    """Whether an SSE data line carries non-empty text (OpenAI delta.content or Anthropic text_delta)."""
    if not line.startswith("data: ") or ('"content"' not in line and '"text_delta"' not in line):
        return False
    event = json.loads(line[6:])
    if "choices" in event:
        return any((c.get("delta") or {}).get("content") for c in event["choices"])
    return bool((event.get("delta") or {}).get("text"))


async def http_call(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Sample:
    """One request over raw httpx; for a stream, TTFT is the first data line with text."""
    started = time.perf_counter()
    if not body.get("stream"):
        response = await client.post(url, content=json.dumps(body), headers=headers)
        response.read()
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
        return {"total": time.perf_counter() - started}
    ttft = None
    async with client.stream("POST", url, content=json.dumps(body), headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
        async for line in response.aiter_lines():
            if ttft is None and _first_text(line):
                ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError(f"{url}: the stream had no text")
    return {"ttft": ttft, "total": time.perf_counter() - started}


async def openai_call(client: openai.AsyncOpenAI, stream: bool) -> Sample:
    started = time.perf_counter()
    messages = [{"role": "user", "content": PROMPT}]
    if not stream:
        await client.chat.completions.create(model="cloud", messages=messages, max_tokens=MAX_TOKENS)
        return {"total": time.perf_counter() - started}
    ttft = None
    response = await client.chat.completions.create(
        model="cloud", messages=messages, max_tokens=MAX_TOKENS, stream=True
    )
    async for chunk in response:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
    return {"ttft": ttft or 0.0, "total": time.perf_counter() - started}


async def anthropic_call(client: anthropic.AsyncAnthropic, stream: bool) -> Sample:
    started = time.perf_counter()
    messages = [{"role": "user", "content": PROMPT}]
    if not stream:
        await client.messages.create(model=CLOUD_MODEL, messages=messages, max_tokens=MAX_TOKENS)
        return {"total": time.perf_counter() - started}
    ttft = None
    response = await client.messages.create(model=CLOUD_MODEL, messages=messages, max_tokens=MAX_TOKENS, stream=True)
    async for event in response:
        if ttft is None and event.type == "content_block_delta":
            ttft = time.perf_counter() - started
    return {"ttft": ttft or 0.0, "total": time.perf_counter() - started}


def _added(router: dict[str, Any], direct: dict[str, Any], key: str) -> dict[str, float] | None:
    a, b = router.get(key), direct.get(key)
    if not a or not b or not a.get("n") or not b.get("n"):
        return None
    return {q: round(a[q] - b[q], 3) for q in ("p50", "p95", "p99")}


async def measure(s: common.Session, *, quick: bool) -> dict[str, Any]:
    rounds_c1, rounds_c16 = (80, 10) if quick else (400, 40)
    urls = {
        "router": s.router_url + "/v1/chat/completions",
        "router-notel": s.notel_url + "/v1/chat/completions",
        "router-httpx": s.httpx_url + "/v1/chat/completions",
        "forwarder": s.forwarder_url + "/v1/chat/completions",
        "direct": s.standin_url + "/v1/messages",
    }
    if s.litellm_url:
        urls["litellm"] = s.litellm_url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    out: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(limits=limits, timeout=30) as client,
        openai.AsyncOpenAI(base_url=s.router_url + "/v1", api_key=API_KEY, max_retries=0, timeout=30) as oai,
        anthropic.AsyncAnthropic(base_url=s.standin_url, api_key=ANTHROPIC_KEY, max_retries=0, timeout=30) as ant,
    ):
        for stream in (False, True):
            mode = "stream" if stream else "json"

            def side(name: str, stream: bool = stream) -> common.Call:
                body = direct_body(stream) if name == "direct" else router_body(stream)
                headers = DIRECT_HEADERS if name == "direct" else ROUTER_HEADERS
                return lambda: http_call(client, urls[name], body, headers)

            calls = {name: side(name) for name in urls}
            calls["router-sdk"] = lambda stream=stream: openai_call(oai, stream)
            calls["direct-sdk"] = lambda stream=stream: anthropic_call(ant, stream)
            c1 = await common.interleaved(calls, concurrency=1, rounds=rounds_c1, warmup_rounds=20)
            out[f"c1_{mode}"] = {name: common.stats_of(v) for name, v in c1.items()}
            c16_calls = {name: calls[name] for name in ("router", "forwarder", "litellm", "direct") if name in calls}
            c16 = await common.interleaved(c16_calls, concurrency=16, rounds=rounds_c16, warmup_rounds=2)
            out[f"c16_{mode}"] = {name: common.stats_of(v) for name, v in c16.items()}
    return out


def throughput(s: common.Session, *, quick: bool) -> dict[str, Any]:
    """Non-stream req/s at 16 connections with wrk; each side run back to back (twice, reversed, when full)."""
    if not common.wrk_available():
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    seconds = 4 if quick else 10
    targets = {
        "router": (s.router_url + "/v1/chat/completions", router_body(False), ROUTER_HEADERS),
        "router-notel": (s.notel_url + "/v1/chat/completions", router_body(False), ROUTER_HEADERS),
        "router-httpx": (s.httpx_url + "/v1/chat/completions", router_body(False), ROUTER_HEADERS),
        "forwarder": (s.forwarder_url + "/v1/chat/completions", router_body(False), ROUTER_HEADERS),
        "direct": (s.standin_url + "/v1/messages", direct_body(False), DIRECT_HEADERS),
    }
    if s.litellm_url:
        targets["litellm"] = (s.litellm_url + "/v1/chat/completions", router_body(False), ROUTER_HEADERS)
    order = list(targets) if quick else list(targets) + list(reversed(targets))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    extra = {"standin": s.standin.process.pid}
    if s.litellm is not None:
        extra["litellm"] = s.litellm.process.pid
    meter = common.CpuMeter(s.platform, extra=extra)
    for name in targets:  # warm every side's connections and code paths
        url, body, headers = targets[name]
        common.wrk(url, body, headers, connections=16, seconds=1)
    for name in order:
        url, body, headers = targets[name]
        before = meter.snapshot()
        result = common.wrk(url, body, headers, connections=16, seconds=seconds)
        result["cpu_ms_per_request"] = meter.per_request_ms(before, meter.snapshot(), result["requests"])
        runs[name].append(result)
    out: dict[str, Any] = {}
    for name, results in runs.items():
        best = max(results, key=lambda r: r["req_per_s"])
        out[name] = best | {"runs_req_per_s": [r["req_per_s"] for r in results]}
        cpu = best["cpu_ms_per_request"]
        out[name]["ray_cpu_ms_per_request"] = round(sum(v for k, v in cpu.items() if k not in common.NOT_RAY), 3)
        replica_cpu = cpu.get({"direct": "standin"}.get(name, name))
        if replica_cpu:  # one replica (or the stand-in) with a core of its own is bound by its CPU per request
            out[name]["cpu_bound_req_per_s"] = round(1000.0 / replica_cpu, 1)
    return out


def report(s: common.Session, data: dict[str, Any]) -> None:
    for key in ("c1_json", "c1_stream", "c16_json", "c16_stream"):
        print(f" {key}")
        for name, stats in data[key].items():
            if "ttft_ms" in stats:
                print(common.fmt_row(f"{name} ttft", stats["ttft_ms"]))
            errors = f"  errors {stats['errors']}" if stats["errors"] else ""
            print(common.fmt_row(f"{name} total", stats["total_ms"]) + errors)
    for label, added in data["added_ms"].items():
        if added:
            p50, p95, p99 = added["p50"], added["p95"], added["p99"]
            print(f"  added {label:<40} p50 {p50:+7.2f}  p95 {p95:+7.2f}  p99 {p99:+7.2f} ms")
    tp = data["throughput_c16"]
    if "skipped" in tp:
        print(f"  throughput: {tp['skipped']}")
    else:
        for name, r in tp.items():
            lat = r["latency_ms"]
            print(
                f"  wrk c16 {name:<14} {r['req_per_s']:8.1f} req/s  p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f} ms  "
                f"errors {r['errors']} non2xx {r['non2xx']}  runs {r['runs_req_per_s']}"
            )
            cpu = {k: v for k, v in r["cpu_ms_per_request"].items() if v >= 0.01}
            print(f"      cpu ms per request: {cpu}")


def run(s: common.Session, *, quick: bool) -> dict[str, Any]:
    import asyncio

    common.banner(f"cloud path, {s.proxy} proxy")
    load_before = common.load_average()
    data = asyncio.run(measure(s, quick=quick))
    data["throughput_c16"] = throughput(s, quick=quick)
    added: dict[str, Any] = {}
    for key in ("c1_json", "c1_stream", "c16_json", "c16_stream"):
        block = data[key]
        metric = "total_ms" if key.endswith("json") else "ttft_ms"
        added[f"{key} router-direct ({metric[:-3]})"] = _added(block["router"], block["direct"], metric)
        if "router-notel" in block:
            added[f"{key} notel-direct ({metric[:-3]})"] = _added(block["router-notel"], block["direct"], metric)
        if "router-httpx" in block:
            added[f"{key} aiohttp-httpx ({metric[:-3]})"] = _added(block["router"], block["router-httpx"], metric)
        if "forwarder" in block:
            added[f"{key} forwarder-direct ({metric[:-3]})"] = _added(block["forwarder"], block["direct"], metric)
            added[f"{key} router-forwarder ({metric[:-3]})"] = _added(block["router"], block["forwarder"], metric)
        if "router-sdk" in block:
            added[f"{key} sdk router-direct ({metric[:-3]})"] = _added(block["router-sdk"], block["direct-sdk"], metric)
    data["added_ms"] = added
    data["load_before"], data["load_after"] = load_before, common.load_average()
    report(s, data)
    common.write_result(f"cloud-{s.proxy}", {"bench": "cloud", "proxy": s.proxy, "machine": common.machine()} | data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--proxy", choices=("default", "haproxy", "both"), default="both")
    opts = parser.parse_args()
    for proxy in ("default", "haproxy") if opts.proxy == "both" else (opts.proxy,):
        with common.session(proxy, with_model=False) as s:
            run(s, quick=opts.quick)


if __name__ == "__main__":
    main()
