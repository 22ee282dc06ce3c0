"""Telemetry on versus off in the real router, in one run on one cluster: latency, req/s, p99, spans exported.

Router applications run side by side in the same cluster on the same Anthropic stand-in (cloud path, an
upstream that answers at once, so nothing else dominates), each a variant of the router's telemetry:

    off      /notel        tracing and Langfuse off (Ray metrics stay on in every variant: they cannot be off)
    otlp     (the router)  OTLP only, as deployed: the OTel Collector forwards the router's spans to Langfuse
                           (observability/values/opentelemetry-collector.yaml); encoded in the export process
    thread   /thread       the same, encoded in the replica's own export thread (`export_process: false`)
    direct   /langfuse-direct  OTLP and Langfuse's OTLP endpoint, both on the sink: two exports per span, the
                           setup without a Collector (the Langfuse SDK's own processor and exporter)
    client   /client-spans OTLP only, plus the Anthropic HTTP client span (the Tempo service-graph setup)
    sdk-batch /sdk-batch   OTLP only with the SDK's batch settings (512 spans, 5 s): the batch lever alone

The sink (bench/discard_sink.py, in a child process) reads and discards every POST while the run is measured and
counts spans (the router's apart) and generations only afterwards. For `otlp` and `client` the generations are
the router spans on the OTLP route: the Collector's filter forwards exactly those (tests/deploy pins it).

    latency   c=1, non-stream and stream, the variants interleaved request by request (raw httpx)
    req/s     wrk, 16 connections, non-stream, each variant back to back (three times, the second pass reversed,
              when not --quick): mean req/s, median p99
    pairs     `otlp` against `off` in adjacent wrk runs ordered ABBA (8 pairs of 10 s, 3 of 4 s when --quick), in a
              cluster of their own with only those two routers deployed: the targets' req/s and p99 ratios are the
              medians of the pairs' ratios, so drift cancels

Run alone: python -m bench.bench_router_telemetry [--quick] [--proxy default|haproxy] [--profile MODE]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.bench_cloud import ROUTER_HEADERS, http_call, router_body

# variant -> (Serve application, route prefix); the applications other than `router` come from ROUTERS
VARIANTS: dict[str, tuple[str, str]] = {
    "off": ("router-notel", common.NOTEL_PREFIX),
    "otlp": ("router", ""),
    "thread": ("router-thread", "/thread"),
    "direct": ("router-direct", common.LANGFUSE_DIRECT_PREFIX),
    "client": ("router-client", "/client-spans"),
    "sdk-batch": ("router-sdkbatch", "/sdk-batch"),
    "batch-256": ("router-batch256", "/batch-256"),
}
ROUTERS: dict[str, tuple[str, dict[str, Any]]] = {
    # the export lever alone: `otlp` encoding in the replica's export thread instead of the export process
    "router-thread": ("/thread", {"telemetry": {"langfuse": False, "export_process": False}}),
    "router-client": ("/client-spans", {"telemetry": {"langfuse": False, "http_client_spans": True}}),
    # the batch lever alone: `otlp` with the SDK's own batch (512 spans, 5 s), as before the change
    "router-sdkbatch": (
        "/sdk-batch",
        {"telemetry": {"langfuse": False, "export_batch_size": 512, "export_schedule_delay_ms": 5000.0}},
    ),
    "router-batch256": (
        "/batch-256",
        {"telemetry": {"langfuse": False, "export_batch_size": 256, "export_schedule_delay_ms": 1000.0}},
    ),
}
LANGFUSE_DIRECT = ("direct",)  # variants that send generations to Langfuse's route themselves
LABELS = {
    "off": "off",
    "otlp": "OTLP only, Langfuse via the Collector (as deployed)",
    "thread": "OTLP only, encoded in the replica's export thread (`export_process: false`)",
    "direct": "OTLP + Langfuse from the replica (no Collector)",
    "client": "OTLP only + Anthropic HTTP client span (Tempo service graph)",
    "sdk-batch": "OTLP only, the SDK's batch (512 spans, 5 s delay)",
    "batch-256": "OTLP only, 256 spans, 1 s delay",
}
_WRK_WARMUP: dict[str, int] = {}  # requests each variant answered while wrk warmed up


def _urls(s: common.Session) -> dict[str, str]:
    return {name: s.router_url + prefix + "/v1/chat/completions" for name, (_, prefix) in VARIANTS.items()}


async def latency(s: common.Session, *, quick: bool) -> dict[str, Any]:
    rounds = 120 if quick else 400
    urls = _urls(s)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in (False, True):
            body = router_body(stream)
            calls = {
                name: (lambda url=url, body=body: http_call(client, url, body, ROUTER_HEADERS))
                for name, url in urls.items()
            }
            samples = await common.interleaved(calls, concurrency=1, rounds=rounds, warmup_rounds=20)
            out["stream" if stream else "json"] = {name: common.stats_of(v) for name, v in samples.items()}
    return out


def throughput(s: common.Session, *, quick: bool) -> dict[str, Any]:
    if not common.wrk_available():
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    seconds = 4 if quick else 10
    urls = _urls(s)
    # three runs each when not --quick, in the order ABC, CBA, ABC: drift of the VM hits the variants alike, and
    # a stall of the whole VM (p99 of one run near a second) is outvoted by the median
    order = list(VARIANTS) if quick else [*VARIANTS, *reversed(VARIANTS), *VARIANTS]
    for name in VARIANTS:
        warm = common.wrk(urls[name], router_body(False), ROUTER_HEADERS, connections=16, seconds=1)
        _WRK_WARMUP[name] = warm["requests"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    meter = common.CpuMeter(s.platform)
    for name in order:
        before = meter.snapshot()
        result = common.wrk(urls[name], router_body(False), ROUTER_HEADERS, connections=16, seconds=seconds)
        result["cpu_ms_per_request"] = meter.per_request_ms(before, meter.snapshot(), result["requests"])
        runs[name].append(result)
    out: dict[str, Any] = {}
    for name, results in runs.items():
        app = VARIANTS[name][0]
        cpu = [common.app_cpu(r["cpu_ms_per_request"], app) for r in results]
        out[name] = {
            "req_per_s": round(statistics.fmean(r["req_per_s"] for r in results), 1),
            "router_cpu_ms_per_request": round(statistics.fmean(total for total, _ in cpu), 3),
            "export_process_cpu_ms_per_request": round(statistics.fmean(export for _, export in cpu), 3),
            "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in results), 3),
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in results), 3),
            "requests": sum(r["requests"] for r in results),
            "runs": results,
        }
    return out


PAIRED = "otlp"  # the deployed variant, measured against `off` in adjacent pairs for the targets


AA = ("off2", "router-notel2", "/notel2")  # a second telemetry-off router: the pairs' A/A check


def paired(s: common.Session, *, quick: bool, variant: str = PAIRED, check: bool = False) -> dict[str, Any]:
    """`variant` against `off` in adjacent wrk runs, ordered ABBA (off, on, on, off, ...): each pair's ratio is
    measured minutes apart at most, so the VM's drift (up to 30% within a run) cancels instead of deciding the
    figure. The target figures are the medians of the pairs' ratios; the spread is reported beside them.

    With `check` (the cluster must run the `AA` router), each pair is followed by an A/A pair measured the same
    way: a second telemetry-off router against off, the ratio the method reports when nothing differs."""
    if not common.wrk_available():
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    count, seconds = (3, 4) if quick else (8, 10)
    urls = _urls(s)
    apps = {name: app for name, (app, _) in VARIANTS.items()}
    name2, app2, prefix2 = AA
    if check:
        urls[name2], apps[name2] = s.router_url + prefix2 + "/v1/chat/completions", app2
    meter = common.CpuMeter(s.platform)
    runs: dict[str, list[dict[str, Any]]] = {variant: [], **({name2: []} if check else {})}
    for i in range(count):
        for other, pairs in runs.items():
            pair: dict[str, Any] = {}
            for name in ("off", other) if i % 2 == 0 else (other, "off"):
                before = meter.snapshot()
                result = common.wrk(urls[name], router_body(False), ROUTER_HEADERS, connections=16, seconds=seconds)
                per_request = meter.per_request_ms(before, meter.snapshot(), result["requests"])
                cpu, export = common.app_cpu(per_request, apps[name])
                pair[name] = {
                    "req_per_s": result["req_per_s"],
                    "p99_ms": result["latency_ms"]["p99"],
                    "requests": result["requests"],
                    "router_cpu_ms_per_request": round(cpu, 3),
                    "export_process_cpu_ms_per_request": round(export, 3),
                }
            pair["req_per_s_ratio"] = common.ratio(pair[other]["req_per_s"], pair["off"]["req_per_s"])
            pair["p99_ratio"] = common.ratio(pair[other]["p99_ms"], pair["off"]["p99_ms"])
            pairs.append(pair)
    result = _pairs_summary(runs[variant], variant) | {"variant": variant, "seconds": seconds}
    if check:
        result["aa"] = _pairs_summary(runs[name2], name2) | {"variant": name2}
    return result


def _pairs_summary(pairs: list[dict[str, Any]], other: str) -> dict[str, Any]:
    rps = [p["req_per_s_ratio"] for p in pairs]
    p99 = [p["p99_ratio"] for p in pairs]
    return {
        "pairs": pairs,
        "req_per_s_ratio_median": round(statistics.median(rps), 3),
        "req_per_s_ratio_range": [min(rps), max(rps)],
        "p99_ratio_median": round(statistics.median(p99), 3),
        "p99_ratio_range": [min(p99), max(p99)],
        "requests": {name: sum(p[name]["requests"] for p in pairs) for name in ("off", other)},
        "router_cpu_ms_per_request_median": {
            name: round(statistics.median(p[name]["router_cpu_ms_per_request"] for p in pairs), 3)
            for name in ("off", other)
        },
        "export_process_cpu_ms_per_request_median": round(
            statistics.median(p[other]["export_process_cpu_ms_per_request"] for p in pairs), 3
        ),
    }


def settle(s: common.Session, *, quiet_s: float = 4.0, timeout_s: float = 45.0) -> tuple[int, ...]:
    """The sink's counts once nothing new arrived for `quiet_s`: the exporters' last, partial batches leave on
    their schedule delay, whatever it is configured to."""
    deadline = time.monotonic() + timeout_s
    counts = s.receivers.counts()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = s.receivers.counts()
        if now != counts:
            counts, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return counts


def profile(s: common.Session, variant: str = "otlp", *, seconds: float = 10.0) -> str | None:
    """py-spy (`--gil`: what holds the GIL the replica's loop needs) of one variant's replica under wrk at c=16;
    raw collapsed stacks in bench/results/."""
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy_bin).exists() or not common.wrk_available():
        return None
    pid = common.CpuMeter(s.platform).pids(VARIANTS[variant][0])[0]
    out = common.RESULTS / f"router-telemetry-{variant}.pyspy.txt"
    spy = subprocess.Popen(
        [spy_bin, "record", "-p", str(pid), "-r", "200", "-d", f"{seconds:g}", "--gil", "-t", "-f", "raw", "-o",
         str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    common.wrk(_urls(s)[variant], router_body(False), ROUTER_HEADERS, connections=16, seconds=seconds)
    spy.wait(timeout=60)
    return str(out)


def exported(
    before: tuple[int, ...], after: tuple[int, ...], sent: dict[str, int], *, route_spans: int
) -> dict[str, Any]:
    """Spans and generations per request over every exporting variant's requests."""
    spans, router_spans, generations = (a - b for a, b in zip(after, before, strict=True))
    otlp_requests = sum(n for name, n in sent.items() if name != "off")
    direct_requests = sum(n for name, n in sent.items() if name in LANGFUSE_DIRECT)
    client_requests = sent.get("client", 0)
    return {
        "otlp_spans": spans,
        "otlp_router_spans": router_spans,
        "client_spans": spans - router_spans,
        "langfuse_generations": generations,
        "requests": sent,
        "router_spans_per_request": common.ratio(router_spans, otlp_requests),
        "client_spans_per_request": common.ratio(spans - router_spans, client_requests) if client_requests else None,
        "generations_per_request": common.ratio(generations, direct_requests),
        "collector_generations_per_request": common.ratio(router_spans, otlp_requests),
        "route_spans": route_spans,
    }


def run(s: common.Session, *, quick: bool) -> dict[str, Any]:
    common.banner(f"router telemetry variants, {s.proxy} proxy")
    load_before = common.load_average()
    counts_before = settle(s)  # what earlier benchmarks exported has arrived
    data: dict[str, Any] = {"latency_c1": asyncio.run(latency(s, quick=quick))}
    data["throughput_c16"] = tp = throughput(s, quick=quick)
    counts_after = settle(s)
    rounds = (120 if quick else 400) + 20  # every latency request, warm-up rounds included, json and stream
    sent = {m: 2 * rounds + tp.get(m, {}).get("requests", 0) + _WRK_WARMUP.get(m, 0) for m in VARIANTS}
    data["exported_during_run"] = exported(counts_before, counts_after, sent, route_spans=counts_after[0])
    summary: dict[str, Any] = {}
    for mode, block in data["latency_c1"].items():
        metric = "ttft_ms" if mode == "stream" else "total_ms"
        off = block["off"][metric]
        print(f" c1 {mode}")
        for name in VARIANTS:
            print(common.fmt_row(f"telemetry {name} {metric[:-3]}", block[name][metric]))
            if name != "off":
                added = block[name][metric]["p50"] - off["p50"]
                summary[f"c1 {mode} {metric[:-3]} p50 added ms {name}"] = round(added, 3)
    if "skipped" not in tp:
        for name in VARIANTS:
            summary[f"router cpu ms/request {name}"] = tp[name]["router_cpu_ms_per_request"]
            if name != "off":
                summary[f"c16 req/s {name}/off"] = common.ratio(tp[name]["req_per_s"], tp["off"]["req_per_s"])
                summary[f"c16 p99 {name}/off"] = common.ratio(tp[name]["p99_ms"], tp["off"]["p99_ms"])
            runs = [r["req_per_s"] for r in tp[name]["runs"]]
            p99s = [r["latency_ms"]["p99"] for r in tp[name]["runs"]]
            print(f"  wrk c16 telemetry {name:<7} {tp[name]['req_per_s']:8.1f} req/s  (runs {runs}, p99 ms {p99s})")
    data["summary"] = summary
    data["labels"] = LABELS
    data["load_before"], data["load_after"] = load_before, common.load_average()
    for key, value in summary.items():
        print(f"  {key:<40} {value}")
    print(f"  exported while measuring: {data['exported_during_run']}")
    return data


def run_pairs(proxy: str, *, quick: bool) -> dict[str, Any]:
    """`paired` in a cluster of its own with only the two routers it compares and the A/A check's second off
    router: the other variants' replicas, idle, still cost CPU in the background (about 0.09 ms per request of
    another application each), which is noise in a ratio the target is judged on. Also counts the router spans the
    deployed variant exported."""
    name2, app2, prefix2 = AA
    aa_router = {app2: (prefix2, common.TELEMETRY_OFF)}
    with common.session(proxy, with_model=False, routers=aa_router, baselines=False) as s:
        common.banner(f"telemetry {PAIRED} against off in adjacent pairs, and {name2} against off, {proxy} proxy")
        before = settle(s)
        pairs = paired(s, quick=quick, check=True)
        after = settle(s)
    if "skipped" not in pairs:
        pairs["router_spans_per_request"] = common.ratio(after[1] - before[1], pairs["requests"][PAIRED])
        for p in pairs["pairs"]:
            print(
                f"  pair: off {p['off']['req_per_s']:7.1f} req/s p99 {p['off']['p99_ms']:7.2f} ms | {PAIRED} "
                f"{p[PAIRED]['req_per_s']:7.1f} req/s p99 {p[PAIRED]['p99_ms']:7.2f} ms | "
                f"÷ off {p['req_per_s_ratio']} / {p['p99_ratio']}"
            )
        for key in ("req_per_s_ratio_median", "p99_ratio_median", "router_cpu_ms_per_request_median",
                    "export_process_cpu_ms_per_request_median", "router_spans_per_request"):  # fmt: skip
            print(f"  {key:<42} {pairs[key]}")
        aa = pairs["aa"]
        print(
            f"  A/A check, {name2} ÷ off: req/s {aa['req_per_s_ratio_median']} ({aa['req_per_s_ratio_range'][0]}-"
            f"{aa['req_per_s_ratio_range'][1]}), p99 {aa['p99_ratio_median']}"
        )
    return pairs


def finish(data: dict[str, Any], proxy: str, *, quick: bool) -> dict[str, Any]:
    """Once the variants' cluster is stopped: the pairs in their own cluster, then the result file."""
    data["paired_c16"] = run_pairs(proxy, quick=quick)
    common.write_result(
        f"router-telemetry-{proxy}", {"bench": "router_telemetry", "proxy": proxy, "machine": common.machine()} | data
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--proxy", choices=("default", "haproxy"), default="haproxy")
    parser.add_argument("--profile", choices=tuple(VARIANTS), help="then py-spy this variant's replica under load")
    parser.add_argument("--no-run", action="store_true", help="only the profile")
    opts = parser.parse_args()
    data = None
    with common.session(opts.proxy, with_model=False, routers=ROUTERS) as s:
        if not opts.no_run:
            data = run(s, quick=opts.quick)
        if opts.profile:
            print(f"  profile: {profile(s, opts.profile)}")
    if data is not None:
        finish(data, opts.proxy, quick=opts.quick)


if __name__ == "__main__":
    main()
