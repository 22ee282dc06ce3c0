"""The cost of exact prompt counts on the request path: `PromptCounter.prompt_tokens` against the cheap estimate.

In-process, no Ray (no lock needed). The prompts are the simulator's `mixed` workload (OpenAI-format requests, every
one sent as `auto`: all are routed by length), fixed seed. For each local tokenizer found (the smoke model with its
512-token window as the integration tests and the soak serve it; SmolLM2-135M with the local profile's 2048), per
request, interleaved in one loop: parsing the request body (a floor the router pays anyway), the cheap estimate, the
counter as the router calls it (the band, and an exact count in a worker thread inside it), and an exact count of
every prompt inline (what counting all would cost). Also: the share of requests the band sends to the tokenizer and
how many routing decisions the exact count changes. Nothing here asserts on timing.

    python -m bench.bench_prompt_tokens [--requests 2000] [--seed 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import load_average, machine, write_result
from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.prompt_tokens import LocalTokenizer, PromptCounter
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import estimate_prompt_tokens, local_prompt_budget, prompt_texts
from serve_app.sim import prompts, workload


def _requests(count: int, seed: int) -> list[tuple[bytes, ChatCompletionRequest]]:
    rng = random.Random(seed)
    mix = workload.load("mixed")
    found: list[tuple[bytes, ChatCompletionRequest]] = []
    while len(found) < count:
        chosen = rng.choices([w for w, _ in mix.parts], weights=[s for _, s in mix.parts])[0]
        planned = prompts.plan(chosen, rng)
        if planned.api != "openai":
            continue  # Anthropic-format bodies reach the counter converted; their text is the same kind
        body = {**planned.body, "model": "auto", "max_tokens": planned.max_tokens}
        raw = json.dumps(body).encode()
        found.append((raw, ChatCompletionRequest.model_validate_json(raw)))
    return found


def _stats_us(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_us": round(ordered[len(ordered) // 2] / 1000, 2),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
    }


async def _measure(
    name: str, tokenizer_json: Path, window: int, output: int, requests: list[tuple[bytes, ChatCompletionRequest]]
) -> dict[str, Any]:
    policy = RoutingPolicy(default_local_output_tokens=output, tokenizer=str(tokenizer_json))
    local = LocalBackendArgs(context_window=window)
    started = time.perf_counter()
    counter = PromptCounter.load(policy, local, environ={})
    load_s = time.perf_counter() - started
    tokenizer = LocalTokenizer.load(tokenizer_json)
    parse: list[int] = []
    cheap: list[int] = []
    routed: list[int] = []
    routed_exact: list[int] = []
    exact_all: list[int] = []
    band_inline: list[int] = []
    caught = recovered = 0
    for round_ in range(2):  # the first round warms up (allocations, the thread pool); the second is measured
        for raw, request in requests:
            tp = time.perf_counter_ns()
            ChatCompletionRequest.model_validate_json(raw)
            t0 = time.perf_counter_ns()
            estimate = estimate_prompt_tokens(request, chars_per_token=policy.chars_per_token)
            t1 = time.perf_counter_ns()
            before = counter.exact_counts
            counted = await counter.prompt_tokens(request)
            t2 = time.perf_counter_ns()
            texts = [t for t in prompt_texts(request) if t]
            tokenizer.count(
                texts, messages=len(request.messages), opens_with_system=request.messages[0].role == "system"
            )
            t3 = time.perf_counter_ns()
            if round_ == 0:
                continue
            parse.append(t0 - tp)
            cheap.append(t1 - t0)
            routed.append(t2 - t1)
            exact_all.append(t3 - t2)
            if counter.exact_counts > before:
                routed_exact.append(t2 - t1)
                band_inline.append(t3 - t2)
            budget = local_prompt_budget(output_tokens=request.output_budget, policy=policy, local=local)
            caught += estimate <= budget < counted
            recovered += counted <= budget < estimate
    floor = statistics.fmean(cheap)
    return {
        "tokenizer": name,
        "context_window": window,
        "default_output_tokens": output,
        "load_s": round(load_s, 3),
        "template_overhead": counter.status()["template_overhead"],
        "requests": len(requests),
        "counted_exactly_share": round(len(routed_exact) / len(requests), 3),
        "too_long_caught": caught,
        "overcount_recovered": recovered,
        "request_parse": _stats_us(parse),
        "cheap_estimate": _stats_us(cheap),
        "counter_as_routed": _stats_us(routed),
        "counter_when_it_counts": _stats_us(routed_exact),
        "same_prompts_counted_inline": _stats_us(band_inline),
        "exact_count_of_every_prompt_inline": _stats_us(exact_all),
        "ratio_mean_counter_to_cheap": round(statistics.fmean(routed) / floor, 1),
        "ratio_mean_exact_all_to_cheap": round(statistics.fmean(exact_all) / floor, 1),
        "ratio_mean_counter_to_request_parse": round(statistics.fmean(routed) / statistics.fmean(parse), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    from serve_app.default_model import default_model_dir
    from serve_app.smoke_model import ensure_smoke_model

    requests = _requests(args.requests, args.seed)
    chars = [sum(len(t) for t in prompt_texts(r)) for _, r in requests]
    result: dict[str, Any] = {
        "machine": machine(),
        "prompt_chars": {"median": statistics.median(chars), "max": max(chars)},
        "runs": [],
    }
    targets = [("smoke", ensure_smoke_model() / "tokenizer.json", 512, 128)]
    smollm = default_model_dir() / "tokenizer.json"
    if smollm.is_file():
        targets.append(("smollm2-135m", smollm, 2048, 256))
    else:
        result["skipped"] = "SmolLM2-135M is not built (python -m serve_app.default_model)"
    for name, path, window, output in targets:
        result["runs"].append(asyncio.run(_measure(name, path, window, output, requests)))
    result["load_average_after"] = load_average()
    print(json.dumps(result, indent=2))
    print(f"written to {write_result('prompt_tokens', result)}")


if __name__ == "__main__":
    main()
