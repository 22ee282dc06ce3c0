"""ledger + tenancy: concurrent admissions from two replicas, snapshots across a ledger restart, epochs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serve_app.config import LedgerArgs
from serve_app.ledger import ActorLedger, LedgerCore, ProcessLedger
from serve_app.limits import LimitExceeded, Report
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import RouteDecision
from serve_app.telemetry import InMemoryMetricsSink
from serve_app.tenancy import Tenancy
from tests.component.fakes import router_args

T0 = 1_780_000_000.0
CLOUD = RouteDecision("cloud", "claude-sonnet-4-6", "explicit_cloud")
REQUEST = ChatCompletionRequest.model_validate(
    {"model": "cloud", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
)


def tenancy(ledger: ProcessLedger, *, usd_per_day: float, lease_fraction: float = 0.05) -> Tenancy:
    args = router_args(
        tenants={"limits": {"alpha": {"usd_per_day": usd_per_day}}, "ledger": {"lease_fraction": lease_fraction}}
    )
    return Tenancy(args, ledger=ledger, metrics=InMemoryMetricsSink(), clock=lambda: T0)


async def _request(replica: Tenancy, cost: float) -> bool:
    try:
        admission = await replica.admit(tenant="alpha", request=REQUEST, prompt_tokens=10, decision=CLOUD)
    except LimitExceeded:
        return False
    await asyncio.sleep(0)  # other requests interleave while this one is in flight
    admission.settle(backend="cloud", outcome="ok", tokens=20, cost_usd=cost)
    return True


async def test_two_replicas_with_concurrent_requests_spend_within_the_limit():
    ledger = ProcessLedger(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: T0))
    replicas = [tenancy(ledger, usd_per_day=0.01), tenancy(ledger, usd_per_day=0.01)]
    reserved = (10 * 3.75 + 10 * 15.0) / 1e6  # each request's reservation; it then costs 0.0001
    first = await asyncio.gather(*(_request(replicas[i % 2], 0.0001) for i in range(200)))
    # all 200 in flight at once: only as many as the limit covers at their maximum cost are admitted
    assert 0.01 / reserved - 3 <= sum(first) <= 0.01 / reserved
    admitted = sum(first)
    while True:  # then waves of 20 until nothing more fits
        wave = await asyncio.gather(*(_request(replicas[i % 2], 0.0001) for i in range(20)))
        admitted += sum(wave)
        if not any(wave):
            break
    for replica in replicas:
        await replica.sync()
    spent = sum((await ledger.totals())["spent"].values())
    assert spent == pytest.approx(0.0001 * admitted)
    assert spent <= 0.01
    # refused only once what is left (split between two replicas' leases and the ledger) is below a reservation
    assert 0.01 - spent < 3 * reserved


async def test_ledger_snapshot_survives_a_restart_and_voids_old_leases(tmp_path):
    path = tmp_path / "ledger.json"
    core = LedgerCore(snapshot_path=str(path), snapshot_interval_s=0, lease_ttl_s=30, clock=lambda: T0)
    replica = tenancy(ProcessLedger(core), usd_per_day=0.001, lease_fraction=1.0)
    assert await _request(replica, 0.0002)
    await replica.sync()
    assert path.exists()
    restarted = LedgerCore(snapshot_path=str(path), snapshot_interval_s=0, lease_ttl_s=30, clock=lambda: T0)
    assert restarted.totals()["spent"] == core.totals()["spent"]
    assert restarted.epoch != core.epoch
    replica._ledger = ProcessLedger(restarted)
    assert replica.book.remaining  # a lease of the old ledger
    await replica.sync()  # nothing to report: the epoch is only learnt on the next call
    assert await _request(replica, 0.0002)
    await replica.sync()
    assert replica.ledger_epoch == restarted.epoch
    assert sum(restarted.totals()["spent"].values()) == pytest.approx(0.0004)


def test_ledger_core_unreadable_snapshot_counts_from_zero(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    core = LedgerCore(snapshot_path=str(path), snapshot_interval_s=0, lease_ttl_s=30)
    assert core.totals()["spent"] == {}
    core.report("r", {"k": Report(1.0, 0.0, T0 + 10)})
    assert LedgerCore(snapshot_path=str(path), snapshot_interval_s=0, lease_ttl_s=30).totals()["spent"] == {"k": 1.0}


async def test_an_idle_replica_keeps_its_lease_by_heartbeat_and_a_silent_one_loses_it():
    now = [T0]
    core = LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: now[0])
    ledger = ProcessLedger(core)
    idle, silent = tenancy(ledger, usd_per_day=0.01), tenancy(ledger, usd_per_day=0.01)
    for replica in (idle, silent):
        assert await _request(replica, 0.0001)
    for _ in range(4):  # 40 s without requests; only `idle` reports (its heartbeat)
        now[0] += 10
        await idle.sync()
    core.grant("third", "other-key", end=T0 + 86400, limit=1, want=1, need=1)  # any call expires silent leases
    holders = core.state.leases[next(iter(core.state.leases))]
    assert idle.replica_id in holders and silent.replica_id not in holders


async def test_refusals_cost_no_remote_call_for_one_sync_interval():
    now = [T0]
    calls: list[str] = []

    class Counting(ProcessLedger):
        async def grant(self, *args, **kwargs):
            calls.append("grant")
            return await super().grant(*args, **kwargs)

    ledger = Counting(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: now[0]))
    replica = tenancy(ledger, usd_per_day=0.0002)  # one reservation of 0.0001875 fits, a second does not
    replica._clock = lambda: now[0]
    assert await _request(replica, 0.0001)
    assert not await _request(replica, 0.0001)
    asked = len(calls)
    for _ in range(10):
        assert not await _request(replica, 0.0001)
    assert len(calls) == asked  # refused from the local note, no grant asked
    now[0] += 1.5  # past the sync interval (1 s): the ledger is asked again
    assert not await _request(replica, 0.0001)
    assert len(calls) == asked + 1


async def test_spend_and_budget_gauges_from_the_ledger_totals():
    ledger = ProcessLedger(LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: T0))
    replica = tenancy(ledger, usd_per_day=0.01)
    assert await _request(replica, 0.0001)
    await replica.sync()
    replica.publish_totals(await ledger.totals())
    metrics = replica._metrics
    assert metrics.gauge("router_tenant_spend_usd", tenant="alpha", period="day") == pytest.approx(0.0001)
    assert metrics.gauge("router_tenant_budget_usd", tenant="alpha", period="day") == 0.01
    assert metrics.gauge("router_tenant_spend_usd", tenant="default", period="month") == 0
    assert metrics.gauge("router_tenant_budget_usd", tenant="alpha", period="month") is None  # no monthly limit


async def test_a_stopping_replica_gives_its_leases_back():
    core = LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: T0)
    replica = tenancy(ProcessLedger(core), usd_per_day=0.01, lease_fraction=0.5)
    assert await _request(replica, 0.0001)
    key = next(iter(core.state.leases))
    assert core.state.leases[key][replica.replica_id] > 0.004
    await replica.aclose()
    assert core.state.leases[key][replica.replica_id] == pytest.approx(0.0)
    assert core.state.spent[key] == pytest.approx(0.0001)


async def test_a_refusal_makes_the_other_replicas_give_their_unused_leases_back():
    """One replica holds half the limit and gets no more traffic; the other is refused once the ledger's rest is
    spent, then served again from that half after the holder's next report."""
    core = LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: T0)
    ledger = ProcessLedger(core)
    holder, busy = tenancy(ledger, usd_per_day=0.004, lease_fraction=0.5), tenancy(ledger, usd_per_day=0.004)
    busy._clock = holder._clock = lambda: T0  # the refusal note expires with time: step it below
    assert await _request(holder, 0.0001)  # leases 0.002
    served = 0
    while await _request(busy, 0.0001):
        served += 1
    key = next(iter(core.state.leases))
    assert core.state.short == {key: T0}
    assert holder.book.remaining[key] > 0.0018
    await busy.sync()  # the refused replica holds nothing unused: its report gives nothing back
    await holder.sync()  # the holder is told the counter is short and gives its unused lease back at once
    assert holder.book.remaining[key] == 0.0
    assert core.state.leases[key][holder.replica_id] == pytest.approx(0.0)
    busy._dry.clear()  # one sync interval later
    more = 0
    while await _request(busy, 0.0001):
        more += 1
    assert more >= 9  # 0.0019 given back, 0.0001875 reserved per request
    await busy.sync()
    reserved = (10 * 3.75 + 10 * 15.0) / 1e6
    spent = sum(core.totals()["spent"].values())
    assert 0.004 - reserved * 2 < spent + busy.book.remaining.get(key, 0.0) <= 0.004


async def test_a_ledger_actor_of_an_earlier_release_answers_reports_with_the_epoch_alone():
    """The actor is detached: after an upgrade, new replicas may find one that still runs the earlier code."""
    core = LedgerCore(snapshot_path=None, snapshot_interval_s=60, lease_ttl_s=30, clock=lambda: T0)

    async def earlier_report(replica, plain):  # `handle.report.remote(...)` of an actor that returns the epoch
        return core.report(replica, {key: Report(*value) for key, value in plain.items()})[0]

    actor = ActorLedger(LedgerArgs())
    actor._handle = SimpleNamespace(report=SimpleNamespace(remote=earlier_report))
    assert await actor.report("r", {"k": Report(1.0, 0.0, T0 + 10)}) == (core.epoch, [])
    assert core.totals()["spent"] == {"k": 1.0}
