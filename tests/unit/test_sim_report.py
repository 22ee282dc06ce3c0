"""The HTML report of a synthetic run: one self-contained file with every section, plot and measured figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serve_app.sim.report import NOT_MEASURED, SECTIONS, report_main, write_report
from tests.support.sim_runs import T0, iso, mixed_records, write_run

EVENTS = [
    {"t": T0 + 40, "kind": "cloud_429", "detail": "stand-in answers 429", "end": T0 + 55},
    {"t": T0 + 90, "kind": "kill_model_replica", "detail": "", "end": None},
]


def _summary(records: list, **prometheus: object) -> dict:
    return {
        "requests": len(records),
        "cloud": "anthropic stand-in (offline)",
        "window": {"start": iso(T0), "end": iso(T0 + 121)},
        "prometheus": prometheus,
    }


def test_report_is_self_contained_with_every_section_and_plot(tmp_path: Path) -> None:
    records = mixed_records()
    gpu = {"allocated": 0.3, "idle": 0.5}
    counters = {"requests": len(records), "by_backend": {"local": 1, "cloud": 74}}
    run = write_run(
        tmp_path / "run",
        records,
        summary=_summary(records, counters=counters, ray_router_gpu_cost_usd_per_hour=gpu),
        events=EVENTS,
    )
    page = write_report(run).read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 8 and all(len(i) > 5000 for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched: plots are inline
    assert "kill_model_replica" in page and "anthropic stand-in (offline)" in page
    assert "GPU USD/hour idle" in page and NOT_MEASURED not in page
    assert '<td class="bad">219</td>' in page  # by_backend.local differs from the router's counter: marked


def test_report_says_not_measured_without_the_router_counters(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", mixed_records(50))
    page = write_report(run).read_text(encoding="utf-8")
    assert page.count(NOT_MEASURED) >= 3
    assert "No fault events" in page


def test_report_cli_writes_the_file_and_refuses_a_directory_without_records(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", mixed_records(20))
    assert report_main([str(run)]) == 0
    assert (run / "report.html").exists()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 2


def test_report_of_a_router_request_log_is_written_next_to_it(tmp_path: Path) -> None:
    log = tmp_path / "router-requests.jsonl"
    log.write_text("".join(r.to_json() + "\n" for r in mixed_records(30)))
    assert report_main([str(log)]) == 0
    assert "request log router-requests.jsonl" in (tmp_path / "router-requests.html").read_text()


def test_report_compares_with_the_router_block_and_shows_the_stated_difference(tmp_path: Path) -> None:
    records = mixed_records(40)
    prometheus = {"router": {"requests": len(records)}, "difference": {"requests": 0, "tokens": {"output": 3}}}
    run = write_run(tmp_path / "run", records, summary=_summary(records, **prometheus))
    page = write_report(run).read_text(encoding="utf-8")
    assert "<td>requests</td><td>40</td><td>40</td><td>0</td>" in page
    assert '<td>tokens.output</td><td class="bad">3</td>' in page
