"""`make bench`'s plumbing that is not timing: which phases run, and the generated blocks in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from bench import report, run_all


def test_bench_phases_default_to_cloud_and_model_and_accept_lists_and_all() -> None:
    assert run_all.phases_from(None) == run_all.phases_from("") == ("cloud", "model")
    assert run_all.phases_from("cloud") == ("cloud",)
    assert run_all.phases_from("cloud, model") == ("cloud", "model")
    assert run_all.phases_from("all") == run_all.PHASES
    with pytest.raises(SystemExit, match="unknown phase"):
        run_all.phases_from("cloud,gpu")


def test_generated_blocks_replace_only_what_is_between_their_markers() -> None:
    text = "intro\n<!-- bench:cloud:begin -->\nold\n<!-- bench:cloud:end -->\nhand-written\n"
    once = report.replace_block(text, "cloud", "new table")
    assert once == "intro\n<!-- bench:cloud:begin -->\nnew table\n<!-- bench:cloud:end -->\nhand-written\n"
    assert report.replace_block(once, "cloud", "new table") == once
    appended = report.replace_block(once, "model", "m")  # a block the doc does not have yet goes at the end
    assert appended.endswith("<!-- bench:model:begin -->\nm\n<!-- bench:model:end -->\n")


def _telemetry(on_rps: float, on_p99: float, on_p50: float) -> dict:
    row = {"router_cpu_ms_per_request": 1.0}
    return {
        "labels": {"off": "off", "otlp": "as deployed", "direct": "direct"},
        "latency_c1": {
            "json": {v: {"total_ms": {"p50": p}} for v, p in (("off", 5.0), ("otlp", on_p50), ("direct", on_p50))}
        },
        "throughput_c16": {
            "off": row | {"req_per_s": 100.0, "p99_ms": 10.0},
            "otlp": row | {"req_per_s": on_rps, "p99_ms": on_p99},
            "direct": row | {"req_per_s": on_rps, "p99_ms": on_p99},
        },
        "exported_during_run": {
            "router_spans_per_request": 1.004,
            "generations_per_request": 1.0,
            "collector_generations_per_request": 1.004,
        },
    }


def test_targets_are_judged_against_telemetry_off_of_the_same_run() -> None:
    met = report.targets_table(_telemetry(on_rps=96.0, on_p99=11.9, on_p50=5.2))
    assert "**not met**" not in met and met.count("(met)") == 10
    missed = report.targets_table(_telemetry(on_rps=94.0, on_p99=12.1, on_p50=5.4))
    rows = {line.split("|")[1].strip(): line for line in missed.splitlines()}
    assert rows["p99 at c=16, ÷ off"].count("**not met**") == 2
    assert rows["req/s at c=16, ÷ off"].count("**not met**") == 2
    assert rows["p50 at c=1, added to off"].count("**not met**") == 2
