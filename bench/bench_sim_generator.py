"""The simulator's own ceiling: non-stream requests/s from one `python -m serve_app.sim` process against the stand-in.

The generator runs exactly as a user runs it (workload sampling, prompt building, one record per request,
uvloop), with each client: `--client sdk` (the real anthropic SDK on aiohttp, the default) and `--client http`
(serve_app.sim.wire: the same wire requests on one aiohttp session), open loop at a rate far above what it can
send, capped at `--concurrency` requests in flight, against the aiohttp Anthropic stand-in in its own process.
The floor, in the
same run and alternating with it: `wrk` (C, one thread) against the same stand-in with the same request, i.e.
what the stand-in serves on this machine when the client costs almost nothing. Reported: the generator's req/s,
its CPU per request, and the ratio generator / wrk. The stdlib stand-in's wrk figure says why make serve runs
the aiohttp one. Nothing here asserts on timing.

    python -m bench.bench_sim_generator [--seconds 10] [--runs 2] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import common
from tests.support.prometheus import free_port

MODEL = "claude-sonnet-4-6"
WORKLOAD = f"""version: 1
name: bench_messages
description: Non-stream Anthropic Messages requests of 16 prompt and 16 output tokens (the generator benchmark).
kind: chat
api: anthropic
model: {MODEL}
stream: 0.0
prompt_tokens: 16
output_tokens: 16
"""
BODY = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Please answer in a few words."}]}
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def start_aio_standin() -> tuple[common.Child, str]:
    port = free_port()
    child = common.spawn(
        [sys.executable, "-m", "serve_app.sim.standin_server", "--port", str(port), "--token-delay", "0"],
        log_name="sim-standin-aiohttp",
    )
    common.wait_port(port)
    return child, f"http://127.0.0.1:{port}"


def generator(url: str, workdir: Path, *, client: str, seconds: float, concurrency: int, run: int) -> dict[str, Any]:
    """One simulator process at an unreachable constant rate; req/s from its own records, CPU from psutil."""
    workload = workdir / "bench_messages.yaml"
    workload.write_text(WORKLOAD)
    args = [
        sys.executable, "-m", "serve_app.sim", "--base-url", url, "--workload", str(workload),
        "--arrival", "constant", "--rate", "20000", "--duration", f"{seconds:g}s", "--concurrency", str(concurrency),
        "--client", client,
        "--metrics-url", "", "--no-progress", "--no-report", "--reports-dir", str(workdir),
        "--run-id", f"{client}{run}",
    ]  # fmt: skip
    env = {**os.environ, "HYBRID_LLM_API_KEY": "sk-bench"}
    child = common.spawn(args, env=env, log_name=f"sim-generator-{client}-{run}")
    process = psutil.Process(child.process.pid)
    cpu = 0.0
    while child.process.poll() is None:
        try:
            times = process.cpu_times()
            cpu = times.user + times.system
        except psutil.Error:
            break
        time.sleep(0.2)
    if child.process.returncode != 0:
        raise RuntimeError(f"the generator failed; see {child.log}")
    summary = json.loads((workdir / f"{client}{run}" / "summary.json").read_text())
    ok = summary["outcomes"].get("ok", 0)
    window = summary["window"]["seconds"]
    return {
        "requests": summary["requests"],
        "ok": ok,
        "errors": summary["requests"] - ok,
        "seconds": window,
        "req_per_s": round(ok / window, 1),
        "cpu_ms_per_request_incl_startup": round(cpu * 1000 / max(ok, 1), 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    if not common.wrk_available():
        raise SystemExit("this benchmark's floor is wrk: install the Debian package 'wrk'")
    common.banner("simulator generator ceiling against the aiohttp Anthropic stand-in")
    result: dict[str, Any] = {"machine": common.machine(), "sdk": [], "http": [], "wrk_aiohttp": [], "wrk_stdlib": None}
    standin, url = start_aio_standin()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.runs):
                for client in ("sdk", "http"):
                    measured = generator(
                        url, Path(tmp), client=client, seconds=args.seconds, concurrency=args.concurrency, run=run
                    )
                    result[client].append(measured)
                    print(f"run {run}: generator --client {client}: {measured}", flush=True)
                result["wrk_aiohttp"].append(
                    common.wrk(f"{url}/v1/messages", BODY, HEADERS, connections=args.concurrency, seconds=args.seconds)
                )
                print(f"run {run}: wrk: {result['wrk_aiohttp'][-1]}", flush=True)
    finally:
        standin.stop()
    stdlib, stdlib_url = common.start_anthropic_standin()
    try:
        result["wrk_stdlib"] = common.wrk(
            f"{stdlib_url}/v1/messages", BODY, HEADERS, connections=args.concurrency, seconds=args.seconds
        )
    finally:
        stdlib.stop()
    sdk = statistics.median(r["req_per_s"] for r in result["sdk"])
    http = statistics.median(r["req_per_s"] for r in result["http"])
    floor = statistics.median(r["req_per_s"] for r in result["wrk_aiohttp"])
    result["summary"] = {
        "generator_http_req_per_s": http,
        "generator_sdk_req_per_s": sdk,
        "wrk_aiohttp_standin_req_per_s": floor,
        "http_over_wrk": common.ratio(http, floor),
        "sdk_over_wrk": common.ratio(sdk, floor),
        "cpu_ms_per_request": {
            c: statistics.median(r["cpu_ms_per_request_incl_startup"] for r in result[c]) for c in ("sdk", "http")
        },
        "wrk_stdlib_standin_req_per_s": result["wrk_stdlib"]["req_per_s"],
        "aiohttp_over_stdlib_standin": common.ratio(floor, result["wrk_stdlib"]["req_per_s"]),
        "target_req_per_s": 1500,
    }
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {common.write_result('sim_generator', result)}")
    return result


if __name__ == "__main__":
    main()
