"""Candidate routing configs judged by replay: bootstrap intervals, the ranking, and the check of the run's own.

`evaluate` replays a candidate with `replay.Replayer` (the point estimate) and again with the local latency model
refitted on resamples of the local requests (90% intervals); `rank` orders candidates by spend within an SLO
budget; `check_baseline` replays the run's own config and sets it beside what the run measured. No I/O.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.sim.aggregate import percentile
from serve_app.sim.latency_model import HoldOut, fit_local_model, hold_out, local_points
from serve_app.sim.replay import Estimate, Outcome, PolicyConfig, Replayer, measured


@dataclass(frozen=True, slots=True)
class Interval:
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    estimate: Estimate
    intervals: dict[str, Interval]  # metric -> 90% bootstrap interval
    outcomes: list[Outcome]


METRICS = ("local_share", "cloud_usd_per_hour", "gpu_utilisation", "ttft_p95_local", "ttft_p95_cloud", "slo_violations")


def metric(estimate: Estimate, name: str) -> float | None:
    if name.startswith("ttft_p95_"):
        return estimate.ttft_p95_s[name.removeprefix("ttft_p95_")]
    value = getattr(estimate, name)
    return None if value is None else float(value)


def evaluate(
    replayer: Replayer,
    policy: PolicyConfig,
    *,
    ttft_slo_s: float | None = None,
    bootstrap: int = 50,
    seed: int = 0,
) -> Evaluation:
    """The point estimate (the full fit, residuals resampled with `seed`) and 90% intervals from `bootstrap`
    replays, each with the local model refitted on a resample of the local requests and its residuals redrawn."""
    outcomes = replayer.run(policy, rng=random.Random(seed))
    point = replayer.estimate(policy, outcomes, ttft_slo_s=ttft_slo_s)
    points = local_points(replayer.records)
    samples: dict[str, list[float]] = {m: [] for m in METRICS}
    for b in range(bootstrap if points else 0):
        rng = random.Random(seed * 100_003 + b + 1)
        model = fit_local_model([points[rng.randrange(len(points))] for _ in points])
        again = Replayer(replayer.records, replayer.baseline, model=model, window=replayer.window)
        estimate = again.estimate(policy, again.run(policy, rng=rng), ttft_slo_s=ttft_slo_s)
        for m in METRICS:
            if (value := metric(estimate, m)) is not None:
                samples[m].append(value)
    intervals = {m: Interval(percentile(v, 5), percentile(v, 95)) for m, v in samples.items()}
    return Evaluation(point, intervals, outcomes)


def rank(evaluations: Sequence[Evaluation], *, slo_budget: float | None) -> list[Evaluation]:
    """Cheapest first among candidates within the SLO budget (violations / requests), then the rest by violations.
    Spend is cloud plus GPU per hour (cloud alone when the GPU price is unknown: it is the same for all)."""

    def key(e: Evaluation) -> tuple[int, float, float]:
        est = e.estimate
        share = (est.slo_violations or 0) / max(est.requests, 1)
        within = slo_budget is None or est.slo_violations is None or share <= slo_budget
        spend = est.usd_per_hour if est.usd_per_hour is not None else est.cloud_usd_per_hour
        return (0, spend, share) if within else (1, share, spend)

    return sorted(evaluations, key=key)


@dataclass(frozen=True, slots=True)
class CheckRow:
    metric: str
    measured: float | None
    replayed: float | None

    @property
    def error(self) -> float | None:
        if self.measured is None or self.replayed is None:
            return None
        return self.replayed - self.measured


@dataclass(frozen=True, slots=True)
class Check:
    rows: list[CheckRow]
    decision_agreement: float  # share of requests replayed to the backend they measured on
    hold_out: HoldOut | None


def check_baseline(replayer: Replayer, *, ttft_slo_s: float | None = None, bootstrap: int = 0, seed: int = 0) -> Check:
    """Replays the run's own config and compares with what the run measured."""
    evaluation = evaluate(replayer, replayer.baseline, ttft_slo_s=ttft_slo_s, bootstrap=bootstrap, seed=seed)
    truth = measured(replayer.records, replayer.baseline, ttft_slo_s=ttft_slo_s)
    rows = [CheckRow(m, metric(truth, m), metric(evaluation.estimate, m)) for m in METRICS]
    agree = sum(o.backend == o.record.backend for o in evaluation.outcomes) / max(len(evaluation.outcomes), 1)
    return Check(rows, agree, hold_out(local_points(replayer.records), seed=seed))
