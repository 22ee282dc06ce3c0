"""Local path: streamed TTFT and total latency through the router against the same model served directly.

Direct = vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`) on the same smoke model with the
engine arguments of serve_config.local.yaml (float32, max_model_len 512, eager), in its own process: the
floor a user would get without Ray or the router. HTTP against HTTP, the same openai SDK client for both.
Sides, interleaved request by request at c=1 and in alternating batches of 8 at c=8:

    router         POST /v1/chat/completions, model "local": Serve proxy -> router -> handle -> LLMServer
    router-notel   the same with telemetry off (second router app at /notel, same LLMServer)
    ingress        Ray Serve LLM's own OpenAiIngress (bench/ray_ingress.py) in front of the same LLMServer:
                   the issue's other direct path, "LLMServer behind Ray's OpenAiIngress"
    handle         the same LLMServer without HTTP and without the router: a DeploymentHandle stream
                   (`chat_json`, the call the router makes) from this process as a Ray driver
    direct         vLLM's server, model "local-model"

`handle` splits the router's cost in two: router - handle is the HTTP proxy and the router; handle - direct
is Ray Serve LLM (the handle hop and the LLMServer wrapper around the same engine). router - ingress is what
the router costs over Ray Serve LLM's stock HTTP front end on the same engine.

Every request streams 16 tokens sampled with a fixed seed (the same tokens on both engines). TTFT is the first
chunk with non-empty delta.content; first_chunk is the first chunk with a choice (vLLM's role chunk, sent with
the first token); total is the end of the stream (usage chunk included).

Run alone: python -m bench.bench_local [--quick] [--proxy default|haproxy|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import openai

from bench import common
from bench.common import API_KEY, Sample

PROMPT = "Tell the benchmark a short story about a router."
MAX_TOKENS = 16
SEED = 1234


def smoke_model_dir() -> Path:
    """The generated smoke model the platform serves (RayPlatform points the cache at the repo's .cache)."""
    os.environ.setdefault("HYBRID_LLM_CACHE_DIR", str(common.REPO / ".cache"))
    from serve_app.smoke_model import ensure_smoke_model

    return ensure_smoke_model()


async def chat_stream(client: openai.AsyncOpenAI, model: str) -> Sample:
    started = time.perf_counter()
    first_chunk = ttft = None
    tokens = 0
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        # The smoke model's greedy choice decodes to no text; a seeded sample gives the same visible tokens on
        # both engines (same weights, same sampler, same seed).
        temperature=1.0,
        seed=SEED,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in response:
        if chunk.choices:
            now = time.perf_counter() - started
            first_chunk = first_chunk or now
            if ttft is None and chunk.choices[0].delta.content:
                ttft = now
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    sample: Sample = {"first_chunk": first_chunk or total, "total": total, "tokens": tokens}
    if ttft is not None:
        sample["ttft"] = ttft
    return sample


class HandleSide:
    """The LLMServer reached through a DeploymentHandle from this process (a Ray driver on the cluster).

    Once per process: after `ray.shutdown()` Serve's handle machinery in the driver keeps routing to the first
    cluster's replicas, so a second cluster in the same process gets no `handle` side."""

    used = False

    def __init__(self, s: common.Session) -> None:
        HandleSide.used = True
        import ray
        from ray import serve

        from serve_app.config import llm_deployment_name

        ray.init(address=s.platform.address, logging_level="ERROR", log_to_driver=False)
        handle = serve.get_deployment_handle(llm_deployment_name("local-model"), app_name="llm")
        self._stream = handle.options(stream=True, method_name="chat_json")
        self._body = {
            "model": "local-model",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 1.0,
            "seed": SEED,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def call(self) -> Sample:
        started = time.perf_counter()
        first_chunk = ttft = None
        tokens = 0
        async for text in self._stream.remote(self._body):
            for line in text.splitlines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event.get("choices"):
                    now = time.perf_counter() - started
                    first_chunk = first_chunk or now
                    if ttft is None and event["choices"][0].get("delta", {}).get("content"):
                        ttft = now
                if event.get("usage"):
                    tokens = event["usage"].get("completion_tokens", 0)
        total = time.perf_counter() - started
        sample: Sample = {"first_chunk": first_chunk or total, "total": total, "tokens": tokens}
        if ttft is not None:
            sample["ttft"] = ttft
        return sample

    @staticmethod
    def close() -> None:
        import ray

        ray.shutdown()


async def measure(s: common.Session, *, quick: bool, handle: HandleSide | None) -> dict[str, Any]:
    assert s.vllm_url is not None, "the direct vLLM server is not running"
    rounds_c1, rounds_c8 = (20, 6) if quick else (100, 25)
    clients = {
        "router": (openai.AsyncOpenAI(base_url=s.router_url + "/v1", api_key=API_KEY, max_retries=0), "local"),
        "router-notel": (openai.AsyncOpenAI(base_url=s.notel_url + "/v1", api_key=API_KEY, max_retries=0), "local"),
        "ingress": (openai.AsyncOpenAI(base_url=s.ingress_url + "/v1", api_key="unused", max_retries=0), "local-model"),
        "direct": (openai.AsyncOpenAI(base_url=s.vllm_url + "/v1", api_key="unused", max_retries=0), "local-model"),
    }
    calls = {name: (lambda c=c, m=m: chat_stream(c, m)) for name, (c, m) in clients.items()}
    if handle is not None:
        calls["handle"] = handle.call
    out: dict[str, Any] = {}
    try:
        for concurrency, rounds in ((1, rounds_c1), (8, rounds_c8)):
            samples = await common.interleaved(calls, concurrency=concurrency, rounds=rounds, warmup_rounds=3)
            out[f"c{concurrency}"] = {name: common.stats_of(v) for name, v in samples.items()}
    finally:
        for client, _ in clients.values():
            await client.close()
    return out


def _delta(block: dict[str, Any], side: str, metric: str, base: str = "direct") -> dict[str, float] | None:
    a, b = block[side].get(metric), block[base].get(metric)
    if not a or not b or not a.get("n") or not b.get("n"):
        return None
    return {q: round(a[q] - b[q], 3) for q in ("p50", "p95", "p99")} | {"ratio_p50": common.ratio(a["p50"], b["p50"])}


def run(s: common.Session, *, quick: bool) -> dict[str, Any]:
    common.banner(f"local path, {s.proxy} proxy")
    load_before = common.load_average()
    handle = None if HandleSide.used else HandleSide(s)
    try:
        data = asyncio.run(measure(s, quick=quick, handle=handle))
    finally:
        if handle is not None:
            handle.close()
    data["vs_direct"] = {
        f"{key} {side} {metric[:-3]}": _delta(data[key], side, metric)
        for key in ("c1", "c8")
        for side in ("router", "router-notel", "ingress", "handle")
        if side in data[key]
        for metric in ("ttft_ms", "first_chunk_ms", "total_ms")
    }
    data["vs_ingress"] = {
        f"{key} {side} {metric[:-3]}": _delta(data[key], side, metric, base="ingress")
        for key in ("c1", "c8")
        for side in ("router", "router-notel")
        for metric in ("ttft_ms", "total_ms")
    }
    data["load_before"], data["load_after"] = load_before, common.load_average()
    for key in ("c1", "c8"):
        print(f" {key}")
        for name, stats in data[key].items():
            for metric in ("ttft", "first_chunk"):
                print(common.fmt_row(f"{name} {metric}", stats.get(f"{metric}_ms", {})))
            print(
                common.fmt_row(f"{name} total", stats["total_ms"])
                + f"  tokens {stats.get('tokens_mean')}"
                + (f"  errors {stats['errors']}" if stats["errors"] else "")
            )
    for label, delta in [(f"{k} - direct", v) for k, v in data["vs_direct"].items()] + [
        (f"{k} - ingress", v) for k, v in data["vs_ingress"].items()
    ]:
        if delta:
            p50, p99 = delta["p50"], delta["p99"]
            print(f"  {label:<38} +p50 {p50:7.2f}  +p99 {p99:7.2f} ms  ratio p50 {delta['ratio_p50']}")
    common.write_result(f"local-{s.proxy}", {"bench": "local", "proxy": s.proxy, "machine": common.machine()} | data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--proxy", choices=("default", "haproxy", "both"), default="both")
    opts = parser.parse_args()
    vllm, vllm_url = common.start_vllm_direct(smoke_model_dir())
    try:
        common.wait_http_ok(vllm_url + "/health", 300, vllm)
        for proxy in ("default", "haproxy") if opts.proxy == "both" else (opts.proxy,):
            with common.session(proxy, vllm_url=vllm_url) as s:
                run(s, quick=opts.quick)
    finally:
        vllm.stop()


if __name__ == "__main__":
    main()
