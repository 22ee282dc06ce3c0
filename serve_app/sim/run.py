"""One simulation run: sends a workload mix on an arrival schedule, carries out fault events, writes the run's files.

Open loop with a cap: each request is sent at its scheduled offset unless `concurrency` requests are already in
flight (then it waits, and the summary counts it as late). Records, fault events and the summary go to
reports/<run id>/; the router's Prometheus counters are scraped before and after the run for the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.records import RequestRecord
from serve_app.sim import actions, summary
from serve_app.sim.arrivals import Arrival, offsets
from serve_app.sim.client import Clients, send
from serve_app.sim.faults import FaultEvent
from serve_app.sim.progress import Progress
from serve_app.sim.prompts import PlannedRequest, plan
from serve_app.sim.wire import WireClients
from serve_app.sim.workload import Mix

_SATURATION_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm. " * 6


@dataclass
class RunConfig:
    base_url: str
    api_key: str
    mix: Mix
    arrival: Arrival
    seed: int
    duration_s: float | None = 60.0
    count: int | None = None
    concurrency: int = 64
    faults: list[FaultEvent] = field(default_factory=list)
    target: actions.Target = field(default_factory=actions.Target)
    reports_dir: Path = Path("reports")
    run_id: str | None = None
    metrics_url: str | None = "http://127.0.0.1:8080/metrics"
    # Counters unchanged this long (longer than Ray's 10 s export interval) include every request sent before the run.
    metrics_settle_s: float = 11.0
    metrics_wait_s: float = 30.0  # Ray exports every 10 s by default: the last requests appear within about 20 s
    saturate_concurrency: int = 24
    progress: bool = True
    report: bool = True
    request_timeout_s: float = 180.0
    client: str = "sdk"  # sdk: the openai and anthropic SDKs; http: serve_app.sim.wire (the same wire, less CPU)


def make_clients(config: RunConfig) -> Any:
    if config.client == "http":
        return WireClients(config.base_url, config.api_key, timeout_s=config.request_timeout_s)
    return Clients.create(config.base_url, config.api_key, timeout_s=config.request_timeout_s)


def planned_requests(mix: Mix, seed: int) -> Any:
    """The run's request sequence: the same seed gives the same requests in the same order."""
    rng = random.Random(seed * 1_000_003 + 1)
    while True:
        yield plan(mix.pick(rng), rng)


async def run(config: RunConfig) -> Path:
    """Runs the simulation and returns the run's directory."""
    run_id = config.run_id or f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{config.mix.name}-s{config.seed}"
    run_dir = config.reports_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    readiness = _get_json(f"{config.base_url.rstrip('/')}/readyz")
    before = await _scrape_settled(config.metrics_url, settle_s=config.metrics_settle_s)
    clients = make_clients(config)
    records: list[RequestRecord] = []
    events: list[dict[str, Any]] = []
    progress = Progress(
        enabled=config.progress, title=f"{config.mix.name} · {config.arrival.kind} @ {config.arrival.rate:g}/s"
    )
    semaphore = asyncio.Semaphore(config.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    late = 0
    start, t0 = time.time(), time.perf_counter()

    def done(record: RequestRecord) -> None:
        records.append(record)
        progress.answered(record)

    async def one(request: PlannedRequest) -> None:
        try:
            record = await send(clients, request)
        finally:
            semaphore.release()
        done(record)

    def spawn(request: PlannedRequest) -> None:
        progress.sent()
        task = asyncio.create_task(one(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def fault(event: FaultEvent) -> None:
        await asyncio.sleep(max(0.0, t0 + event.at_s - time.perf_counter()))
        entry: dict[str, Any] = {"t": time.time(), "kind": event.kind, "detail": "", "end": None}
        if event.end_s is not None:
            entry["end"] = entry["t"] + (event.end_s - event.at_s)
        events.append(entry)
        progress.fault(event)
        try:
            if event.kind == "saturate_local":
                entry["detail"] = await _saturate(event, config, done, t0)
            else:
                entry["detail"], until = await actions.carry_out(event, config.target)
                if until is not None:  # the window as the stand-in keeps it, however late the call arrived
                    entry["end"] = until
        except actions.FaultFailed as exc:
            entry["detail"] = f"FAILED: {exc}"
            entry["failed"] = True

    fault_tasks = [asyncio.create_task(fault(event)) for event in config.faults]
    requests = planned_requests(config.mix, config.seed)
    with progress.live():
        for offset in offsets(config.arrival, seed=config.seed, duration=config.duration_s, count=config.count):
            await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
            if semaphore.locked():
                late += 1
            await semaphore.acquire()
            if config.duration_s is not None and time.perf_counter() - t0 >= config.duration_s:
                semaphore.release()  # the run's time is up: what the cap held back is not sent (counted as late)
                break
            spawn(next(requests))
        await asyncio.gather(*fault_tasks)
        while tasks:
            await asyncio.gather(*list(tasks))
        end = time.time()
        await clients.aclose()
        progress.note("waiting for the router's counters (Ray exports metrics every 10 s) ...")
        totals = summary.summarise(records, start=start, end=end)
        after = await _scrape_after(config, before, totals)
    records.sort(key=lambda r: r.t_start)
    with (run_dir / "requests.jsonl").open("w") as handle:
        handle.writelines(record.to_json() + "\n" for record in records)
    with (run_dir / "events.jsonl").open("w") as handle:
        handle.writelines(json.dumps(event) + "\n" for event in events)
    cloud = (readiness or {}).get("backends", {}).get("cloud", {})
    totals |= {
        "run_id": run_id,
        "workload": config.mix.name,
        "workloads": {w.name: round(share, 6) for w, share in config.mix.parts},
        "seed": config.seed,
        "arrival": {"kind": config.arrival.kind, "rate": config.arrival.rate, **config.arrival.params},
        "concurrency_cap": config.concurrency,
        "client": config.client,
        "late_sends": late,
        "faults": [str(e) for e in config.faults],
        "target": config.base_url,
        "cloud_standin": bool(cloud.get("standin")),
        "readiness_at_start": readiness,
    }
    if before is not None and after is not None:
        totals["prometheus"] = {"source": config.metrics_url, **summary.compare(totals, before, after)}
        gpu = {key.split(".", 1)[1]: value for key, value in after.items() if key.startswith("gpu_usd_per_hour.")}
        if gpu:  # the report's GPU USD/hour (allocated and idle) at the end of the run
            totals["prometheus"][summary.GPU_SPEND] = gpu
    else:
        totals["prometheus"] = {"source": config.metrics_url, "error": "metrics endpoint not reachable"}
    (run_dir / "summary.json").write_text(json.dumps(totals, indent=2) + "\n")
    if config.report:
        _write_report(run_dir)
    return run_dir


async def _saturate(event: FaultEvent, config: RunConfig, done: Callable[[RequestRecord], None], t0: float) -> str:
    """Keeps `saturate_concurrency` long explicit-local streams in flight until the event ends."""
    assert event.end_s is not None
    body = {"messages": [{"role": "user", "content": _SATURATION_PROMPT}]}
    request = PlannedRequest("fault:saturate_local", "openai", True, "local", 256, body, len(_SATURATION_PROMPT))
    sent = 0
    in_flight: set[asyncio.Task[RequestRecord]] = set()
    clients = make_clients(config)
    try:
        while time.perf_counter() < t0 + event.end_s:
            while len(in_flight) < config.saturate_concurrency:
                in_flight.add(asyncio.create_task(send(clients, request)))
                sent += 1
            finished, in_flight = await asyncio.wait(in_flight, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                done(task.result())
        for task in in_flight:
            done(await task)
    finally:
        await clients.aclose()
    return f"{sent} explicit-local streams of up to 256 tokens, {config.saturate_concurrency} at a time"


async def _scrape_settled(url: str | None, *, settle_s: float, timeout_s: float = 60.0) -> dict[str, float] | None:
    """The router's counters once they stopped moving: a request sent just before the run (a curl, an earlier run)
    reaches the metrics endpoint up to an export interval later and would otherwise be counted as this run's."""
    current = _scrape(url)
    if current is None:
        return None
    stable_since = time.monotonic()
    deadline = stable_since + timeout_s
    while time.monotonic() - stable_since < settle_s and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        latest = _scrape(url)
        if latest is None:
            return current
        if latest != current:
            current, stable_since = latest, time.monotonic()
    return current


async def _scrape_after(
    config: RunConfig, before: dict[str, float] | None, totals: dict[str, Any]
) -> dict[str, float] | None:
    """Scrapes until the counters' increase equals the client's count and tokens, or `metrics_wait_s` passed."""
    if before is None:
        return None
    deadline = time.monotonic() + config.metrics_wait_s
    after = _scrape(config.metrics_url)
    while time.monotonic() < deadline:
        if after is not None and summary.compare(totals, before, after)["counts_and_tokens_agree"]:
            return after
        await asyncio.sleep(1.0)
        after = _scrape(config.metrics_url)
    return after


def _scrape(url: str | None) -> dict[str, float] | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return summary.counters(response.read().decode())
    except OSError:
        return None


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a 503 /readyz still says why
        with contextlib.suppress(ValueError):
            return json.loads(exc.read())
    except (OSError, ValueError):
        pass
    return None


def _write_report(run_dir: Path) -> None:
    """The HTML report, when the report module is installed next to the simulator."""
    try:
        report = importlib.import_module("serve_app.sim.report")
    except ModuleNotFoundError:
        return
    report.write_report(run_dir)
