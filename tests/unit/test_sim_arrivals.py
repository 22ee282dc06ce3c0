"""Arrival processes: rates within statistical bounds, seeds reproducible, specs validated."""

from __future__ import annotations

import itertools
import math

import pytest

from serve_app.sim.arrivals import ArrivalError, offsets, parse


def _times(spec: str, rate: float, *, seed: int = 1, duration: float = 600.0) -> list[float]:
    return list(offsets(parse(spec, rate), seed=seed, duration=duration))


def test_arrivals_constant_is_evenly_spaced():
    times = _times("constant", 4.0, duration=10.0)
    assert len(times) == 40
    assert times[:3] == [0.0, 0.25, 0.5]


@pytest.mark.parametrize("rate", [0.5, 5.0, 50.0])
def test_arrivals_poisson_count_within_four_sigma(rate):
    duration = 400.0
    expected = rate * duration
    count = len(_times("poisson", rate, duration=duration))
    assert abs(count - expected) < 4 * math.sqrt(expected)


def test_arrivals_poisson_gaps_are_exponential():
    times = _times("poisson", 10.0, duration=400.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    variance = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    assert mean == pytest.approx(0.1, rel=0.05)
    assert math.sqrt(variance) / mean == pytest.approx(1.0, rel=0.08)  # coefficient of variation of an exponential


def test_arrivals_same_seed_same_offsets_other_seed_others():
    assert _times("poisson", 3.0, seed=5) == _times("poisson", 3.0, seed=5)
    assert _times("poisson", 3.0, seed=5) != _times("poisson", 3.0, seed=6)
    assert _times("diurnal:min=0.1", 3.0, seed=5) == _times("diurnal:min=0.1", 3.0, seed=5)


def test_arrivals_bursts_follow_the_square_wave():
    times = _times("bursts:peak=40,every=20,for=5", 2.0, duration=2000.0)
    in_burst = sum(1 for t in times if t % 20 < 5)
    outside = len(times) - in_burst
    # 100 cycles: 5 s at 40/s and 15 s at 2/s each.
    assert abs(in_burst - 20_000) < 4 * math.sqrt(20_000)
    assert abs(outside - 3_000) < 4 * math.sqrt(3_000)


def test_arrivals_diurnal_peaks_at_noon_and_is_low_at_night():
    times = _times("diurnal:period=100,min=0.1", 20.0, duration=1000.0)
    night = sum(1 for t in times if t % 100 < 10 or t % 100 >= 90)
    noon = sum(1 for t in times if 40 <= t % 100 < 60)
    assert noon > 5 * night
    # Mean rate over a day: rate * (min + (1 - min) / 2) = 20 * 0.55 = 11/s.
    assert abs(len(times) - 11_000) < 4 * math.sqrt(11_000)


def test_arrivals_count_limit_and_duration_limit():
    arrival = parse("poisson", 100.0)
    assert len(list(offsets(arrival, seed=0, count=25))) == 25
    assert max(offsets(arrival, seed=0, duration=2.0)) < 2.0
    with pytest.raises(ArrivalError):
        list(offsets(arrival, seed=0))


@pytest.mark.parametrize(
    ("spec", "rate", "message"),
    [
        ("weibull", 1.0, "one of"),
        ("poisson", 0.0, "rate"),
        ("bursts:peak", 1.0, "unknown parameter"),
        ("bursts:height=3", 1.0, "unknown parameter"),
        ("bursts:peak=x", 1.0, "not a number"),
        ("bursts:every=5,for=10", 1.0, "must not exceed"),
        ("diurnal:min=2", 1.0, "between 0 and 1"),
        ("constant:period=3", 1.0, "parameters: none"),
    ],
)
def test_arrivals_bad_specs_name_the_problem(spec, rate, message):
    with pytest.raises(ArrivalError, match=message):
        parse(spec, rate)
