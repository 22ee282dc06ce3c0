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


def test_the_deployed_variant_is_judged_by_the_median_of_its_adjacent_pairs_when_they_were_measured() -> None:
    # the back-to-back means say 0.90x / 1.25x; the ABBA pairs' medians say 0.96x / 1.10x: the pairs decide
    tel = _telemetry(on_rps=90.0, on_p99=12.5, on_p50=5.2)
    pair = {"off": {}, "otlp": {}}
    tel["paired_c16"] = {
        "variant": "otlp",
        "pairs": [pair] * 5,
        "seconds": 10,
        "req_per_s_ratio_median": 0.96,
        "req_per_s_ratio_range": [0.91, 0.99],
        "p99_ratio_median": 1.1,
        "p99_ratio_range": [1.02, 1.3],
        "router_cpu_ms_per_request_median": {"off": 1.9, "otlp": 2.15},
        "export_process_cpu_ms_per_request_median": 0.1,
        "router_spans_per_request": 1.004,
    }
    rows = {line.split("|")[1].strip(): line.split("|") for line in report.targets_table(tel).splitlines()}
    assert rows["req/s at c=16, ÷ off"][3].strip() == "0.96x (met)"
    assert rows["req/s at c=16, ÷ off"][4].strip() == "0.90x (**not met**)"  # `direct` keeps its own runs
    assert rows["p99 at c=16, ÷ off"][3].strip() == "1.10x (met)"
    assert any("medians of 5 adjacent ABBA pairs" in line[1] and "0.91-0.99x" in line[1] for line in rows.values())
    assert any("1.90 ms off, 2.15 ms on, of which the export process 0.10 ms" in line[1] for line in rows.values())
    assert any("1.004 router spans exported per request" in line[1] for line in rows.values())
    assert not any("A/A check" in line[1] for line in rows.values())  # not measured in this run
    tel["paired_c16"]["aa"] = {
        "pairs": [pair] * 5,
        "req_per_s_ratio_median": 1.03,
        "req_per_s_ratio_range": [0.89, 1.22],
        "p99_ratio_median": 0.97,
    }
    lines = report.targets_table(tel).splitlines()
    assert any("A/A check" in line and "req/s 1.03x (0.89-1.22x), p99 0.97x" in line for line in lines)


def test_the_telemetry_table_shows_the_export_process_part_of_the_router_cpu() -> None:
    tel = _telemetry(on_rps=96.0, on_p99=11.9, on_p50=5.2)
    tel["throughput_c16"]["otlp"] |= {"router_cpu_ms_per_request": 2.25, "export_process_cpu_ms_per_request": 0.104}
    del tel["exported_during_run"]  # the counts' sentence is not this test's
    table = report.telemetry_table(tel).splitlines()
    cells = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in table if line.startswith("|")}
    assert cells["as deployed"] == "2.25 (0.10)"
    assert cells["off"] == "1.00"  # no export process: the total alone


def _side(ttft_p50: float, ttft_p95: float, itl_p50: float, streams: int = 8) -> dict:
    return {
        "ttft_ms": {"n": streams, "p50": ttft_p50, "p95": ttft_p95},
        "itl_ms": {"n": streams, "p50": itl_p50},
        "stream_tok_s_p50": 16.0,
        "aggregate_tok_s_mean": 100.0,
    }


def _model_result(**blocks: dict) -> dict:
    return {
        "bench": "default-model",
        "machine": {"date": "2026-12-05T18:38:57+00:00", "cpus": 2, "python": "3.11.7", "ray": "2.60.0"},
        "started": "2026-12-05T18:26:30+00:00",
        "args": ["--rounds-c1", "25"],
        "load_before": [4.35, 3.45, 4.02],
        "load_after": [4.87, 5.08, 4.76],
        "rounds": {"c1": 25, "c8": 8},
        **blocks,
    }


def _rows(table: str) -> dict[tuple[str, str], list[str]]:
    """The model table's rows by (side name, concurrency), each as its cells."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[(cells[0].rsplit("`", 2)[-2], cells[1])] = cells
    return rows


# the cells of a row: side, c, streams, then per figure (TTFT p50, TTFT p95, ITL p50): value, ÷ vLLM, ÷ OpenAiIngress
TTFT_P50, TTFT_P50_VLLM, TTFT_P50_INGRESS = 3, 4, 5
TTFT_P95_VLLM, TTFT_P95_INGRESS = 7, 8
ITL_P50, ITL_P50_VLLM, ITL_P50_INGRESS = 9, 10, 11


def test_model_table_has_one_row_per_side_and_concurrency_of_the_run() -> None:
    result = _model_result(
        c1={"router": _side(150, 600, 58), "direct": _side(290, 607, 60), "ingress": _side(147, 481, 55)},
        c8={"direct": _side(1300, 1600, 62), "router": _side(890, 1250, 66)},
    )
    table = report.model_table(result)
    lines = table.splitlines()
    assert len(lines) == 2 + 5  # header, rule, a row per side present in each concurrency block
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert list(_rows(table)) == [("direct", "1"), ("ingress", "1"), ("router", "1"), ("direct", "8"), ("router", "8")]
    assert "vLLM's own server (`direct`)" in table and "OpenAiIngress (`ingress`)" in table


def test_model_ratios_divide_by_vllm_and_by_openai_ingress_of_the_same_concurrency() -> None:
    result = _model_result(
        c1={"direct": _side(200, 400, 50), "ingress": _side(100, 500, 40), "router": _side(300, 800, 60)},
        c8={"direct": _side(1000, 2000, 80), "ingress": _side(500, 1000, 100), "router": _side(750, 3000, 120)},
    )
    rows = _rows(report.model_table(result))
    router1, router8 = rows[("router", "1")], rows[("router", "8")]
    assert router1[TTFT_P50] == "300 ms" and router1[ITL_P50] == "60.0 ms"
    assert router1[TTFT_P50_VLLM] == "1.50x" and router1[TTFT_P50_INGRESS] == "3.00x"
    assert router1[TTFT_P95_VLLM] == "2.00x" and router1[TTFT_P95_INGRESS] == "1.60x"
    assert router1[ITL_P50_VLLM] == "1.20x" and router1[ITL_P50_INGRESS] == "1.50x"
    assert router8[TTFT_P50_VLLM] == "0.75x" and router8[TTFT_P50_INGRESS] == "1.50x"
    assert router8[TTFT_P95_VLLM] == "1.50x" and router8[TTFT_P95_INGRESS] == "3.00x"
    assert router8[ITL_P50_VLLM] == "1.50x" and router8[ITL_P50_INGRESS] == "1.20x"
    ingress8, direct8 = rows[("ingress", "8")], rows[("direct", "8")]
    assert ingress8[ITL_P50_VLLM] == "1.25x" and ingress8[ITL_P50_INGRESS] == "1.00x"
    assert direct8[ITL_P50_VLLM] == "1.00x" and direct8[ITL_P50_INGRESS] == "-"  # vLLM's server is no Ray side


def test_model_table_renders_missing_sides_and_figures_as_a_dash() -> None:
    no_itl = _side(140, 500, 0) | {"itl_ms": {"n": 0}}  # summary_ms of no samples
    result = _model_result(c1={"router": _side(150, 600, 58), "handle": no_itl}, c8={"ingress": _side(900, 1500, 66)})
    rows = _rows(report.model_table(result))
    router1 = rows[("router", "1")]
    assert router1[TTFT_P50] == "150 ms"
    assert router1[TTFT_P50_VLLM] == router1[TTFT_P50_INGRESS] == router1[ITL_P50_VLLM] == "-"  # no direct, no ingress
    handle = rows[("handle", "1")]
    assert handle[ITL_P50] == handle[ITL_P50_VLLM] == handle[ITL_P50_INGRESS] == "-"
    assert rows[("ingress", "8")][TTFT_P50_INGRESS] == "1.00x"
    empty = report.model_block({"machine": {}})  # a result with no measurements at all still renders
    assert empty.count("\n") == 3 and "load average - before, - after" in empty


def test_model_run_line_states_the_run_its_time_and_load_as_the_result_records_them() -> None:
    line = report.model_block(_model_result(c1={"direct": _side(290, 607, 60)})).splitlines()[0]
    assert "`python -m bench.bench_default_model --rounds-c1 25`" in line
    assert "from 2026-12-05T18:26:30+00:00 to 2026-12-05T18:38:57+00:00" in line
    assert "load average 4.35 3.45 4.02 before, 4.87 5.08 4.76 after" in line
    assert "25 streams per side at c=1, 8 batches of 8 streams per side at c=8" in line
    older = {k: v for k, v in _model_result().items() if k not in ("started", "args")}  # before these were recorded
    assert "`bench/bench_default_model.py`, ending 2026-12-05T18:38:57+00:00" in report.model_run_line(older)


def test_model_block_replaces_only_its_markers_in_the_doc(tmp_path) -> None:
    doc = tmp_path / "benchmarks.md"
    before = "# B\n<!-- bench:cloud:begin -->\ncloud\n<!-- bench:cloud:end -->\n\n### Model\nprose\n\n"
    after = "\nfindings that quote figures\n"
    doc.write_text(before + "<!-- bench:model:begin -->\nhand-written table\n<!-- bench:model:end -->" + after)
    block = report.model_block(_model_result(c1={"direct": _side(290, 607, 60)}))
    report.write_docs({"model": block}, doc)
    assert doc.read_text() == before + f"<!-- bench:model:begin -->\n{block}\n<!-- bench:model:end -->" + after
    report.write_docs({"model": block}, doc)  # a second write of the same run changes nothing
    assert doc.read_text() == before + f"<!-- bench:model:begin -->\n{block}\n<!-- bench:model:end -->" + after


def test_the_docs_have_the_model_markers_and_the_run_all_child_leaves_them_to_run_all() -> None:
    text = report.DOC.read_text()
    assert text.count("<!-- bench:model:begin -->") == text.count("<!-- bench:model:end -->") == 1
    from bench import bench_default_model

    alone = bench_default_model.parse_args([])
    assert not alone.no_docs  # run alone, it writes its table into the docs
    child = bench_default_model.parse_args(run_all.model_command(quick=True)[3:])
    assert child.no_docs and child.quick  # under make bench, run_all writes it (and honours its own --no-docs)


def test_telemetry_cpu_table_adds_to_off_and_shows_the_export_process_apart() -> None:
    sides = {
        "off": {"cpu_us_per_request": 1000.0, "lowest_cpu_us_per_request": 900.0},
        "span": {"cpu_us_per_request": 1080.0, "lowest_cpu_us_per_request": 990.0},
        "process": {
            "cpu_us_per_request": 1100.0,
            "lowest_cpu_us_per_request": 950.0,
            "export_process_cpu_us_per_request": 150.0,
        },
    }  # no `thread` side in this run: no row, no crash
    table = report.telemetry_cpu_table({"sides": sides, "router_spans_received": 42})
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| telemetry off (no span)",
        "| the SDK span only: made, filled, ended, batched; never encoded",
        "| OTLP as deployed: a LightSpan in the replica; the SDK's span built and encoded in the export process",
    ]
    span, process = rows[1].split(" | "), rows[2].split(" | ")
    assert span[1:6] == ["1080.0", "+80.0 µs", "1.080x", "990.0", "+90.0 µs"] and span[6] == "- |"
    assert process[1:6] == ["1100.0", "+100.0 µs", "1.100x", "950.0", "+50.0 µs"] and process[6] == "150.0 |"
    assert rows[0].split(" | ")[4:6] == ["900.0", "-"]  # off is the baseline of both columns
    assert table.endswith("Router spans the sink received from the two exporting sides: 42.")
