"""Soak: minutes of the simulator's `mixed` workload through the router; the router replica's memory, descriptors,
asyncio tasks and throughput over time.

A Ray cluster of its own runs both applications of the local profile (the smoke model) with the cloud pointed at the
Anthropic stand-in in a process of its own, and the router's `debug_introspection` on (its asyncio task count over
a DeploymentHandle; no HTTP route). The load is the simulator (serve_app.sim.run) with the shipped `mixed`
workload at a constant rate, in two runs: `--warmup` minutes, then the rest of `--minutes`. Every `--every` seconds
the router replica is sampled: VmRSS and open descriptors from /proc/<pid> (PID from Ray's state API), asyncio
tasks from `debug_counts`. The replica is also sampled idle (no request in flight) after the warm-up and after the
last request, and its closed-loop capacity (c=16 non-streamed cloud requests for 15 s) is measured before and after.

Properties (PASS/FAIL, exit 1 on any FAIL):

    memory       router RSS idle after the run within 5% of RSS idle after the warm-up
    descriptors  no more open descriptors idle after the run than idle after the warm-up
    tasks        no more asyncio tasks idle after the run than idle after the warm-up
    throughput   answers in the last minute within 5% of the first minute after the warm-up (constant arrivals)
    answers      every request of the mixed runs answered 200, and the router's counters agree with the clients

Run: make soak (SOAK_MINUTES=10), or flock /tmp/ray-integration.lock python -m bench.soak --minutes 10
Figures: bench/results/soak.json and the simulator's run directories under bench/results/soak-runs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
import psutil

from bench import proof_support as ps
from serve_app.records import RequestRecord, read_records
from serve_app.sim import arrivals, workload
from serve_app.sim.run import RunConfig, run

RSS_GROWTH_LIMIT = 0.05
THROUGHPUT_TOLERANCE = 0.05


class Sampler:
    """Samples the router replica every `every` seconds in a thread: /proc figures and the asyncio task count."""

    def __init__(self, pid: int, handle: Any, every: float, standin_port: int) -> None:
        self.pid, self.handle, self.every, self.standin_port = pid, handle, every, standin_port
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)
        self.t0 = time.time()

    def sample(self, label: str = "", top_types: int = 0) -> dict[str, Any]:
        with self._lock:  # the sampler thread and the idle samples share the handle
            counts = self.handle.debug_counts.remote(top_types=top_types).result(timeout_s=30)
        if counts["pid"] != self.pid:
            raise RuntimeError(f"the router replica changed: pid {self.pid} -> {counts['pid']}")
        sample = {"t_s": round(time.time() - self.t0, 1), **ps.process_sample(self.pid)}
        sample |= {"asyncio_tasks": counts["asyncio_tasks"], "gc_objects": counts["gc_objects"]}
        sample |= tcp_connections(self.pid, self.standin_port)
        if top_types:
            sample["top_types"] = counts["top_types"]
        if label:
            sample["label"] = label
        return sample

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a sample lost is reported, the soak goes on
                self.samples.append({"t_s": round(time.time() - self.t0, 1), "error": repr(exc)})

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def mixed_run(ray: Any, *, minutes: float, rate: float, seed: int, run_id: str) -> dict[str, Any]:
    """One simulator run of the `mixed` workload; its records and summary."""
    config = RunConfig(
        base_url=ray.base_url,
        api_key=ps.API_KEY,
        mix=workload.load("mixed"),
        arrival=arrivals.parse("constant", rate),
        seed=seed,
        duration_s=minutes * 60,
        concurrency=32,
        client="http",
        reports_dir=ps.RESULTS / "soak-runs",
        run_id=run_id,
        metrics_url=f"http://127.0.0.1:{ray.metrics_port}/metrics",
        metrics_wait_s=45.0,
        progress=False,
        report=False,
    )
    run_dir = asyncio.run(run(config))
    records = list(read_records((run_dir / "requests.jsonl").read_text().splitlines()))
    return {"records": records, "summary": json.loads((run_dir / "summary.json").read_text()), "dir": run_dir}


def per_minute(records: list[RequestRecord]) -> list[dict[str, Any]]:
    """Answers finished per minute of the run (full minutes only), with their latency percentiles."""
    if not records:
        return []
    start = min(r.t_start for r in records)
    minutes: dict[int, list[RequestRecord]] = {}
    for record in records:
        minutes.setdefault(int((record.t_end - start) // 60), []).append(record)
    last_full = int((max(r.t_start for r in records) - start) // 60)  # the minute the last request was sent in
    out = []
    for minute in range(last_full):
        done = minutes.get(minute, [])
        latencies = [r.latency_s for r in done if r.latency_s is not None]
        out.append(
            {
                "minute": minute + 1,
                "answered": len(done),
                "ok": sum(1 for r in done if r.status == 200 and r.outcome == "ok"),
                "local": sum(1 for r in done if r.backend == "local"),
                "p50_s": round(ps.percentile(latencies, 50) or 0.0, 3),
                "p95_s": round(ps.percentile(latencies, 95) or 0.0, 3),
            }
        )
    return out


async def _capacity(base_url: str, seconds: float, concurrency: int = 16) -> dict[str, Any]:
    """Closed loop: `concurrency` clients send non-streamed cloud requests back to back for `seconds`."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    body = {"model": "cloud", "max_tokens": 16, "messages": [{"role": "user", "content": "capacity probe"}]}
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = await client.post(f"{base_url}/v1/chat/completions", json=body, headers=ps.HEADERS)
            statuses[response.status_code] += 1
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round((ps.percentile(latencies, 50) or 0) * 1000, 2),
        "p99_ms": round((ps.percentile(latencies, 99) or 0) * 1000, 2),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def tcp_connections(pid: int, standin_port: int) -> dict[str, int]:
    """The replica's TCP sockets: from the proxy (to a port it listens on), to the cloud stand-in, other (Ray's
    own: GCS, raylet, the model replica), and any in CLOSE_WAIT (a peer closed, this side never did: a leak)."""
    out = {"tcp_inbound": 0, "tcp_standin": 0, "tcp_other": 0, "close_wait": 0}
    connections = psutil.Process(pid).net_connections(kind="tcp")
    listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    for c in connections:
        if c.status == psutil.CONN_LISTEN:
            continue
        out["close_wait"] += c.status == psutil.CONN_CLOSE_WAIT
        if c.raddr and c.raddr.port == standin_port:
            out["tcp_standin"] += 1
        elif c.laddr.port in listening:
            out["tcp_inbound"] += 1
        else:
            out["tcp_other"] += 1
    return out


def idle_sample(sampler: Sampler, label: str, settle_s: float = 5.0, reads: int = 3) -> dict[str, Any]:
    """The replica with no request in flight: the least of `reads` samples 2 s apart of each figure, so a
    connection that the proxy is just closing or a background tick does not count as growth."""
    time.sleep(settle_s)  # the last answers' telemetry and connection teardown
    taken = []
    for i in range(reads):
        if i:
            time.sleep(2)
        taken.append(sampler.sample(label, top_types=12 if i == reads - 1 else 0))
    sample = {key: min(s[key] for s in taken) if isinstance(taken[0][key], int) else taken[-1][key] for key in taken[0]}
    sample |= {"t_s": taken[-1]["t_s"], "top_types": taken[-1]["top_types"]}
    print(f"  idle sample {label}: {sample}", flush=True)
    return sample


def verdicts(figures: dict[str, Any]) -> ps.Verdicts:
    v = ps.Verdicts()
    a, b = figures["idle_after_warmup"], figures["idle_after_run"]
    growth = (b["rss_kib"] - a["rss_kib"]) / a["rss_kib"]
    figures["rss_growth_after_warmup"] = round(growth, 4)
    v.check(
        "router RSS growth after warm-up under 5%",
        growth < RSS_GROWTH_LIMIT,
        f"{a['rss_kib'] / 1024:.1f} MiB -> {b['rss_kib'] / 1024:.1f} MiB ({growth:+.2%}); peak "
        f"{figures['rss_peak_kib'] / 1024:.1f} MiB",
    )
    # The proxy keeps a pool of connections to the replica that follows the load's peaks: those are live, not leaked.
    pool = b["tcp_inbound"] - a["tcp_inbound"]
    v.check(
        "no growth in open descriptors",
        b["fds"] - max(pool, 0) <= a["fds"] and b["close_wait"] == 0,
        f"idle {a['fds']} -> {b['fds']} (the proxy's live connections {a['tcp_inbound']} -> {b['tcp_inbound']}, "
        f"to the stand-in {a['tcp_standin']} -> {b['tcp_standin']}, other TCP {a['tcp_other']} -> {b['tcp_other']}, "
        f"CLOSE_WAIT {b['close_wait']})",
    )
    v.check(
        "no growth in asyncio tasks",
        b["asyncio_tasks"] <= a["asyncio_tasks"],
        f"idle {a['asyncio_tasks']} -> {b['asyncio_tasks']} (Python objects {a['gc_objects']} -> {b['gc_objects']})",
    )
    minutes = figures["per_minute"]
    if len(minutes) >= 2:
        first, last = minutes[0]["answered"], minutes[-1]["answered"]
        v.check(
            "the same throughput at the end as at the start",
            abs(last - first) <= THROUGHPUT_TOLERANCE * first,
            f"first minute {first} answers (p50 {minutes[0]['p50_s']}s), last minute {last} "
            f"(p50 {minutes[-1]['p50_s']}s)",
        )
    else:
        v.check("the same throughput at the end as at the start", False, "fewer than two full minutes")
    statuses = figures["statuses"]
    agree = figures["counters_agree"]
    v.check(
        "every request answered and counted",
        set(statuses) == {"200"} and all(agree),
        f"statuses {statuses}; client totals equal the router's counters: {agree}",
    )
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=14.0, help="Minutes of mixed load in all (default 14).")
    parser.add_argument("--warmup", type=float, default=4.0, help="Minutes of it that are warm-up (default 4).")
    parser.add_argument("--rate", type=float, default=4.0, help="Requests per second, constant (default 4).")
    parser.add_argument("--every", type=float, default=15.0, help="Seconds between samples (default 15).")
    parser.add_argument("--seed", type=int, default=3)
    opts = parser.parse_args(argv)
    if opts.minutes - opts.warmup < 2:
        parser.error("--minutes must exceed --warmup by at least 2 (first and last minute)")
    load_before = ps.load_average()
    overrides = {"debug_introspection": True}
    with ps.StandinProcess() as standin, ps.platform(standin, overrides=overrides) as ray:
        import ray as ray_module
        from ray import serve

        ray_module.init(address=ray.address, logging_level="ERROR", log_to_driver=False)
        try:
            handle = serve.get_app_handle("router")
            pid = ps.router_pid(ray)
            figures: dict[str, Any] = {"router_pid": pid, "rate_per_s": opts.rate, "minutes": opts.minutes}
            figures["capacity_before"] = asyncio.run(_capacity(ray.base_url, 15))
            print(f"  capacity before: {figures['capacity_before']}", flush=True)
            with Sampler(pid, handle, opts.every, standin.port) as sampler:
                sampler.samples.append(sampler.sample("start"))
                print(f"  warm-up: {opts.warmup:g} min of mixed at {opts.rate:g}/s", flush=True)
                warm = mixed_run(ray, minutes=opts.warmup, rate=opts.rate, seed=opts.seed, run_id="warmup")
                figures["idle_after_warmup"] = idle_sample(sampler, "idle after warm-up")
                sampler.samples.append(figures["idle_after_warmup"])
                main_minutes = opts.minutes - opts.warmup
                print(f"  soak: {main_minutes:g} min of mixed at {opts.rate:g}/s", flush=True)
                soak = mixed_run(ray, minutes=main_minutes, rate=opts.rate, seed=opts.seed + 1, run_id="soak")
                figures["idle_after_run"] = idle_sample(sampler, "idle after the run")
                sampler.samples.append(figures["idle_after_run"])
            figures["capacity_after"] = asyncio.run(_capacity(ray.base_url, 15))
            print(f"  capacity after: {figures['capacity_after']}", flush=True)
        finally:
            ray_module.shutdown()
    good = [s for s in sampler.samples if "error" not in s]
    records = warm["records"] + soak["records"]
    figures |= {
        "samples": sampler.samples,
        "sample_errors": len(sampler.samples) - len(good),
        "rss_peak_kib": max(s["rss_kib"] for s in good),
        "requests": len(records),
        "statuses": dict(Counter(str(r.status) for r in records)),
        "routes": dict(Counter(f"{r.backend}/{r.route_reason}" for r in records)),
        "per_minute": per_minute(soak["records"]),
        "counters_agree": [
            run_["summary"].get("prometheus", {}).get("counts_and_tokens_agree", False) for run_ in (warm, soak)
        ],
        "late_sends": [run_["summary"].get("late_sends") for run_ in (warm, soak)],
        "capacity_after_over_before": round(
            figures["capacity_after"]["req_per_s"] / max(figures["capacity_before"]["req_per_s"], 1e-9), 3
        ),
        "load_average_before": load_before,
        "load_average_after": ps.load_average(),
    }
    figures["rss_by_minute_mib"] = rss_by_minute(good)
    print_table(figures)
    result = verdicts(figures)
    ps.write_result("soak", {"bench": "soak", **figures, "checks": result.checks})
    print("PASS" if result.passed else "FAIL")
    return 0 if result.passed else 1


def rss_by_minute(samples: list[dict[str, Any]]) -> list[float]:
    """The replica's RSS (MiB) at each whole minute of the soak (the last sample at or before it): whether memory
    still grows at the end or has levelled off shows here, not in one before/after pair."""
    out = []
    for minute in range(1, int(samples[-1]["t_s"] // 60) + 1):
        before = [s for s in samples if s["t_s"] <= 60 * minute]
        out.append(round(before[-1]["rss_kib"] / 1024, 1))
    return out


def print_table(figures: dict[str, Any]) -> None:
    print("  t (s)   RSS MiB   fds  proxy conns  threads  asyncio tasks  GC objects")
    for s in figures["samples"]:
        if "error" in s:
            print(f"  {s['t_s']:>6}  sample failed: {s['error']}")
            continue
        label = f"  ({s['label']})" if "label" in s else ""
        rss, conns = s["rss_kib"] / 1024, s["tcp_inbound"]
        print(
            f"  {s['t_s']:>6}  {rss:8.1f}  {s['fds']:4}  {conns:11}  {s['threads']:7}  {s['asyncio_tasks']:13}  "
            f"{s['gc_objects']:10}{label}"
        )
    print("  minute  answered  ok  local  p50 s  p95 s")
    for m in figures["per_minute"]:
        print(f"  {m['minute']:>6}  {m['answered']:8}  {m['ok']:3}  {m['local']:5}  {m['p50_s']:5}  {m['p95_s']:5}")
    keys = ("requests", "statuses", "routes", "counters_agree", "late_sends", "capacity_after_over_before")
    for key in (*keys, "rss_by_minute_mib"):
        print(f"  {key}: {figures[key]}")


if __name__ == "__main__":
    sys.exit(main())
