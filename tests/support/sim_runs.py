"""Synthetic request records and run directories (the simulator's file contract) for the report and replay tests."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.records import RequestRecord

T0 = 1_780_000_000.0


def record(**overrides: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        request_id="r",
        source="sim",
        t_start=T0,
        t_end=T0 + 1.0,
        api="openai",
        stream=True,
        model_requested="auto",
        prompt_chars=350,
        prompt_tokens_estimated=None,
        max_tokens=128,
        has_tools=False,
        has_images=False,
        backend="local",
        route_reason="policy_local",
        status=200,
        input_tokens=100,
        output_tokens=50,
        latency_s=1.0,
        ttft_s=0.1,
        cost_usd=0.0001,
        counterfactual_cost_usd=0.001,
    )
    base.update(overrides)
    return RequestRecord(**base)


def mixed_records(n: int = 300, *, seed: int = 7, duration_s: float = 120.0) -> list[RequestRecord]:
    """A plausible mixed run: most local, long prompts and tools to the cloud, a 429 window with fallbacks."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = T0 + duration_s * i / n
        kind = rng.random()
        if kind < 0.15:
            rec = record(
                backend="cloud",
                route_reason="prompt_too_long",
                prompt_chars=20_000,
                ttft_s=0.4 + rng.random() * 0.2,
                latency_s=2.0,
                cost_usd=0.004,
                counterfactual_cost_usd=None,
                input_tokens=5000,
            )
        elif kind < 0.25:
            rec = record(
                backend="cloud",
                route_reason="has_tools",
                has_tools=True,
                ttft_s=0.3,
                latency_s=1.5,
                cost_usd=0.002,
                counterfactual_cost_usd=0.0002,
            )
        else:
            rec = record(ttft_s=0.05 + rng.random() * 0.1, latency_s=0.8 + rng.random() * 0.4)
        if 40 <= i * duration_s / n < 55 and rec.backend == "cloud" and not rec.has_tools:
            rec = record(
                backend=None,
                route_reason="prompt_too_long",
                status=429,
                outcome="error",
                input_tokens=0,
                output_tokens=0,
                cost_usd=None,
                counterfactual_cost_usd=None,
                latency_s=0.01,
                ttft_s=None,
            )
        elif 40 <= i * duration_s / n < 55 and rec.has_tools:
            rec = record(backend="local", route_reason="fallback_cloud_error", fallback=True, has_tools=True)
        out.append(replace(rec, request_id=f"r{i}", t_start=t, t_end=t + (rec.latency_s or 0.01)))
    return out


def write_run(
    path: Path,
    records: list[RequestRecord],
    *,
    summary: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "requests.jsonl").write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if events is not None:
        (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()
