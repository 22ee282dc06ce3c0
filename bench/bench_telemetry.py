"""What telemetry costs a request: Observation overhead with every sink on (exporting to loopback) vs off.

One measured process, one run, ratios reported; not a test and never asserted. The loopback receivers run in a
child process so their protobuf parsing does not compete for the measured interpreter's GIL (the export
threads of the measured process do, as they would in a router replica). Each "request" streams CHUNKS synthetic
OpenAI chunks as the router does: begin, routed, the owner's tally of the chunks, priced, and `Observation.record`:

    bare      the same stream without any Observation (the floor)
    off       Telemetry with no exporter and no Langfuse (no-op tracer), metrics to a null sink
    on        OTLP/HTTP to a loopback receiver + Langfuse to a loopback stand-in + in-memory metrics
    otlp      only the OTLP exporter;  langfuse: only Langfuse
    on-hang   both, with both receivers hanging (bounded queues full, spans dropped and counted)

Wall time is the request loop's; cpu is process CPU (all threads, export included) per request.

Run: python bench/bench_telemetry.py [--requests 2000] [--chunks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.chat_stream import Pricer, Tally, finished_result
from serve_app.config import RouterArgs
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.telemetry.metrics import Instrument
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.otlp_receiver import OtlpHttpReceiver

ARGS = RouterArgs.model_validate(
    {
        "pricing": {
            "source": "bench",
            "as_of": "2026-11-30",
            "models": {"claude-sonnet-4-6": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
        },
        "telemetry": {"export_timeout_s": 1.0},
    }
)


class NullSink:
    def register(self, instruments: Iterable[Instrument]) -> None:
        pass

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        pass


async def backend(chunks: int) -> AsyncIterator[dict]:
    for i in range(chunks):
        yield {"model": "claude-sonnet-4-6", "choices": [{"index": 0, "delta": {"content": f"tok{i}"}}]}
    yield {
        "model": "claude-sonnet-4-6",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": chunks},
    }


async def bare(n: int, chunks: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        async for _chunk in backend(chunks):
            pass
    return (time.perf_counter() - started) / n


async def observed(telemetry: Telemetry, n: int, chunks: int) -> float:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    pricer = Pricer(telemetry.args)
    started = time.perf_counter()
    for i in range(n):
        obs = telemetry.begin(
            request_id=f"r{i}",
            headers=headers,
            requested_model="auto",
            stream=True,
            max_tokens=64,
            prompt_tokens_estimated=100,
        )
        obs.routed(
            backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="policy_cloud", fallback=False
        )
        tally = Tally(clock=telemetry.clock)
        async for chunk in backend(chunks):
            tally.add(chunk)
        price = lambda usage: pricer(backend="cloud", model="claude-sonnet-4-6", usage=usage)  # noqa: E731
        obs.record(finished_result(tally, outcome="ok", error=None, price=price, prompt_tokens_estimated=100))
    return (time.perf_counter() - started) / n


def _serve(mode: str, public_key: str, conn) -> None:
    """Child process: both receivers until told to stop; then reports what they got."""
    with OtlpHttpReceiver(mode=mode) as otlp, LangfuseStandin(public_key=public_key, secret_key="s", mode=mode) as lf:
        conn.send((otlp.base_url, lf.base_url))
        conn.recv()
        conn.send((len(otlp.spans), len(lf.generations())))


def repeat(label: str, runs: int, fn) -> float:
    samples = [asyncio.run(fn()) for _ in range(runs)]
    best = statistics.median(samples)
    print(f"  {label:<8} {best * 1e6:9.1f} us/request  (median of {runs} runs of the batch)")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    logging.disable(logging.WARNING)  # the SDK logs every dropped span; that is not what we measure here
    n, chunks, runs = opts.requests, opts.chunks, opts.runs
    print(f"{n} requests x {chunks} chunks, {runs} runs each, one process (pid {os.getpid()})")

    results: dict[str, float] = {}
    cpu: dict[str, float] = {}
    results["bare"] = repeat("bare", runs, lambda: bare(n, chunks))
    off = Telemetry.from_args(ARGS, meter=NullSink(), environ={})
    cpu_started = time.process_time()
    results["off"] = repeat("off", runs, lambda: observed(off, n, chunks))
    cpu["off"] = (time.process_time() - cpu_started) / (n * runs)
    off.shutdown()

    spawn = multiprocessing.get_context("spawn")
    for label, mode, sinks in (
        ("on", "ok", ("otlp", "langfuse")),
        ("otlp", "ok", ("otlp",)),
        ("langfuse", "ok", ("langfuse",)),
        ("on-hang", "hang", ("otlp", "langfuse")),
    ):
        public_key = f"pk-bench-{uuid.uuid4().hex}"
        parent, child = spawn.Pipe()
        server = spawn.Process(target=_serve, args=(mode, public_key, child), daemon=True)
        server.start()
        otlp_url, lf_url = parent.recv()
        env = {}
        if "otlp" in sinks:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_url
        if "langfuse" in sinks:
            env.update(LANGFUSE_PUBLIC_KEY=public_key, LANGFUSE_SECRET_KEY="s", LANGFUSE_BASE_URL=lf_url)
        telemetry = Telemetry.from_args(ARGS, meter=InMemoryMetricsSink(), environ=env, shutdown_timeout_s=5.0)
        cpu_started = time.process_time()
        results[label] = repeat(label, runs, lambda t=telemetry: observed(t, n, chunks))
        telemetry.shutdown()
        cpu[label] = (time.process_time() - cpu_started) / (n * runs)
        parent.send("stop")
        got_otlp, got_lf = parent.recv()
        server.terminate()
        dropped = telemetry.metrics.dropped
        print(
            f"           cpu {cpu[label] * 1e6:.0f} us/request (all threads); received otlp={got_otlp} "
            f"langfuse={got_lf} of {n * runs}; dropped otlp={dropped['otlp']} langfuse={dropped['langfuse']}"
        )

    print("ratios:")
    extra_off = (results["off"] - results["bare"]) * 1e6
    print(f"  off / bare      {results['off'] / results['bare']:.2f}x   (+{extra_off:.1f} us per request)")
    for label in ("on", "otlp", "langfuse", "on-hang"):
        extra = (results[label] - results["off"]) * 1e6
        print(
            f"  {label:<8} / off  {results[label] / results['off']:.2f}x wall (+{extra:.1f} us per request), "
            f"{cpu[label] / cpu['off']:.2f}x cpu"
        )


if __name__ == "__main__":
    main()
