"""A run's report: one self-contained HTML file (plots inline) from its records, summary and fault events.

`write_report(run_dir)` writes `run_dir/report.html`; `python -m serve_app.sim.report <run_dir>` (or the
simulator CLI's `report` command, through `report_main`) does the same from a shell.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.sim.aggregate import (
    BACKENDS,
    Distribution,
    compare,
    flatten,
    gpu_total,
    gpu_usd_per_hour,
    savings,
    series,
    totals,
)
from serve_app.sim.plots import timeline_plots
from serve_app.sim.rundir import Run, load_run

REPORT = "report.html"
SECTIONS = ("Totals", "Traffic", "Latency", "Throughput", "Cost and savings", "Router counters", "Fault events")
NOT_MEASURED = "not measured"

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#212529;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
td,th{border:1px solid #dee2e6;padding:3px 8px;text-align:right}th{background:#f1f3f5}
td:first-child,th:first-child{text-align:left}.bad{color:#c1121f;font-weight:600}.note{color:#6c757d;font-size:13px}
img{max-width:100%;display:block;margin:6px 0 14px}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3f}" if abs(value) >= 1 else f"{value:.6g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, bad_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            bad = i == bad_column and isinstance(value, int | float) and abs(value) > 1e-9
            cells.append(f'<td class="bad">{_fmt(value)}</td>' if bad else f"<td>{_fmt(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def _ms(d: Distribution, name: str) -> list[Any]:
    return [name, d.count, *((v * 1000 if v is not None else None) for v in (d.p50, d.p95, d.p99))]


def render(run: Run, *, title: str) -> str:
    """The report's HTML for `run`."""
    start, end = run.window
    total = totals(run.records, window=(start, end))
    gpu = gpu_usd_per_hour(run.summary.get("prometheus"))
    save = savings(run.records, gpu_usd_per_hour=gpu_total(gpu), window_s=total.window_s)
    plots = timeline_plots(series(run.records, window=(start, end)), run.events, start, gpu)
    hours = max(total.window_s, 1e-9) / 3600.0
    parts = [f"<h1>{html.escape(title)}</h1>"]
    info = {k: v for k, v in run.summary.items() if not isinstance(v, dict | list)}
    parts.append(
        _table(
            ["run", "value"],
            [
                ["window", f"{_iso(start)} to {_iso(end)} ({total.window_s:.1f} s)"],
                ["records", f"{len(run.records)} ({', '.join(sorted({r.source for r in run.records})) or 'none'})"],
                *([k, v] for k, v in info.items()),
            ],
        )
    )

    parts.append("<h2>Totals</h2>")
    parts.append(
        _table(
            ["", "all", *BACKENDS, "none"],
            [
                ["requests", total.requests, *(total.by_backend[b] for b in (*BACKENDS, "none"))],
                [
                    "share",
                    "100%",
                    *(f"{total.by_backend[b] / max(total.requests, 1):.1%}" for b in (*BACKENDS, "none")),
                ],
            ],
        )
    )
    parts.append(_table(["tokens", "count"], total.tokens.items()))
    parts.append(_table(["route reason", "requests"], total.by_reason.items()))
    parts.append(_table(["fallbacks", "requests"], [["fallbacks", total.fallbacks]]))
    errors = total.errors.items() or [["none", 0]]
    parts.append(_table(["errors by status", "requests"], errors))

    parts.append("<h2>Traffic</h2>")
    parts += [_img(plots["backend"], "requests by backend"), _img(plots["reason"], "requests by route reason")]
    parts.append(_img(plots["errors"], "fallbacks and errors"))

    parts.append("<h2>Latency</h2>")
    header = ["", "requests", "p50 ms", "p95 ms", "p99 ms"]
    parts.append(_table(["latency", *header[1:]], [_ms(total.latency[b], b) for b in BACKENDS]))
    parts.append(_table(["time to first token", *header[1:]], [_ms(total.ttft[b], b) for b in BACKENDS]))
    parts += [_img(plots["latency"], "latency"), _img(plots["ttft"], "time to first token")]

    parts.append("<h2>Throughput</h2>")
    parts.append(_table(["", "value"], [["output tokens/s (window mean)", total.output_tokens_per_s]]))
    parts.append(_img(plots["tokens"], "output tokens per second"))

    parts.append("<h2>Cost and savings</h2>")
    gpu_rows = [[f"GPU USD/hour {k}", v] for k, v in (gpu or {}).items()] or [["GPU USD/hour", NOT_MEASURED]]
    parts.append(
        _table(
            ["", "USD"],
            [
                ["cloud USD", total.cost_usd["cloud"]],
                ["cloud USD/hour", total.cost_usd["cloud"] / hours],
                ["local USD (GPU time allocated to requests)", total.cost_usd["local"]],
                ["local USD/hour (allocated)", total.cost_usd["local"] / hours],
                *gpu_rows,
                ["all-cloud counterfactual USD", save.all_cloud_usd],
                ["saved against all-cloud (allocated GPU)", save.saved_allocated_usd],
                [
                    "saved against all-cloud (allocated + idle GPU)",
                    NOT_MEASURED if save.saved_with_idle_usd is None else save.saved_with_idle_usd,
                ],
                ["requests left out (cost or counterfactual unknown)", save.unpriced],
            ],
        )
    )
    parts += [_img(plots["spend"], "spend rate"), _img(plots["savings"], "cumulative spend")]

    parts.append("<h2>Router counters</h2>")
    prometheus = run.summary.get("prometheus")
    if prometheus:
        rows = [[c.key, c.records, c.router, c.difference] for c in compare(total.flat(), prometheus)]
        parts.append(_table(["total", "records", "router (Prometheus)", "difference"], rows, bad_column=3))
        parts.append('<p class="note">Counts and tokens must agree exactly; a difference is marked.</p>')
        stated = prometheus.get("difference")
        if isinstance(stated, dict) and stated:
            rows = [[k, v] for k, v in flatten(stated).items()]
            parts.append(_table(["difference stated by the simulator", "value"], rows, bad_column=1))
    else:
        parts.append(f'<p class="note">Router counters: {NOT_MEASURED} (the summary has no prometheus block).</p>')
        parts.append(_table(["total", "records"], total.flat().items()))

    parts.append("<h2>Fault events</h2>")
    if run.events:
        rows = [
            [e.kind, e.detail, f"{e.t - start:.1f}", "-" if e.end is None else f"{e.end - start:.1f}"]
            for e in run.events
        ]
        parts.append(_table(["event", "detail", "start (s)", "end (s)"], rows))
    else:
        parts.append('<p class="note">No fault events in this run.</p>')
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Writes `run_dir/report.html` from the run's files and returns its path. Given a request log file instead
    (the router's), writes the report next to it (`requests.jsonl` -> `requests.html`)."""
    run = load_run(run_dir)
    out = run_dir.with_suffix(".html") if run_dir.is_file() else run_dir / REPORT
    title = f"hybrid-llm {'request log' if run_dir.is_file() else 'run'} {run_dir.name}"
    out.write_text(render(run, title=title), encoding="utf-8")
    return out


def report_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.sim report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", type=Path, help="a run directory holding requests.jsonl (summary, events optional), or a request log"
    )
    args = parser.parse_args(argv)
    if not (args.run_dir.is_file() or (args.run_dir / "requests.jsonl").exists()):
        parser.error(f"{args.run_dir} is neither a request log nor a directory holding requests.jsonl")
    print(write_report(args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(report_main())
