"""The local model's latency as a function of its concurrency, fitted from a run's own requests; pure.

Two straight lines by least squares over the local requests that answered: time to first token and time per
output token against the number of other local requests in flight when the request started (reconstructed
from overlapping request intervals, so router and simulator records are treated alike). Each fit keeps its
residuals: replay adds them back, and their spread is the model's stated error.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.records import RequestRecord
from serve_app.sim.aggregate import percentile


@dataclass(frozen=True, slots=True)
class Line:
    """y = intercept + slope * x, with the residuals (measured minus fitted) of the points it was fitted on."""

    intercept: float
    slope: float
    residuals: tuple[float, ...]

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x

    @property
    def rmse(self) -> float:
        if not self.residuals:
            return 0.0
        return math.sqrt(sum(r * r for r in self.residuals) / len(self.residuals))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Line:
    """Ordinary least squares; with one distinct x the slope is 0 (not identified) and the intercept the mean."""
    if not ys:
        return Line(0.0, 0.0, ())
    n = len(ys)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = 0.0 if sxx == 0 else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    return Line(intercept, slope, tuple(y - (intercept + slope * x) for x, y in zip(xs, ys, strict=True)))


def concurrency_at_start(intervals: Sequence[tuple[float, float]]) -> list[int]:
    """For each interval, how many of the others had started before it and not yet ended when it started."""
    starts = sorted(s for s, _ in intervals)
    ends = sorted(e for _, e in intervals)
    out = []
    for start, _ in intervals:
        started_before = bisect.bisect_left(starts, start)  # strictly earlier starts
        ended_by = bisect.bisect_right(ends, start)
        out.append(max(0, started_before - ended_by))
    return out


@dataclass(frozen=True, slots=True)
class LocalLatencyModel:
    ttft: Line  # seconds against concurrency
    tpot: Line  # seconds per output token after the first, against concurrency
    points: int
    concurrency_range: tuple[int, int]

    def ttft_s(self, concurrency: int, residual: float = 0.0) -> float:
        return max(1e-3, self.ttft.at(concurrency) + residual)

    def latency_s(self, concurrency: int, output_tokens: int, *, ttft_s: float, tpot_residual: float = 0.0) -> float:
        decode = max(0.0, self.tpot.at(concurrency) + tpot_residual) * max(0, output_tokens - 1)
        return ttft_s + decode

    def resample(self, rng: random.Random) -> tuple[float, float]:
        """One (ttft, tpot) residual pair drawn from the fit's own residuals."""
        if not self.ttft.residuals:
            return 0.0, 0.0
        i = rng.randrange(len(self.ttft.residuals))
        return self.ttft.residuals[i], self.tpot.residuals[i]


def local_points(records: Sequence[RequestRecord]) -> list[tuple[RequestRecord, int]]:
    """Local requests that answered with a TTFT, each with its reconstructed local concurrency at start."""
    local = [r for r in records if r.backend == "local"]
    concurrency = concurrency_at_start([(r.t_start, r.t_end) for r in local])
    return [
        (r, c)
        for r, c in zip(local, concurrency, strict=True)
        if r.outcome == "ok" and r.ttft_s is not None and r.latency_s is not None
    ]


def tpot_of(record: RequestRecord) -> float:
    assert record.latency_s is not None and record.ttft_s is not None
    return max(0.0, record.latency_s - record.ttft_s) / max(1, record.output_tokens - 1)


def fit_local_model(points: Sequence[tuple[RequestRecord, int]]) -> LocalLatencyModel | None:
    """The fitted model, or None without any local request to fit on."""
    if not points:
        return None
    xs = [float(c) for _, c in points]
    ttft = fit_line(xs, [r.ttft_s or 0.0 for r, _ in points])
    tpot = fit_line(xs, [tpot_of(r) for r, _ in points])
    return LocalLatencyModel(ttft, tpot, len(points), (min(c for _, c in points), max(c for _, c in points)))


@dataclass(frozen=True, slots=True)
class HoldOut:
    """The model's error on local requests it was not fitted on (k-fold): RMSE and p95 error of TTFT."""

    folds: int
    ttft_rmse_s: float
    ttft_p95_measured_s: float
    ttft_p95_predicted_s: float


def hold_out(points: Sequence[tuple[RequestRecord, int]], *, folds: int = 5, seed: int = 0) -> HoldOut | None:
    """K-fold check: each fold's TTFTs predicted (line plus a residual drawn from the other folds) by a model
    fitted on the other folds."""
    if len(points) < 2 * folds:
        return None
    rng = random.Random(seed)
    order = list(range(len(points)))
    rng.shuffle(order)
    errors: list[float] = []
    measured: list[float] = []
    predicted: list[float] = []
    for k in range(folds):
        test = set(order[k::folds])
        model = fit_local_model([p for i, p in enumerate(points) if i not in test])
        assert model is not None
        for i in sorted(test):
            record, c = points[i]
            mean = model.ttft_s(c)
            errors.append((record.ttft_s or 0.0) - mean)
            measured.append(record.ttft_s or 0.0)
            predicted.append(model.ttft_s(c, model.resample(rng)[0]))
    return HoldOut(
        folds,
        math.sqrt(sum(e * e for e in errors) / len(errors)),
        percentile(measured, 95) or 0.0,
        percentile(predicted, 95) or 0.0,
    )
