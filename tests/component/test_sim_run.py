"""A whole simulation run against the aiohttp Anthropic stand-in: the files it writes, its fault window, its seed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from serve_app.records import read_records
from serve_app.sim import actions, arrivals, faults, workload
from serve_app.sim.run import RunConfig, run
from serve_app.sim.standin import AnthropicStandIn
from serve_app.sim.standin_server import create_app


@pytest_asyncio.fixture(loop_scope="function")
async def standin_url() -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(AnthropicStandIn(record_requests=False, token_delay_s=0.0)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def _config(url: str, reports: Path, run_id: str, **overrides: object) -> RunConfig:
    values: dict[str, object] = {
        "base_url": url,
        "api_key": "sk-test",
        "mix": workload.load("anthropic_messages"),  # the stand-in speaks the Messages API only
        "arrival": arrivals.parse("constant", 40.0),
        "seed": 5,
        "duration_s": 1.5,
        "concurrency": 8,
        "target": actions.Target(standin_url=url),
        "reports_dir": reports,
        "run_id": run_id,
        "metrics_url": None,
        "progress": False,
        "report": False,
    }
    return RunConfig(**(values | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize("client", ["sdk", "http"])
async def test_sim_run_writes_records_events_and_summary(standin_url, tmp_path, client):
    window = faults.timeline(["cloud_429@0.5s+0.5s"], duration=1.5)
    run_dir = await run(_config(standin_url, tmp_path, "r", faults=window, client=client, concurrency=64))
    records = list(read_records((run_dir / "requests.jsonl").read_text().splitlines()))
    summary = json.loads((run_dir / "summary.json").read_text())
    (event,) = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert summary["requests"] == len(records) > 0  # up to 60 (40/s for 1.5 s), fewer when the cap held sends back
    assert set(summary) >= {"requests", "by_backend", "tokens", "cost_usd", "window", "by_reason", "errors"}
    assert summary["window"]["start"].endswith("Z") and summary["window"]["end"] > summary["window"]["start"]
    assert summary["prometheus"] == {"source": None, "error": "metrics endpoint not reachable"}
    assert event["kind"] == "cloud_429" and event["end"] > event["t"]
    refused = [r for r in records if r.status == 429]
    assert refused and all(event["t"] - 0.1 <= r.t_start <= event["end"] + 0.1 for r in refused)
    assert summary["errors"] == {"429": len(refused)}
    answered = [r for r in records if r.outcome == "ok"]
    assert summary["tokens"]["input"] == sum(r.input_tokens for r in answered) > 0


async def test_sim_run_same_seed_same_requests(standin_url, tmp_path):
    def sequence(run_dir: Path) -> list[tuple[int, int | None, bool, str]]:
        records = read_records((run_dir / "requests.jsonl").read_text().splitlines())
        return [(r.prompt_chars, r.max_tokens, r.stream, r.model_requested) for r in records]

    first = await run(_config(standin_url, tmp_path, "a", arrival=arrivals.parse("constant", 5.0), concurrency=1))
    again = await run(_config(standin_url, tmp_path, "b", arrival=arrivals.parse("constant", 5.0), concurrency=1))
    other = await run(
        _config(standin_url, tmp_path, "c", arrival=arrivals.parse("constant", 5.0), concurrency=1, seed=6)
    )
    assert sequence(first) == sequence(again) != sequence(other)


async def test_sim_run_request_count_and_cap(standin_url, tmp_path):
    run_dir = await run(
        _config(standin_url, tmp_path, "n", duration_s=None, count=25, arrival=arrivals.parse("constant", 1000.0))
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"] == 25 and summary["concurrency_cap"] == 8
    assert summary["late_sends"] > 0  # 1000/s against a cap of 8: most sends waited for a slot


async def test_sim_run_records_a_fault_it_could_not_carry_out(standin_url, tmp_path):
    target = actions.Target(standin_url=None)
    window = faults.timeline(["cloud_529@0.2s+0.2s"], duration=1.5)
    run_dir = await run(_config(standin_url, tmp_path, "f", faults=window, target=target))
    (event,) = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert event["failed"] is True and event["detail"].startswith("FAILED: cloud faults need the Anthropic stand-in")


async def test_sim_run_baseline_waits_for_counters_still_arriving(tmp_path):
    # A request answered just before the run reaches Ray's metrics endpoint up to an export interval later: the
    # baseline must include it, or the run's comparison counts it as the run's own.
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from serve_app.sim.run import _scrape_settled

    started = time.monotonic()

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            late = time.monotonic() - started > 1.5  # the earlier request shows up after 1.5 s
            body = f'ray_router_requests_total{{backend="local"}} {6.0 if late else 5.0}\n'.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        settled = await _scrape_settled(url, settle_s=2.5)
        assert settled is not None and settled["requests"] == 6.0  # it waited for the counters to stop moving
    finally:
        server.shutdown()
    assert await _scrape_settled(None, settle_s=2.5) is None
