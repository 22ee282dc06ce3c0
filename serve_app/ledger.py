"""The spend ledger every router replica shares: a named Ray actor over `LedgerState`, snapshotted to a file.

Replicas call it only to take a lease (when theirs cannot cover a request) and, in the background, to report settled
spend (the reply names the counters the ledger is short of, whose unused leases they give back). `ProcessLedger` is
the same state in the calling process (tests, the dev server, one replica). The actor is detached and named, so
router restarts and redeploys find the same counters; its snapshot file (a volume) brings them back after the actor
itself restarts.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from serve_app.config import LedgerArgs
from serve_app.limits import LedgerState, Report

logger = logging.getLogger(__name__)

# Counters of ended windows are kept this long (the operator command shows yesterday and last month).
KEEP_ENDED_S = 40 * 86400.0


class Ledger(Protocol):
    """What a replica's limits need from the shared counters. `epoch` changes when the ledger lost its leases."""

    async def grant(self, replica: str, key: str, *, end: float, limit: float, want: float, need: float) -> tuple:
        """(granted amount, epoch)."""
        ...

    async def report(self, replica: str, reports: Mapping[str, Report]) -> tuple[str, list[str]]:
        """Books the reports; returns the epoch and the short counters whose unused lease the replica should give
        back (a ledger actor of an earlier release returns the epoch alone)."""
        ...

    async def totals(self) -> dict[str, Any]: ...


class LedgerCore:
    """`LedgerState` with its clock, expiry and snapshot file: the body of both ledgers."""

    def __init__(
        self, *, snapshot_path: str | None, snapshot_interval_s: float, lease_ttl_s: float, clock: Any = time.time
    ) -> None:
        self._path = Path(snapshot_path) if snapshot_path else None
        self._interval = snapshot_interval_s
        self._ttl = lease_ttl_s
        self._clock = clock
        self.epoch = uuid.uuid4().hex
        self.state = self._load()
        self._snapshot_at = self._clock()
        self._dirty = False

    def _load(self) -> LedgerState:
        if self._path is None or not self._path.exists():
            return LedgerState()
        try:
            state = LedgerState.restored(json.loads(self._path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError):
            logger.exception("ledger snapshot %s is unreadable; counting from zero", self._path)
            return LedgerState()
        logger.info("ledger restored %d counters from %s", len(state.spent), self._path)
        return state

    def grant(self, replica: str, key: str, *, end: float, limit: float, want: float, need: float) -> tuple:
        now = self._clock()
        self.state.expire(now=now, lease_ttl_s=self._ttl, keep_s=KEEP_ENDED_S)
        granted = self.state.grant(replica, key, end=end, limit=limit, want=want, need=need, now=now)
        return granted, self.epoch

    def report(self, replica: str, reports: Mapping[str, Report]) -> tuple[str, list[str]]:
        """Books a replica's reports (an empty one is its heartbeat); snapshots when changed and due. Returns the
        epoch and the short counters the replica holds leases of."""
        now = self._clock()
        self.state.report(replica, reports, now=now)
        self._dirty = self._dirty or bool(reports)
        if self._dirty and now - self._snapshot_at >= self._interval:
            self.snapshot()
        return self.epoch, self.state.reclaim(replica)

    def totals(self) -> dict[str, Any]:
        state = self.state
        return {
            "spent": dict(state.spent),
            "ends": dict(state.ends),
            "limits": dict(state.limits),
            "leased": {key: sum(holders.values()) for key, holders in state.leases.items()},
        }

    def snapshot(self) -> None:
        """Writes the counters atomically (a reader never sees half a file); a failure is logged, not raised."""
        self._snapshot_at = self._clock()
        self._dirty = False
        if self._path is None:
            return
        try:
            staged = self._path.with_name(self._path.name + ".tmp")
            staged.write_text(json.dumps(self.state.snapshot(), separators=(",", ":")))
            os.replace(staged, self._path)
        except OSError:
            logger.exception("ledger snapshot to %s failed", self._path)


class ProcessLedger:
    """The ledger in this process: no remote calls (one replica, tests, the dev server)."""

    def __init__(self, core: LedgerCore) -> None:
        self.core = core

    async def grant(self, replica: str, key: str, *, end: float, limit: float, want: float, need: float) -> tuple:
        return self.core.grant(replica, key, end=end, limit=limit, want=want, need=need)

    async def report(self, replica: str, reports: Mapping[str, Report]) -> tuple[str, list[str]]:
        return self.core.report(replica, reports)

    async def totals(self) -> dict[str, Any]:
        return self.core.totals()


class LedgerActor:
    """The Ray actor's class (wrapped with ray.remote in `actor_ledger`); its methods run one at a time."""

    def __init__(self, snapshot_path: str | None, snapshot_interval_s: float, lease_ttl_s: float) -> None:
        self.core = LedgerCore(
            snapshot_path=snapshot_path, snapshot_interval_s=snapshot_interval_s, lease_ttl_s=lease_ttl_s
        )

    def grant(self, replica: str, key: str, end: float, limit: float, want: float, need: float) -> tuple:
        return self.core.grant(replica, key, end=end, limit=limit, want=want, need=need)

    def report(self, replica: str, reports: dict[str, tuple[float, float, float]]) -> tuple[str, list[str]]:
        return self.core.report(replica, {key: Report(*value) for key, value in reports.items()})

    def totals(self) -> dict[str, Any]:
        return self.core.totals()

    def snapshot(self) -> None:
        self.core.snapshot()


class ActorLedger:
    """A replica's handle on the shared ledger actor: created by the first replica that needs it (a request of a
    tenant with limits), then found by name."""

    def __init__(self, args: LedgerArgs) -> None:
        self._args = args
        self._handle: Any = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            import ray  # here: the pure layers and the tools run without Ray

            actor = ray.remote(
                num_cpus=0, max_restarts=-1, max_task_retries=3, resources=dict(self._args.actor_resources)
            )(LedgerActor)
            self._handle = actor.options(
                name=self._args.actor_name, namespace=self._args.namespace, lifetime="detached", get_if_exists=True
            ).remote(self._args.snapshot_path, self._args.snapshot_interval_s, self._args.lease_ttl_s)
        return self._handle

    async def grant(self, replica: str, key: str, *, end: float, limit: float, want: float, need: float) -> tuple:
        return await self.handle.grant.remote(replica, key, end, limit, want, need)

    async def report(self, replica: str, reports: Mapping[str, Report]) -> tuple[str, list[str]]:
        plain = {key: (r.spent, r.released, r.end) for key, r in reports.items()}
        reply = await self.handle.report.remote(replica, plain)
        return (reply, []) if isinstance(reply, str) else (reply[0], list(reply[1]))

    async def totals(self) -> dict[str, Any]:
        return await self.handle.totals.remote()


def build_ledger(args: LedgerArgs) -> Ledger:
    if args.mode == "actor":
        return ActorLedger(args)
    return ProcessLedger(
        LedgerCore(
            snapshot_path=args.snapshot_path,
            snapshot_interval_s=args.snapshot_interval_s,
            lease_ttl_s=args.lease_ttl_s,
        )
    )
