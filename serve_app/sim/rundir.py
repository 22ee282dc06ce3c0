"""Reads a run directory (`requests.jsonl`, `summary.json`, `events.jsonl`) or a bare request log; no writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from serve_app.records import RequestRecord, read_records

REQUESTS = "requests.jsonl"
SUMMARY = "summary.json"
EVENTS = "events.jsonl"


@dataclass(frozen=True, slots=True)
class FaultEvent:
    t: float
    kind: str
    detail: str = ""
    end: float | None = None


@dataclass(frozen=True, slots=True)
class Run:
    records: list[RequestRecord]
    summary: dict[str, Any] = field(default_factory=dict)
    events: list[FaultEvent] = field(default_factory=list)

    @property
    def window(self) -> tuple[float, float]:
        """The summary's window when it has one, else the records' first start to last end."""
        window = self.summary.get("window") or {}
        try:
            return _unix(window["start"]), _unix(window["end"])
        except (KeyError, TypeError, ValueError):
            if not self.records:
                return 0.0, 0.0
            return min(r.t_start for r in self.records), max(r.t_end for r in self.records)


def _unix(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def load_records(path: Path) -> list[RequestRecord]:
    with path.open(encoding="utf-8") as lines:
        return list(read_records(lines))


def load_run(path: Path) -> Run:
    """A run directory, or a request log file (then without summary or events)."""
    if path.is_file():
        return Run(load_records(path))
    requests = path / REQUESTS
    if not requests.exists():
        raise FileNotFoundError(f"{path} holds no {REQUESTS}")
    summary = json.loads((path / SUMMARY).read_text(encoding="utf-8")) if (path / SUMMARY).exists() else {}
    events: list[FaultEvent] = []
    if (path / EVENTS).exists():
        for line in (path / EVENTS).read_text(encoding="utf-8").splitlines():
            if line.strip():
                data = json.loads(line)
                events.append(
                    FaultEvent(float(data["t"]), str(data["kind"]), str(data.get("detail") or ""), data.get("end"))
                )
    return Run(load_records(requests), summary, events)
