"""One structured record per request: the schema shared by the router's request log, the simulator and replay; pure.

The router (opt-in) and the simulator write the same record, one JSON object per line, so a replay of candidate
routing policies and a run's report read either. Prompt and completion text never appear here: only the features
the routing policy sees, the backend state at decision time, the decision and its outcome. Fields a writer cannot
know are None (the simulator does not see the router's in-flight count; the router does not know the workload).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

SCHEMA_VERSION = 1
Source = Literal["router", "sim"]
Api = Literal["openai", "anthropic"]
Outcome = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one request asked for, where it went, why, and what it cost. Times are Unix seconds (UTC)."""

    request_id: str
    source: Source
    t_start: float
    t_end: float
    api: Api
    stream: bool
    model_requested: str
    # Features the routing policy sees.
    prompt_chars: int
    prompt_tokens_estimated: int | None
    max_tokens: int | None
    has_tools: bool
    has_images: bool
    # Backend state at decision time (router records only).
    local_ready: bool | None = None
    local_inflight: int | None = None
    cloud_ready: bool | None = None
    # Decision and outcome.
    backend: Literal["local", "cloud"] | None = None
    route_reason: str | None = None
    fallback: bool = False
    model_served: str | None = None
    status: int = 0  # HTTP status; 0 when no response arrived (connection error, client timeout)
    outcome: Outcome = "ok"
    error_type: str | None = None
    # Usage in exclusive buckets (input excludes cached tokens), as the router bills them.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    # Timing and cost.
    latency_s: float | None = None
    ttft_s: float | None = None
    cost_usd: float | None = None
    counterfactual_cost_usd: float | None = None
    # Who sent it: the simulator's workload name, the router's tenant (when known).
    workload: str | None = None
    tenant: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        # Every field is a scalar: a flat dict without asdict()'s deep copies (the simulator writes thousands a second).
        return json.dumps({name: getattr(self, name) for name in _NAMES}, separators=(",", ":"), allow_nan=False)


_NAMES = tuple(f.name for f in fields(RequestRecord))
_FIELDS = frozenset(_NAMES)


def record_from_dict(data: dict[str, Any]) -> RequestRecord:
    """Builds a record from one decoded line; unknown keys (a newer writer) are ignored, missing ones default."""
    return RequestRecord(**{key: value for key, value in data.items() if key in _FIELDS})


def read_records(lines: Iterable[str]) -> Iterator[RequestRecord]:
    """Parses JSONL; blank lines are skipped, a malformed line raises ValueError naming its line number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield record_from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"line {number}: not a request record ({exc})") from exc
