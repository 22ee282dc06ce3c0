"""The model replica SIGKILLed under mixed streamed and non-streamed `auto` load: what clients saw, and the counters.

A Ray cluster of its own runs both applications of the local profile (the smoke model by default: it loads in
seconds, so the replica comes back within the run; `--model default` for SmolLM2-135M) with the cloud pointed at
the Anthropic stand-in in a process of its own. `--workers` clients send `auto` chat requests back to back, half
of them streamed, for `--kill-at` seconds; then the simulator's fault action (serve_app.sim.actions, `kill_model`:
`ray.kill` of the llm replica actor, no restart, as a crash) kills the model replica, and the load goes on until
the local model is serving again plus `--after` seconds (tests/support/replica_kill.py; its short version is
tests/integration/test_replica_kill.py). Properties checked (PASS/FAIL, exit 1 on any FAIL):

    no hang         every request finished within `--bound` seconds, and got an HTTP answer
    [DONE]          every streamed 200 ended with `data: [DONE]`
    no 5xx          no `auto` request got a 5xx: one that failed before its first byte was answered by the cloud
    error events    streams ending with an in-band error <= local streams in flight at the kill
    counters        ray_router_requests_total rose by the number of requests sent, per backend and outcome as the
                    clients saw them (backend from X-Router-Backend, outcome from the status and error events)

Run: flock /tmp/ray-integration.lock python -m bench.bench_replica_kill [--workers 12] [--kill-at 15]
Figures: bench/results/replica-kill.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from bench import proof_support as ps
from tests.support import chat_load
from tests.support.replica_kill import KillLoad, analyse, checks, kill_under_load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=12, help="Concurrent clients (default 12).")
    parser.add_argument("--kill-at", type=float, default=15.0, help="Seconds of load before the kill.")
    parser.add_argument("--after", type=float, default=10.0, help="Seconds of load after the model is back.")
    parser.add_argument("--bound", type=float, default=60.0, help="Longest a request may take, seconds.")
    parser.add_argument("--recover-timeout", type=float, default=240.0, help="Longest wait for the model to return.")
    parser.add_argument("--model", choices=("smoke", "default"), default="smoke")
    parser.add_argument("--seed", type=int, default=7)
    opts = parser.parse_args(argv)
    load = KillLoad(
        api_key=ps.API_KEY,
        workers=opts.workers,
        kill_at_s=opts.kill_at,
        after_s=opts.after,
        bound_s=opts.bound,
        recover_timeout_s=opts.recover_timeout,
        seed=opts.seed,
    )
    load_before = ps.load_average()
    with ps.StandinProcess() as standin, ps.platform(standin, model=opts.model) as ray:
        asyncio.run(_warm(ray.base_url))
        before = chat_load.settled(ray)
        print(f"load: {opts.workers} clients, kill at {opts.kill_at:g}s (load average {ps.load_average()})", flush=True)
        answers, timeline = asyncio.run(kill_under_load(ray, load))
        after = chat_load.counted(ray, before, len(answers))
        figures = analyse(answers, timeline, before, after)
    figures |= {
        "model": opts.model,
        "workers": opts.workers,
        "bound_s": opts.bound,
        "load_average_before": load_before,
        "load_average_after": ps.load_average(),
    }
    for key, value in figures.items():
        print(f"  {key}: {value}")
    result = ps.Verdicts()
    for check in checks(figures, bound_s=opts.bound):
        result.check(check.name, check.passed, check.detail)
    ps.write_result("replica-kill", {"bench": "replica_kill", **figures, "checks": result.checks})
    print("PASS" if result.passed else "FAIL")
    return 0 if result.passed else 1


async def _warm(base_url: str) -> None:
    """The router's connections and the engine, before the counters are read."""
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(6):
            body = chat_load.chat_body(i, stream=bool(i % 2), max_tokens=8)
            await chat_load.chat(client, base_url, -1 - i, body, api_key=ps.API_KEY, bound_s=60)


if __name__ == "__main__":
    sys.exit(main())
