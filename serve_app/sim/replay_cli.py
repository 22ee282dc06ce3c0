"""`python -m serve_app.sim replay`: candidates from YAML, a ranked rich table, the estimator's check, a routing block.

Reads a run directory or a request log, the run's own config (the baseline) and candidate overrides; prints
the fitted local latency model, how well replaying the baseline reproduces the run, the candidates ranked with
90% bootstrap intervals, and the winner's `routing` block for serve_config.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from serve_app.sim.aggregate import gpu_total, gpu_usd_per_hour
from serve_app.sim.replay import PolicyConfig, Replayer
from serve_app.sim.replay_eval import Check, Evaluation, Interval, check_baseline, evaluate, rank
from serve_app.sim.rundir import load_run

BASELINE = "baseline"


def router_args_of(serve_config: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The router application's args and the model application's GPU price from a Serve config."""
    router: dict[str, Any] = {}
    gpu = None
    for app in serve_config.get("applications") or ():
        path = str(app.get("import_path", ""))
        if path.endswith(":build_app"):
            router = dict(app.get("args") or {})
        elif path.endswith(":build_llm_app"):
            gpu = (app.get("args") or {}).get("gpu_usd_per_hour")
    if not router:
        raise ValueError("the Serve config has no router application (import_path ...:build_app)")
    return router, gpu


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` deep-merged over `base` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def load_candidates(
    path: Path, *, config: Path | None, gpu_usd_per_hour: float | None
) -> tuple[PolicyConfig, list[PolicyConfig]]:
    """The baseline (the run's config) and each candidate as the baseline with its overrides."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = dict(spec.get("baseline") or {})
    gpu = gpu_usd_per_hour if gpu_usd_per_hour is not None else base.pop("gpu_usd_per_hour", None)
    serve_config = config or (path.parent / base.pop("serve_config") if "serve_config" in base else None)
    if serve_config is not None:
        args, config_gpu = router_args_of(yaml.safe_load(Path(serve_config).read_text(encoding="utf-8")))
        base = _merged(args, base)
        gpu = gpu if gpu is not None else config_gpu
    baseline = PolicyConfig.from_args(BASELINE, base, gpu_usd_per_hour=gpu)
    candidates = []
    for i, item in enumerate(spec.get("candidates") or ()):
        candidates.append(baseline.with_overrides(str(item.get("name") or f"candidate_{i + 1}"), item))
    return baseline, candidates


def _s(value: float | None, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value * scale)


def _with(value: float | None, interval: Interval, *, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    if value is None:
        return "-"
    if interval.low is None or interval.high is None:
        return _s(value, scale, fmt)
    return f"{_s(value, scale, fmt)} [{_s(interval.low, scale, fmt)}-{_s(interval.high, scale, fmt)}]"


def ranked_table(ranked: Sequence[Evaluation], *, ttft_slo_s: float | None, fitted_max: int | None) -> Table:
    """`local c max` is marked `*` where a candidate drives the local model beyond the concurrency the fit saw."""
    table = Table(title="Candidates, best first (90% bootstrap intervals; * = latency extrapolated)")
    for column in (
        "#",
        "candidate",
        "local %",
        "cloud USD/h",
        "GPU USD/h",
        "total USD/h",
        "GPU busy %",
        "p95 TTFT local ms",
        "p95 TTFT cloud ms",
        f"TTFT > {_s(ttft_slo_s, 1000)} ms",
        "errors",
        "local c max",
    ):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for i, e in enumerate(ranked, start=1):
        est, iv = e.estimate, e.intervals
        beyond = fitted_max is not None and est.local_concurrency_max > fitted_max
        table.add_row(
            str(i),
            est.name,
            _with(est.local_share, iv["local_share"], scale=100),
            _with(est.cloud_usd_per_hour, iv["cloud_usd_per_hour"], fmt="{:.3f}"),
            _s(est.gpu_usd_per_hour, fmt="{:.3f}") if est.gpu_usd_per_hour is not None else "not measured",
            _s(est.usd_per_hour, fmt="{:.3f}"),
            _with(est.gpu_utilisation, iv["gpu_utilisation"], scale=100),
            _with(est.ttft_p95_s["local"], iv["ttft_p95_local"], scale=1000),
            _with(est.ttft_p95_s["cloud"], iv["ttft_p95_cloud"], scale=1000),
            _with(None if est.slo_violations is None else float(est.slo_violations), iv["slo_violations"]),
            str(est.errors),
            f"{est.local_concurrency_max}{'*' if beyond else ''}",
        )
    return table


def check_table(check: Check) -> Table:
    table = Table(
        title=f"Estimator check: the run's own config replayed (decisions agree: {check.decision_agreement:.1%})"
    )
    for column in ("metric", "measured", "replayed", "error"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in check.rows:
        table.add_row(
            row.metric, _s(row.measured, fmt="{:.4g}"), _s(row.replayed, fmt="{:.4g}"), _s(row.error, fmt="{:+.3g}")
        )
    return table


def suggested_block(best: PolicyConfig, baseline: PolicyConfig) -> str:
    """The winner's `routing` block (fields that differ from the defaults), and `local.saturation_inflight` when it
    differs from the run's, as YAML for the router application's args."""
    block: dict[str, Any] = {"routing": best.routing.model_dump(exclude_defaults=True) or {}}
    if best.local.saturation_inflight != baseline.local.saturation_inflight:
        block["local"] = {"saturation_inflight": best.local.saturation_inflight}
    return yaml.safe_dump(block, sort_keys=False)


def replay_main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.sim replay", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run directory (requests.jsonl) or a request log (JSONL)")
    parser.add_argument("--candidates", type=Path, required=True, help="YAML: baseline and candidates")
    parser.add_argument("--config", type=Path, help="the Serve config the run used (overrides the YAML's baseline)")
    parser.add_argument("--ttft-slo-ms", type=float, help="TTFT objective; requests above it are SLO violations")
    parser.add_argument("--slo-budget", type=float, default=0.05, help="largest share of violations to accept")
    parser.add_argument("--gpu-usd-per-hour", type=float, help="GPU price (default: the config's or the run's)")
    parser.add_argument("--bootstrap", type=int, default=50, help="bootstrap replays per candidate (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the estimates as JSON here")
    args = parser.parse_args(argv)
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    if not args.source.exists():
        parser.error(f"{args.source} does not exist")
    run = load_run(args.source)
    if not run.records:
        parser.error(f"{args.source} holds no request records")
    gpu = args.gpu_usd_per_hour
    if gpu is None:
        gpu = gpu_total(gpu_usd_per_hour(run.summary.get("prometheus")))
    try:
        baseline, candidates = load_candidates(args.candidates, config=args.config, gpu_usd_per_hour=gpu)
    except (OSError, ValueError) as exc:
        parser.error(f"candidates: {exc}")
    slo = None if args.ttft_slo_ms is None else args.ttft_slo_ms / 1000.0
    replayer = Replayer(run.records, baseline)
    model = replayer.model
    if model is None:
        console.print("[yellow]No local request answered in this run: replay cannot model the local backend.[/]")
    else:
        console.print(
            f"Local latency model from {model.points} requests, concurrency {model.concurrency_range[0]}-"
            f"{model.concurrency_range[1]}: TTFT = {model.ttft.intercept * 1000:.1f} ms + "
            f"{model.ttft.slope * 1000:.2f} ms x concurrency (RMSE {model.ttft.rmse * 1000:.1f} ms); "
            f"time per output token = {model.tpot.intercept * 1000:.2f} ms + {model.tpot.slope * 1000:.3f} ms x "
            f"concurrency (RMSE {model.tpot.rmse * 1000:.2f} ms). Outside that concurrency range it extrapolates."
        )
    check = check_baseline(replayer, ttft_slo_s=slo, seed=args.seed)
    console.print(check_table(check))
    if check.hold_out is not None:
        h = check.hold_out
        console.print(
            f"Latency model on held-out local requests ({h.folds}-fold): TTFT RMSE {h.ttft_rmse_s * 1000:.1f} ms; "
            f"p95 measured {h.ttft_p95_measured_s * 1000:.1f} ms, predicted {h.ttft_p95_predicted_s * 1000:.1f} ms."
        )
    policies = [baseline, *candidates]
    evaluations = [evaluate(replayer, p, ttft_slo_s=slo, bootstrap=args.bootstrap, seed=args.seed) for p in policies]
    ranked = rank(evaluations, slo_budget=args.slo_budget if slo is not None else None)
    fitted_max = None if model is None else model.concurrency_range[1]
    console.print(ranked_table(ranked, ttft_slo_s=slo, fitted_max=fitted_max))
    best = next(p for p in policies if p.name == ranked[0].estimate.name)
    if best is baseline:
        console.print("The run's own config ranks first: keep it.")
    console.print(f"Suggested router args ({best.name}):")
    console.print(suggested_block(best, baseline), markup=False, highlight=False)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "ranked": [
                        {"estimate": asdict(e.estimate), "intervals": {k: asdict(v) for k, v in e.intervals.items()}}
                        for e in ranked
                    ],
                    "check": {
                        "rows": [asdict(r) | {"error": r.error} for r in check.rows],
                        "decision_agreement": check.decision_agreement,
                        "hold_out": None if check.hold_out is None else asdict(check.hold_out),
                    },
                    "suggested": yaml.safe_load(suggested_block(best, baseline)),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(replay_main())
