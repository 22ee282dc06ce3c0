"""Fault events on a run's timeline: the `kind@start[+duration]` syntax and its validation; pure.

    kill_model@20s              kill the model replica (Ray actor kill locally, `kubectl delete pod` on EKS)
    redeploy_model@30s          remove and redeploy the model application (`serve deploy`); it loads from scratch
    cloud_429@30s+15s           the Anthropic stand-in answers 429 rate_limit_error for 15 s (stand-in only)
    cloud_529@30s+15s           the same with 529 overloaded_error
    saturate_local@10s+20s      a burst of long local requests that fills the local model's queue for 20 s

Times take `ms`, `s` (default) or `m` suffixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = {
    "kill_model": False,  # kind -> needs a duration
    "redeploy_model": False,
    "cloud_429": True,
    "cloud_529": True,
    "saturate_local": True,
}
_SPEC = re.compile(r"^(?P<kind>[a-z_0-9]+)@(?P<at>[0-9.]+(?:ms|s|m)?)(?:\+(?P<duration>[0-9.]+(?:ms|s|m)?))?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class FaultError(ValueError):
    """A fault spec that cannot be used; the message shows the expected syntax."""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    kind: str
    at_s: float
    duration_s: float | None = None

    @property
    def end_s(self) -> float | None:
        return None if self.duration_s is None else self.at_s + self.duration_s

    def __str__(self) -> str:
        tail = f"+{self.duration_s:g}s" if self.duration_s is not None else ""
        return f"{self.kind}@{self.at_s:g}s{tail}"


def parse_seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)(ms|s|m)?", text)
    if not match:
        raise FaultError(f"'{text}' is not a time (e.g. 500ms, 20s, 1.5m)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse(spec: str) -> FaultEvent:
    """One `kind@start[+duration]` spec."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise FaultError(f"fault '{spec}': expected kind@start[+duration], e.g. kill_model@20s or cloud_429@30s+15s")
    kind = match.group("kind")
    if kind not in KINDS:
        raise FaultError(f"fault '{spec}': unknown kind '{kind}'; one of {', '.join(KINDS)}")
    at = parse_seconds(match.group("at"))
    duration = parse_seconds(match.group("duration")) if match.group("duration") else None
    if KINDS[kind] and not duration:
        raise FaultError(f"fault '{spec}': {kind} needs a duration > 0, e.g. {kind}@{at:g}s+15s")
    if not KINDS[kind] and duration is not None:
        raise FaultError(f"fault '{spec}': {kind} is an instant event and takes no +duration")
    return FaultEvent(kind, at, duration)


def timeline(specs: list[str], *, duration: float | None) -> list[FaultEvent]:
    """All events sorted by start; each must start within the run (when its duration is known)."""
    events = sorted((parse(spec) for spec in specs), key=lambda e: e.at_s)
    for event in events:
        if duration is not None and event.at_s >= duration:
            raise FaultError(f"fault {event}: starts after the run ends ({duration:g}s)")
    return events
