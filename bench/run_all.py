"""`make bench`: the router next to its floor and its usual alternative in one run, tables written into the docs.

Phases (`BENCH_PHASES` or `--only`), each with nothing else of the benchmark running:
  cloud   one Ray cluster with the routers and the bare forwarder only (no model replica), HAProxy ingress,
          LiteLLM's proxy (pinned, its own venv under .cache/) and the Anthropic stand-in: bench_cloud (router,
          router with telemetry off, forwarder, LiteLLM, stand-in directly) then bench_router_telemetry
          (telemetry off and each export variant, spans and generations counted by a discarding sink); then a
          cluster with only the router and its telemetry-off twin for the ABBA pairs the targets are judged on;
          then, with no cluster, bench_telemetry_cpu (the router span's CPU part by part, in process)
  model   the default local model: bench/bench_default_model.py in its own process (vLLM's own server, Ray's
          OpenAiIngress and the router; TTFT and inter-token latency at c=1 and c=8)
  micro   in process, no cluster: the Observation micro-benchmark and the router's CPU per cloud request
Results go to bench/results/*.json (git-ignored); the tables go into docs/benchmarks.md between the
`<!-- bench:*:begin/end -->` markers (bench/report.py). It reports; it never fails a run on timing.

    python -m bench.run_all                        # cloud + model (about 25 minutes on 2 cores)
    BENCH_PHASES=cloud python -m bench.run_all     # the cloud path alone (about 8 minutes)
    python -m bench.run_all --quick --no-docs      # short runs, a first look, docs left alone
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from bench import bench_cloud, bench_router_cpu, bench_router_telemetry, bench_telemetry_cpu, common, report

PHASES = ("cloud", "model", "micro")
DEFAULT_PHASES = ("cloud", "model")


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
    data = {"stdout": out.stdout, "returncode": out.returncode}
    common.write_result("telemetry-micro", {"bench": "telemetry_micro", "machine": common.machine()} | data)
    return data


def model_command(quick: bool) -> list[str]:
    """bench_default_model's command line; its table goes into the docs with the others' (from its result file),
    so the child writes none."""
    return [sys.executable, "-m", "bench.bench_default_model", *(["--quick"] if quick else []), "--no-docs"]


def model(quick: bool) -> int:
    """bench_default_model in a process of its own (it starts vLLM and its own cluster); its exit status."""
    common.banner("default model: vLLM's own server, OpenAiIngress, the router")
    return subprocess.run(model_command(quick), cwd=common.REPO, check=False).returncode


def phases_from(value: str | None) -> tuple[str, ...]:
    """`BENCH_PHASES` ("cloud", "cloud,model", "all"; empty: the default phases) as a tuple of known phases."""
    if not value or not value.strip():
        return DEFAULT_PHASES
    names = tuple(p.strip() for p in value.replace(" ", ",").split(",") if p.strip())
    if names == ("all",):
        return PHASES
    unknown = [n for n in names if n not in PHASES]
    if unknown:
        raise SystemExit(f"BENCH_PHASES: unknown phase(s) {unknown}; known: {', '.join(PHASES)}, all")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a first look, not figures to quote)")
    parser.add_argument("--proxy", choices=("default", "haproxy"), default="haproxy", help="Serve ingress")
    parser.add_argument("--only", nargs="+", choices=PHASES, help="phases to run (default: BENCH_PHASES)")
    parser.add_argument("--profile", action="store_true", help="also py-spy the exporting router replica")
    parser.add_argument("--no-docs", action="store_true", help="do not write the tables into docs/benchmarks.md")
    opts = parser.parse_args()
    phases = tuple(opts.only) if opts.only else phases_from(os.environ.get("BENCH_PHASES"))
    started = time.monotonic()
    machine = common.machine()
    print(f"machine: {machine}; phases: {', '.join(phases)}")
    if "micro" in phases:
        micro(opts.quick)
        bench_router_cpu.run(quick=opts.quick)
    if "cloud" in phases:
        with common.session(opts.proxy, with_model=False, litellm=True, routers=bench_router_telemetry.ROUTERS) as s:
            bench_cloud.run(s, quick=opts.quick)
            telemetry = bench_router_telemetry.run(s, quick=opts.quick)
            if opts.profile:
                print(f"  profile: {bench_router_telemetry.profile(s)}")
        bench_router_telemetry.finish(telemetry, opts.proxy, quick=opts.quick)  # the pairs, in their own cluster
        bench_telemetry_cpu.run(quick=opts.quick)  # in process, once the cluster is gone
    if "model" in phases and model(opts.quick) != 0:
        print("the default-model phase failed; its table is left as it was", file=sys.stderr)
        phases = tuple(p for p in phases if p != "model")  # not rewritten from an older run's result
    blocks = report.from_results(" --quick" if opts.quick else "", phases, proxy=opts.proxy)
    for name, body in blocks.items():
        print(f"\n[{name}]\n{body}")
    if blocks and not opts.no_docs:
        print(f"\ntables written to {report.write_docs(blocks)}")
    elapsed = time.monotonic() - started
    print(f"\nwall time {elapsed:.0f}s; load now {common.load_average()}; results in bench/results/")
    summary = {"quick": opts.quick, "machine": machine, "wall_s": round(elapsed), "tables": blocks}
    common.write_result("summary", summary)


if __name__ == "__main__":
    main()
