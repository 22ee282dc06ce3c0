"""The operators' tenant report: today's and this month's cloud spend per tenant and what remains of each budget.

    python -m serve_app.tenants_report --config serve_config.yaml --snapshot /var/lib/hybrid-llm/ledger.json
    python -m serve_app.tenants_report --config serve_config.yaml --address auto     # the live ledger actor

Limits come from the router application's args in the Serve config (and, with --keys-file, the key file's own);
spend from the ledger's snapshot file or, with --address, from the ledger actor itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import LedgerArgs, RouterArgs, TenantLimits
from serve_app.limits import GLOBAL_SCOPE, window
from serve_app.tenants import parse_key_file


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: str
    today_usd: float
    month_usd: float
    day_limit_usd: float | None
    month_limit_usd: float | None

    @property
    def day_remaining_usd(self) -> float | None:
        return None if self.day_limit_usd is None else max(0.0, self.day_limit_usd - self.today_usd)

    @property
    def month_remaining_usd(self) -> float | None:
        return None if self.month_limit_usd is None else max(0.0, self.month_limit_usd - self.month_usd)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "day_remaining_usd": self.day_remaining_usd,
            "month_remaining_usd": self.month_remaining_usd,
        }


def tenant_rows(spent: Mapping[str, float], limits: Mapping[str, TenantLimits], *, now: float) -> list[TenantRow]:
    """One row per tenant with limits or with cloud spend this month (`*`, the global counter, excluded)."""
    day_start, _ = window("day", now)
    month_start, _ = window("month", now)
    names = set(limits)
    for key in spent:
        scope, quantity, _period, _start = key.split("/", 3)
        if quantity == "cloud_usd" and scope != GLOBAL_SCOPE:
            names.add(scope)
    rows = []
    for name in sorted(names):
        own = limits.get(name)
        rows.append(
            TenantRow(
                tenant=name,
                today_usd=spent.get(f"{name}/cloud_usd/day/{int(day_start)}", 0.0),
                month_usd=spent.get(f"{name}/cloud_usd/month/{int(month_start)}", 0.0),
                day_limit_usd=own.usd_per_day.usd if own and own.usd_per_day else None,
                month_limit_usd=own.usd_per_month.usd if own and own.usd_per_month else None,
            )
        )
    return rows


def _router_args(config: Path) -> RouterArgs:
    document = yaml.safe_load(config.read_text())
    for app in document.get("applications", []):
        if app.get("import_path") == "serve_app.app:build_app":
            return RouterArgs.model_validate(app.get("args") or {})
    raise SystemExit(f"{config}: no router application (import_path serve_app.app:build_app)")


def _live_totals(address: str, ledger: LedgerArgs) -> dict[str, Any]:
    import ray

    ray.init(address=address, namespace=ledger.namespace, logging_level="ERROR", log_to_driver=False)
    try:
        return ray.get(ray.get_actor(ledger.actor_name, namespace=ledger.namespace).totals.remote(), timeout=30)
    finally:
        ray.shutdown()


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.tenants_report", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="Serve config with the router application.")
    parser.add_argument("--snapshot", type=Path, help="Ledger snapshot file (default: the config's snapshot_path).")
    parser.add_argument("--address", help="Ray address: read the live ledger actor instead of the snapshot.")
    parser.add_argument("--keys-file", type=Path, help="Key file whose tenant limits override the config's.")
    parser.add_argument("--json", action="store_true", help="One JSON object per tenant, one per line.")
    args = parser.parse_args(argv)
    router = _router_args(args.config)
    limits = dict(router.tenants.limits)
    if args.keys_file is not None:
        limits |= dict(parse_key_file(args.keys_file.read_text()).limits)
    if args.address:
        spent = _live_totals(args.address, router.tenants.ledger)["spent"]
    else:
        snapshot = args.snapshot or (Path(router.tenants.ledger.snapshot_path or ""))
        if not snapshot.is_file():
            print(f"no ledger snapshot at {snapshot or '(unset)'}; pass --snapshot or --address", file=sys.stderr)
            return 2
        spent = json.loads(snapshot.read_text()).get("spent", {})
    rows = tenant_rows(spent, limits, now=time.time())
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
        return 0
    header = ("tenant", "today USD", "day limit", "day left", "month USD", "month limit", "month left")
    table = [header] + [
        (
            row.tenant,
            _usd(row.today_usd),
            _usd(row.day_limit_usd),
            _usd(row.day_remaining_usd),
            _usd(row.month_usd),
            _usd(row.month_limit_usd),
            _usd(row.month_remaining_usd),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
