"""limits: UTC windows and their boundaries, each tenant's limits, leases and the shared counters under concurrency."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from serve_app.config import SpendLimit, TenantLimits
from serve_app.limits import LeaseBook, LedgerState, Limit, Report, limits_of, window


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "t", "start", "end"),
    [
        ("minute", ts(2026, 12, 5, 10, 0, 59), ts(2026, 12, 5, 10, 0), ts(2026, 12, 5, 10, 1)),
        ("minute", ts(2026, 12, 5, 10, 1), ts(2026, 12, 5, 10, 1), ts(2026, 12, 5, 10, 2)),  # a boundary opens
        ("hour", ts(2026, 12, 5, 10, 59, 59), ts(2026, 12, 5, 10), ts(2026, 12, 5, 11)),
        ("day", ts(2026, 12, 5, 23, 59, 59), ts(2026, 12, 5), ts(2026, 12, 6)),
        ("day", ts(2026, 12, 6), ts(2026, 12, 6), ts(2026, 12, 7)),
        ("month", ts(2026, 12, 31, 23, 59, 59), ts(2026, 12, 1), ts(2027, 1, 1)),  # December into January
        ("month", ts(2028, 2, 29, 12), ts(2028, 2, 1), ts(2028, 3, 1)),  # a leap February
        ("month", ts(2027, 1, 1), ts(2027, 1, 1), ts(2027, 2, 1)),
    ],
)
def test_window_utc_boundaries(period, t, start, end):
    assert window(period, t) == (start, end)


def test_limit_key_changes_exactly_at_the_window_boundary():
    limit = Limit("usd_per_day", "alpha", "cloud_usd", "day", 5.0)
    before, end = limit.key(ts(2026, 12, 5, 23, 59, 59) + 0.999)
    after, _ = limit.key(end)
    assert before != after and before.startswith("alpha/cloud_usd/day/") and end == ts(2026, 12, 6)


def test_limits_of_a_tenant_and_the_global_limit():
    own = TenantLimits(
        requests_per_minute=10, local_tokens_per_minute=500, usd_per_month=SpendLimit(usd=9, over="local")
    )
    found = limits_of("alpha", own, SpendLimit.model_validate(20))
    assert [(x.name, x.scope, x.quantity, x.period, x.amount, x.over) for x in found] == [
        ("requests_per_minute", "alpha", "requests", "minute", 10.0, "reject"),
        ("local_tokens_per_minute", "alpha", "local_tokens", "minute", 500.0, "reject"),
        ("usd_per_month", "alpha", "cloud_usd", "month", 9.0, "local"),
        ("cloud_usd_per_hour", "*", "cloud_usd", "hour", 20.0, "reject"),
    ]
    assert limits_of("beta", None, None) == ()


def test_limit_applies_by_backend():
    usd = Limit("usd_per_day", "a", "cloud_usd", "day", 1)
    local = Limit("local_tokens_per_minute", "a", "local_tokens", "minute", 1)
    rpm = Limit("requests_per_minute", "a", "requests", "minute", 1)
    assert (usd.applies("cloud"), usd.applies("local")) == (True, False)
    assert (local.applies("cloud"), local.applies("local")) == (False, True)
    assert rpm.applies("cloud") and rpm.applies("local")


# ---- leases --------------------------------------------------------------------------------------------------


def test_lease_book_take_settle_and_report():
    book = LeaseBook()
    assert not book.take("k", 1.0)
    book.give("k", 3.0, end=100.0)
    assert book.take("k", 2.0) and not book.take("k", 2.0)
    book.settle("k", reserved=2.0, actual=0.5, end=100.0)
    assert book.remaining["k"] == pytest.approx(2.5)
    assert book.drain(now=50.0) == {"k": Report(spent=0.5, released=0.0, end=100.0)}
    assert book.drain(now=50.0) == {}
    # the window ends: the unused lease goes back
    assert book.drain(now=100.0) == {"k": Report(spent=0.0, released=2.5, end=100.0)}
    assert "k" not in book.remaining


def test_lease_book_overdraw_is_paid_from_the_next_grant():
    book = LeaseBook()
    book.give("k", 1.0, end=100.0)
    assert book.take("k", 1.0)
    book.settle("k", reserved=1.0, actual=1.5, end=100.0)  # cost more than reserved
    book.give("k", 1.0, end=100.0)
    assert book.remaining["k"] == pytest.approx(0.5)


def test_lease_book_restores_undelivered_reports():
    book = LeaseBook()
    book.give("k", 1.0, end=10.0)
    book.settle("k", reserved=0.0, actual=0.25, end=10.0)
    reports = book.drain(now=20.0)
    book.restore(reports)
    assert book.drain(now=20.0) == reports


def test_ledger_grants_never_more_than_remains():
    state = LedgerState()
    assert state.grant("r1", "k", end=60, limit=10, want=4, need=1, now=0) == 4
    assert state.grant("r2", "k", end=60, limit=10, want=4, need=1, now=0) == 4
    assert state.grant("r1", "k", end=60, limit=10, want=4, need=1, now=0) == 2  # only 2 left
    assert state.grant("r2", "k", end=60, limit=10, want=4, need=1, now=0) == 0
    state.report("r1", {"k": Report(spent=1.0, released=0.0, end=60)}, now=1)
    assert state.available("k", 10) == 0  # spend booked moves from leased to spent
    assert state.grant("r2", "k", end=60, limit=10, want=4, need=3, now=1) == 0  # need more than remains: nothing


def test_a_refused_grant_marks_the_counter_short_and_its_holders_give_unused_leases_back():
    state = LedgerState()
    books = {"r1": LeaseBook(), "r2": LeaseBook()}
    books["r1"].give("k", state.grant("r1", "k", end=60, limit=10, want=8, need=1, now=0), 60)
    assert books["r1"].take("k", 3)  # in flight: stays reserved
    assert state.reclaim("r1") == []  # nobody was refused yet
    assert state.grant("r2", "k", end=60, limit=10, want=4, need=3, now=1) == 0  # 2 left
    assert state.short == {"k": 1} and state.reclaim("r1") == ["k"] and state.reclaim("r2") == []
    released = books["r1"].release(state.reclaim("r1"))
    assert released == {"k": Report(spent=0.0, released=5.0, end=60)} and books["r1"].remaining["k"] == 0
    state.report("r1", released, now=2)
    assert state.available("k", 10) == 7  # the in-flight 3 stay leased
    assert state.grant("r2", "k", end=60, limit=10, want=4, need=3, now=2) == 4
    books["r1"].settle("k", reserved=3, actual=1, end=60)  # the in-flight request ends: its rest returns too
    assert books["r1"].release(["k", "unknown"]) == {"k": Report(spent=0.0, released=2.0, end=60)}
    state.expire(now=60 + 3601, lease_ttl_s=1e9, keep_s=3600)
    assert state.short == {}  # the window ended long ago: forgotten with its counter


def test_one_request_larger_than_what_remains_does_not_make_a_roomy_counter_short():
    state = LedgerState()
    assert state.grant("r1", "k", end=60, limit=100, want=5, need=1, now=0) == 5
    assert state.grant("r2", "k", end=60, limit=100, want=5, need=99, now=0) == 0  # 95 left: this one is too big
    assert state.short == {} and state.reclaim("r1") == []  # r1 keeps its lease: no remote call per sync


def test_ledger_lease_of_a_silent_replica_expires():
    state = LedgerState()
    state.grant("dead", "k", end=600, limit=10, want=10, need=1, now=0)
    state.grant("alive", "k", end=600, limit=10, want=1, need=1, now=0)
    state.report("alive", {}, now=40)
    state.expire(now=40, lease_ttl_s=30, keep_s=3600)
    assert state.grant("alive", "k", end=600, limit=10, want=10, need=1, now=40) == 10


def test_ledger_drops_counters_long_ended_and_snapshots_round_trip():
    state = LedgerState()
    state.grant("r", "old", end=100, limit=5, want=1, need=1, now=0)
    state.report("r", {"old": Report(1.0, 0.0, 100), "new": Report(2.0, 0.0, 10_000)}, now=0)
    state.expire(now=5000, lease_ttl_s=1e9, keep_s=1000)
    assert set(state.spent) == {"new"}
    restored = LedgerState.restored(state.snapshot())
    assert restored.spent == {"new": 2.0} and restored.leases == {}


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_debits_from_many_replicas_stay_within_the_limit(seed):
    """Replicas admit, settle and report in random interleavings: what was admitted never exceeds the limit, and
    the ledger ends with exactly the sum of the actual costs (actual <= reserved: no overshoot at all)."""
    rng = random.Random(seed)
    limit, key, end = 1.0, "t/cloud_usd/day/0", 86400.0
    state = LedgerState()
    books = {f"r{i}": LeaseBook() for i in range(4)}
    inflight: list[tuple[str, float, float]] = []
    charged = 0.0
    for _ in range(3000):
        replica = rng.choice(list(books))
        book = books[replica]
        step = rng.random()
        if step < 0.5:
            reserved = rng.uniform(0.001, 0.03)
            if not book.take(key, reserved):
                shortfall = reserved - max(book.remaining.get(key, 0.0), 0.0)
                granted = state.grant(replica, key, end=end, limit=limit, want=0.05, need=shortfall, now=0)
                book.give(key, granted, end)
                if not book.take(key, reserved):
                    continue
            inflight.append((replica, reserved, reserved * rng.uniform(0.2, 1.0)))
        elif step < 0.8 and inflight:
            replica, reserved, actual = inflight.pop(rng.randrange(len(inflight)))
            books[replica].settle(key, reserved=reserved, actual=actual, end=end)
            charged += actual
        else:
            state.report(replica, book.drain(now=0), now=0)
        admitted = charged + sum(reserved for _, reserved, _ in inflight)
        assert admitted <= limit + 1e-9
    for replica, reserved, actual in inflight:
        books[replica].settle(key, reserved=reserved, actual=actual, end=end)
        charged += actual
    for replica, book in books.items():
        state.report(replica, book.drain(now=0), now=0)
    assert state.spent[key] == pytest.approx(charged)
    assert charged > 0.5 * limit  # the budget was really used, not refused early


def test_overshoot_is_bounded_by_what_costs_exceed_their_reservations():
    rng = random.Random(7)
    limit, key, end = 1.0, "k", 86400.0
    state = LedgerState()
    books = [LeaseBook(), LeaseBook()]
    excess = 0.0
    for i in range(2000):
        book = books[i % 2]
        reserved = rng.uniform(0.001, 0.02)
        if not book.take(key, reserved):
            granted = state.grant(str(i % 2), key, end=end, limit=limit, want=0.05, need=reserved, now=0)
            book.give(key, granted, end)
            if not book.take(key, reserved):
                continue
        actual = reserved * rng.uniform(0.5, 1.5)  # an underestimated prompt costs more than reserved
        excess += max(0.0, actual - reserved)
        book.settle(key, reserved=reserved, actual=actual, end=end)
        state.report(str(i % 2), book.drain(now=0), now=0)
    assert state.spent[key] > limit * 0.9
    assert state.spent[key] <= limit + excess
