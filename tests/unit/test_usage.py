"""usage: exclusive buckets, and accumulators that assign cumulative counts (never add) for both wire formats."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.usage import (
    Usage,
    accumulate_anthropic_event,
    accumulate_openai_chunk,
    usage_from_anthropic,
    usage_from_openai,
)


def fold_openai(chunks: list[dict[str, Any]]) -> Usage:
    usage = Usage()
    for chunk in chunks:
        usage = accumulate_openai_chunk(chunk=chunk, snapshot=usage)
    return usage


def fold_anthropic(events: list[dict[str, Any]]) -> Usage:
    usage = Usage()
    for event in events:
        usage = accumulate_anthropic_event(event=event, snapshot=usage)
    return usage


def message_start(**usage: Any) -> dict[str, Any]:
    return {"type": "message_start", "message": {"id": "msg_1", "usage": usage}}


def message_delta(**usage: Any) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


# ---- the value -------------------------------------------------------------------------------------------------


def test_usage_prompt_tokens_include_cached_buckets():
    usage = Usage(input=3, output=4, cache_read=5, cache_creation=2)
    assert usage.prompt_tokens == 10
    assert usage.total_tokens == 14


def test_usage_to_openai_without_cache_has_no_details():
    assert Usage(input=3, output=4).to_openai() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_usage_to_openai_with_cache_details():
    assert Usage(input=3, output=4, cache_read=5, cache_creation=2).to_openai() == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 2},
    }


def test_usage_to_buckets_uses_langfuse_keys():
    assert Usage(input=3, output=4, cache_read=5, cache_creation=2).to_buckets() == {
        "input": 3,
        "input_cache_read": 5,
        "input_cache_creation": 2,
        "output": 4,
    }


@pytest.mark.parametrize("usage", [Usage(), Usage(input=1, output=2), Usage(input=3, output=4, cache_read=5)])
def test_usage_openai_round_trip(usage):
    assert usage_from_openai(usage.to_openai()) == usage


# ---- OpenAI ----------------------------------------------------------------------------------------------------


def test_usage_from_openai_takes_cached_tokens_out_of_input():
    usage = usage_from_openai(
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 6}}
    )
    assert usage == Usage(input=4, output=2, cache_read=6)


def test_usage_from_openai_tolerates_nulls_and_missing_fields():
    assert usage_from_openai({"prompt_tokens": None, "prompt_tokens_details": None}) == Usage()
    assert usage_from_openai({}) == Usage()


def test_usage_from_openai_never_negative():
    usage = usage_from_openai({"prompt_tokens": 2, "prompt_tokens_details": {"cached_tokens": 5}})
    assert usage.input == 0 and usage.cache_read == 5


def test_accumulate_openai_chunk_without_usage_keeps_snapshot():
    snapshot = Usage(input=1, output=1)
    assert accumulate_openai_chunk(chunk={"choices": []}, snapshot=snapshot) is snapshot
    assert accumulate_openai_chunk(chunk={"usage": None}, snapshot=snapshot) is snapshot


def test_accumulate_openai_chunks_are_cumulative_not_added():
    chunks = [
        {"choices": [{"delta": {"content": "a"}}], "usage": {"prompt_tokens": 7, "completion_tokens": 1}},
        {"choices": [{"delta": {"content": "b"}}]},
        {"choices": [{"delta": {"content": "c"}}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}},
    ]
    assert fold_openai(chunks) == Usage(input=7, output=5)


# ---- Anthropic -------------------------------------------------------------------------------------------------


def test_accumulate_anthropic_message_start_then_cumulative_delta():
    events = [
        message_start(input_tokens=12, output_tokens=1),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        message_delta(output_tokens=8),
        message_delta(output_tokens=15),
        {"type": "message_stop"},
    ]
    assert fold_anthropic(events) == Usage(input=12, output=15)


def test_accumulate_anthropic_cache_tokens_counted_once():
    events = [
        message_start(input_tokens=3, cache_read_input_tokens=40, cache_creation_input_tokens=20, output_tokens=1),
        # the final delta repeats the cumulative cache counts: they must not double
        message_delta(input_tokens=3, cache_read_input_tokens=40, cache_creation_input_tokens=20, output_tokens=9),
    ]
    usage = fold_anthropic(events)
    assert usage == Usage(input=3, output=9, cache_read=40, cache_creation=20)
    assert usage.prompt_tokens == 63


def test_accumulate_anthropic_nulls_and_missing_fields_keep_old_values():
    start = message_start(input_tokens=12, cache_read_input_tokens=4, cache_creation_input_tokens=2, output_tokens=1)
    delta = message_delta(input_tokens=None, cache_read_input_tokens=None, output_tokens=6)
    assert fold_anthropic([start, delta]) == Usage(input=12, output=6, cache_read=4, cache_creation=2)


def test_accumulate_anthropic_message_delta_may_correct_input():
    events = [message_start(input_tokens=12, output_tokens=1), message_delta(input_tokens=14, output_tokens=2)]
    assert fold_anthropic(events) == Usage(input=14, output=2)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "ping"},
        {"type": "message_stop"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}, "usage": {}},
        {"type": "message_start", "message": {}},
        {"type": "message_start", "message": None},
        {"type": "message_delta", "usage": None},
        {},
    ],
)
def test_accumulate_anthropic_other_events_keep_snapshot(event):
    snapshot = Usage(input=1, output=2, cache_read=3, cache_creation=4)
    assert accumulate_anthropic_event(event=event, snapshot=snapshot) == snapshot


def test_usage_from_anthropic_input_excludes_cache():
    usage = usage_from_anthropic(
        {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5, "cache_creation_input_tokens": None}
    )
    assert usage == Usage(input=3, output=4, cache_read=5, cache_creation=0)
