"""messages_api.to_chat_request: Anthropic fields with no chat equivalent ride along (thinking, cache_control on
blocks, top_k, ...) so the cloud path can send them on and report the rest; nothing is dropped on the way in."""

from __future__ import annotations

from typing import Any

from serve_app.backends.anthropic_mapping import to_anthropic_request
from serve_app.messages_api import to_chat_request

EPHEMERAL = {"type": "ephemeral"}


def _body(**body: Any) -> dict[str, Any]:
    return {"model": "cloud", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], **body}


def _round_trip(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages API call the cloud backend makes for an incoming Messages API body."""
    return to_anthropic_request(to_chat_request(body), model="claude-sonnet-4-6", default_max_tokens=1).params


def test_unknown_top_level_fields_ride_on_the_chat_request():
    request = to_chat_request(_body(thinking={"type": "adaptive"}, top_k=5, cache_control=EPHEMERAL))
    assert request.__pydantic_extra__ == {"thinking": {"type": "adaptive"}, "top_k": 5, "cache_control": EPHEMERAL}


def test_a_chat_field_name_in_a_messages_body_never_changes_the_chat_request():
    request = to_chat_request(_body(n=3, seed=1, stream_options={"include_usage": False}))
    assert request.n is None and request.seed is None and request.stream_options is None


def test_system_blocks_with_breakpoints_stay_blocks():
    system = [{"type": "text", "text": "a", "cache_control": EPHEMERAL}, {"type": "text", "text": "b"}]
    assert _round_trip(_body(system=system))["system"] == system
    plain = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert _round_trip(_body(system=plain))["system"] == "a\nb"  # no breakpoint: one string, as before


def test_block_breakpoints_survive_the_round_trip():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "doc", "cache_control": EPHEMERAL},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": EPHEMERAL},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling", "cache_control": EPHEMERAL},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"q": 1}, "cache_control": EPHEMERAL},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42", "cache_control": EPHEMERAL}],
        },
    ]
    tools = [{"name": "w", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    params = _round_trip(_body(messages=messages, tools=tools))
    assert params["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "doc", "cache_control": EPHEMERAL},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": EPHEMERAL},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling", "cache_control": EPHEMERAL},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"q": 1}, "cache_control": EPHEMERAL},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42", "cache_control": EPHEMERAL}],
        },
    ]
    assert params["tools"][0]["cache_control"] == EPHEMERAL


def test_thinking_and_cache_control_pass_through_top_k_is_reported():
    request = to_chat_request(
        _body(thinking={"type": "enabled", "budget_tokens": 16}, cache_control=EPHEMERAL, top_k=3)
    )
    call = to_anthropic_request(request, model="claude-sonnet-4-6", default_max_tokens=1)
    assert call.params["thinking"] == {"type": "enabled", "budget_tokens": 16}
    assert call.params["cache_control"] == EPHEMERAL
    assert "top_k" not in call.params and call.dropped == ("top_k",)


# ---- thinking: out as thinking blocks, back in as the assistant's signed thinking ------------------------------


def _chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "c", "model": "claude-sonnet-4-6", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_reasoning_content_becomes_a_thinking_block_with_its_signature():
    from serve_app.messages_events import message_from_chunks

    chunks = [
        _chunk(role="assistant", content=""),
        _chunk(reasoning_content="Let me "),
        _chunk(reasoning_content="think."),
        _chunk(reasoning_signature="sig-1"),
        _chunk(content="42"),
    ]
    message = message_from_chunks(chunks, message_id="msg_1", model="claude-sonnet-4-6")
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig-1"},
        {"type": "text", "text": "42"},
    ]


def test_signed_thinking_goes_back_first_in_the_assistant_turn_unsigned_is_left_out():
    signed = {"type": "thinking", "thinking": "plan", "signature": "sig-1"}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    unsigned = {"type": "thinking", "thinking": "a local model's reasoning", "signature": ""}
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [signed, redacted, unsigned, {"type": "tool_use", "id": "t1", "name": "w", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
    ]
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    params = _round_trip(_body(messages=messages, tools=tools))
    assert params["messages"][1]["content"] == [
        signed,
        redacted,
        {"type": "tool_use", "id": "t1", "name": "w", "input": {}},
    ]
