"""The /v1/messages ingress translation, checked against the real anthropic SDK's parser and accumulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from serve_app.backends.anthropic_mapping import new_stream_state, translate_event
from serve_app.errors import InvalidRequest, UpstreamOverloaded, UpstreamRateLimited
from serve_app.messages_api import ignored_fields, to_chat_request
from serve_app.messages_events import (
    error_event,
    events_from_chunk,
    finish_events,
    message_from_chunks,
    new_event_state,
)
from serve_app.sse import encode_event

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def _chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, usage: dict | None = None):
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "local-model"}
    chunk["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _events(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    state = new_event_state(message_id="msg_r1", model="auto")
    events: list[dict[str, Any]] = []
    for chunk in chunks:
        state, out = events_from_chunk(state, chunk)
        events.extend(out)
    return events + finish_events(state)[1]


def _fixture_events(name: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in (FIXTURES / name).read_text().splitlines() if line.startswith("data:")]


def _openai_chunks(anthropic_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    state = new_stream_state(completion_id="c", model="claude-sonnet-4-6", created=0)
    chunks: list[dict[str, Any]] = []
    for event in anthropic_events:
        state, out = translate_event(state, event)
        chunks.extend(out)
    return chunks


def _sdk_accumulate(events: list[dict[str, Any]]) -> anthropic.types.Message:
    snapshot, json_bufs = None, {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


TEXT_CHUNKS = [
    _chunk({"role": "assistant", "content": ""}, usage={"prompt_tokens": 30, "completion_tokens": 0}),
    _chunk({"content": "Hello"}),
    _chunk({"content": " world"}),
    _chunk({}, finish="stop"),
    _chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}),
]
TOOL_CHUNKS = [
    _chunk({"role": "assistant", "content": "Checking."}),
    _chunk(
        {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "w", "arguments": ""}}]}
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "t", "arguments": "{}"}}]}),
    _chunk({}, finish="tool_calls", usage={"prompt_tokens": 10, "completion_tokens": 9}),
]


# ------------------------------------------------------------------------------------------------ request


def test_to_chat_request_text_and_system():
    request = to_chat_request(
        _body(system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}], stream=True)
    )
    assert request.messages[0].role == "system" and request.messages[0].content == "Be brief.\nBe kind."
    assert request.messages[1].role == "user" and request.messages[1].content == "hi"
    assert request.output_budget == 64
    assert request.stream and request.wants_usage  # usage is needed for message_delta


def test_to_chat_request_parameters():
    request = to_chat_request(
        _body(
            stop_sequences=["END"],
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            metadata={"user_id": "u-9"},
            tools=[{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert request.stop == ["END"] and request.temperature == 0.5 and request.top_p == 0.9
    assert request.user == "u-9"
    assert request.tools[0].function.name == "w" and request.tools[0].function.parameters == {"type": "object"}
    assert request.tool_choice == "required" and request.parallel_tool_calls is False
    assert ignored_fields(_body(top_k=5, thinking={})) == ("thinking", "top_k")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "tool", "name": "w"}, "w")],
)
def test_to_chat_request_tool_choices(choice, expected):
    request = to_chat_request(_body(tools=[{"name": "w", "input_schema": {"type": "object"}}], tool_choice=choice))
    got = request.tool_choice if isinstance(request.tool_choice, str) else request.tool_choice.function.name
    assert got == expected


def test_to_chat_request_images():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "what?"},
    ]
    parts = to_chat_request(_body(messages=[{"role": "user", "content": content}])).messages[0].content
    assert parts[0].image_url.url == "data:image/png;base64,iVBORw0KGgo="
    assert parts[1].image_url.url == "https://example.com/a.jpg"
    assert parts[2].text == "what?"


def test_to_chat_request_tool_history():
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    chat = to_chat_request(_body(messages=messages)).messages
    assert [m.role for m in chat] == ["user", "assistant", "tool", "user"]
    assert chat[1].content == "Let me look."
    assert chat[1].tool_calls[0].id == "toolu_1"
    assert json.loads(chat[1].tool_calls[0].function.arguments) == {"city": "Paris"}
    assert chat[2].tool_call_id == "toolu_1" and chat[2].content == "18C"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (_body(max_tokens=0), "max_tokens"),
        (_body(messages=[]), "messages"),
        (_body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (_body(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (_body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]), "messages.0.content.0"),
        (_body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]), None),
        (_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0"),
        (_body(tool_choice={"type": "sometimes"}), "tool_choice"),
        (_body(stop_sequences=["a", "b", "c", "d", "e"]), "stop"),
        (_body(stop_sequences=5), "stop_sequences"),
        (_body(stop_sequences=["a", 5]), "stop_sequences"),
        (_body(tools=5), "tools"),
        (_body(tools={"name": "t"}), "tools"),
        (_body(tool_choice="auto"), "tool_choice"),  # the OpenAI habit; Anthropic wants {"type": "auto"}
        (_body(metadata="x"), "metadata"),
        (_body(metadata={"user_id": 5}), "metadata.user_id"),
    ],
)
def test_to_chat_request_rejects_invalid_input(body, param):
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(body)
    assert info.value.status_code == 400
    if param is not None:
        assert info.value.param == param


# ------------------------------------------------------------------------------------------------- events


def test_events_from_chunk_text_sequence():
    events = _events(TEXT_CHUNKS)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["model"] == "local-model"
    assert events[0]["message"]["usage"]["input_tokens"] == 30
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"]["output_tokens"] == 2


def test_events_from_chunk_sdk_accumulates_text():
    message = _sdk_accumulate(_events(TEXT_CHUNKS))
    assert message.content[0].text == "Hello world"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 2)


def test_events_from_chunk_sdk_accumulates_tool_use():
    message = _sdk_accumulate(_events(TOOL_CHUNKS))
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Checking."
    assert (message.content[1].id, message.content[1].name) == ("call_a", "w")
    assert message.content[1].input == {"city": "Paris"}
    assert message.content[2].input == {}
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_events_stop_reasons(finish, stop_reason):
    events = _events([_chunk({"content": "x"}, finish=finish)])
    assert _sdk_accumulate(events).stop_reason == stop_reason


def test_finish_events_empty_stream_is_still_a_valid_message():
    message = _sdk_accumulate(_events([]))
    assert message.content == [] and message.stop_reason == "end_turn"


def test_events_from_chunk_cache_usage_counted_once():
    usage = {
        "prompt_tokens": 2009,
        "completion_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 188},
    }
    message = _sdk_accumulate(_events([_chunk({"content": "x"}, finish="stop", usage=usage)]))
    assert message.usage.input_tokens == 21  # Anthropic's input_tokens exclude cached tokens
    assert message.usage.cache_read_input_tokens == 1800
    assert message.usage.cache_creation_input_tokens == 188


@pytest.mark.parametrize("fixture", ["text_stream.sse", "tool_use_stream.sse", "cache_stream.sse"])
def test_events_from_chunk_round_trip_through_openai_chunks(fixture):
    original = _fixture_events(fixture)
    rebuilt = _sdk_accumulate(_events(_openai_chunks(original)))
    expected = _sdk_accumulate(original)
    assert rebuilt.model == expected.model
    assert [b.to_dict() for b in rebuilt.content] == [b.to_dict() for b in expected.content]
    assert rebuilt.stop_reason == expected.stop_reason
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert (getattr(rebuilt.usage, name) or 0) == (getattr(expected.usage, name) or 0), name


def test_error_event_types():
    assert error_event(UpstreamOverloaded("busy", backend="cloud"))["error"]["type"] == "overloaded_error"
    assert error_event(UpstreamRateLimited("slow down", backend="cloud"))["error"]["type"] == "rate_limit_error"
    assert error_event(InvalidRequest("bad"))["error"] == {"type": "invalid_request_error", "message": "bad"}


# ------------------------------------------------------------------------------ the real SDK over the wire


def _client(handler) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(api_key="k", base_url="http://ingress.test", http_client=http, max_retries=0)


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event(e["type"], e) for e in events)


async def test_events_from_chunk_served_to_the_sdk_stream_helper():
    body = _sse(_events(TOOL_CHUNKS))

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = _client(handler)
    texts: list[str] = []
    async with client.messages.stream(model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        async for event in s:
            if event.type == "text":
                texts.append(event.text)
        message = await s.get_final_message()
    await client.close()
    assert "".join(texts) == "Checking."
    assert message.content[1].input == {"city": "Paris"} and message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 9)


async def test_error_event_raises_in_the_sdk():
    body = _sse(_events(TEXT_CHUNKS)[:3]) + encode_event("error", error_event(UpstreamOverloaded("busy", backend="c")))

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = _client(handler)
    with pytest.raises(anthropic.APIStatusError) as info:
        stream = await client.messages.create(
            model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass
    await client.close()
    assert info.value.type == "overloaded_error"


async def test_message_from_chunks_parsed_by_the_sdk():
    message = message_from_chunks(TOOL_CHUNKS, message_id="msg_r1", model="auto")
    assert message["type"] == "message" and message["id"] == "msg_r1"

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=message)

    client = _client(handler)
    parsed = await client.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    await client.close()
    anthropic.types.Message.model_validate(message)  # strict schema check, not just the SDK's lenient construct
    assert parsed.content[0].text == "Checking."
    assert parsed.content[1].input == {"city": "Paris"}
    assert parsed.stop_reason == "tool_use" and parsed.usage.output_tokens == 9


def test_message_from_chunks_keeps_invalid_tool_arguments():
    chunks = [_chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}]})]
    message = message_from_chunks(chunks, message_id="m", model="x")
    assert message["content"][0]["input"] == {"_raw_arguments": "{oops"}
