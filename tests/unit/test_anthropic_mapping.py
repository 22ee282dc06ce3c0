"""OpenAI <-> Anthropic translation over recorded wire fixtures (tests/fixtures/anthropic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serve_app.backends.anthropic_mapping import (
    FINISH_REASONS,
    completion_from_message,
    dropped_params,
    new_stream_state,
    to_anthropic_request,
    translate_event,
)
from serve_app.errors import InvalidRequest, UpstreamOverloaded
from serve_app.protocol import ChatCompletionRequest
from serve_app.usage import Usage, accumulate_openai_chunk

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"


def _events(name: str) -> list[dict[str, Any]]:
    """The events of a recorded SSE body; checks every `event:` line names its data's `type`."""
    events, name_line = [], None
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("event:"):
            name_line = line[6:].strip()
        elif line.startswith("data:"):
            event = json.loads(line[5:])
            assert event["type"] == name_line, f"{name}: event line {name_line!r} vs data {event['type']!r}"
            events.append(event)
    return events


def _run(events: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    state = new_stream_state(completion_id="chatcmpl-r1", model="claude-sonnet-4-6", created=1700000000)
    chunks: list[dict[str, Any]] = []
    for event in events:
        state, out = translate_event(state, event)
        chunks.extend(out)
    return state, chunks


def _request(**body: Any) -> ChatCompletionRequest:
    body.setdefault("model", "cloud")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest.model_validate(body)


def _params(**body: Any) -> dict[str, Any]:
    return to_anthropic_request(_request(**body), model="claude-sonnet-4-6", default_max_tokens=4096).params


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# ------------------------------------------------------------------------------------ request translation


def test_to_anthropic_request_text():
    params = _params(messages=[{"role": "user", "content": "Hello"}], max_tokens=100)
    assert params == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }


def test_to_anthropic_request_default_max_tokens_and_completion_tokens_win():
    assert _params()["max_tokens"] == 4096
    assert _params(max_tokens=10, max_completion_tokens=20)["max_tokens"] == 20


def test_to_anthropic_request_hoists_system_and_developer():
    params = _params(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Late rule."},
        ]
    )
    assert params["system"] == "Be brief.\nAnswer in French.\nLate rule."
    assert [m["role"] for m in params["messages"]] == ["user"]


def test_to_anthropic_request_multi_turn_merges_same_role():
    params = _params(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert params["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_to_anthropic_request_images():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    blocks = _params(messages=[{"role": "user", "content": content}])["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "data:image/bmp;base64,AAAA", "data:image/png,rawbytes", "not a url"],
)
def test_to_anthropic_request_rejects_bad_images(url):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(InvalidRequest) as info:
        _params(messages=[{"role": "user", "content": content}])
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_to_anthropic_request_stop_sequences():
    assert _params(stop="END")["stop_sequences"] == ["END"]
    assert _params(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in _params()


def test_to_anthropic_request_tools_and_choices():
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
        },
        {"type": "function", "function": {"name": "noargs"}},
    ]
    params = _params(tools=tools)
    assert params["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in params
    assert _params(tools=tools, tool_choice="none")["tool_choice"] == {"type": "none"}
    assert _params(tools=tools, tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert _params(tools=tools, tool_choice="required")["tool_choice"] == {"type": "any"}
    named = {"type": "function", "function": {"name": "noargs"}}
    assert _params(tools=tools, tool_choice=named)["tool_choice"] == {"type": "tool", "name": "noargs"}
    assert _params(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert _params(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }


def test_to_anthropic_request_tool_round_trip():
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks"},
    ]
    params = _params(messages=messages)
    assert params["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "w", "input": {}},
        ],
    }
    assert params["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
            {"type": "text", "text": "Thanks"},
        ],
    }
    assert len(params["messages"]) == 3


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_to_anthropic_request_invalid_tool_arguments(arguments):
    call = {"id": "c", "type": "function", "function": {"name": "w", "arguments": arguments}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(InvalidRequest) as info:
        _params(messages=messages)
    assert info.value.status_code == 400
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_to_anthropic_request_user_and_dropped_params():
    request = _request(user="u-42", temperature=0.2, top_p=0.9, seed=7, presence_penalty=0.5)
    translated = to_anthropic_request(request, model="m", default_max_tokens=5)
    assert translated.params["metadata"] == {"user_id": "u-42"}
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty"):
        assert name not in translated.params
    assert translated.dropped == ("presence_penalty", "seed", "temperature", "top_p")
    assert dropped_params(_request()) == ()


def test_to_anthropic_request_only_system_is_invalid():
    with pytest.raises(InvalidRequest):
        _params(messages=[{"role": "system", "content": "s"}])


def test_to_anthropic_request_images_only_in_user_messages():
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(InvalidRequest):
        _params(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": content}])


# ------------------------------------------------------------------------------------ stream translation


def test_translate_event_text_stream():
    state, chunks = _run(_events("text_stream.sse"))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["usage"] == {"prompt_tokens": 25, "completion_tokens": 1, "total_tokens": 26}
    assert _text(chunks) == "Hello!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-r1" for c in chunks)
    assert all(c["model"] == "claude-sonnet-4-6" for c in chunks)
    assert state.finished and state.stop_reason == "end_turn"
    # usage only rides on chunks where it changed
    assert [("usage" in c) for c in chunks] == [True, False, False, True]


def test_translate_event_tool_call_deltas():
    _, chunks = _run(_events("tool_use_stream.sse"))
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for call in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in call:
                assert slot["id"] is None, "id only on the first delta of a call"
                slot["id"], slot["name"] = call["id"], call["function"]["name"]
            slot["arguments"] += call["function"].get("arguments", "")
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert calls[1]["name"] == "get_time"
    assert json.loads(calls[1]["arguments"]) == {"timezone": "America/Los_Angeles"}
    assert _text(chunks) == "Okay, let's check the weather for San Francisco, CA:"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 89


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "length"),
        ("model_context_window_exceeded", "length"),
        ("a_reason_from_the_future", "stop"),
    ],
)
def test_translate_event_every_stop_reason(stop_reason, expected):
    events = _events("text_stream.sse")
    for event in events:
        if event["type"] == "message_delta":
            event["delta"]["stop_reason"] = stop_reason
    state, chunks = _run(events)
    assert chunks[-1]["choices"][0]["finish_reason"] == expected
    assert state.stop_reason == stop_reason


def test_finish_reasons_cover_the_documented_stop_reasons():
    documented = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}
    documented.add("model_context_window_exceeded")
    assert set(FINISH_REASONS) == documented


def test_translate_event_cache_tokens_counted_once():
    _, chunks = _run(_events("cache_stream.sse"))
    assert chunks[0]["usage"] == {
        "prompt_tokens": 21 + 1800 + 188,
        "completion_tokens": 3,
        "total_tokens": 21 + 1800 + 188 + 3,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 188},
    }
    final = chunks[-1]["usage"]
    assert final["prompt_tokens"] == 2009 and final["completion_tokens"] == 12 and final["total_tokens"] == 2021
    usage = Usage()
    for chunk in chunks:
        usage = accumulate_openai_chunk(chunk=chunk, snapshot=usage)
    assert usage == Usage(input=21, output=12, cache_read=1800, cache_creation=188)


def test_translate_event_error_after_200_raises_mapped_error():
    events = _events("error_after_200.sse")
    state = new_stream_state(completion_id="c", model="m", created=0)
    seen: list[dict[str, Any]] = []
    with pytest.raises(UpstreamOverloaded) as info:
        for event in events:
            state, out = translate_event(state, event, backend="cloud")
            seen.extend(out)
    assert info.value.backend == "cloud"
    assert _text(seen) == "Partial"
    assert seen[0]["usage"]["prompt_tokens"] == 40  # input usage was already out before the failure
    assert not state.finished


def test_translate_event_thinking_becomes_reasoning_content_and_ignores_ping_and_unknown_events():
    state, chunks = _run(_events("thinking_and_unknown.sse"))
    assert _text(chunks) == "42"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    signatures = [d["reasoning_signature"] for d in deltas if "reasoning_signature" in d]
    assert signatures == ["EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"]
    assert state.finished and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_translate_event_usage_only_chunk_when_message_stop_brings_news():
    events = _events("text_stream.sse")
    delta = next(e for e in events if e["type"] == "message_delta")
    events.insert(events.index(delta) + 1, {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 16}})
    _, chunks = _run(events)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16


def test_translate_event_missing_message_stop_is_not_finished():
    events = [e for e in _events("text_stream.sse") if e["type"] != "message_stop"]
    state, _ = _run(events)
    assert not state.finished


# -------------------------------------------------------------------------------------- whole messages


def test_completion_from_message_text():
    message = json.loads((FIXTURES / "message_text.json").read_text())
    body = completion_from_message(message, completion_id="chatcmpl-1", created=5)
    assert body["object"] == "chat.completion" and body["model"] == "claude-sonnet-4-6"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi! My name is Claude."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}


def test_completion_from_message_tool_use():
    message = json.loads((FIXTURES / "message_tool_use.json").read_text())
    choice = completion_from_message(message, completion_id="c", created=0)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA", "unit": "celsius"}


def test_completion_from_message_cache_usage():
    message = json.loads((FIXTURES / "message_cache.json").read_text())
    usage = completion_from_message(message, completion_id="c", created=0)["usage"]
    assert usage == {
        "prompt_tokens": 100050,
        "completion_tokens": 7,
        "total_tokens": 100057,
        "prompt_tokens_details": {"cached_tokens": 100000, "cache_write_tokens": 0},
    }
