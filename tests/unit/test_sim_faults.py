"""Fault timeline specs: kind@start[+duration], units, and the errors a user sees."""

from __future__ import annotations

import pytest

from serve_app.sim.faults import FaultError, FaultEvent, parse, parse_seconds, timeline


def test_faults_parse_instant_and_window_events():
    assert parse("kill_model@20s") == FaultEvent("kill_model", 20.0, None)
    assert parse("cloud_429@30s+15s") == FaultEvent("cloud_429", 30.0, 15.0)
    assert parse("cloud_529@1.5m+500ms") == FaultEvent("cloud_529", 90.0, 0.5)
    assert parse("saturate_local@10+20") == FaultEvent("saturate_local", 10.0, 20.0)
    assert parse("cloud_429@30s+15s").end_s == 45.0
    assert str(parse("cloud_429@30s+15s")) == "cloud_429@30s+15s"


def test_faults_timeline_sorted_and_within_the_run():
    events = timeline(["cloud_429@30s+5s", "kill_model@10s"], duration=60)
    assert [e.kind for e in events] == ["kill_model", "cloud_429"]
    with pytest.raises(FaultError, match="after the run ends"):
        timeline(["kill_model@90s"], duration=60)
    assert timeline(["kill_model@90s"], duration=None)[0].at_s == 90  # request-count runs: no end known


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kill_model", "expected kind@start"),
        ("kill_model@", "expected kind@start"),
        ("explode@3s", "unknown kind"),
        ("cloud_429@30s", "needs a duration"),
        ("cloud_429@30s+0s", "needs a duration"),
        ("kill_model@3s+5s", "instant event"),
        ("kill_model@3h", "expected kind@start"),
    ],
)
def test_faults_bad_specs_name_the_problem(spec, message):
    with pytest.raises(FaultError, match=message):
        parse(spec)


def test_faults_seconds_units():
    assert parse_seconds("250ms") == 0.25
    assert parse_seconds("2m") == 120.0
    assert parse_seconds("7") == 7.0
    with pytest.raises(FaultError):
        parse_seconds("soon")
