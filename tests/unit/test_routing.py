"""routing: every branch of `decide`, rule order, fallback targets, the prompt estimate and `after_failure`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from serve_app.config import LocalBackendArgs, RoutingPolicy, RoutingRule
from serve_app.errors import ModelNotFound, NoBackendAvailable
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import (
    RouteDecision,
    RouteInput,
    RouteReason,
    decide,
    estimate_prompt_tokens,
    request_has_images,
)

LOCAL = "local-model"
SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5"
LOCAL_ARGS = LocalBackendArgs(model_id=LOCAL, context_window=1000, saturation_inflight=8)
POLICY = RoutingPolicy(default_local_output_tokens=100)


def route(**overrides: Any) -> RouteInput:
    """Both backends ready and idle, a short prompt, no budget: `auto` goes local."""
    base = RouteInput(
        requested_model="auto",
        local_model_id=LOCAL,
        cloud_model_ids=(SONNET, HAIKU),
        local_ready=True,
        local_inflight=0,
        cloud_ready=True,
        prompt_tokens=10,
        output_tokens=None,
    )
    return replace(base, **overrides)


def run(policy: RoutingPolicy = POLICY, local: LocalBackendArgs = LOCAL_ARGS, **overrides: Any) -> RouteDecision:
    return decide(route=route(**overrides), policy=policy, local=local)


def rule(name: str, backend: str, **match: Any) -> RoutingRule:
    return RoutingRule(name=name, backend=backend, **match)  # type: ignore[arg-type]


# ---- explicit models --------------------------------------------------------------------------------------------


STRICT = RoutingPolicy(default_local_output_tokens=100, local_pin="strict")


def test_decide_local_pin_defaults_to_fallback():
    assert RoutingPolicy().local_pin == "fallback"


def test_decide_local_alias_goes_local_and_may_fall_back_after_a_failure():
    decision = run(requested_model="local")
    assert decision == RouteDecision("local", LOCAL, "explicit_local", "cloud", SONNET)
    assert decision.after_failure() == RouteDecision("cloud", SONNET, "fallback_local_error")


def test_decide_local_alias_without_retry_when_policy_disables_it():
    no_retry = RoutingPolicy(default_local_output_tokens=100, fallback=False)
    assert run(no_retry, requested_model="local") == RouteDecision("local", LOCAL, "explicit_local")
    # the pin fallback is a decision, not a retry: `fallback: false` leaves it on
    assert run(no_retry, requested_model="local", local_ready=False).reason == "fallback_local_not_ready"


def test_decide_local_alias_not_ready_is_answered_by_the_cloud():
    decision = run(requested_model="local", local_ready=False)
    assert decision == RouteDecision("cloud", SONNET, "fallback_local_not_ready")
    assert not decision.is_retry


def test_decide_local_alias_saturated_is_answered_by_the_cloud_at_the_threshold():
    assert run(requested_model="local", local_inflight=7).backend == "local"
    decision = run(requested_model="local", local_inflight=8)
    assert decision == RouteDecision("cloud", SONNET, "fallback_local_saturated")
    assert not decision.is_retry


def test_decide_local_alias_not_ready_without_a_ready_cloud_is_503():
    for overrides in ({"cloud_ready": False}, {"cloud_model_ids": (), "cloud_ready": False}):
        with pytest.raises(NoBackendAvailable, match="local model is not serving") as info:
            run(requested_model="local", local_ready=False, **overrides)
        assert info.value.status_code == 503 and info.value.retry_after == 5


def test_decide_local_alias_saturated_without_a_ready_cloud_stays_local():
    decision = run(requested_model="local", local_inflight=99, cloud_ready=False)
    assert decision == RouteDecision("local", LOCAL, "explicit_local")


@pytest.mark.parametrize("policy", [STRICT, POLICY])
def test_decide_strict_pin_never_moves(policy):
    """`local` under `local_pin: strict`, and the concrete local model id under any policy."""
    model = "local" if policy is STRICT else LOCAL
    assert run(policy, requested_model=model) == RouteDecision("local", LOCAL, "explicit_local")
    # saturation does not move it (the model's own queue bound answers that)
    assert run(policy, requested_model=model, local_inflight=99) == RouteDecision("local", LOCAL, "explicit_local")


@pytest.mark.parametrize("policy", [STRICT, POLICY])
def test_decide_strict_pin_not_ready_is_503_at_once_never_the_cloud(policy):
    model = "local" if policy is STRICT else LOCAL
    with pytest.raises(NoBackendAvailable, match="local model is not serving") as info:
        run(policy, requested_model=model, local_ready=False)
    assert info.value.status_code == 503 and info.value.retry_after == 5


@pytest.mark.parametrize("alias", ["cloud", "claude"])
def test_decide_claude_is_an_alias_of_cloud(alias):
    assert run(requested_model=alias) == RouteDecision("cloud", SONNET, "explicit_cloud")
    with pytest.raises(NoBackendAvailable):
        run(requested_model=alias, cloud_ready=False)
    with pytest.raises(ModelNotFound, match="cloud backend is disabled"):
        run(requested_model=alias, cloud_model_ids=(), cloud_ready=False)


def test_decide_cloud_alias_uses_the_default_cloud_model():
    assert run(requested_model="cloud") == RouteDecision("cloud", SONNET, "explicit_cloud")


def test_decide_concrete_cloud_model_is_kept():
    assert run(requested_model=HAIKU) == RouteDecision("cloud", HAIKU, "explicit_cloud")


@pytest.mark.parametrize("model", ["cloud", HAIKU])
def test_decide_explicit_cloud_not_ready_is_503_never_local(model):
    with pytest.raises(NoBackendAvailable, match="no Anthropic API key") as info:
        run(requested_model=model, cloud_ready=False)
    assert info.value.status_code == 503


def test_decide_cloud_alias_with_cloud_disabled_is_model_not_found():
    with pytest.raises(ModelNotFound, match="cloud backend is disabled") as info:
        run(requested_model="cloud", cloud_model_ids=(), cloud_ready=False)
    assert info.value.status_code == 404 and info.value.param == "model"


def test_decide_cloud_model_id_with_cloud_disabled_is_unknown():
    with pytest.raises(ModelNotFound, match="does not exist"):
        run(requested_model=SONNET, cloud_model_ids=(), cloud_ready=False)


def test_decide_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelNotFound) as info:
        run(requested_model="gpt-4o")
    assert info.value.param == "model" and info.value.code == "model_not_found"
    for known in ("auto", "local", "cloud", "claude", LOCAL, SONNET, HAIKU):
        assert known in info.value.message
    with pytest.raises(ModelNotFound) as info:
        run(requested_model="gpt-4o", cloud_model_ids=(), cloud_ready=False)
    assert "claude" not in info.value.message and "cloud" not in info.value.message


# ---- auto: built-in preferences ---------------------------------------------------------------------------------


def test_decide_auto_policy_local_with_cloud_fallback():
    assert run() == RouteDecision("local", LOCAL, "policy_local", "cloud", SONNET)


def test_decide_auto_without_fallback_when_policy_disables_it():
    decision = run(policy=POLICY.model_copy(update={"fallback": False}))
    assert decision == RouteDecision("local", LOCAL, "policy_local")


def test_decide_auto_cloud_disabled_goes_local():
    assert run(cloud_model_ids=(), cloud_ready=False) == RouteDecision("local", LOCAL, "cloud_disabled")


def test_decide_auto_local_not_ready_goes_cloud_without_fallback():
    assert run(local_ready=False) == RouteDecision("cloud", SONNET, "local_not_ready")


def test_decide_auto_local_saturated_at_the_threshold():
    assert run(local_inflight=7).reason == "policy_local"
    assert run(local_inflight=8) == RouteDecision("cloud", SONNET, "local_saturated")


def test_decide_auto_prompt_too_long_at_the_boundary():
    # context 1000 minus the assumed output of 100
    assert run(prompt_tokens=900).reason == "policy_local"
    assert run(prompt_tokens=901) == RouteDecision("cloud", SONNET, "prompt_too_long")


def test_decide_auto_prompt_limit_uses_the_clients_budget():
    assert run(prompt_tokens=700, output_tokens=300).reason == "policy_local"
    assert run(prompt_tokens=701, output_tokens=300).reason == "prompt_too_long"


def test_decide_auto_output_too_long_beyond_half_the_context():
    assert run(output_tokens=500).reason == "policy_local"
    assert run(output_tokens=501) == RouteDecision("cloud", SONNET, "output_too_long")


def test_decide_auto_configured_limits_override_the_context_window():
    policy = POLICY.model_copy(update={"max_local_prompt_tokens": 50, "max_local_output_tokens": 64})
    assert run(policy=policy, prompt_tokens=50, output_tokens=64).reason == "policy_local"
    assert run(policy=policy, prompt_tokens=51).reason == "prompt_too_long"
    assert run(policy=policy, output_tokens=65).reason == "output_too_long"


def test_decide_auto_images_go_cloud_unless_configured_otherwise():
    assert run(has_images=True) == RouteDecision("cloud", SONNET, "has_images")
    policy = POLICY.model_copy(update={"images_go_cloud": False})
    assert run(policy=policy, has_images=True).reason == "policy_local"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"local_ready": False}, "local_not_ready"),
        ({"local_inflight": 8}, "local_saturated"),
        ({"prompt_tokens": 5000}, "prompt_too_long"),
        ({"output_tokens": 900}, "output_too_long"),
        ({"has_images": True}, "has_images"),
        ({"has_tools": True}, "has_tools"),
    ],
)
def test_decide_auto_cloud_reasons_where_local_is_unsuitable_have_no_fallback(overrides, reason):
    decision = run(**overrides)
    assert (decision.backend, decision.reason) == ("cloud", reason)
    assert decision.fallback_backend is None and decision.fallback_model is None


def test_decide_auto_tools_go_cloud_unless_the_local_engine_parses_them():
    assert run(has_tools=True) == RouteDecision("cloud", SONNET, "has_tools")
    policy = POLICY.model_copy(update={"local_tools": True})
    assert run(policy=policy, has_tools=True) == RouteDecision("local", LOCAL, "policy_local", "cloud", SONNET)


def test_decide_auto_images_are_checked_before_tools():
    assert run(has_images=True, has_tools=True).reason == "has_images"


def test_decide_auto_cloud_not_ready_goes_local_when_cloud_was_wanted():
    decision = run(prompt_tokens=5000, cloud_ready=False)
    assert decision == RouteDecision("local", LOCAL, "cloud_unavailable")


def test_decide_auto_cloud_not_ready_and_local_saturated_still_goes_local():
    assert run(local_inflight=50, cloud_ready=False) == RouteDecision("local", LOCAL, "cloud_unavailable")


def test_decide_auto_local_preferred_and_cloud_not_ready_has_no_fallback():
    assert run(cloud_ready=False) == RouteDecision("local", LOCAL, "policy_local")


def test_decide_auto_no_backend_available():
    with pytest.raises(NoBackendAvailable) as info:
        run(local_ready=False, cloud_ready=False)
    assert info.value.status_code == 503 and info.value.retry_after == 5


# ---- auto: configured rules -------------------------------------------------------------------------------------


def test_decide_rules_first_match_wins():
    policy = POLICY.model_copy(
        update={"rules": [rule("tools_local", "local", has_tools=True), rule("tools_cloud", "cloud", has_tools=True)]}
    )
    assert run(policy=policy, has_tools=True).reason == "rule_tools_local"
    flipped = policy.model_copy(update={"rules": list(reversed(policy.rules))})
    assert run(policy=flipped, has_tools=True).reason == "rule_tools_cloud"


def test_decide_rules_run_before_the_built_ins():
    policy = POLICY.model_copy(update={"rules": [rule("vision_local", "local", has_images=True)]})
    assert run(policy=policy, has_images=True) == RouteDecision("local", LOCAL, "rule_vision_local", "cloud", SONNET)


def test_decide_rule_to_cloud_may_fall_back_to_local():
    policy = POLICY.model_copy(update={"rules": [rule("big", "cloud", min_prompt_tokens=5)]})
    assert run(policy=policy) == RouteDecision("cloud", SONNET, "rule_big", "local", LOCAL)
    assert run(policy=policy, local_ready=False).fallback_backend is None


@pytest.mark.parametrize(
    "unsuitable",
    [{"has_images": True}, {"has_tools": True}, {"output_tokens": 100_000}, {"prompt_tokens": 100_000}],
)
def test_decide_rule_to_cloud_never_falls_back_to_a_local_model_that_cannot_take_the_request(unsuitable):
    policy = POLICY.model_copy(update={"rules": [rule("everything", "cloud")]})
    decision = run(policy=policy, **unsuitable)
    assert (decision.backend, decision.reason, decision.fallback_backend) == ("cloud", "rule_everything", None)


def test_decide_rule_to_local_still_checks_readiness():
    policy = POLICY.model_copy(update={"rules": [rule("all_local", "local")]})
    assert run(policy=policy, local_ready=False).reason == "local_not_ready"


@pytest.mark.parametrize(
    ("match", "overrides", "matched"),
    [
        ({"min_prompt_tokens": 10}, {"prompt_tokens": 10}, True),
        ({"min_prompt_tokens": 11}, {"prompt_tokens": 10}, False),
        ({"min_output_tokens": 200}, {"output_tokens": 200}, True),
        ({"min_output_tokens": 200}, {"output_tokens": 199}, False),
        ({"min_output_tokens": 1}, {"output_tokens": None}, False),
        ({"has_tools": True}, {"has_tools": False}, False),
        ({"has_tools": False}, {"has_tools": False}, True),
        ({"has_images": False}, {"has_images": True}, False),
        ({"has_tools": True, "min_prompt_tokens": 5}, {"has_tools": True, "prompt_tokens": 4}, False),
        ({}, {}, True),
    ],
)
def test_decide_rule_matching(match, overrides, matched):
    policy = POLICY.model_copy(update={"rules": [rule("r", "cloud", **match)]})
    assert (run(policy=policy, **overrides).reason == "rule_r") is matched


# ---- after_failure ----------------------------------------------------------------------------------------------


def test_after_failure_decisions_are_retries():
    assert run().after_failure().is_retry
    assert run(requested_model="cloud", cloud_ready=True, policy=POLICY).is_retry is False


def test_after_failure_local_to_cloud():
    fallback = run().after_failure()
    assert fallback == RouteDecision("cloud", SONNET, "fallback_local_error")
    assert fallback.fallback_backend is None  # one fallback per request


def test_after_failure_cloud_to_local():
    policy = POLICY.model_copy(update={"rules": [rule("big", "cloud")]})
    assert run(policy=policy).after_failure() == RouteDecision("local", LOCAL, "fallback_cloud_error")


def test_after_failure_without_fallback_is_a_programming_error():
    with pytest.raises(AssertionError):
        run(requested_model="cloud").after_failure()


def test_route_reason_values_are_the_documented_closed_set():
    assert {r.value for r in RouteReason} >= {
        "policy_local",
        "prompt_too_long",
        "local_not_ready",
        "local_saturated",
        "explicit_cloud",
        "fallback_local_error",
        "fallback_cloud_error",
        "fallback_local_not_ready",
        "fallback_local_saturated",
    }
    assert all(r.value == r.value.lower() and " " not in r.value for r in RouteReason)


# ---- prompt estimate ----------------------------------------------------------------------------------------------


def chat(messages: list[dict[str, Any]], **body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "auto", "messages": messages, **body})


def test_estimate_prompt_tokens_counts_characters_and_message_overhead():
    request = chat([{"role": "system", "content": "a" * 7}, {"role": "user", "content": "b" * 14}])
    assert estimate_prompt_tokens(request, chars_per_token=3.5) == 21 // 3.5 + 2 * 4
    assert estimate_prompt_tokens(request, chars_per_token=1.0) == 21 + 8


def test_estimate_prompt_tokens_counts_text_parts_not_images():
    parts = [
        {"type": "text", "text": "x" * 10},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
    ]
    assert estimate_prompt_tokens(chat([{"role": "user", "content": parts}]), chars_per_token=1.0) == 10 + 4


def test_estimate_prompt_tokens_counts_tool_calls_and_tool_definitions():
    call = {"id": "c1", "type": "function", "function": {"name": "abc", "arguments": "12345"}}
    messages = [{"role": "user", "content": ""}, {"role": "assistant", "tool_calls": [call]}]
    without_tools = estimate_prompt_tokens(chat(messages), chars_per_token=1.0)
    assert without_tools == 3 + 5 + 2 * 4
    tools = [{"type": "function", "function": {"name": "lookup", "description": "find", "parameters": {"a": 1}}}]
    with_tools = estimate_prompt_tokens(chat(messages, tools=tools), chars_per_token=1.0)
    assert with_tools == without_tools + len("lookup") + len("find") + len(str({"a": 1}))


def test_request_has_images():
    text_only = chat([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    image = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert not request_has_images(text_only)
    assert request_has_images(image)
