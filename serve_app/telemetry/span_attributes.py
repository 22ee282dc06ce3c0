"""The router span's attributes after its start, from plain facts: one mapping for the SDK's span and the LightSpan.

`Observation` hands these functions what the request did (numbers, strings, tuples). With the SDK's span it
calls them at once and sets what they return. With a `light_span.LightSpan` (the export process is the only
sink) it hands the span the function and its facts: the export process calls it when it rebuilds the span, so
the attribute dicts, the JSON of Langfuse's usage, cost and metadata fields and the completion start time are
built off the replica's event loop. Either way the span gets the same attributes in the same order
(tests/unit/test_span_attributes.py compares the two paths). The functions must stay importable at module level
and their facts picklable: the export process finds them by name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

from serve_app.telemetry.cost import CostBreakdown
from serve_app.usage import Usage

LF = "langfuse.observation."


def start_attributes(
    request_id: str,
    requested_model: str,
    stream: bool,
    max_tokens: int | None,
    prompt_tokens_estimated: int,
    user: str | None,
    session_id: str | None,
    tenant: str | None,
    input_json: str | None,
) -> dict[str, Any]:
    """What the request asked for; `input_json`, the prompt as Langfuse's input (only with content capture)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": requested_model,
        "gen_ai.request.stream": stream,
        "llm.model.requested": requested_model,
        "llm.prompt_tokens_estimated": prompt_tokens_estimated,
        "llm.request_id": request_id,
        LF + "type": "generation",
        LF + "metadata.request_id": span_json(request_id),
    }
    if max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = max_tokens
        attrs["llm.max_tokens"] = max_tokens
    if user:
        attrs["user.id"] = user
    if session_id:
        attrs["session.id"] = session_id
    if tenant:  # who owns the key (never the key); the client's own `user` stays the Langfuse user
        attrs["llm.tenant"] = tenant
        attrs["langfuse.trace.tags"] = [f"tenant:{tenant}"]
        attrs[LF + "metadata.tenant"] = span_json(tenant)
    if input_json is not None:
        attrs[LF + "input"] = input_json
    return attrs


_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode  # one encoder, not one per call


def span_json(value: Any) -> str:
    """JSON as Langfuse's metadata and input fields take it: non-ASCII kept, anything else as its str()."""
    return _ENCODE(value)


def routed_attributes(backend: str, provider: str, model: str, reason: str, fallback: bool) -> dict[str, Any]:
    """The backend chosen (a fallback's second call replaces the first's values)."""
    return {
        "llm.backend": backend,
        "llm.route.reason": reason,
        "llm.fallback": fallback,
        "gen_ai.provider.name": provider,
        LF + "model.name": model,
        LF + "metadata.backend": json.dumps(backend),
        LF + "metadata.route_reason": json.dumps(reason),
    }


def params_attributes(dropped: tuple[str, ...], translated: tuple[str, ...]) -> dict[str, Any]:
    """The request fields the backend will not get, and those it gets translated (names only; absent when none)."""
    attrs: dict[str, Any] = {}
    if dropped:
        attrs["llm.request.dropped_params"] = list(dropped)
        attrs[LF + "metadata.dropped_params"] = json.dumps(list(dropped))
    if translated:
        attrs["llm.request.translated_params"] = list(translated)
        attrs[LF + "metadata.translated_params"] = json.dumps(list(translated))
    return attrs


class EndFacts(NamedTuple):
    """A finished request as the span records it; built by `Observation` from its `ChatResult`."""

    outcome: str
    latency_ms: float
    usage: tuple[int, int, int, int]  # Usage: input (uncached), output, cache_read, cache_creation
    usage_estimated: bool
    response_model: str | None
    finish_reasons: tuple[str, ...]
    ttft_s: float | None
    stream: bool
    first_token_ns: int | None  # wall clock of the first token, Langfuse's completion start time
    cost: tuple[float, float, float, float] | None  # CostBreakdown: input, output, cache_read, cache_creation (USD)
    counterfactual_usd: float | None
    text: str | None  # the completion, only when content capture is on
    error_kind: str | None  # `error.type` of a failed request


def end_attributes(facts: EndFacts) -> dict[str, Any]:
    """Outcome, usage, cost and timing of the finished request, GenAI and Langfuse names."""
    fresh, output, cache_read, cache_creation = facts.usage
    usage = Usage(input=fresh, output=output, cache_read=cache_read, cache_creation=cache_creation)
    attrs: dict[str, Any] = {
        "llm.outcome": facts.outcome,
        "llm.latency_ms": facts.latency_ms,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.output,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation,
        LF + "usage_details": json.dumps(usage.to_buckets()),
    }
    if facts.usage_estimated:
        attrs["llm.usage.estimated"] = True
    if facts.response_model:
        attrs["gen_ai.response.model"] = facts.response_model
    if facts.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(facts.finish_reasons)
    if facts.ttft_s is not None:
        attrs["llm.ttft_ms"] = facts.ttft_s * 1000.0
        if facts.stream:
            attrs["gen_ai.response.time_to_first_chunk"] = facts.ttft_s
        if facts.first_token_ns is not None:
            when = datetime.fromtimestamp(facts.first_token_ns / 1e9, tz=UTC)
            attrs[LF + "completion_start_time"] = json.dumps(when.isoformat())
    if facts.cost is not None:
        c_input, c_output, c_read, c_creation = facts.cost
        cost = CostBreakdown(input=c_input, output=c_output, cache_read=c_read, cache_creation=c_creation)
        attrs["llm.cost_usd"] = cost.total
        attrs[LF + "cost_details"] = json.dumps(cost.to_details())
    if facts.counterfactual_usd is not None:
        attrs["llm.counterfactual_cost_usd"] = facts.counterfactual_usd
    if facts.text is not None:
        attrs[LF + "output"] = json.dumps({"role": "assistant", "content": facts.text})
    if facts.outcome == "cancelled":
        attrs[LF + "level"] = "WARNING"
        attrs[LF + "status_message"] = "cancelled by the client"
    elif facts.error_kind is not None:
        attrs["error.type"] = facts.error_kind
        attrs[LF + "status_message"] = facts.error_kind
    return attrs
