"""tenants_report: the operators' listing of spend and remaining budget per tenant, from a ledger snapshot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from serve_app.limits import window
from serve_app.tenants_report import main, tenant_rows

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, tenants: dict) -> Path:
    document = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())
    router = next(app for app in document["applications"] if app["name"] == "router")
    router["args"]["tenants"] = tenants
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _keys(now: float) -> tuple[str, str, str]:
    day, _ = window("day", now)
    month, _ = window("month", now)
    yesterday, _ = window("day", day - 1)
    return f"{int(day)}", f"{int(month)}", f"{int(yesterday)}"


def test_tenant_rows_today_month_and_remaining():
    now = 1_780_000_000.0
    day, month, yesterday = _keys(now)
    spent = {
        f"alpha/cloud_usd/day/{day}": 1.5,
        f"alpha/cloud_usd/day/{yesterday}": 9.0,
        f"alpha/cloud_usd/month/{month}": 12.0,
        f"gamma/cloud_usd/month/{month}": 0.25,  # spend of a tenant without limits is listed too
        f"*/cloud_usd/hour/{day}": 3.0,
        f"alpha/requests/minute/{day}": 5.0,
    }
    from serve_app.config import TenantLimits

    limits = {"alpha": TenantLimits.model_validate({"usd_per_day": 2, "usd_per_month": 10}), "beta": TenantLimits()}
    rows = {row.tenant: row.to_dict() for row in tenant_rows(spent, limits, now=now)}
    assert set(rows) == {"alpha", "beta", "gamma"}
    assert rows["alpha"] == {
        "tenant": "alpha",
        "today_usd": 1.5,
        "month_usd": 12.0,
        "day_limit_usd": 2.0,
        "month_limit_usd": 10.0,
        "day_remaining_usd": 0.5,
        "month_remaining_usd": 0.0,
    }
    assert rows["beta"]["today_usd"] == 0 and rows["beta"]["day_remaining_usd"] is None
    assert rows["gamma"]["month_usd"] == 0.25


def test_main_reads_the_snapshot_named_in_the_config(tmp_path, capsys):
    now = time.time()
    day, month, _ = _keys(now)
    snapshot = tmp_path / "ledger.json"
    snapshot.write_text(
        json.dumps({"spent": {f"alpha/cloud_usd/day/{day}": 0.75, f"alpha/cloud_usd/month/{month}": 3}})
    )
    config = _config(
        tmp_path,
        {"limits": {"alpha": {"usd_per_day": 1, "usd_per_month": 50}}, "ledger": {"snapshot_path": str(snapshot)}},
    )
    assert main(["--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["tenant", "today", "USD"]
    assert table[1].split() == ["alpha", "0.7500", "1.0000", "0.2500", "3.0000", "50.0000", "47.0000"]
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("tenants:\n  alpha:\n    keys: [k]\n    limits: {usd_per_day: 0.5}\n")
    assert main(["--config", str(config), "--keys-file", str(keys_file), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["day_limit_usd"], row["day_remaining_usd"], row["month_limit_usd"]) == (0.5, 0.0, None)


def test_main_without_a_snapshot_says_so(tmp_path, capsys):
    assert main(["--config", str(_config(tmp_path, {}))]) == 2
    assert "no ledger snapshot" in capsys.readouterr().err
