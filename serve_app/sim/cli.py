"""`python -m serve_app.sim`: the simulator's command line; parses options, validates them, starts one run."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from serve_app.sim import actions, arrivals, faults, workload
from serve_app.sim.run import RunConfig, run

STATE = Path(".cache")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve_app.sim", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="mixed", help="A shipped workload name or a YAML file (default: mixed).")
    p.add_argument(
        "--arrival",
        default="poisson",
        help="constant | poisson | bursts[:peak=,every=,for=] | diurnal[:period=,min=] (default: poisson).",
    )
    p.add_argument("--rate", type=float, default=2.0, help="Mean (or base) requests per second (default: 2).")
    p.add_argument("--duration", default="60s", help="Run length, e.g. 90s or 2m (default: 60s).")
    p.add_argument("--requests", type=int, default=None, help="Stop after this many requests instead.")
    p.add_argument("--concurrency", type=int, default=32, help="Most requests in flight at once (default: 32).")
    p.add_argument(
        "--client",
        choices=["sdk", "http"],
        default="sdk",
        help="sdk: the openai and anthropic SDKs (default); http: the same wire requests on one aiohttp "
        "session, for rates beyond what the SDKs can send from one process.",
    )
    p.add_argument("--seed", type=int, default=0, help="Same seed, same request sequence and schedule.")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND@T[+D]",
        help="Fault event, repeatable: kill_model@20s, redeploy_model@30s, cloud_429@30s+15s, "
        "cloud_529@30s+15s, saturate_local@10s+20s.",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="The router (make serve, or a port-forward).")
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=STATE / "dev-api-key",
        help="File holding the router's key (default: the key make serve made); or set HYBRID_LLM_API_KEY.",
    )
    p.add_argument(
        "--metrics-url",
        default="http://127.0.0.1:8080/metrics",
        help="Ray's metrics endpoint, scraped before and after the run ('' to skip).",
    )
    p.add_argument("--metrics-wait", type=float, default=30.0, help="Longest wait for the last export, seconds.")
    p.add_argument("--reports-dir", type=Path, default=Path("reports"))
    p.add_argument("--run-id", default=None, help="Directory name under the reports dir (default: time-workload-seed).")
    p.add_argument("--platform", choices=["local", "eks"], default="local", help="How faults reach the model.")
    p.add_argument("--ray-address", default="127.0.0.1:6379", help="Ray GCS address (kill_model, local).")
    p.add_argument("--dashboard-url", default="http://127.0.0.1:8265", help="Ray dashboard (state API, serve deploy).")
    p.add_argument("--serve-config", type=Path, default=Path("serve_config.local.yaml"), help="For redeploy_model.")
    p.add_argument(
        "--standin-url",
        default=None,
        help="The Anthropic stand-in, for cloud faults (default: the one make serve started, if any).",
    )
    p.add_argument("--kube-namespace", default="hybrid-llm")
    p.add_argument("--kube-selector", default="ray.io/node-type=worker", help="Pods kill_model deletes on EKS.")
    p.add_argument("--saturate-concurrency", type=int, default=24)
    p.add_argument("--no-progress", action="store_true", help="No live table (CI logs).")
    p.add_argument("--no-report", action="store_true", help="Write records and summary only, no HTML.")
    p.add_argument("--list-workloads", action="store_true", help="List the shipped workloads and exit.")
    p.add_argument("--check-workload", metavar="FILE", help="Validate a workload file and exit.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list_workloads:
        for name in workload.available():
            print(name)
        return 0
    try:
        if args.check_workload:
            mix = workload.load(args.check_workload)
            for item, share in mix.parts:
                print(f"{item.name:24} {share:6.1%}  kind={item.kind} api={item.api} stream={item.stream:g}")
            return 0
        mix = workload.load(args.workload)
        duration = None if args.requests else faults.parse_seconds(args.duration)
        config = RunConfig(
            base_url=args.base_url,
            api_key=_api_key(args.api_key_file),
            mix=mix,
            arrival=arrivals.parse(args.arrival, args.rate),
            seed=args.seed,
            duration_s=duration,
            count=args.requests,
            concurrency=max(1, args.concurrency),
            client=args.client,
            faults=faults.timeline(args.fault, duration=duration),
            target=actions.Target(
                platform=args.platform,
                ray_address=args.ray_address,
                dashboard_url=args.dashboard_url,
                serve_config=args.serve_config,
                standin_url=args.standin_url or _read(STATE / "standin-url"),
                kube_namespace=args.kube_namespace,
                kube_selector=args.kube_selector,
            ),
            reports_dir=args.reports_dir,
            run_id=args.run_id,
            metrics_url=args.metrics_url or None,
            metrics_wait_s=args.metrics_wait,
            saturate_concurrency=args.saturate_concurrency,
            progress=not args.no_progress,
            report=not args.no_report,
        )
    except (workload.WorkloadError, arrivals.ArrivalError, faults.FaultError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = _event_loop_run(config)
    print(
        f"run written to {run_dir}/ (summary.json, requests.jsonl, events.jsonl"
        f"{', report.html' if (run_dir / 'report.html').exists() else ''})"
    )
    return 0


def _api_key(path: Path) -> str:
    key = os.environ.get("HYBRID_LLM_API_KEY") or _read(path)
    if not key:
        raise ValueError(f"no API key: set HYBRID_LLM_API_KEY or write it to {path} (make serve does)")
    return key


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.is_file() else None


def _event_loop_run(config: RunConfig) -> Path:
    try:
        import uvloop  # a faster event loop: the generator's own ceiling (bench/bench_sim_generator.py)
    except ImportError:
        return asyncio.run(run(config))
    return uvloop.run(run(config))
