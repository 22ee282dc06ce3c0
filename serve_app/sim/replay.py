"""Policy replay: a run's requests through candidate routing configs with the real `routing.decide`; no I/O.

Each request keeps its arrival time, features and measured usage; the candidate decides its backend with the
backend state re-simulated under that candidate (local concurrency from the requests it sends local, whose
duration comes from the fitted local latency model). Cloud requests keep their measured latency and cost; a
request moved to the cloud costs its counterfactual. Repeating the replay with the model's residuals resampled
and refitted on a bootstrap sample of the local requests gives each estimate an interval (`replay_eval`, which
also ranks the candidates).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import CloudBackendArgs, LocalBackendArgs, PricingArgs, RoutingPolicy
from serve_app.errors import RouterError
from serve_app.records import RequestRecord
from serve_app.routing import ALIASES, RouteInput, RouteReason, decide
from serve_app.sim.aggregate import percentile
from serve_app.sim.latency_model import (
    LocalLatencyModel,
    concurrency_at_start,
    fit_local_model,
    local_points,
    tpot_of,
)

_MESSAGE_OVERHEAD_TOKENS = 4  # routing's per-message overhead; a sim record without an estimate is one message


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The parts of the router's args that routing reads, plus the GPU price the run paid."""

    name: str
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)
    local: LocalBackendArgs = field(default_factory=LocalBackendArgs)
    cloud: CloudBackendArgs = field(default_factory=CloudBackendArgs)
    pricing: PricingArgs | None = None
    gpu_usd_per_hour: float | None = None

    @classmethod
    def from_args(cls, name: str, args: Mapping[str, Any], *, gpu_usd_per_hour: float | None = None) -> PolicyConfig:
        pricing = args.get("pricing")
        return cls(
            name=name,
            routing=RoutingPolicy.model_validate(args.get("routing") or {}),
            local=LocalBackendArgs.model_validate(args.get("local") or {}),
            cloud=CloudBackendArgs.model_validate(args.get("cloud") or {}),
            pricing=PricingArgs.model_validate(pricing) if pricing else None,
            gpu_usd_per_hour=gpu_usd_per_hour,
        )

    def with_overrides(self, name: str, overrides: Mapping[str, Any]) -> PolicyConfig:
        """This config with a candidate's `routing` and `local` fields replaced (rules replace the list)."""
        routing = self.routing.model_dump() | dict(overrides.get("routing") or {})
        local = self.local.model_dump() | dict(overrides.get("local") or {})
        return PolicyConfig(
            name=name,
            routing=RoutingPolicy.model_validate(routing),
            local=LocalBackendArgs.model_validate(local),
            cloud=self.cloud,
            pricing=self.pricing,
            gpu_usd_per_hour=overrides.get("gpu_usd_per_hour", self.gpu_usd_per_hour),
        )


# ---- what each request looked like ----------------------------------------------------------------------------


def prompt_tokens(record: RequestRecord, *, chars_per_token: float, baseline_chars_per_token: float) -> int:
    """The prompt estimate routing would make with `chars_per_token`: the recorded one when that is what the run
    used; else characters / chars_per_token plus the recorded per-message overhead (one message's when unknown)."""
    if record.prompt_tokens_estimated is not None and chars_per_token == baseline_chars_per_token:
        return record.prompt_tokens_estimated
    overhead = _MESSAGE_OVERHEAD_TOKENS
    if record.prompt_tokens_estimated is not None:
        overhead = max(0, record.prompt_tokens_estimated - int(record.prompt_chars / baseline_chars_per_token))
    return int(record.prompt_chars / chars_per_token) + overhead


def _down_windows(records: Sequence[RequestRecord], reason: str, *, gap_s: float = 2.0) -> list[tuple[float, float]]:
    """Intervals when the run saw a backend down: requests routed for `reason`, merged when closer than gap_s."""
    times = sorted(r.t_start for r in records if r.route_reason == reason)
    windows: list[tuple[float, float]] = []
    for t in times:
        if windows and t - windows[-1][1] <= gap_s:
            windows[-1] = (windows[-1][0], t)
        else:
            windows.append((t, t))
    return windows


def failure(record: RequestRecord) -> tuple[str | None, bool]:
    """What failed this request before its answer started in the run, and whether the other backend could take it.

    (`local` | `cloud`, True): that backend failed and the request fell back; in replay it fails there again and
    falls back if the candidate allows. (`local` | `cloud`, False): it failed there without a fallback (none was
    possible, or the error was not one to retry elsewhere): sent there again, it is an error again. (`request`,
    False): the request itself failed, or a cause replay cannot tell; it stays an error. (None, False): answered; a
    failure after the first byte counts as answered."""
    if record.route_reason == RouteReason.FALLBACK_LOCAL_ERROR.value:
        return "local", True
    if record.route_reason == RouteReason.FALLBACK_CLOUD_ERROR.value:
        return "cloud", True
    if record.outcome != "error" or record.ttft_s is not None:
        return None, False
    if record.backend is not None:
        return record.backend, False
    return ("cloud" if record.status == 429 else "request"), False  # a 429 is the cloud's


def _inside(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


# ---- one replay -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    record: RequestRecord
    backend: str | None  # None: an error (no backend would take it)
    reason: str
    ttft_s: float | None
    latency_s: float | None
    cloud_usd: float | None  # the cloud cost of a request that went to the cloud
    concurrency: int  # other local requests in flight at its start


@dataclass(frozen=True, slots=True)
class Estimate:
    name: str
    requests: int
    local_share: float
    cloud_usd_per_hour: float
    gpu_usd_per_hour: float | None
    gpu_utilisation: float
    ttft_p95_s: dict[str, float | None]
    slo_violations: int | None
    errors: int
    unpriced: int
    local_concurrency_max: int = 0  # the most other local requests in flight a local request started with

    @property
    def usd_per_hour(self) -> float | None:
        return None if self.gpu_usd_per_hour is None else self.cloud_usd_per_hour + self.gpu_usd_per_hour


@dataclass
class Replayer:
    """Replays `records` (sorted by arrival) under candidate configs; `baseline` is the config the run used."""

    records: Sequence[RequestRecord]
    baseline: PolicyConfig
    model: LocalLatencyModel | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.records = sorted(self.records, key=lambda r: r.t_start)
        local = [r for r in self.records if r.backend == "local"]
        self._measured_c = dict(zip(local, concurrency_at_start([(r.t_start, r.t_end) for r in local]), strict=True))
        if self.model is None:
            self.model = fit_local_model(local_points(self.records))
        self._local_down = _down_windows(self.records, RouteReason.LOCAL_NOT_READY.value)
        self._cloud_down = _down_windows(self.records, RouteReason.CLOUD_UNAVAILABLE.value)
        cloud = [r for r in self.records if r.backend == "cloud" and r.outcome == "ok" and r.ttft_s is not None]
        self._cloud_ttft = [r.ttft_s for r in cloud if r.ttft_s is not None]
        tpots = sorted(tpot_of(r) for r in cloud)
        self._cloud_tpot = tpots[len(tpots) // 2] if tpots else None
        if self.window is None and self.records:
            # The arrivals' span: the same for every candidate, whatever their requests' durations.
            first, last = self.records[0].t_start, self.records[-1].t_start
            self.window = (first, last if last > first else max(r.t_end for r in self.records))

    # -- per request

    def _state(self, record: RequestRecord) -> tuple[bool, bool]:
        """Local and cloud readiness when the request arrived: recorded by the router, inferred for the simulator."""
        if record.local_ready is not None and record.cloud_ready is not None:
            return record.local_ready, record.cloud_ready
        return not _inside(record.t_start, self._local_down), not _inside(record.t_start, self._cloud_down)

    def _requested(self, record: RequestRecord, policy: PolicyConfig) -> str:
        known = {*ALIASES, policy.local.model_id, *policy.cloud.model_ids}
        if record.model_requested in known:
            return record.model_requested
        return "local" if record.backend == "local" else "cloud"  # a model id this config does not name

    def _cloud_cost(self, record: RequestRecord, policy: PolicyConfig) -> float | None:
        if record.backend == "cloud" and record.cost_usd is not None:
            return record.cost_usd
        if record.backend == "local" and record.counterfactual_cost_usd is not None:
            return record.counterfactual_cost_usd
        if policy.pricing is None or policy.cloud.model not in policy.pricing.models:
            return None
        price = policy.pricing.models[policy.cloud.model]
        tokens = (
            record.input_tokens * price.input
            + record.output_tokens * price.output
            + record.cache_read_tokens * price.cache_read
            + record.cache_creation_tokens * price.cache_write
        )
        return tokens / 1e6

    def run(self, policy: PolicyConfig, *, rng: random.Random | None = None) -> list[Outcome]:
        """Each request's replayed outcome. Without `rng` a request moved to local gets the fitted line alone."""
        model = self.model
        in_flight: list[float] = []  # end times of local requests
        out: list[Outcome] = []
        for record in self.records:
            while in_flight and in_flight[0] <= record.t_start:
                heapq.heappop(in_flight)
            concurrency = len(in_flight)
            failed, may_fall_back = failure(record)
            if failed == "request":
                out.append(Outcome(record, None, "rejected", None, None, None, concurrency))
                continue
            local_ready, cloud_ready = self._state(record)
            route = RouteInput(
                requested_model=self._requested(record, policy),
                local_model_id=policy.local.model_id,
                cloud_model_ids=tuple(policy.cloud.model_ids) if policy.cloud.enabled else (),
                local_ready=local_ready and model is not None,
                local_inflight=concurrency,
                cloud_ready=cloud_ready,
                prompt_tokens=prompt_tokens(
                    record,
                    chars_per_token=policy.routing.chars_per_token,
                    baseline_chars_per_token=self.baseline.routing.chars_per_token,
                ),
                output_tokens=record.max_tokens,
                has_tools=record.has_tools,
                has_images=record.has_images,
            )
            try:
                decision = decide(route=route, policy=policy.routing, local=policy.local)
            except RouterError as exc:
                out.append(Outcome(record, None, exc.kind, None, None, None, concurrency))
                continue
            backend, reason = decision.backend, decision.reason
            if failed == backend:  # that backend failed for this request in the run: it fails again
                if decision.fallback_backend is None or not may_fall_back:
                    out.append(Outcome(record, None, "upstream_error", None, None, None, concurrency))
                    continue
                decision = decision.after_failure()
                backend, reason = decision.backend, decision.reason
            if backend == "local":
                assert model is not None
                ttft, latency = self._local_timing(record, concurrency, model, rng)
                heapq.heappush(in_flight, record.t_start + latency)
                out.append(Outcome(record, "local", reason, ttft, latency, None, concurrency))
            else:
                ttft, latency = self._cloud_timing(record, rng)
                out.append(
                    Outcome(record, "cloud", reason, ttft, latency, self._cloud_cost(record, policy), concurrency)
                )
        return out

    def _local_timing(
        self, record: RequestRecord, concurrency: int, model: LocalLatencyModel, rng: random.Random | None
    ) -> tuple[float, float]:
        if record.backend == "local" and record.ttft_s is not None and record.latency_s is not None:
            # Measured on local: keep its own residual, move it along the line to the replayed concurrency.
            measured_c = self._measured_c.get(record, concurrency)
            ttft_res = record.ttft_s - model.ttft.at(measured_c)
            tpot_res = tpot_of(record) - model.tpot.at(measured_c)
        elif rng is not None:
            ttft_res, tpot_res = model.resample(rng)
        else:
            ttft_res = tpot_res = 0.0
        ttft = model.ttft_s(concurrency, ttft_res)
        return ttft, model.latency_s(concurrency, record.output_tokens, ttft_s=ttft, tpot_residual=tpot_res)

    def _cloud_timing(self, record: RequestRecord, rng: random.Random | None) -> tuple[float | None, float | None]:
        if record.backend == "cloud" and record.ttft_s is not None:
            return record.ttft_s, record.latency_s
        if not self._cloud_ttft:
            return None, None
        ttft = rng.choice(self._cloud_ttft) if rng else sorted(self._cloud_ttft)[len(self._cloud_ttft) // 2]
        return ttft, ttft + (self._cloud_tpot or 0.0) * max(0, record.output_tokens - 1)

    # -- estimates

    def estimate(self, policy: PolicyConfig, outcomes: Sequence[Outcome], *, ttft_slo_s: float | None) -> Estimate:
        start, end = self.window or (0.0, 0.0)
        hours = max(end - start, 1e-9) / 3600.0
        answered = [o for o in outcomes if o.backend is not None]
        local = [o for o in answered if o.backend == "local"]
        busy = _union([(o.record.t_start, o.record.t_start + (o.latency_s or 0.0)) for o in local], start, end)
        ttfts = {b: [o.ttft_s for o in answered if o.backend == b and o.ttft_s is not None] for b in ("local", "cloud")}
        cloud = [o for o in answered if o.backend == "cloud"]
        return Estimate(
            name=policy.name,
            requests=len(outcomes),
            local_share=len(local) / max(len(answered), 1),
            cloud_usd_per_hour=sum(o.cloud_usd or 0.0 for o in cloud) / hours,
            gpu_usd_per_hour=policy.gpu_usd_per_hour,
            gpu_utilisation=busy / max(end - start, 1e-9),
            ttft_p95_s={b: percentile(v, 95) for b, v in ttfts.items()},
            slo_violations=None
            if ttft_slo_s is None
            else sum(1 for o in answered if o.ttft_s is not None and o.ttft_s > ttft_slo_s),
            errors=len(outcomes) - len(answered),
            unpriced=sum(1 for o in cloud if o.cloud_usd is None),
            local_concurrency_max=max((o.concurrency for o in local), default=0),
        )


def _union(intervals: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by at least one interval (the GPU's busy time: any request running)."""
    total, cursor = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, cursor), min(b, end)
        if b > a:
            total += b - a
            cursor = b
    return total


def measured(records: Sequence[RequestRecord], policy: PolicyConfig, *, ttft_slo_s: float | None) -> Estimate:
    """What the run itself measured, in the estimate's terms (for the estimator's check)."""
    replayer = Replayer(records, policy)
    outcomes = [
        Outcome(
            r, r.backend, r.route_reason or "", r.ttft_s, r.latency_s, r.cost_usd if r.backend == "cloud" else None, 0
        )
        for r in replayer.records
    ]
    return replayer.estimate(policy, outcomes, ttft_slo_s=ttft_slo_s)


def replay_main(argv: Sequence[str] | None = None) -> int:
    """The replay command (`python -m serve_app.sim replay ...`); rich and YAML live in replay_cli."""
    from serve_app.sim.replay_cli import replay_main as main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(replay_main())
