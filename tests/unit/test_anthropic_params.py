"""anthropic_params via to_anthropic_request: passthrough, translation, dropped-field reports, cache breakpoints."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.backends.anthropic_mapping import to_anthropic_request
from serve_app.backends.anthropic_params import JSON_OBJECT_INSTRUCTION, dropped_params, translated_params
from serve_app.errors import InvalidRequest
from serve_app.protocol import ChatCompletionRequest

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
LONG = "word " * 800  # 4000 characters: about 1143 tokens by the 3.5 characters-per-token estimate


def _request(**body: Any) -> ChatCompletionRequest:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest.model_validate({"model": "cloud", **body})


def _call(request: ChatCompletionRequest, **kwargs: Any):
    return to_anthropic_request(request, model="claude-sonnet-4-6", default_max_tokens=100, **kwargs)


# ---- dropped and reported ------------------------------------------------------------------------------------


def test_dropped_params_are_named_sorted_and_never_sent():
    request = _request(temperature=0.2, top_p=0.9, seed=7, logprobs=True, reasoning_effort="high", top_k=5)
    call = _call(request)
    assert call.dropped == ("logprobs", "reasoning_effort", "seed", "temperature", "top_k", "top_p")
    for name in call.dropped:
        assert name not in call.params


def test_dropped_params_nothing_for_a_plain_request():
    assert dropped_params(_request()) == () and translated_params(_request()) == ()


def test_dropped_params_never_echo_a_key_that_is_not_a_plain_name():
    request = _request(**{"x\r\nSet-Cookie: a=b": 1, "ok_name": 2, "é": 3})
    assert dropped_params(request) == ("_unnamed", "ok_name")


def test_dropped_params_bounded():
    request = _request(**{f"field_{i:03d}": i for i in range(100)})
    assert len(dropped_params(request)) == 32


def test_dropped_params_null_values_count_as_not_sent():
    assert dropped_params(_request(temperature=None, logprobs=None)) == ()


def test_openai_service_tier_values_are_dropped_anthropic_ones_pass():
    assert _call(_request(service_tier="flex")).dropped == ("service_tier",)
    call = _call(_request(service_tier="standard_only"))
    assert call.dropped == () and call.params["service_tier"] == "standard_only"


# ---- translated ------------------------------------------------------------------------------------------------


def test_response_format_json_schema_becomes_structured_output():
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
    call = _call(_request(response_format=response_format))
    assert call.params["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert call.translated == ("response_format",) and call.dropped == ()
    assert "response_format" not in call.params


def test_response_format_json_schema_keeps_the_clients_output_config():
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    call = _call(_request(response_format=response_format, output_config={"effort": "low"}))
    assert call.params["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}


def test_response_format_json_schema_without_a_schema_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        _call(_request(response_format={"type": "json_schema", "json_schema": {"name": "x"}}))
    assert info.value.param == "response_format.json_schema.schema"


def test_response_format_json_object_becomes_a_system_instruction():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    call = _call(_request(messages=messages, response_format={"type": "json_object"}))
    assert call.params["system"] == f"Be brief.\n{JSON_OBJECT_INSTRUCTION}"
    assert call.translated == ("response_format",) and call.dropped == ()


def test_response_format_text_is_the_default_and_not_reported():
    call = _call(_request(response_format={"type": "text"}))
    assert call.translated == () and call.dropped == () and "system" not in call.params


def test_response_format_malformed_is_reported_as_dropped():
    assert _call(_request(response_format={"type": "xml"})).dropped == ("response_format",)
    assert _call(_request(response_format="json")).dropped == ("response_format",)


# ---- passthrough (the /v1/messages ingress carries these) -----------------------------------------------------


def test_anthropic_fields_pass_through_untouched():
    thinking = {"type": "enabled", "budget_tokens": 1024}
    call = _call(_request(thinking=thinking, cache_control={"type": "ephemeral"}, inference_geo="us"))
    assert call.params["thinking"] == thinking
    assert call.params["cache_control"] == {"type": "ephemeral"}
    assert call.params["inference_geo"] == "us"
    assert call.dropped == ()


def test_cache_control_on_blocks_passes_through():
    ttl = {"type": "ephemeral", "ttl": "1h"}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": ttl}]},
        {"role": "user", "content": [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "f", "arguments": "{}"},
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "42", "cache_control": {"type": "ephemeral"}},
    ]
    tools = [{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}]
    params = _call(_request(messages=messages, tools=tools)).params
    assert params["system"] == [{"type": "text", "text": "rules", "cache_control": ttl}]
    assert params["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["messages"][1]["content"][0]["cache_control"] == {"type": "ephemeral"}  # tool_use
    assert params["messages"][2]["content"][0]["type"] == "tool_result"
    assert params["messages"][2]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["tools"][0]["cache_control"] == {"type": "ephemeral"}


# ---- automatic system prompt breakpoint -------------------------------------------------------------------------


def test_long_system_prompt_gets_a_cache_breakpoint_at_the_threshold():
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    system = _call(_request(messages=messages), cache_system_min_tokens=1100).params["system"]
    assert system == [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    # below the threshold, or with the option off, the system prompt stays a plain string
    assert _call(_request(messages=messages), cache_system_min_tokens=1200).params["system"] == LONG
    assert _call(_request(messages=messages)).params["system"] == LONG


def test_cache_breakpoint_goes_on_the_last_system_block():
    messages = [
        {"role": "system", "content": LONG},
        {"role": "developer", "content": "and more"},
        {"role": "user", "content": "hi"},
    ]
    system = _call(_request(messages=messages), cache_system_min_tokens=1000).params["system"]
    assert [("cache_control" in b) for b in system] == [False, True]
    assert [b["text"] for b in system] == [LONG, "and more"]


def test_clients_own_breakpoint_is_not_doubled():
    messages = [
        {"role": "system", "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "tail"},
        {"role": "user", "content": "hi"},
    ]
    system = _call(_request(messages=messages), cache_system_min_tokens=10).params["system"]
    assert [("cache_control" in b) for b in system] == [True, False]


def test_dropped_params_name_nested_fields_without_a_place():
    messages = [
        {"role": "system", "content": "s", "name": "ops"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}],
        },
    ]
    tools = [{"type": "function", "function": {"name": "f", "strict": True}}]
    assert dropped_params(_request(messages=messages, tools=tools)) == (
        "messages.content.image_url.detail",
        "messages.name",
        "tools.function.strict",
    )
