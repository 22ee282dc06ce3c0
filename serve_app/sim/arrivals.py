"""Arrival processes: when each request is sent, as offsets in seconds from the start of a run; pure and seeded.

`constant` sends every 1/rate seconds; `poisson` draws exponential gaps at `rate`; `bursts` and `diurnal` are
non-homogeneous Poisson processes (drawn by thinning) whose rate follows a square wave or a day compressed into
`period` seconds. The same spec, seed and limits give the same offsets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

KINDS = ("constant", "poisson", "bursts", "diurnal")
_PARAMS = {
    "constant": {},
    "poisson": {},
    # Square wave: `peak` req/s for `for` seconds at the start of every `every` seconds, `rate` otherwise.
    "bursts": {"peak": None, "every": 20.0, "for": 5.0},
    # A day in `period` seconds (default: the run's duration): night at `min` x rate, peak at noon at rate.
    "diurnal": {"period": None, "min": 0.2},
}


class ArrivalError(ValueError):
    """An arrival spec that cannot be used; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """An arrival process: its kind, mean (or base) rate in requests/s, and kind-specific parameters."""

    kind: str
    rate: float
    params: dict[str, float] = field(default_factory=dict, hash=False)

    def rate_at(self, t: float, duration: float | None) -> float:
        """The instantaneous rate at `t` seconds (req/s)."""
        if self.kind == "bursts":
            peak = self.params.get("peak") or self.rate * 5
            return peak if t % self.params["every"] < self.params["for"] else self.rate
        if self.kind == "diurnal":
            period = self.params.get("period") or duration or 60.0
            low = self.params["min"]
            # 0 at the start (midnight), 1 at period/2 (noon), back to 0 at the end.
            day = (1 - math.cos(2 * math.pi * t / period)) / 2
            return self.rate * (low + (1 - low) * day)
        return self.rate

    def peak_rate(self) -> float:
        if self.kind == "bursts":
            return max(self.params.get("peak") or self.rate * 5, self.rate)
        return self.rate


def parse(spec: str, rate: float) -> Arrival:
    """`poisson`, `constant`, `bursts:peak=40,every=20,for=5`, `diurnal:period=60,min=0.1` at base `rate` req/s."""
    if rate <= 0 or not math.isfinite(rate):
        raise ArrivalError(f"rate: must be a positive number of requests per second (got {rate})")
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ArrivalError(f"arrival '{kind}': one of {', '.join(KINDS)}")
    params: dict[str, float] = {k: v for k, v in _PARAMS[kind].items() if v is not None}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in _PARAMS[kind]:
            allowed = ", ".join(_PARAMS[kind]) or "none"
            raise ArrivalError(f"arrival {kind}: unknown parameter '{item}' (parameters: {allowed})")
        try:
            number = float(value)
        except ValueError:
            raise ArrivalError(f"arrival {kind}: {key}={value} is not a number") from None
        if number < 0 or not math.isfinite(number) or (number == 0 and key != "min"):
            raise ArrivalError(f"arrival {kind}: {key} must be positive (got {value})")
        params[key] = number
    if kind == "diurnal" and params["min"] > 1:
        raise ArrivalError("arrival diurnal: min is a fraction of the rate, between 0 and 1")
    if kind == "bursts" and params["for"] > params["every"]:
        raise ArrivalError("arrival bursts: `for` must not exceed `every`")
    return Arrival(kind, rate, params)


def offsets(arrival: Arrival, *, seed: int, duration: float | None = None, count: int | None = None) -> Iterator[float]:
    """Send times in seconds from the start, increasing, until `duration` has passed or `count` were given."""
    if duration is None and count is None:
        raise ArrivalError("give a duration or a request count")
    rng = random.Random(seed)
    for produced, t in enumerate(_times(arrival, rng, duration)):
        if (duration is not None and t >= duration) or (count is not None and produced >= count):
            return
        yield t


def _times(arrival: Arrival, rng: random.Random, duration: float | None) -> Iterator[float]:
    if arrival.kind == "constant":
        n = 0
        while True:
            yield n / arrival.rate
            n += 1
    if arrival.kind == "poisson":
        yield from _poisson(rng, lambda _t: arrival.rate, arrival.rate)
    yield from _poisson(rng, lambda t: arrival.rate_at(t, duration), arrival.peak_rate())


def _poisson(rng: random.Random, rate: Callable[[float], float], ceiling: float) -> Iterator[float]:
    """Lewis-Shedler thinning: candidates at the ceiling rate, each kept with probability rate(t)/ceiling."""
    t = 0.0
    while True:
        t += rng.expovariate(ceiling)
        if rng.random() * ceiling <= rate(t):
            yield t
