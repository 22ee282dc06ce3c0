"""Limit arithmetic: UTC windows, each tenant's limits, a replica's leases and the shared ledger's counters; pure.

A limit caps a quantity (requests, tokens, local tokens, cloud USD) in a window (clock minute, hour, UTC day,
calendar month). The ledger grants each router replica leases, parts of a limit's remaining budget; a replica
admits a request by taking its maximum cost from its lease (no remote call) and settles the actual cost after.
The ledger never grants more than `limit - spent - leased`, so admitted reservations never exceed the limit: a
window overshoots only by what requests cost beyond their reservation (see docs/tenants.md for the bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from serve_app.config import SpendLimit, TenantLimits
from serve_app.errors import RouterError

Period = Literal["minute", "hour", "day", "month"]
Quantity = Literal["requests", "tokens", "local_tokens", "cloud_usd"]
Action = Literal["reject", "local"]
GLOBAL_SCOPE = "*"
_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
# Names of every limit, the closed set of the `limit` metric label.
LIMIT_NAMES = (
    "requests_per_minute",
    "tokens_per_minute",
    "local_tokens_per_minute",
    "usd_per_day",
    "usd_per_month",
    "cloud_usd_per_hour",
)


class LimitExceeded(RouterError):
    """A request over one of its tenant's limits, or over the global cloud budget: 429 with Retry-After."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "tenant_limit_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.limit = limit
        self.billing_headers = {"X-Router-Limit": limit}  # the ingress adds these headers to the error response


def window(period: Period, t: float) -> tuple[float, float]:
    """The UTC window of `period` that holds Unix time `t`: [start, end)."""
    if period == "month":
        now = datetime.fromtimestamp(t, UTC)
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        return start.timestamp(), end.timestamp()
    size = _SECONDS[period]
    start = t // size * size
    return start, start + size


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # one of LIMIT_NAMES
    scope: str  # the tenant, or GLOBAL_SCOPE
    quantity: Quantity
    period: Period
    amount: float
    over: Action = "reject"

    def key(self, t: float) -> tuple[str, float]:
        """The counter of this limit's window at `t`, and the window's end."""
        start, end = window(self.period, t)
        return f"{self.scope}/{self.quantity}/{self.period}/{int(start)}", end

    def applies(self, backend: str) -> bool:
        """Whether a request answered by `backend` counts against this limit."""
        if self.quantity == "local_tokens":
            return backend == "local"
        if self.quantity == "cloud_usd":
            return backend == "cloud"
        return True

    def describe(self) -> str:
        unit = "USD of cloud spend" if self.quantity == "cloud_usd" else self.quantity.replace("_", " ")
        amount = f"{self.amount:g}" if self.quantity != "cloud_usd" else f"{self.amount:.2f}"
        per = {"minute": "minute", "hour": "UTC hour", "day": "UTC day", "month": "UTC month"}[self.period]
        return f"{self.name} ({amount} {unit} per {per})"


def limits_of(tenant: str, limits: TenantLimits | None, cloud_usd_per_hour: SpendLimit | None) -> tuple[Limit, ...]:
    """Every limit a request of `tenant` is checked against, the tenant's own first."""
    found: list[Limit] = []
    if limits is not None:
        for name, quantity in (
            ("requests_per_minute", "requests"),
            ("tokens_per_minute", "tokens"),
            ("local_tokens_per_minute", "local_tokens"),
        ):
            amount = getattr(limits, name)
            if amount is not None:
                found.append(Limit(name, tenant, quantity, "minute", float(amount)))  # type: ignore[arg-type]
        for name, period in (("usd_per_day", "day"), ("usd_per_month", "month")):
            spend: SpendLimit | None = getattr(limits, name)
            if spend is not None:
                found.append(Limit(name, tenant, "cloud_usd", period, spend.usd, spend.over))  # type: ignore[arg-type]
    if (hourly := cloud_usd_per_hour) is not None:
        found.append(Limit("cloud_usd_per_hour", GLOBAL_SCOPE, "cloud_usd", "hour", hourly.usd, hourly.over))
    return tuple(found)


# ---- a replica's side: leases ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What a replica tells the ledger about one counter: spend settled since the last report, and lease it gives
    back (its window ended)."""

    spent: float
    released: float
    end: float


@dataclass
class LeaseBook:
    """One replica's leases and its settled spend not yet reported. Only the event loop's thread touches it."""

    remaining: dict[str, float] = field(default_factory=dict)
    ends: dict[str, float] = field(default_factory=dict)
    unreported: dict[str, float] = field(default_factory=dict)

    def take(self, key: str, amount: float) -> bool:
        """Reserves `amount` from the lease of `key` if it holds that much."""
        if self.remaining.get(key, 0.0) >= amount:
            self.remaining[key] -= amount
            return True
        return False

    def give(self, key: str, amount: float, end: float) -> None:
        """Adds a grant from the ledger (a deficit from an earlier overdraw is paid from it first)."""
        self.remaining[key] = self.remaining.get(key, 0.0) + amount
        self.ends[key] = end

    def settle(self, key: str, *, reserved: float, actual: float, end: float) -> None:
        """Replaces a reservation by the actual cost: the difference returns to (or overdraws) the lease."""
        self.remaining[key] = self.remaining.get(key, 0.0) + reserved - actual
        self.unreported[key] = self.unreported.get(key, 0.0) + actual
        self.ends.setdefault(key, end)

    def drain(self, now: float, *, release_all: bool = False) -> dict[str, Report]:
        """The reports to send now: every unreported spend, and the unused lease of every window that has ended
        (dropped here; an overdrawn one too, its deficit is the window's overshoot); with `release_all` (the replica
        stops) every unused lease."""
        reports: dict[str, Report] = {}
        for key, spent in self.unreported.items():
            reports[key] = Report(spent=spent, released=0.0, end=self.ends.get(key, now))
        self.unreported = {}
        for key, end in list(self.ends.items()):
            if end <= now or release_all:
                released = max(self.remaining.pop(key, 0.0), 0.0)
                del self.ends[key]
                previous = reports.get(key, Report(0.0, 0.0, end))
                reports[key] = Report(spent=previous.spent, released=released, end=end)
        return reports

    def restore(self, reports: Mapping[str, Report]) -> None:
        """Puts back reports that could not be delivered, so the next drain sends them."""
        for key, report in reports.items():
            self.unreported[key] = self.unreported.get(key, 0.0) + report.spent
            if report.released:
                self.remaining[key] = self.remaining.get(key, 0.0) + report.released
                self.ends[key] = report.end

    def release(self, keys: Iterable[str]) -> dict[str, Report]:
        """Gives back the unused lease of each of `keys` (the ledger is short of them): the reports that send it."""
        reports: dict[str, Report] = {}
        for key in keys:
            unused = self.remaining.get(key, 0.0)
            if unused > 0 and key in self.ends:
                self.remaining[key] = 0.0
                reports[key] = Report(spent=0.0, released=unused, end=self.ends[key])
        return reports

    def forget_leases(self) -> None:
        """The ledger restarted without knowing this replica's leases: drop them (unreported spend is kept)."""
        self.remaining = {key: min(value, 0.0) for key, value in self.remaining.items()}


# ---- the ledger's side: counters shared by every replica ------------------------------------------------------


@dataclass
class LedgerState:
    """Spend per counter and outstanding leases per replica. A lease may be negative: a replica that overdrew pays
    its deficit from its next grant, so `spent + leased` stays what has been admitted. A counter is `short` once a
    grant was refused with less than a lease's worth unleased: from then on, until its window ends, its holders
    give their unused leases back when they report, so what is left of the limit pools here instead of idling in
    one replica's lease."""

    spent: dict[str, float] = field(default_factory=dict)
    ends: dict[str, float] = field(default_factory=dict)
    leases: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> replica -> outstanding
    seen: dict[str, float] = field(default_factory=dict)  # replica -> last heard from
    limits: dict[str, float] = field(default_factory=dict)  # key -> the limit's amount, as last named by a replica
    short: dict[str, float] = field(default_factory=dict)  # key -> when a grant of it was last refused

    def available(self, key: str, limit: float) -> float:
        return limit - self.spent.get(key, 0.0) - sum(self.leases.get(key, {}).values())

    def grant(self, replica: str, key: str, *, end: float, limit: float, want: float, need: float, now: float) -> float:
        """A lease of up to `want` (at least `need`, or nothing) from what remains of `limit` in `key`'s window."""
        self.seen[replica] = now
        self.ends[key] = end
        self.limits[key] = limit
        available = self.available(key, limit)
        if available <= 0 or available < need:
            if available < want:  # the counter's last stretch (not merely one request larger than a lease)
                self.short[key] = now
            return 0.0
        granted = min(max(want, need), available)
        holders = self.leases.setdefault(key, {})
        holders[replica] = holders.get(replica, 0.0) + granted
        return granted

    def report(self, replica: str, reports: Mapping[str, Report], *, now: float) -> None:
        """Books a replica's settled spend and released leases."""
        self.seen[replica] = now
        for key, report in reports.items():
            self.spent[key] = self.spent.get(key, 0.0) + report.spent
            self.ends.setdefault(key, report.end)
            holders = self.leases.setdefault(key, {})
            holders[replica] = holders.get(replica, 0.0) - report.spent - report.released

    def reclaim(self, replica: str) -> list[str]:
        """The short counters of which `replica` holds a lease: it should give back what it does not use."""
        return [key for key in self.short if self.leases.get(key, {}).get(replica, 0.0) > 0]

    def expire(self, *, now: float, lease_ttl_s: float, keep_s: float) -> None:
        """Drops the leases of replicas silent for `lease_ttl_s` (their unused budget returns), and counters whose
        window ended more than `keep_s` ago."""
        silent = {replica for replica, at in self.seen.items() if now - at > lease_ttl_s}
        for replica in silent:
            del self.seen[replica]
            for holders in self.leases.values():
                holders.pop(replica, None)
        for key, end in list(self.ends.items()):
            if now - end > keep_s:
                for table in (self.spent, self.ends, self.leases, self.limits, self.short):
                    table.pop(key, None)

    def snapshot(self) -> dict[str, object]:
        return {"spent": dict(self.spent), "ends": dict(self.ends), "limits": dict(self.limits)}

    @classmethod
    def restored(cls, data: Mapping[str, object]) -> LedgerState:
        def floats(name: str) -> dict[str, float]:
            table = data.get(name) or {}
            return {str(k): float(v) for k, v in table.items()} if isinstance(table, dict) else {}

        return cls(spent=floats("spent"), ends=floats("ends"), limits=floats("limits"))
