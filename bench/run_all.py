"""`make bench`: every benchmark on one cluster per proxy mode, then a summary table against the targets.

Order: the in-process benchmarks (bench_telemetry.py's Observation; bench_router_cpu.py's router CPU per cloud
request on each SDK transport; no cluster), then for each proxy mode (default Serve proxy, then HAProxy via
RAY_SERVE_ENABLE_HA_PROXY=1) one platform that serves the local, cloud and router-telemetry benchmarks. vLLM's
own server (the local path's direct side) runs throughout. Results go to bench/results/*.json (git-ignored); the
table compares with the targets of the issues; it reports, it never fails a run on timing.

    python -m bench.run_all            # full (about 25 minutes on 2 cores)
    python -m bench.run_all --quick    # short runs; router telemetry on the default proxy only (~6 minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from bench import bench_cloud, bench_local, bench_router_cpu, bench_router_telemetry, common

BENCHES = ("micro", "cpu", "local", "cloud", "telemetry")


def micro(quick: bool) -> dict[str, Any]:
    common.banner("telemetry Observation micro-benchmark (in process)")
    args = ["--requests", "300", "--runs", "3"] if quick else ["--requests", "2000", "--runs", "5"]
    out = subprocess.run(
        [sys.executable, str(common.REPO / "bench" / "bench_telemetry.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(out.stdout, end="")
    ratios = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[1] == "/" and parts[2] == "off" and parts[3].endswith("x"):
            ratios[f"{parts[0]} / off wall"] = float(parts[3][:-1])
    data = {"stdout": out.stdout, "returncode": out.returncode, "ratios": ratios}
    common.write_result("telemetry-micro", {"bench": "telemetry_micro", "machine": common.machine()} | data)
    return data


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f} {unit}" if unit == "ms" else f"{value:.2f}{unit}"  # ms rows are differences


def summary(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: measured value per proxy mode and whether it meets the target."""
    c1j, c1s = "c1_json router-direct (total)", "c1_stream router-direct (ttft)"
    rows = [
        ("local c1 TTFT p50, router - direct vLLM", "local", ("vs_direct", "c1 router ttft", "p50"), "ms", 10.0),
        ("local c1 TTFT p50, router - Ray ingress", "local", ("vs_ingress", "c1 router ttft", "p50"), "ms", 10.0),
        ("local c1 TTFT p50, ingress - direct vLLM", "local", ("vs_direct", "c1 ingress ttft", "p50"), "ms", None),
        ("local c1 total p50, router - direct", "local", ("vs_direct", "c1 router total", "p50"), "ms", None),
        ("local c1 TTFT p50, handle - direct", "local", ("vs_direct", "c1 handle ttft", "p50"), "ms", None),
        ("local c8 TTFT p50, router - direct", "local", ("vs_direct", "c8 router ttft", "p50"), "ms", None),
        ("cloud c1 added p50 (non-stream)", "cloud", ("added_ms", c1j, "p50"), "ms", 3.0),
        ("cloud c1 added p99 (non-stream)", "cloud", ("added_ms", c1j, "p99"), "ms", 8.0),
        ("cloud c1 added TTFT p50 (stream)", "cloud", ("added_ms", c1s, "p50"), "ms", 3.0),
        ("cloud c1 added TTFT p99 (stream)", "cloud", ("added_ms", c1s, "p99"), "ms", 8.0),
        ("cloud c16 router req/s (wrk)", "cloud", ("throughput_c16", "router", "req_per_s"), " req/s", 400.0),
        (
            "cloud router replica CPU per request",
            "cloud",
            ("throughput_c16", "router", "cpu_ms_per_request", "router"),
            " cpu-ms",
            None,
        ),
        (
            "cloud router req/s if CPU-bound on 1 core",
            "cloud",
            ("throughput_c16", "router", "cpu_bound_req_per_s"),
            " req/s",
            400.0,
        ),
        ("cloud c16 stand-in direct req/s (wrk)", "cloud", ("throughput_c16", "direct", "req_per_s"), " req/s", None),
        ("telemetry on/off req/s (c16)", "telemetry", ("summary", "c16 req/s on/off"), "x", 0.95),
        (
            "telemetry router CPU per request on/off",
            "telemetry",
            ("summary", "router cpu-bound req/s on/off"),
            "x",
            0.95,
        ),
        ("telemetry added p50 (c1 non-stream)", "telemetry", ("summary", "c1 json total p50 added ms"), "ms", 1.0),
        ("telemetry OTLP only: req/s on/off", "telemetry", ("summary", "c16 req/s on/off (otlp only)"), "x", 0.95),
        (
            "telemetry OTLP only: router CPU on/off",
            "telemetry",
            ("summary", "router cpu-bound req/s on/off (otlp only)"),
            "x",
            0.95,
        ),
    ]
    table = []
    for label, bench, path, unit, target in rows:
        op = ">=" if unit != "ms" else "<="
        shown = "" if target is None else f"{op} {target:g}{unit.strip() and ' ' + unit.strip()}"
        row: dict[str, Any] = {"metric": label, "target": shown}
        for proxy in ("default", "haproxy"):
            value = _get(results.get(f"{bench}-{proxy}", {}), *path)
            row[proxy] = value
            if value is not None and target is not None:
                row[f"{proxy}_met"] = value <= target if op == "<=" else value >= target
        table.append(row | {"unit": unit})
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    print(f"\n{'metric':<42} {'target':<13} {'default proxy':>18} {'HAProxy':>18}")
    for row in table:
        cells = []
        for proxy in ("default", "haproxy"):
            mark = {True: " ok", False: " MISS"}.get(row.get(f"{proxy}_met"), "")
            cells.append(f"{_fmt(row[proxy], row['unit'])}{mark}")
        print(f"{row['metric']:<42} {row['target']:<13} {cells[0]:>18} {cells[1]:>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 6 minutes)")
    parser.add_argument("--proxy", choices=("default", "haproxy", "both"), default="both")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    opts = parser.parse_args()
    started = time.monotonic()
    print(f"machine: {common.machine()}")
    results: dict[str, dict[str, Any]] = {}
    if "micro" in opts.only:
        results["micro"] = micro(opts.quick)
    if "cpu" in opts.only:
        results["cpu"] = bench_router_cpu.run(quick=opts.quick)
    for proxy in ("default", "haproxy") if opts.proxy == "both" else (opts.proxy,):
        # vLLM's own server (the local path's direct side) loads while the cluster starts, and stops after the
        # local benchmark: an idle vLLM CPU engine still costs CPU the other benchmarks would feel.
        vllm, vllm_url = None, None
        if "local" in opts.only:
            vllm, vllm_url = common.start_vllm_direct(bench_local.smoke_model_dir())
        try:
            with common.session(proxy, vllm_url=vllm_url, with_model="local" in opts.only) as s:
                if vllm is not None and vllm_url is not None:
                    common.wait_http_ok(vllm_url + "/health", 300, vllm)
                    results[f"local-{proxy}"] = bench_local.run(s, quick=opts.quick)
                    vllm.stop()
                if "cloud" in opts.only:
                    results[f"cloud-{proxy}"] = bench_cloud.run(s, quick=opts.quick)
                if "telemetry" in opts.only and not (opts.quick and proxy == "haproxy"):
                    results[f"telemetry-{proxy}"] = bench_router_telemetry.run(s, quick=opts.quick)
        finally:
            if vllm is not None:
                vllm.stop()
    table = summary(results)
    print_table(table)
    elapsed = time.monotonic() - started
    print(f"\nwall time {elapsed:.0f}s; load now {common.load_average()}; results in bench/results/")
    common.write_result(
        "summary",
        {
            "quick": opts.quick,
            "machine": common.machine(),
            "wall_s": round(elapsed),
            "table": table,
            "router_cpu_in_process": _get(results, "cpu", "ratios"),
        },
    )


if __name__ == "__main__":
    main()
