"""protocol: what a Chat Completions request may contain, and the two derived facts the router reads from it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ErrorBody,
    ImagePart,
    ModelList,
    NamedToolChoice,
    TextPart,
)

USER = {"role": "user", "content": "hi"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "auto", "messages": [USER], **body})


def message(**fields: Any) -> ChatMessage:
    return ChatMessage.model_validate(fields)


# ---- messages and content parts ------------------------------------------------------------------------------


def test_chat_message_accepts_text_and_image_parts():
    msg = message(
        role="user",
        content=[
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        ],
    )
    assert isinstance(msg.content, list)
    text, image = msg.content
    assert isinstance(text, TextPart) and text.text == "what is this?"
    assert isinstance(image, ImagePart) and image.image_url.detail == "low"


def test_chat_message_rejects_unknown_content_part_type():
    with pytest.raises(ValidationError):
        message(role="user", content=[{"type": "input_audio", "input_audio": {"data": "AAAA"}}])


def test_chat_message_rejects_image_detail_outside_the_enum():
    with pytest.raises(ValidationError):
        message(role="user", content=[{"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}}])


@pytest.mark.parametrize("role", ["system", "developer", "tool"])
def test_chat_message_text_only_roles_reject_image_parts(role):
    fields: dict[str, Any] = {"role": role, "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    if role == "tool":
        fields["tool_call_id"] = "call_1"
    with pytest.raises(ValidationError, match="may only contain text parts"):
        message(**fields)


@pytest.mark.parametrize("role", ["system", "developer", "tool"])
def test_chat_message_text_only_roles_accept_text_parts(role):
    fields: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": "t"}]}
    if role == "tool":
        fields["tool_call_id"] = "call_1"
    assert message(**fields).role == role


def test_chat_message_tool_role_needs_tool_call_id():
    with pytest.raises(ValidationError, match="tool_call_id"):
        message(role="tool", content="42")
    with pytest.raises(ValidationError, match="tool_call_id"):
        message(role="tool", content="42", tool_call_id="")
    assert message(role="tool", content="42", tool_call_id="call_1").tool_call_id == "call_1"


@pytest.mark.parametrize("role", ["system", "developer", "user", "tool"])
def test_chat_message_non_assistant_needs_content(role):
    with pytest.raises(ValidationError, match="needs 'content'"):
        message(role=role, tool_call_id="call_1")


def test_chat_message_assistant_needs_content_or_tool_calls():
    with pytest.raises(ValidationError, match="'content' or 'tool_calls'"):
        message(role="assistant")
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    msg = message(role="assistant", tool_calls=[call])
    assert msg.content is None and msg.tool_calls is not None and msg.tool_calls[0].function.name == "lookup"


def test_chat_message_rejects_unknown_role():
    with pytest.raises(ValidationError):
        message(role="function", content="x")


# ---- request-level limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"model": ""},
        {"messages": []},
        {"n": 2},
        {"n": 0},
        {"temperature": 2.01},
        {"temperature": -0.1},
        {"top_p": 0},
        {"max_tokens": 0},
        {"max_completion_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": ["a", ""]},
        {"tools": [{"type": "function", "function": {"name": ""}}]},
        {"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
        {"user": "u" * 257},
    ],
    ids=lambda body: ",".join(body),
)
def test_chat_request_rejects_out_of_range_fields(body):
    with pytest.raises(ValidationError):
        request(**body)


def test_chat_request_accepts_the_boundaries():
    ok = request(n=1, temperature=2.0, top_p=1.0, max_tokens=1, stop=["a", "b", "c", "d"], user="u" * 256)
    assert ok.n == 1 and ok.stop == ["a", "b", "c", "d"]


def test_chat_request_stop_may_be_one_string():
    assert request(stop="END").stop == "END"


def test_chat_request_stream_options_need_stream():
    with pytest.raises(ValidationError, match="only allowed when 'stream' is true"):
        request(stream_options={"include_usage": True})
    assert request(stream=True, stream_options={"include_usage": True}).stream_options is not None


def test_chat_request_tool_choice_needs_tools():
    with pytest.raises(ValidationError, match="'tool_choice' needs 'tools'"):
        request(tool_choice="required")
    with pytest.raises(ValidationError, match="'tool_choice' needs 'tools'"):
        request(tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert request(tool_choice="none").tool_choice == "none"


def test_chat_request_named_tool_choice_with_tools():
    parsed = request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert isinstance(parsed.tool_choice, NamedToolChoice) and parsed.tool_choice.function.name == "lookup"


def test_chat_request_keeps_unknown_fields_and_logs_them(caplog):
    with caplog.at_level(logging.INFO, logger="serve_app.protocol"):
        parsed = request(logit_bias_for_protocol_test={"1": 2})
    assert parsed.model_extra == {"logit_bias_for_protocol_test": {"1": 2}}
    assert "ChatCompletionRequest.logit_bias_for_protocol_test" in caplog.text


# ---- derived facts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "max_completion_tokens", "expected"),
    [(None, None, None), (100, None, 100), (None, 50, 50), (100, 50, 50), (10, 500, 500)],
)
def test_chat_request_output_budget_prefers_max_completion_tokens(max_tokens, max_completion_tokens, expected):
    parsed = request(max_tokens=max_tokens, max_completion_tokens=max_completion_tokens)
    assert parsed.output_budget == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, True),
        ({"stream": False}, True),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
    ],
)
def test_chat_request_wants_usage(body, expected):
    assert request(**body).wants_usage is expected


# ---- bodies the router returns ---------------------------------------------------------------------------------


def test_error_body_has_the_four_openai_fields():
    body = ErrorBody.model_validate({"error": {"message": "m", "type": "t"}}).model_dump()
    assert body == {"error": {"message": "m", "type": "t", "param": None, "code": None}}


def test_model_list_shape():
    dumped = ModelList.model_validate({"data": [{"id": "auto", "owned_by": "hybrid-llm"}]}).model_dump()
    assert dumped == {
        "object": "list",
        "data": [{"id": "auto", "object": "model", "created": 0, "owned_by": "hybrid-llm"}],
    }
