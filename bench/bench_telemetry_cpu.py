"""What the router span costs per cloud request, part by part, without Ray: the floor under the telemetry target.

The router's FastAPI app is called in this process (as in bench_router_cpu) on the same Anthropic stand-in, once
per telemetry setup; batches alternate and CPU (process, all threads) per request is the median of the batches:

    off       telemetry off (no span)
    span      the SDK span with its attributes and a BatchSpanProcessor whose exporter discards each batch: every
              span is made, ended and batched, none is encoded
    thread    OTLP to a discarding loopback sink, encoded in the replica's export thread (`export_process: false`)
    process   the same as deployed (the default): the router span is a LightSpan, plain values in the replica that
              the export process rebuilds as the SDK's span and encodes; its CPU is reported beside the replica's

`span - off` is what the OTel SDK's span costs before any export; `thread - span` what the OTLP encoder and
transport add; `process` shows how much of that leaves the replica's process and what the hand-over costs.
The sink runs in a child process and only keeps the bytes (bench/discard_sink.py).

Each side's median batch and its lowest batch are reported: this VM's speed drifts by 25% between batches a few
seconds apart, and the lowest batch is the least disturbed measure of what a side costs.

Run: python -m bench.bench_telemetry_cpu [--requests 200] [--batches 15]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psutil
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import common
from bench.bench_router_cpu import PRICING, NullMetrics, asgi_call
from serve_app.auth import ApiKeys
from serve_app.backends.anthropic import AnthropicBackend
from serve_app.chat import ChatService
from serve_app.config import RouterArgs
from serve_app.ingress import create_app
from serve_app.telemetry import Telemetry
from serve_app.telemetry.tracing import build_tracer_provider
from tests.component.fakes import local_backend

SIDES = ("off", "span", "thread", "process")


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sink(conn: Any) -> None:
    from bench.discard_sink import DiscardSink

    with DiscardSink() as sink:
        conn.send(sink.base_url)
        conn.recv()
        conn.send(sink.counts())


def _telemetry(side: str, sink_url: str) -> tuple[RouterArgs, Telemetry]:
    settings: dict[str, Any] = {"langfuse": False}
    if side == "off":
        settings["tracing"] = False
    if side == "thread":
        settings["export_process"] = False
    args = RouterArgs.model_validate(
        {
            "cloud": {"base_url": "http://unused", "max_retries": 0, "http_client": "aiohttp"},
            "auth": {"allow_unauthenticated": True},
            "telemetry": settings,
            "pricing": PRICING,
        }
    )
    if side == "span":
        provider = build_tracer_provider(args.telemetry, {})
        provider.add_span_processor(BatchSpanProcessor(_Discard(), max_export_batch_size=64, schedule_delay_millis=200))
        return args, Telemetry.from_args(args, tracer_provider=provider, meter=NullMetrics(), langfuse=False)
    env = {} if side == "off" else {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url}
    return args, Telemetry.from_args(args, meter=NullMetrics(), langfuse=False, environ=env)


def _cpu_s(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


async def measure(upstream: str, sink_url: str, *, requests: int, batches: int) -> dict[str, Any]:
    sides: dict[str, Callable[[], Awaitable[None]]] = {}
    children: dict[str, psutil.Process | None] = {}
    telemetries: list[Telemetry] = []
    async with contextlib.AsyncExitStack() as stack:
        for side in SIDES:
            args, telemetry = _telemetry(side, sink_url)
            telemetries.append(telemetry)
            cloud_args = args.cloud.model_copy(update={"base_url": upstream})
            cloud = AnthropicBackend(
                cloud_args, api_key=common.ANTHROPIC_KEY, tracer_provider=telemetry.client_tracer_provider
            )
            stack.push_async_callback(cloud.aclose)
            service = ChatService(args, backends={"local": local_backend(), "cloud": cloud}, telemetry=telemetry)
            sides[side] = asgi_call(create_app(service, keys=ApiKeys.load(args.auth), max_request_bytes=1 << 22))
            pid = telemetry.export_process.pid if telemetry.export_process is not None else None
            children[side] = psutil.Process(pid) if pid is not None else None
        for call in sides.values():  # connections, imports and code paths warm
            for _ in range(30):
                await call()
        cpu: dict[str, list[float]] = {side: [] for side in SIDES}
        child_cpu: dict[str, list[float]] = {side: [] for side in SIDES}
        for batch in range(batches):
            for side in SIDES if batch % 2 == 0 else tuple(reversed(SIDES)):
                gc.collect()
                await asyncio.sleep(0.3)  # the previous side's last partial batch leaves on its schedule delay
                started, child_started = time.process_time(), _cpu_s(children[side])
                for _ in range(requests):
                    await sides[side]()
                await asyncio.sleep(0.3)  # and this side's is counted with it
                cpu[side].append((time.process_time() - started) / requests * 1e6)
                child_cpu[side].append((_cpu_s(children[side]) - child_started) / requests * 1e6)
    for telemetry in telemetries:
        telemetry.shutdown()
    off = statistics.median(cpu["off"])
    out: dict[str, Any] = {}
    for side in SIDES:
        median = statistics.median(cpu[side])
        child = statistics.median(child_cpu[side])
        out[side] = {
            "cpu_us_per_request": round(median, 1),
            # the least disturbed batch: on a VM whose speed drifts, the floor of a side's cost
            "lowest_cpu_us_per_request": round(min(cpu[side]), 1),
            "export_process_cpu_us_per_request": round(child, 1),
            "cpu_us_batches": [round(v, 1) for v in cpu[side]],
            "added_us": round(median - off, 1),
            "added_share_of_off": round((median - off) / off, 4),
        }
    return out


def run(*, quick: bool = False, requests: int | None = None, batches: int | None = None) -> dict[str, Any]:
    busy = common.wait_quiet()  # in process: whatever else runs inflates CPU per request
    common.banner("router span CPU per cloud request, in process (no Ray)")
    requests = requests or (150 if quick else 200)
    batches = batches or (3 if quick else 15)
    for name in ("httpx2", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    sink = spawn.Process(target=_sink, args=(child,), daemon=True)
    sink.start()
    sink_url = parent.recv()
    standin, upstream = common.start_anthropic_standin()
    try:
        load_before = common.load_average()
        sides = asyncio.run(measure(upstream, sink_url, requests=requests, batches=batches))
    finally:
        standin.stop()
        parent.send("stop")
        spans = parent.recv()[1]
        sink.terminate()
    print(f"  {requests} requests x {batches} batches per side; CPU per request (medians), all threads")
    for side, row in sides.items():
        child = row["export_process_cpu_us_per_request"]
        print(
            f"  {side:<8} replica {row['cpu_us_per_request']:7.1f} us (lowest {row['lowest_cpu_us_per_request']:7.1f})"
            f"  {row['added_us']:+6.1f} us "
            f"({row['added_share_of_off']:+.1%} of off)" + (f"  export process {child:.1f} us" if child else "")
        )
    data = {"requests": requests, "batches": batches, "sides": sides, "router_spans_received": spans}
    data["cpu_busy_percent_at_start"] = busy
    data |= {"load_before": load_before, "load_after": common.load_average()}
    common.write_result("telemetry-cpu", {"bench": "telemetry_cpu", "machine": common.machine()} | data)
    return data


def main() -> None:
    common.run_sized(run, __doc__)


if __name__ == "__main__":
    main()
