"""The report's timeline plots as inline PNG data URIs (matplotlib, headless), fault events drawn on each."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from itertools import accumulate

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend

from serve_app.sim.aggregate import BACKENDS, PERCENTILES, Series
from serve_app.sim.rundir import FaultEvent

COLORS = {"local": "#2a9d8f", "cloud": "#e76f51", "none": "#8d99ae"}
_FAULT_COLOR = "#6c757d"
TIME_LABEL = "time since start (s)"


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _faults(ax: Axes, events: Sequence[FaultEvent], origin: float) -> None:
    """Shades each fault window (a line for an instant event) and names it at the top of the axes."""
    for event in events:
        x = event.t - origin
        if event.end is not None and event.end > event.t:
            ax.axvspan(x, event.end - origin, color=_FAULT_COLOR, alpha=0.15, lw=0)
        else:
            ax.axvline(x, color=_FAULT_COLOR, ls="--", lw=1)
        ax.annotate(
            event.kind,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="#343a40",
            rotation=90,
            va="top",
            ha="right",
            zorder=5,
        )


def _figure(title: str, ylabel: str, draw: Callable[[Axes], None], events: Sequence[FaultEvent], origin: float) -> str:
    fig = Figure(figsize=(9, 3.0))
    ax = fig.subplots()
    draw(ax)
    _faults(ax, events, origin)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _stacked(ax: Axes, s: Series, groups: dict[str, list[int]], colors: dict[str, str] | None = None) -> None:
    bottom = [0.0] * len(s.t)
    for name, counts in groups.items():
        if not any(counts):
            continue
        rates = [c / s.width_s for c in counts]
        kwargs = {"color": colors[name]} if colors and name in colors else {}
        ax.bar(s.t, rates, width=s.width_s, bottom=bottom, align="edge", label=name, **kwargs)
        bottom = [b + r for b, r in zip(bottom, rates, strict=True)]


def timeline_plots(
    s: Series, events: Sequence[FaultEvent], origin: float, gpu: dict[str, float] | None
) -> dict[str, str]:
    """Section name -> PNG data URI."""
    mid = [t + s.width_s / 2 for t in s.t]
    plots: dict[str, str] = {}
    plots["backend"] = _figure(
        "Requests by backend", "requests/s", lambda ax: _stacked(ax, s, s.by_backend, COLORS), events, origin
    )
    plots["reason"] = _figure(
        "Requests by route reason", "requests/s", lambda ax: _stacked(ax, s, s.by_reason), events, origin
    )

    def fallbacks_errors(ax: Axes) -> None:
        ax.plot(mid, [f / s.width_s for f in s.fallbacks], label="fallbacks", color="#f4a261", lw=2)
        for key, counts in s.errors.items():
            ax.plot(mid, [c / s.width_s for c in counts], label=f"errors {key}", lw=1.5)

    plots["errors"] = _figure("Fallbacks and errors", "per second", fallbacks_errors, events, origin)

    def percentiles(which: dict[str, dict[int, list[float | None]]]) -> Callable[[Axes], None]:
        def draw(ax: Axes) -> None:
            styles = {50: ":", 95: "-", 99: "--"}
            for backend in BACKENDS:
                for q in PERCENTILES:
                    values = [v * 1000 if v is not None else float("nan") for v in which[backend][q]]
                    if any(v == v for v in values):  # skip a backend with no data at all
                        ax.plot(mid, values, styles[q], color=COLORS[backend], label=f"{backend} p{q}", marker=".")

        return draw

    plots["latency"] = _figure("Latency by backend", "latency (ms)", percentiles(s.latency), events, origin)
    plots["ttft"] = _figure("Time to first token by backend", "TTFT (ms)", percentiles(s.ttft), events, origin)
    plots["tokens"] = _figure(
        "Output tokens per second",
        "output tokens/s",
        lambda ax: ax.plot(mid, s.output_tokens_per_s, color="#264653", lw=2, label="output tokens/s"),
        events,
        origin,
    )

    def spend(ax: Axes) -> None:
        ax.plot(mid, s.usd_per_hour["cloud"], color=COLORS["cloud"], lw=2, label="cloud USD/h")
        ax.plot(mid, s.usd_per_hour["local"], color=COLORS["local"], lw=2, label="local USD/h (allocated)")
        ax.plot(mid, s.all_cloud_usd_per_hour, color="#6c757d", lw=1, ls="--", label="all-cloud USD/h")
        for kind, value in (gpu or {}).items():
            ax.axhline(value, color="#7209b7", ls=":" if kind == "idle" else "-.", lw=1, label=f"GPU USD/h {kind}")

    plots["spend"] = _figure("Spend rate", "USD per hour", spend, events, origin)

    def cumulative(ax: Axes) -> None:
        hours = s.width_s / 3600.0
        actual = [(c + loc) * hours for c, loc in zip(s.usd_per_hour["cloud"], s.usd_per_hour["local"], strict=True)]
        ends = [t + s.width_s for t in s.t]
        ax.plot(
            ends,
            list(accumulate(x * hours for x in s.all_cloud_usd_per_hour)),
            color="#6c757d",
            lw=2,
            label="all cloud (counterfactual)",
        )
        ax.plot(ends, list(accumulate(actual)), color=COLORS["local"], lw=2, label="hybrid (cloud + local allocated)")

    plots["savings"] = _figure("Cumulative spend against all-cloud", "USD", cumulative, events, origin)
    return plots
