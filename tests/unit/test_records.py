"""The request record: one JSON line each way, unknown keys ignored, bad lines named."""

from __future__ import annotations

import json

import pytest

from serve_app.records import RequestRecord, read_records


def _record(**overrides: object) -> RequestRecord:
    base: dict[str, object] = dict(
        request_id="r1",
        source="sim",
        t_start=1.0,
        t_end=2.5,
        api="openai",
        stream=True,
        model_requested="auto",
        prompt_chars=40,
        prompt_tokens_estimated=10,
        max_tokens=64,
        has_tools=False,
        has_images=False,
        backend="local",
        route_reason="policy_local",
        input_tokens=12,
        output_tokens=30,
        cost_usd=1e-6,
    )
    base.update(overrides)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_records_round_trip_through_jsonl() -> None:
    records = [_record(), _record(request_id="r2", backend="cloud", fallback=True, status=200, ttft_s=0.2)]
    assert list(read_records(r.to_json() + "\n" for r in records)) == records


def test_records_ignore_unknown_keys_and_skip_blank_lines() -> None:
    line = json.loads(_record().to_json())
    line["added_by_a_newer_writer"] = 1
    assert list(read_records(["", json.dumps(line), "  "])) == [_record()]


def test_records_name_the_malformed_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        list(read_records([_record().to_json(), "{not json"]))


def test_records_refuse_nan_instead_of_writing_invalid_json() -> None:
    with pytest.raises(ValueError):
        _record(latency_s=float("nan")).to_json()
