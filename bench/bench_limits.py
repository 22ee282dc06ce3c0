"""The limits check on the request path: `Tenancy.admit` + `Admission.settle` per request, in-process.

Measured per request (perf_counter_ns around each call, one event loop, no Ray): the admission and settlement of a
cloud request of a tenant with five limits (requests and tokens per minute, cloud USD per day and per month, the
global cloud USD per hour), against the floor of the same run: the routing decision (`routing.decide`) the request
path already makes. Also counted: how many requests need a remote call to the ledger (a lease grant) at the default
lease fraction, with two replicas sharing the ledger. With --ray, the round trip of one grant to the real ledger
actor (run it under the integration lock: it starts a local Ray). Nothing here asserts on timing.

    python -m bench.bench_limits [--requests 20000] [--ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from serve_app.ledger import LedgerCore, ProcessLedger
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import RouteInput, decide
from serve_app.telemetry import InMemoryMetricsSink
from serve_app.tenancy import Tenancy
from tests.component.fakes import router_args

LIMITS = {
    "requests_per_minute": 10**9,
    "tokens_per_minute": 10**12,
    "usd_per_day": 10**6,
    "usd_per_month": 10**7,
}
REQUEST = ChatCompletionRequest.model_validate(
    {"model": "auto", "max_tokens": 256, "messages": [{"role": "user", "content": "a prompt of a few words"}]}
)


class CountingLedger(ProcessLedger):
    def __init__(self, core: LedgerCore) -> None:
        super().__init__(core)
        self.grants = 0

    async def grant(self, *args: Any, **kwargs: Any) -> tuple:
        self.grants += 1
        return await super().grant(*args, **kwargs)


def _args(limits: dict[str, Any], lease_fraction: float = 0.05) -> Any:
    return router_args(
        tenants={"limits": {"alpha": limits}, "cloud_usd_per_hour": 10**5, "ledger": {"lease_fraction": lease_fraction}}
    )


def _percentiles(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p90_us": ordered[int(len(ordered) * 0.9)] / 1000,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


async def _admission_costs(requests: int) -> dict[str, Any]:
    args = _args(LIMITS)
    ledger = CountingLedger(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30))
    tenancy = Tenancy(args, ledger=ledger, metrics=InMemoryMetricsSink())
    route = RouteInput(
        requested_model="auto",
        local_model_id="local-model",
        cloud_model_ids=("claude-sonnet-4-6",),
        local_ready=True,
        local_inflight=0,
        cloud_ready=True,
        prompt_tokens=10,
        output_tokens=256,
    )
    decision = decide(route=route, policy=args.routing, local=args.local)
    cloud = type(decision)("cloud", "claude-sonnet-4-6", "explicit_cloud")
    check: list[int] = []
    floor: list[int] = []
    for i in range(requests):
        start = time.perf_counter_ns()
        admission = await tenancy.admit(tenant="alpha", request=REQUEST, prompt_tokens=10, decision=cloud)
        admission.settle(backend="cloud", outcome="ok", tokens=40, cost_usd=0.004)
        check.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        decide(route=route, policy=args.routing, local=args.local)
        floor.append(time.perf_counter_ns() - start)
        if i % 1000 == 999:
            await tenancy.sync()
    limits_check, decision_floor = _percentiles(check[requests // 10 :]), _percentiles(floor[requests // 10 :])
    return {
        "limits_check": limits_check,
        "routing_decide_floor": decision_floor,
        "ratio_p50": limits_check["p50_us"] / decision_floor["p50_us"],
        "grants_per_1000_requests": 1000 * ledger.grants / requests,
    }


async def _remote_call_rate(requests: int, lease_fraction: float, usd_per_day: float) -> dict[str, Any]:
    """Two replicas sharing one ledger, cloud requests of 0.00375 USD reserved, 0.002 actual, until refused."""
    ledger = CountingLedger(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30))
    replicas = [
        Tenancy(_args({"usd_per_day": usd_per_day}, lease_fraction), ledger=ledger, metrics=InMemoryMetricsSink())
        for _ in range(2)
    ]
    cloud = decide(
        route=RouteInput("cloud", "local-model", ("claude-sonnet-4-6",), True, 0, True, 10, 256),
        policy=replicas[0]._args.routing,
        local=replicas[0]._args.local,
    )
    admitted = 0
    for i in range(requests):
        replica = replicas[i % 2]
        try:
            admission = await replica.admit(tenant="alpha", request=REQUEST, prompt_tokens=10, decision=cloud)
        except Exception:
            continue
        admitted += 1
        admission.settle(backend="cloud", outcome="ok", tokens=40, cost_usd=0.002)
        if i % 50 == 49:
            for r in replicas:
                await r.sync()
    return {
        "lease_fraction": lease_fraction,
        "usd_per_day": usd_per_day,
        "requests": requests,
        "admitted": admitted,
        "grants": ledger.grants,
        "requests_per_grant": round(requests / max(1, ledger.grants), 1),
    }


def _ray_round_trip(calls: int) -> dict[str, Any]:
    import ray

    from serve_app.config import LedgerArgs
    from serve_app.ledger import ActorLedger

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        ledger = ActorLedger(LedgerArgs(actor_name="bench-ledger", namespace="bench"))

        async def run() -> list[int]:
            await ledger.grant("r", "k", end=time.time() + 60, limit=1e12, want=1.0, need=1.0)  # creates the actor
            samples = []
            for _ in range(calls):
                start = time.perf_counter_ns()
                await ledger.grant("r", "k", end=time.time() + 60, limit=1e12, want=1.0, need=1.0)
                samples.append(time.perf_counter_ns() - start)
            return samples

        return _percentiles(asyncio.run(run()))
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--ray", action="store_true", help="Also time a grant to the real ledger actor.")
    opts = parser.parse_args()
    result: dict[str, Any] = {"admission": asyncio.run(_admission_costs(opts.requests))}
    result["remote_calls"] = [
        asyncio.run(_remote_call_rate(2000, fraction, usd)) for fraction, usd in ((0.05, 10.0), (0.05, 1.0), (0.2, 1.0))
    ]
    if opts.ray:
        result["ray_grant_round_trip"] = _ray_round_trip(500)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
