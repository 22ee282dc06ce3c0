"""The cloud path through the real router: the real anthropic SDK inside it, a scripted Anthropic API outside.

Faults are chosen per request by a `#scenario=...` marker the stand-in reads from the last user message.
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.support.anthropic_standin import prompt_tokens

PRICE = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}  # claude-sonnet-4-6, per MTok


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _post(platform, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=60,
        **kwargs,
    )


def _upstream_usage(platform, marker: str) -> dict:
    """The usage the stand-in sent for the request whose prompt carried `marker`."""
    for recorded in reversed(platform.anthropic.requests):
        if marker in str(recorded.body):
            body = recorded.body
            return {"prompt": prompt_tokens(body), "body": body}
    raise AssertionError(f"the stand-in saw no request with {marker}")


def test_cloud_non_stream_translates_text_and_usage(platform):
    raw = platform.openai().chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "system", "content": "sys words"}, *_user("one two three nonstream-a")]
    )
    reply = raw.parse()
    assert raw.headers["x-router-backend"] == "cloud"
    assert raw.headers["x-router-reason"] == "explicit_cloud"
    assert reply.model == "claude-sonnet-4-6"
    assert reply.choices[0].message.content == "You sent 4 words."
    assert reply.choices[0].finish_reason == "stop"
    sent = _upstream_usage(platform, "nonstream-a")
    assert sent["body"]["system"] == "sys words"  # hoisted out of the messages
    assert "temperature" not in sent["body"]
    assert reply.usage.prompt_tokens == sent["prompt"]
    assert reply.usage.completion_tokens == 4
    expected_cost = (sent["prompt"] * PRICE["input"] + 4 * PRICE["output"]) / 1e6
    assert float(raw.headers["x-router-cost-usd"]) == pytest.approx(expected_cost, abs=1e-9)


def test_cloud_stream_with_cache_tokens_counts_them_once(platform):
    stream = platform.openai().chat.completions.create(
        model="claude-sonnet-4-6",
        messages=_user("#scenario=cache a b c d e f g h cache-b"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("You sent")
    usage = chunks[-1].usage
    prompt = _upstream_usage(platform, "cache-b")["prompt"]
    read, created = prompt // 2, prompt // 4
    assert usage.prompt_tokens == prompt  # input + cache read + cache creation, each counted once
    assert usage.prompt_tokens_details.cached_tokens == read
    cost = ((prompt - read - created) * PRICE["input"] + read * PRICE["cache_read"]) / 1e6
    cost += (created * PRICE["cache_write"] + usage.completion_tokens * PRICE["output"]) / 1e6
    assert usage.model_extra["cost_usd"] == pytest.approx(cost, abs=1e-9)


def test_cloud_tool_call_streams_as_openai_tool_call_deltas(platform):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    stream = platform.openai().chat.completions.create(
        model="cloud", messages=_user("#scenario=tool_use weather?"), tools=tools, stream=True
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "toolu_standin_01" and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert arguments.replace(" ", "") == '{"city":"Paris","unit":"celsius"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_upstream_429_becomes_429_with_retry_after(platform):
    response = _post(platform, {"model": "cloud", "messages": _user("#scenario=rate_limit hi")})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_upstream_529_becomes_503_with_retry_after(platform):
    response = _post(platform, {"model": "cloud", "messages": _user("#scenario=overloaded hi")})
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert response.json()["error"]["type"] == "overloaded_error"


def test_upstream_hang_becomes_504_within_the_configured_timeout(platform):
    response = _post(platform, {"model": "cloud", "messages": _user("#scenario=hang hi")})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    assert response.elapsed.total_seconds() < 30  # the router's 5 s upstream timeout, not the stand-in's hang


@pytest.mark.parametrize("scenario", ["cut", "error_after_200"])
def test_stream_failing_after_first_byte_ends_with_error_event_not_silence(platform, scenario):
    with httpx.stream(
        "POST",
        f"{platform.base_url}/v1/chat/completions",
        json={"model": "cloud", "stream": True, "messages": _user(f"#scenario={scenario} hi")},
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2]
    with pytest.raises(openai.APIError):
        list(
            platform.openai().chat.completions.create(
                model="cloud", messages=_user(f"#scenario={scenario} x"), stream=True
            )
        )


def test_cloud_failure_on_auto_rule_falls_back_to_local(platform):
    # The test profile's rule sends big output budgets to the cloud; an overloaded cloud falls back to local.
    raw = platform.openai().chat.completions.with_raw_response.create(
        model="auto", messages=_user("#scenario=overloaded please"), max_tokens=100
    )
    assert raw.headers["x-router-backend"] == "local"
    assert raw.headers["x-router-reason"] == "fallback_cloud_error"
    assert raw.parse().model == "local-model"


def test_local_context_overflow_on_auto_is_answered_by_the_cloud(platform):
    # Characters the smoke tokenizer never saw cost one token each: the cheap estimate says it fits (about 230),
    # the engine would count 800. serve_config.local.yaml counts such prompts with the local model's tokenizer
    # (`routing.tokenizer: auto`), so the router sends it to the cloud up front; the engine's own rejection and
    # its fallback (`fallback_local_error`) are in tests/integration/test_prompt_length.py.
    prompt = "~^`|" * 200
    raw = platform.openai().chat.completions.with_raw_response.create(model="auto", messages=_user(prompt))
    assert raw.headers["x-router-backend"] == "cloud"
    assert raw.headers["x-router-reason"] == "prompt_too_long"
    assert raw.parse().choices[0].message.content


def test_tools_on_auto_go_to_the_cloud_when_local_has_no_tool_parser(platform):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    raw = platform.openai().chat.completions.with_raw_response.create(
        model="auto", messages=_user("#scenario=tool_use find it"), tools=tools
    )
    assert (raw.headers["x-router-backend"], raw.headers["x-router-reason"]) == ("cloud", "has_tools")
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "lookup"


def test_images_on_auto_go_to_the_cloud(platform):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    raw = platform.openai().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}]
    )
    assert raw.headers["x-router-reason"] == "has_images"
    assert raw.headers["x-router-backend"] == "cloud"


def test_anthropic_sdk_client_through_messages_ingress(platform):
    client = anthropic.Anthropic(base_url=platform.base_url, api_key=platform.api_key, max_retries=0)
    message = client.messages.create(model="cloud", max_tokens=64, messages=_user("one two messages-c"))
    assert message.content[0].text == "You sent 3 words."
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == _upstream_usage(platform, "messages-c")["prompt"]
    with client.messages.stream(model="local", max_tokens=6, messages=_user("hello local")) as stream:
        final = stream.get_final_message()
    assert final.model == "local-model"
    assert final.usage.output_tokens <= 6 and final.usage.input_tokens > 0


def test_messages_ingress_errors_use_anthropic_format(platform):
    client = anthropic.Anthropic(base_url=platform.base_url, api_key=platform.api_key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=8, messages=_user("x"))
    assert caught.value.body["error"]["type"] == "not_found_error"
    bad = anthropic.Anthropic(base_url=platform.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="cloud", max_tokens=8, messages=_user("x"))
