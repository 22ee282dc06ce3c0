"""Tenants on the request path: a request's limits reserved before it costs anything, settled when it ends.

`Tenancy.admit` takes the request's maximum cost from this replica's leases (a remote call only when a lease
cannot cover it), diverts cloud spend over a `local` limit to the local model where the request allows it, or
refuses with `LimitExceeded` (429). `Admission.settle` books what the request actually cost. A background task
reports settled spend to the shared ledger and refreshes the per-tenant spend gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.config import DEFAULT_TENANT, RouterArgs, TenantLimits
from serve_app.errors import NoBackendAvailable
from serve_app.ledger import Ledger
from serve_app.limits import GLOBAL_SCOPE, LIMIT_NAMES, LeaseBook, Limit, LimitExceeded, Report, limits_of, window
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import RouteDecision
from serve_app.telemetry.metrics import OTHER, Instrument, MetricsSink

logger = logging.getLogger(__name__)

TENANT_BUDGET_LOCAL = "tenant_budget_local"  # route reason: the tenant's cloud budget is spent, local answers
CLOUD_BUDGET_LOCAL = "cloud_budget_local"  # route reason: the global cloud budget is spent, local answers
_TOTALS_PERIOD_S = 10.0

INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("router_tenant_requests", "counter", "Requests per tenant.", ("tenant", "backend", "outcome")),
    Instrument("router_tenant_tokens", "counter", "Tokens (all buckets) per tenant.", ("tenant", "backend")),
    Instrument("router_tenant_cost_usd", "counter", "USD spent per tenant.", ("tenant", "backend")),
    Instrument(
        "router_tenant_limited",
        "counter",
        "Requests refused (429) or diverted to local by a limit.",
        ("tenant", "limit", "action"),
    ),
    Instrument(
        "router_tenant_spend_usd", "gauge", "Cloud USD spent this UTC day/month (the ledger).", ("tenant", "period")
    ),
    Instrument("router_tenant_budget_usd", "gauge", "Cloud USD limit per UTC day/month.", ("tenant", "period")),
)


@dataclass(frozen=True, slots=True)
class _Hold:
    limit: Limit
    key: str
    end: float
    reserved: float


class Admission:
    """One admitted request: the decision that holds (diverted or not) and its reservations until `settle`."""

    def __init__(self, tenancy: Tenancy, tenant: str, decision: RouteDecision, holds: list[_Hold], need: _Need):
        self.tenant = tenant
        self.decision = decision
        self._tenancy = tenancy
        self._holds = holds
        self._need = need
        self._settled = False

    async def fall_back(self, decision: RouteDecision) -> RouteDecision | None:
        """The retry on the other backend, its own limits reserved; None when they refuse it (the caller keeps the
        original error). Reservations of the failed backend's own limits are released (it answered nothing)."""
        tenancy = self._tenancy
        kept = [h for h in self._holds if h.limit.quantity in ("requests", "tokens")]
        for hold in self._holds:
            if hold not in kept:
                tenancy.book.settle(hold.key, reserved=hold.reserved, actual=0.0, end=hold.end)
        self._holds = kept
        try:
            self._holds += await tenancy.reserve(
                self._backend_only(decision.backend), self._need, backend=decision.backend, model=decision.model
            )
        except LimitExceeded:
            return None
        self.decision = decision
        return decision

    def _backend_only(self, backend: str) -> list[Limit]:
        return [
            limit
            for limit in self._tenancy.limits_for(self.tenant)
            if limit.quantity in ("local_tokens", "cloud_usd") and limit.applies(backend)
        ]

    def settle(self, *, backend: str | None, outcome: str, tokens: int, cost_usd: float | None) -> None:
        """Replaces the reservations by what the request cost (once; later calls do nothing); never raises."""
        if self._settled:
            return
        self._settled = True
        tenancy = self._tenancy
        try:
            for hold in self._holds:
                actual = 0.0
                if backend is not None and hold.limit.applies(backend):
                    match hold.limit.quantity:
                        case "requests":
                            actual = 1.0
                        case "tokens" | "local_tokens":
                            actual = float(tokens)
                        case "cloud_usd":
                            actual = cost_usd or 0.0
                tenancy.book.settle(hold.key, reserved=hold.reserved, actual=actual, end=hold.end)
            tenancy.count_request(self.tenant, backend=backend, outcome=outcome, tokens=tokens, cost_usd=cost_usd)
        except Exception:
            logger.exception("settling a request's limits failed")


@dataclass(frozen=True, slots=True)
class _Need:
    prompt_tokens: int
    output_tokens: int | None  # the client's budget


class Tenancy:
    """One per router replica: limits per tenant, this replica's leases, the ledger client, tenant metrics."""

    def __init__(
        self,
        args: RouterArgs,
        *,
        ledger: Ledger,
        metrics: MetricsSink,
        file_limits: Callable[[str], TenantLimits | None] = lambda tenant: None,
        clock: Callable[[], float] = time.time,
        replica_id: str | None = None,
    ) -> None:
        self._args = args
        self._tenants = args.tenants
        self._ledger = ledger
        self._metrics = metrics
        self._file_limits = file_limits
        self._clock = clock
        self.replica_id = replica_id or uuid.uuid4().hex
        self.book = LeaseBook()
        self.ledger_epoch: str | None = None
        self._labels = frozenset({*self._tenants.limits, DEFAULT_TENANT})
        self._cache: dict[str, tuple[TenantLimits | None, tuple[Limit, ...]]] = {}
        self._prices = dict(args.pricing.models) if args.pricing else {}
        self._task: asyncio.Task[None] | None = None
        self._dry: dict[str, float] = {}  # counter -> until when the ledger is known to have nothing left
        try:
            metrics.register(INSTRUMENTS)
        except Exception:
            logger.exception("tenant metrics could not be registered")

    # ---- limits -----------------------------------------------------------------------------------------------

    def label(self, tenant: str) -> str:
        """The `tenant` metric label: a tenant named in the config, else `other`."""
        return tenant if tenant in self._labels else OTHER

    def limits_for(self, tenant: str) -> tuple[Limit, ...]:
        """The tenant's limits: the keys file's for it if any, else the config's; then the global cloud limit."""
        own = self._file_limits(tenant) or self._tenants.limits.get(tenant)
        cached = self._cache.get(tenant)
        if cached is None or cached[0] is not own:
            cached = (own, limits_of(tenant, own, self._tenants.cloud_usd_per_hour))
            self._cache[tenant] = cached
        return cached[1]

    async def admit(
        self, *, tenant: str, request: ChatCompletionRequest, prompt_tokens: int, decision: RouteDecision
    ) -> Admission:
        """Reserves the request's limits for `decision`'s backend; diverts or raises LimitExceeded when over."""
        need = _Need(prompt_tokens=prompt_tokens, output_tokens=request.output_budget)
        limits = self.limits_for(tenant)
        if not limits:
            return Admission(self, tenant, decision, [], need)
        applicable = [limit for limit in limits if limit.applies(decision.backend)]
        try:
            holds = await self.reserve(applicable, need, backend=decision.backend, model=decision.model)
        except LimitExceeded as exc:
            over = next(limit for limit in limits if limit.name == exc.limit)
            divert = (
                over.quantity == "cloud_usd"
                and over.over == "local"
                and decision.backend == "cloud"
                and decision.fallback_backend == "local"  # `auto`, local ready and suited to the request
                and decision.fallback_model is not None
            )
            if not divert:
                self._count_limited(tenant, exc.limit, "rejected")
                raise
            reason = CLOUD_BUDGET_LOCAL if over.scope == GLOBAL_SCOPE else TENANT_BUDGET_LOCAL
            assert decision.fallback_model is not None
            local = RouteDecision("local", decision.fallback_model, reason)
            try:
                holds = await self.reserve(
                    [limit for limit in limits if limit.applies("local")], need, backend="local", model=local.model
                )
            except LimitExceeded as local_exc:
                self._count_limited(tenant, local_exc.limit, "rejected")
                raise
            self._count_limited(tenant, exc.limit, "diverted")
            return Admission(self, tenant, local, holds, need)
        return Admission(self, tenant, decision, holds, need)

    async def reserve(self, limits: Iterable[Limit], need: _Need, *, backend: str, model: str) -> list[_Hold]:
        """Takes each limit's share of the request from the leases, all or nothing; raises LimitExceeded."""
        now = self._clock()
        holds: list[_Hold] = []
        for limit in limits:
            amount = self._amount(limit, need, backend=backend, model=model)
            key, end = limit.key(now)
            if not self.book.take(key, amount) and not await self._lease(limit, key, end, amount):
                for hold in holds:
                    self.book.settle(hold.key, reserved=hold.reserved, actual=0.0, end=hold.end)
                raise self._exceeded(limit, now)
            holds.append(_Hold(limit, key, end, amount))
        return holds

    async def _lease(self, limit: Limit, key: str, end: float, amount: float) -> bool:
        now = self._clock()
        if self._dry.get(key, 0.0) > now:  # the ledger just had nothing left: refuse without asking again
            return False
        want = limit.amount * self._tenants.ledger.lease_fraction
        shortfall = amount - max(self.book.remaining.get(key, 0.0), 0.0)  # what the lease held lacks
        try:
            granted, epoch = await self._ledger.grant(
                self.replica_id, key, end=end, limit=limit.amount, want=want, need=shortfall
            )
        except Exception as exc:
            logger.warning("the spend ledger is unreachable: %s", exc)
            raise NoBackendAvailable(
                "the spend ledger is unreachable, so limits cannot be checked; retry shortly", retry_after=5
            ) from exc
        self._check_epoch(epoch)
        if granted > 0:
            self.book.give(key, granted, end)
        else:  # over the limit: for one sync interval, refusals of this counter cost no remote call
            self._dry[key] = now + self._tenants.ledger.sync_interval_s
            if len(self._dry) > 4096:
                self._dry = {k: t for k, t in self._dry.items() if t > now}
        return self.book.take(key, amount)

    def _check_epoch(self, epoch: str) -> None:
        if self.ledger_epoch is not None and epoch != self.ledger_epoch:
            logger.warning("the spend ledger restarted: this replica's leases are void")
            self.book.forget_leases()
        self.ledger_epoch = epoch

    def _amount(self, limit: Limit, need: _Need, *, backend: str, model: str) -> float:
        """The most the request can count against `limit` on `backend`: its reservation."""
        if limit.quantity == "requests":
            return 1.0
        if backend == "cloud":
            output = need.output_tokens or self._args.cloud.default_max_tokens
        else:
            output = need.output_tokens or self._args.routing.default_local_output_tokens
        if limit.quantity in ("tokens", "local_tokens"):
            return float(need.prompt_tokens + output)
        price = self._prices.get(model) or self._prices.get(self._args.cloud.model)
        if price is None:
            return 0.0
        # The prompt at the dearest input price (a cache write), the whole output budget at the output price.
        return (need.prompt_tokens * max(price.input, price.cache_write) + output * price.output) / 1e6

    def _exceeded(self, limit: Limit, now: float) -> LimitExceeded:
        _, end = window(limit.period, now)
        who = "the platform's cloud budget" if limit.scope == GLOBAL_SCOPE else f"tenant '{limit.scope}'"
        return LimitExceeded(
            f"{who} is over its limit {limit.describe()}; it resets at the end of the window",
            limit=limit.name,
            retry_after=max(1.0, end - now),
            code="cloud_budget_exceeded" if limit.scope == GLOBAL_SCOPE else None,
        )

    # ---- metrics ----------------------------------------------------------------------------------------------

    def _record(self, name: str, value: float, **tags: str) -> None:
        try:
            self._metrics.record(name, value, tags)
        except Exception:
            logger.debug("tenant metric %s failed", name, exc_info=True)

    def _count_limited(self, tenant: str, limit: str, action: str) -> None:
        self._record("router_tenant_limited", 1, tenant=self.label(tenant), limit=_limit_label(limit), action=action)

    def count_request(
        self, tenant: str, *, backend: str | None, outcome: str, tokens: int, cost_usd: float | None
    ) -> None:
        label = self.label(tenant)
        b = backend if backend in ("local", "cloud") else "none"
        self._record("router_tenant_requests", 1, tenant=label, backend=b, outcome=outcome)
        if tokens:
            self._record("router_tenant_tokens", tokens, tenant=label, backend=b)
        if cost_usd:
            self._record("router_tenant_cost_usd", cost_usd, tenant=label, backend=b)

    def publish_totals(self, totals: Mapping[str, Any]) -> None:
        """Spend and budget gauges per configured tenant for this UTC day and month, from the ledger's totals."""
        now = self._clock()
        spent: Mapping[str, float] = totals.get("spent", {})
        for tenant in sorted(self._labels):
            for limit_name, period in (("usd_per_day", "day"), ("usd_per_month", "month")):
                start, _ = window(period, now)  # type: ignore[arg-type]
                value = spent.get(f"{tenant}/cloud_usd/{period}/{int(start)}", 0.0)
                self._record("router_tenant_spend_usd", value, tenant=tenant, period=period)
                limit = next((lim for lim in self.limits_for(tenant) if lim.name == limit_name), None)
                if limit is not None:
                    self._record("router_tenant_budget_usd", limit.amount, tenant=tenant, period=period)

    # ---- the background reporter ------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts reporting settled spend every `ledger.sync_interval_s` (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def sync(self, *, release_all: bool = False) -> None:
        """Reports settled spend and released leases now; undelivered reports are kept for the next try."""
        reports = self.book.drain(self._clock(), release_all=release_all)
        if not reports and self.ledger_epoch is None:
            return  # the ledger was never used: nothing to report, no lease to keep alive
        # Also when empty: the report is this replica's heartbeat, without which the ledger expires its leases.
        epoch, short = await self._report(reports)
        self._check_epoch(epoch)
        # The ledger refused another replica a lease of these counters: what this one holds unused goes back now,
        # so that a tenant is not refused while part of its budget idles here.
        if released := self.book.release(short):
            await self._report(released)

    async def _report(self, reports: Mapping[str, Report]) -> tuple[str, list[str]]:
        try:
            return await self._ledger.report(self.replica_id, reports)
        except Exception:
            self.book.restore(reports)
            raise

    async def _run(self) -> None:
        totals_at = 0.0
        while True:
            await asyncio.sleep(self._tenants.ledger.sync_interval_s)
            try:
                await self.sync()
                if self.ledger_epoch is not None and self._clock() - totals_at >= _TOTALS_PERIOD_S:
                    totals_at = self._clock()
                    self.publish_totals(await self._ledger.totals())
            except Exception:
                logger.warning("reporting to the spend ledger failed; retrying", exc_info=True)

    async def aclose(self) -> None:
        """Stops the reporter, sends what is left and gives back every unused lease (replica shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        try:
            await self.sync(release_all=True)
        except Exception:
            logger.warning("the last report to the spend ledger failed; its spend is lost", exc_info=True)


def _limit_label(limit: str) -> str:
    return limit if limit in LIMIT_NAMES else OTHER
