"""The router span's attributes are the same whether the replica sets them on the SDK's span or the export process
builds them from the LightSpan's deferred facts: same keys, values, order, limits and status."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.config import RouterArgs
from serve_app.errors import NoBackendAvailable
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.telemetry.cost import CostBreakdown, RequestCost
from serve_app.telemetry.export_process import readable_span
from serve_app.telemetry.light_span import LightSpan, attribute_limits
from serve_app.telemetry.metrics import RouterMetrics
from serve_app.telemetry.observation import ChatResult, Observation
from serve_app.telemetry.tracing import build_tracer_provider
from serve_app.usage import Usage

RESOURCE = Resource({"service.name": "router-test"})
FIRST_TOKEN_NS = 1_764_000_000_123_456_789


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[LightSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)  # type: ignore[arg-type]


def _args(capture: bool) -> RouterArgs:
    return RouterArgs.model_validate({"cloud": {"enabled": False}, "telemetry": {"capture_content": capture}})


def _clock() -> Any:
    ticks = itertools.count(start=100.0, step=0.0125)
    return lambda: next(ticks)


def _sdk(args: RouterArgs) -> tuple[Telemetry, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = build_tracer_provider(args.telemetry, {})
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry = Telemetry.from_args(
        args, tracer_provider=provider, meter=InMemoryMetricsSink(), langfuse=False, environ={}, clock=_clock()
    )
    return telemetry, memory


def _light(args: RouterArgs, *, own: bool = True) -> tuple[Telemetry, Collect]:
    """`own`: Telemetry built the provider (the router's sampler reads no attributes), so the start's attributes
    are deferred too; otherwise they are set at once, where a caller's sampler can see them."""
    collect = Collect()
    telemetry = Telemetry(
        args=args,
        provider=TracerProvider(resource=RESOURCE),
        owns_provider=own,
        tracing_active=True,
        metrics=RouterMetrics(InMemoryMetricsSink(), models={"auto", "local", "cloud"}),
        langfuse=None,
        clock=_clock(),
        light_processor=collect,
    )
    return telemetry, collect


def _cost() -> RequestCost:
    return RequestCost(actual=CostBreakdown(2.7e-05, 0.00024, 3e-07, 3.75e-06), counterfactual=CostBreakdown(1e-05))


SCENARIOS: dict[str, dict[str, Any]] = {
    "ok stream, cached tokens, cost and counterfactual, params": {
        "stream": True,
        "params": (("seed", "logit_bias"), ("stop",)),
        "result": ChatResult(
            outcome="ok",
            usage=Usage(input=9, output=16, cache_read=1, cache_creation=2),
            cost=_cost(),
            response_model="claude-sonnet-4-6",
            finish_reasons=("stop",),
            first_token_at=100.05,
            first_token_ns=FIRST_TOKEN_NS,
        ),
    },
    "fallback, then an attribute set by the backend's call, non-stream": {
        "fallback": True,
        "extra": {"http.response.status_code": 200, "peer.service": "anthropic"},
        "result": ChatResult(outcome="ok", usage=Usage(input=3, output=4), response_model="m", first_token_at=100.1),
    },
    "cancelled mid-stream, usage estimated": {
        "stream": True,
        "result": ChatResult(outcome="cancelled", usage=Usage(input=5, output=2), usage_estimated=True),
    },
    "error with a router error kind": {
        "result": ChatResult(outcome="error", error=NoBackendAvailable("no backend")),
    },
    "error with a plain exception, content captured": {
        "capture": True,
        "result": ChatResult(outcome="error", error=ValueError("x"), text="partial answer é"),
    },
    "ok with content captured": {
        "capture": True,
        "result": ChatResult(outcome="ok", usage=Usage(input=1, output=1), text="Paris", first_token_at=100.2),
    },
}


def _run(telemetry: Telemetry, scenario: dict[str, Any]) -> None:
    obs: Observation = telemetry.begin(
        request_id="0123456789abcdef0123456789abcdef",
        headers={},
        requested_model="auto",
        stream=scenario.get("stream", False),
        max_tokens=64,
        prompt_tokens_estimated=12,
        messages=[{"role": "user", "content": "Hi"}],
        tenant="team-a",
    )
    if scenario.get("fallback"):
        obs.routed(backend="local", provider="vllm", model="smol", reason="policy_local", fallback=False)
        obs.routed(backend="cloud", provider="anthropic", model="claude", reason="fallback_local_error", fallback=True)
    else:
        obs.routed(backend="cloud", provider="anthropic", model="claude", reason="explicit_cloud", fallback=False)
    if "params" in scenario:
        dropped, translated = scenario["params"]
        obs.request_params(dropped=dropped, translated=translated)
    if "extra" in scenario:
        with obs.backend_step():
            trace.get_current_span().set_attributes(scenario["extra"])
    obs.record(scenario["result"])


def _both(scenario: dict[str, Any], *, own: bool = True) -> tuple[ReadableSpan, ReadableSpan]:
    args = _args(scenario.get("capture", False))
    sdk, memory = _sdk(args)
    _run(sdk, scenario)
    light, collect = _light(args, own=own)
    _run(light, scenario)
    (sdk_span,) = memory.get_finished_spans()
    (ended,) = collect.ended
    record = pickle.loads(pickle.dumps(ended.record()))  # as the export process receives it
    return sdk_span, readable_span(record, RESOURCE, attribute_limits())


@pytest.mark.parametrize("own", [True, False], ids=["start deferred", "start set at once"])
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_deferred_attributes_are_the_ones_the_sdk_span_gets(scenario: dict[str, Any], own: bool) -> None:
    sdk, light = _both(scenario, own=own)
    assert list(light.attributes.items()) == list(sdk.attributes.items())  # same order, too
    assert light.dropped_attributes == sdk.dropped_attributes
    assert (light.status.status_code, light.status.description) == (sdk.status.status_code, sdk.status.description)
    assert len(sdk.attributes) > 15


def test_the_replica_holds_facts_not_attributes() -> None:
    """With the router's own provider the LightSpan holds no attribute at all, only facts and their mappings."""
    light, collect = _light(_args(False))
    _run(light, SCENARIOS["ok stream, cached tokens, cost and counterfactual, params"])
    (ended,) = collect.ended
    record = ended.record()
    assert record[8] == {}
    assert [mapping.__name__ for mapping, _ in record[15]] == [
        "start_attributes",
        "routed_attributes",
        "params_attributes",
        "end_attributes",
    ]


def test_a_callers_provider_sees_the_start_attributes_at_once() -> None:
    """A provider Telemetry did not build may have a sampler that reads the start's attributes: they are set when
    the span starts, and only what follows is deferred."""
    light, collect = _light(_args(False), own=False)
    _run(light, SCENARIOS["ok stream, cached tokens, cost and counterfactual, params"])
    (ended,) = collect.ended
    record = ended.record()
    assert record[8]["llm.request_id"] == "0123456789abcdef0123456789abcdef"
    assert "llm.outcome" not in record[8]
    assert record[15][0][0].__name__ == "routed_attributes"


def test_limits_apply_to_deferred_attributes_as_the_sdk_applies_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "12")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "6")
    sdk, light = _both(SCENARIOS["ok with content captured"] | {"extra": {"late": "a long value"}})
    assert len(sdk.attributes) == 12 and sdk.dropped_attributes > 0
    assert list(light.attributes.items()) == list(sdk.attributes.items())
    assert light.dropped_attributes == sdk.dropped_attributes


def test_a_failing_deferred_mapping_costs_its_attributes_only() -> None:
    light, collect = _light(_args(False))
    _run(light, SCENARIOS["cancelled mid-stream, usage estimated"])
    (ended,) = collect.ended
    *head, updates = ended.record()
    broken = ((_broken, ()), *updates)
    span = readable_span((*head, broken), RESOURCE)
    assert span.attributes["llm.outcome"] == "cancelled" and span.attributes["llm.backend"] == "cloud"


def _broken() -> dict[str, Any]:
    raise RuntimeError("a mapping that fails")


def test_rebuilding_a_record_in_process_leaves_the_span_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a pickle in between, the record's attribute dict is the span's own: rebuilding twice gives the
    same span, and the LightSpan still holds only its start's attributes."""
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "12")
    light, collect = _light(_args(True))
    _run(light, SCENARIOS["ok with content captured"])
    (ended,) = collect.ended
    before = dict(ended.record()[8])
    first, second = (readable_span(ended.record(), RESOURCE) for _ in range(2))
    assert ended.record()[8] == before
    assert list(first.attributes.items()) == list(second.attributes.items())
    assert first.dropped_attributes == second.dropped_attributes > 0
