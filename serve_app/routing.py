"""The routing policy: which backend answers a request, why, and where it may fall back; pure, no I/O.

`decide` reads only its arguments (a snapshot of backend readiness taken just before), so every branch is
a unit test, and the reason it returns is one of a closed set that metrics, spans and headers share.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from serve_app.config import LocalBackendArgs, RoutingPolicy, RoutingRule
from serve_app.errors import ModelNotFound, NoBackendAvailable
from serve_app.protocol import ChatCompletionRequest, ImagePart

BackendName = Literal["local", "cloud"]
CountPlan = Literal["estimate", "exact"]  # how a prompt is counted: the cheap estimate, or the local tokenizer
ALIASES = ("auto", "local", "cloud", "claude")  # `claude` is another name for `cloud`
CLOUD_ALIASES = ("cloud", "claude")
_MESSAGE_OVERHEAD_TOKENS = 4


class RouteReason(StrEnum):
    POLICY_LOCAL = "policy_local"
    EXPLICIT_LOCAL = "explicit_local"
    EXPLICIT_CLOUD = "explicit_cloud"
    LOCAL_NOT_READY = "local_not_ready"
    LOCAL_SATURATED = "local_saturated"
    PROMPT_TOO_LONG = "prompt_too_long"
    OUTPUT_TOO_LONG = "output_too_long"
    HAS_IMAGES = "has_images"
    HAS_TOOLS = "has_tools"
    CLOUD_DISABLED = "cloud_disabled"
    CLOUD_UNAVAILABLE = "cloud_unavailable"
    FALLBACK_LOCAL_ERROR = "fallback_local_error"  # local failed before the first byte; cloud answered
    FALLBACK_CLOUD_ERROR = "fallback_cloud_error"  # cloud failed before the first byte; local answered
    FALLBACK_LOCAL_NOT_READY = "fallback_local_not_ready"  # `local` requested while not serving; cloud answered
    FALLBACK_LOCAL_SATURATED = "fallback_local_saturated"  # `local` requested while saturated; cloud answered


# Reasons of a retry after a failure before the first byte (counted in router_fallbacks_total); the pin
# fallbacks above are decisions taken before any call, visible through the route reason and `requested` label.
RETRY_REASONS = frozenset({RouteReason.FALLBACK_LOCAL_ERROR.value, RouteReason.FALLBACK_CLOUD_ERROR.value})


@dataclass(frozen=True, slots=True)
class RouteInput:
    requested_model: str
    local_model_id: str
    cloud_model_ids: tuple[str, ...]  # empty when the cloud backend is disabled; the first is the default
    local_ready: bool
    local_inflight: int
    cloud_ready: bool
    prompt_tokens: int  # estimated
    output_tokens: int | None  # the client's budget, if any
    has_tools: bool = False
    has_images: bool = False


@dataclass(frozen=True, slots=True)
class RouteDecision:
    backend: BackendName
    model: str
    reason: str  # a RouteReason value, or rule_<name> for a configured rule
    fallback_backend: BackendName | None = None
    fallback_model: str | None = None

    @property
    def is_retry(self) -> bool:
        """Whether this decision replaced one whose backend failed before the first byte."""
        return self.reason in RETRY_REASONS

    def after_failure(self) -> RouteDecision:
        """The decision that replaces this one when its backend failed before the first byte."""
        assert self.fallback_backend is not None and self.fallback_model is not None
        reason = RouteReason.FALLBACK_LOCAL_ERROR if self.backend == "local" else RouteReason.FALLBACK_CLOUD_ERROR
        return RouteDecision(backend=self.fallback_backend, model=self.fallback_model, reason=reason.value)


def decide(*, route: RouteInput, policy: RoutingPolicy, local: LocalBackendArgs) -> RouteDecision:
    """Chooses the backend for one request. Raises ModelNotFound or NoBackendAvailable."""
    requested = route.requested_model
    cloud_default = route.cloud_model_ids[0] if route.cloud_model_ids else None
    if requested == "local":
        return _local_alias(route, policy, local, cloud_default)
    # A concrete model id is a strict pin: it names the model that must answer. While its backend is not ready the
    # answer is a 503 at once, not a wait on a model that is loading (the SDKs retry a 503 after its Retry-After).
    if requested == route.local_model_id:
        return _strict_local(route)
    if requested in CLOUD_ALIASES or requested in route.cloud_model_ids:
        if cloud_default is None:
            raise ModelNotFound(f"model '{requested}' is not available: the cloud backend is disabled", param="model")
        if not route.cloud_ready:
            raise NoBackendAvailable("the cloud backend is not ready: no Anthropic API key is configured")
        model = cloud_default if requested in CLOUD_ALIASES else requested
        return RouteDecision("cloud", model, RouteReason.EXPLICIT_CLOUD.value)
    if requested != "auto":
        aliases = [a for a in ALIASES if a not in CLOUD_ALIASES or route.cloud_model_ids]
        known = ", ".join([*aliases, route.local_model_id, *route.cloud_model_ids])
        raise ModelNotFound(f"model '{requested}' does not exist; available: {known}", param="model")
    if cloud_default is None:
        return RouteDecision("local", route.local_model_id, RouteReason.CLOUD_DISABLED.value)

    wanted, reason = _auto_preference(route, policy, local)
    if wanted == "local":
        if not route.local_ready:
            wanted, reason = "cloud", RouteReason.LOCAL_NOT_READY.value
        elif route.local_inflight >= local.saturation_inflight:
            wanted, reason = "cloud", RouteReason.LOCAL_SATURATED.value
    if wanted == "cloud" and not route.cloud_ready:
        if not route.local_ready:
            raise NoBackendAvailable(
                "no backend is ready: the local model is not serving and the cloud backend is not ready",
                retry_after=5,
            )
        wanted, reason = "local", RouteReason.CLOUD_UNAVAILABLE.value
    if wanted == "cloud":
        # A cloud request falls back to local only where local could take it, whichever rule sent it to the
        # cloud: a rule never makes an image or an over-long prompt something the local model can answer.
        can_fall_back = (
            policy.fallback
            and route.local_ready
            and reason not in _LOCAL_UNSUITABLE
            and _local_unsuitable(route, policy, local) is None
        )
        return RouteDecision(
            "cloud",
            cloud_default,
            reason,
            "local" if can_fall_back else None,
            route.local_model_id if can_fall_back else None,
        )
    fallback_ok = policy.fallback and route.cloud_ready
    return RouteDecision(
        "local",
        route.local_model_id,
        reason,
        "cloud" if fallback_ok else None,
        cloud_default if fallback_ok else None,
    )


def _strict_local(route: RouteInput) -> RouteDecision:
    if not route.local_ready:
        raise NoBackendAvailable(
            "the local model is not serving (loading or restarting); retry later, or send 'local' or 'auto' to be "
            "answered by the cloud meanwhile",
            retry_after=5,
        )
    return RouteDecision("local", route.local_model_id, RouteReason.EXPLICIT_LOCAL.value)


def _local_alias(
    route: RouteInput, policy: RoutingPolicy, local: LocalBackendArgs, cloud_default: str | None
) -> RouteDecision:
    """`local`: the local model, and with `routing.local_pin: fallback` the cloud while it cannot answer."""
    cloud_can_answer = policy.local_pin == "fallback" and cloud_default is not None and route.cloud_ready
    if not cloud_can_answer:
        if not route.local_ready:
            raise NoBackendAvailable(
                "the local model is not serving (loading or restarting) and 'local' is pinned to it "
                "(routing.local_pin: strict, or no cloud backend); retry later",
                retry_after=5,
            )
        return RouteDecision("local", route.local_model_id, RouteReason.EXPLICIT_LOCAL.value)
    assert cloud_default is not None
    if not route.local_ready:
        return RouteDecision("cloud", cloud_default, RouteReason.FALLBACK_LOCAL_NOT_READY.value)
    if route.local_inflight >= local.saturation_inflight:
        return RouteDecision("cloud", cloud_default, RouteReason.FALLBACK_LOCAL_SATURATED.value)
    # Also a failure before the first byte moves it to the cloud (`fallback_local_error`), as for `auto`.
    fallback_ok = policy.fallback
    return RouteDecision(
        "local",
        route.local_model_id,
        RouteReason.EXPLICIT_LOCAL.value,
        "cloud" if fallback_ok else None,
        cloud_default if fallback_ok else None,
    )


_LOCAL_UNSUITABLE = {
    RouteReason.PROMPT_TOO_LONG.value,
    RouteReason.OUTPUT_TOO_LONG.value,
    RouteReason.HAS_IMAGES.value,
    RouteReason.HAS_TOOLS.value,
    RouteReason.LOCAL_NOT_READY.value,
    RouteReason.LOCAL_SATURATED.value,
}


def _auto_preference(route: RouteInput, policy: RoutingPolicy, local: LocalBackendArgs) -> tuple[BackendName, str]:
    for rule in policy.rules:
        if _matches(rule, route):
            return rule.backend, f"rule_{rule.name}"
    unsuitable = _local_unsuitable(route, policy, local)
    if unsuitable is not None:
        return "cloud", unsuitable
    return "local", RouteReason.POLICY_LOCAL.value


def _local_unsuitable(route: RouteInput, policy: RoutingPolicy, local: LocalBackendArgs) -> str | None:
    """Why the local model cannot take this request (images, tools, too long), or None if it can."""
    if route.has_images and policy.images_go_cloud:
        return RouteReason.HAS_IMAGES.value
    if route.has_tools and not policy.local_tools:
        return RouteReason.HAS_TOOLS.value
    if route.output_tokens is not None and route.output_tokens > _max_local_output(policy, local):
        return RouteReason.OUTPUT_TOO_LONG.value
    if route.prompt_tokens > local_prompt_budget(output_tokens=route.output_tokens, policy=policy, local=local):
        return RouteReason.PROMPT_TOO_LONG.value
    return None


def _max_local_output(policy: RoutingPolicy, local: LocalBackendArgs) -> int:
    return policy.max_local_output_tokens or max(1, local.context_window // 2)


def local_prompt_budget(*, output_tokens: int | None, policy: RoutingPolicy, local: LocalBackendArgs) -> int:
    """The longest prompt (in tokens) `auto` sends to the local model: `max_local_prompt_tokens`, else the context
    window minus the output budget (the client's, else the default one; at most the largest local output)."""
    if policy.max_local_prompt_tokens:
        return policy.max_local_prompt_tokens
    output = output_tokens if output_tokens is not None else policy.default_local_output_tokens
    return max(1, local.context_window - min(output, _max_local_output(policy, local)))


def count_plan(*, estimate: int, byte_bound: int, budget: int, policy: RoutingPolicy) -> CountPlan:
    """Whether the tokenizer must count a prompt whose cheap estimate is `estimate` and that cannot exceed
    `byte_bound` tokens (one per UTF-8 byte), against the local prompt `budget`; pure."""
    if estimate > policy.exact_count_above * budget:
        return "estimate"  # too long whatever the exact count says
    if byte_bound <= budget:
        return "estimate"  # fits whatever the exact count says
    if policy.exact_count_below is not None and estimate < policy.exact_count_below * budget:
        return "estimate"  # the configured band says: fits
    return "exact"


def _matches(rule: RoutingRule, route: RouteInput) -> bool:
    if rule.min_prompt_tokens is not None and route.prompt_tokens < rule.min_prompt_tokens:
        return False
    if rule.min_output_tokens is not None and (route.output_tokens or 0) < rule.min_output_tokens:
        return False
    if rule.has_tools is not None and route.has_tools != rule.has_tools:
        return False
    return rule.has_images is None or route.has_images == rule.has_images


def estimate_prompt_tokens(request: ChatCompletionRequest, *, chars_per_token: float) -> int:
    """A cheap upper-leaning estimate of the prompt's token count (characters / chars_per_token + overhead)."""
    return int(prompt_chars(request) / chars_per_token) + _MESSAGE_OVERHEAD_TOKENS * len(request.messages)


def prompt_chars(request: ChatCompletionRequest) -> int:
    """The characters the prompt estimate counts: message text, tool calls and tool definitions, not images."""
    return sum(len(text) for text in prompt_texts(request))


def prompt_texts(request: ChatCompletionRequest) -> Iterator[str]:
    """Every piece of text the prompt is made of, in order: message text (each text part), tool calls' names and
    arguments, tool definitions (name, description, parameters); not images, roles or the chat template."""
    for message in request.messages:
        if isinstance(message.content, str):
            yield message.content
        elif message.content:
            yield from (part.text for part in message.content if not isinstance(part, ImagePart))
        for call in message.tool_calls or ():
            yield call.function.name
            yield call.function.arguments
    for tool in request.tools or ():
        yield tool.function.name
        yield tool.function.description or ""
        yield str(tool.function.parameters)


def request_has_images(request: ChatCompletionRequest) -> bool:
    return any(
        isinstance(part, ImagePart)
        for message in request.messages
        if isinstance(message.content, list)
        for part in message.content
    )
