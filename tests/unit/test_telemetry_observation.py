"""Observation: one span per request with GenAI + Langfuse attributes and metrics, recorded from the result that
the request's owner built (the real `Tally`, `Pricer` and `finished_result` of serve_app.chat_stream); idempotent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from serve_app.chat_stream import Pricer, Tally, finished_result
from serve_app.config import RouterArgs
from serve_app.errors import UpstreamOverloaded
from serve_app.telemetry import ChatResult, InMemoryMetricsSink, Telemetry
from serve_app.telemetry.metrics import REQUESTED
from serve_app.telemetry.tracing import build_sampler

EPS = 1e-9
SONNET = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class LocalRate:
    """What the model replica last reported as its GPU's USD per token (LocalBackend.usd_per_token)."""

    def __init__(self, value: float | None) -> None:
        self.value = value

    def __call__(self) -> float | None:
        return self.value


def make(capture_content: bool = False) -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricsSink, Clock]:
    args = RouterArgs.model_validate(
        {
            "local": {"model_id": "local-model"},
            "pricing": {
                "source": "test",
                "as_of": "2026-11-30",
                "models": {"claude-sonnet-4-6": SONNET},
            },
            "telemetry": {"capture_content": capture_content},
        }
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = InMemoryMetricsSink()
    clock = Clock()
    telemetry = Telemetry.from_args(args, tracer_provider=provider, meter=sink, langfuse=False, clock=clock, environ={})
    return telemetry, exporter, sink, clock


def chunk(
    content: str | None = None,
    *,
    model: str = "claude-sonnet-4-6",
    usage: dict | None = None,
    finish: str | None = None,
) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


async def stream(chunks: list[dict], clock: Clock, step: float = 0.1) -> AsyncIterator[dict]:
    for c in chunks:
        clock.t += step
        yield c


async def observe(telemetry: Telemetry, chunks: AsyncIterator[dict]) -> Tally:
    """What the request's owner (ChatStream) learns from the chunks."""
    tally = Tally(clock=telemetry.clock, capture_text=telemetry.capture_content)
    async for c in chunks:
        tally.add(c)
    return tally


def finish(
    obs: Any,
    telemetry: Telemetry,
    tally: Tally | None = None,
    *,
    outcome: str,
    error: BaseException | None = None,
    backend: str = "cloud",
    model: str = "claude-sonnet-4-6",
    local_rate: LocalRate | None = None,
    prompt_tokens_estimated: int = 90,
) -> Any:
    """Records the result ChatStream would hand over for `tally` ended with `outcome`; returns it."""
    pricer = Pricer(telemetry.args, local_rate)
    result = finished_result(
        tally or Tally(clock=telemetry.clock),
        outcome=outcome,
        error=error,
        price=lambda usage: pricer(backend=backend, model=model, usage=usage),
        prompt_tokens_estimated=prompt_tokens_estimated,
    )
    obs.record(result)
    return result


def begin(telemetry: Telemetry, **overrides: Any):
    kwargs: dict[str, Any] = dict(
        request_id="req-1", headers={}, requested_model="auto", stream=True, max_tokens=64, prompt_tokens_estimated=90
    )
    kwargs.update(overrides)
    return telemetry.begin(**kwargs)


def routed_cloud(obs: Any) -> None:
    """The router's call for an explicit `cloud` request answered by Sonnet."""
    obs.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
    )


async def test_observation_ok_stream_sets_genai_and_langfuse_attributes() -> None:
    telemetry, exporter, sink, clock = make()
    obs = begin(telemetry, headers={"TraceParent": TRACEPARENT}, user="u-1", session_id="s-1")
    clock.t += 0.002
    routed_cloud(obs)
    usage = {
        "prompt_tokens": 1350,
        "completion_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 50},
    }
    tally = await observe(
        telemetry, stream([chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop", usage=usage)], clock)
    )
    assert tally.chunks == 4
    finish(obs, telemetry, tally, outcome="ok")

    (span,) = exporter.get_finished_spans()
    a = span.attributes
    assert span.name == "chat auto" and span.kind is SpanKind.CLIENT
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "auto" and a["llm.model.requested"] == "auto"
    assert a["gen_ai.response.model"] == "claude-sonnet-4-6"
    assert a["gen_ai.usage.input_tokens"] == 1350  # cached included
    assert a["gen_ai.usage.output_tokens"] == 40
    assert a["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 50
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.request.max_tokens"] == 64 and a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.202)  # "" is not a token
    assert a["llm.ttft_ms"] == pytest.approx(202.0)
    assert a["llm.latency_ms"] == pytest.approx(402.0)
    assert a["llm.backend"] == "cloud" and a["llm.route.reason"] == "explicit_cloud" and a["llm.fallback"] is False
    assert a["llm.request_id"] == "req-1" and a["llm.prompt_tokens_estimated"] == 90
    assert a["user.id"] == "u-1" and a["session.id"] == "s-1"
    assert a["langfuse.observation.type"] == "generation"
    assert a["langfuse.observation.model.name"] == "claude-sonnet-4-6"
    assert json.loads(a["langfuse.observation.usage_details"]) == {
        "input": 300,
        "input_cache_read": 1000,
        "input_cache_creation": 50,
        "output": 40,
    }
    cost = json.loads(a["langfuse.observation.cost_details"])
    expected = {
        "input": 300 * 3.0e-6,
        "input_cache_read": 1000 * 0.3e-6,
        "input_cache_creation": 50 * 3.75e-6,
        "output": 40 * 15.0e-6,
    }
    for key, value in expected.items():
        assert cost[key] == pytest.approx(value, abs=EPS)
    assert cost["total"] == pytest.approx(sum(expected.values()), abs=EPS)
    assert a["llm.cost_usd"] == pytest.approx(cost["total"], abs=EPS)
    assert json.loads(a["langfuse.observation.metadata.backend"]) == "cloud"
    assert json.loads(a["langfuse.observation.metadata.request_id"]) == "req-1"
    assert "langfuse.observation.input" not in a and "langfuse.observation.output" not in a
    assert "error.type" not in a and span.status.status_code is StatusCode.UNSET

    labels = dict(
        backend="cloud", model="claude-sonnet-4-6", route_reason="explicit_cloud", outcome="ok", stream="true"
    )
    assert sink.counter("router_requests", **labels) == 1
    assert sink.counter("router_tokens", token_type="input") == 300
    assert sink.counter("router_tokens", token_type="cache_read") == 1000
    assert sink.counter("router_cost_usd", backend="cloud") == pytest.approx(cost["total"], abs=EPS)
    assert sink.samples("router_overhead_seconds", backend="cloud") == [pytest.approx(0.002)]
    assert sink.samples("router_time_to_first_token_seconds", backend="cloud") == [pytest.approx(0.202)]
    assert sink.samples("router_request_duration_seconds", outcome="ok") == [pytest.approx(0.402)]


async def test_observation_finish_is_idempotent() -> None:
    telemetry, exporter, sink, _ = make()
    obs = begin(telemetry)
    obs.routed(backend="local", provider="vllm", model="local-model", reason="policy_local", fallback=False)
    finish(obs, telemetry, outcome="ok", backend="local", model="local-model")
    finish(obs, telemetry, outcome="error", error=RuntimeError("late"))
    finish(obs, telemetry, outcome="cancelled")
    assert len(exporter.get_finished_spans()) == 1
    assert sink.counter("router_requests") == 1
    assert sink.counter("router_requests", outcome="ok") == 1


async def test_observation_cancelled_mid_stream_keeps_partial_usage() -> None:
    telemetry, exporter, sink, clock = make()
    obs = begin(telemetry)
    routed_cloud(obs)
    chunks = [
        chunk("a", usage={"prompt_tokens": 200, "completion_tokens": 1}),
        chunk("b", usage={"prompt_tokens": 200, "completion_tokens": 2}),
    ]
    result = finish(obs, telemetry, await observe(telemetry, stream(chunks, clock)), outcome="cancelled")
    (span,) = exporter.get_finished_spans()
    a = span.attributes
    assert a["llm.outcome"] == "cancelled" and "error.type" not in a
    assert a["langfuse.observation.level"] == "WARNING"
    assert a["gen_ai.usage.input_tokens"] == 200 and a["gen_ai.usage.output_tokens"] == 2
    cost = json.loads(a["langfuse.observation.cost_details"])
    assert cost["total"] == pytest.approx((200 * 3.0 + 2 * 15.0) / 1e6, abs=EPS)
    assert sink.counter("router_requests", outcome="cancelled") == 1
    assert result.usage.output == 2


async def test_observation_error_records_router_error_kind() -> None:
    telemetry, exporter, sink, _ = make()
    obs = begin(telemetry, stream=False)
    routed_cloud(obs)

    finish(obs, telemetry, outcome="error", error=UpstreamOverloaded("busy", backend="cloud"))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "UpstreamOverloaded"
    assert span.attributes["gen_ai.usage.input_tokens"] == 0
    assert json.loads(span.attributes["langfuse.observation.cost_details"])["total"] == 0.0
    assert sink.counter("router_requests", outcome="error", stream="false") == 1
    assert sink.samples("router_time_to_first_token_seconds") == []


async def test_observation_error_with_plain_exception_uses_class_name() -> None:
    telemetry, exporter, _, _ = make()
    obs = begin(telemetry)
    obs.record(ChatResult(outcome="error", error=TimeoutError()))  # failed before any backend: no usage, no cost
    (span,) = exporter.get_finished_spans()
    assert span.attributes["error.type"] == "TimeoutError"
    assert "llm.cost_usd" not in span.attributes  # never routed: no backend, no cost


async def test_observation_fallback_counts_once_and_cost_follows_the_answering_backend() -> None:
    telemetry, exporter, sink, clock = make()
    obs = begin(telemetry)
    clock.t += 0.001
    obs.routed(backend="local", provider="vllm", model="local-model", reason="policy_local", fallback=False)
    clock.t += 0.5
    obs.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="fallback_local_error", fallback=True
    )
    tally = await observe(telemetry, stream([chunk("x", usage={"prompt_tokens": 10, "completion_tokens": 1})], clock))
    finish(obs, telemetry, tally, outcome="ok")
    a = exporter.get_finished_spans()[0].attributes
    assert a["llm.backend"] == "cloud" and a["llm.fallback"] is True and a["gen_ai.provider.name"] == "anthropic"
    assert sink.counter("router_fallbacks", backend="cloud", route_reason="fallback_local_error") == 1
    assert sink.samples("router_overhead_seconds") == [pytest.approx(0.001)]
    assert a["llm.cost_usd"] == pytest.approx((10 * 3.0 + 15.0) / 1e6, abs=EPS)


async def test_observation_local_cost_uses_the_reported_gpu_rate_and_cloud_counterfactual_recorded() -> None:
    rate = LocalRate(5e-6)  # USD per token, as the model replica's GPU ledger last reported it
    telemetry, exporter, sink, clock = make()
    obs = begin(telemetry)
    obs.routed(backend="local", provider="vllm", model="local-model", reason="policy_local", fallback=False)
    chunks = [
        chunk("x", model="local-model"),
        chunk(model="local-model", finish="stop", usage={"prompt_tokens": 300, "completion_tokens": 100}),
    ]
    tally = await observe(telemetry, stream(chunks, clock, step=1.0))
    finish(obs, telemetry, tally, outcome="ok", backend="local", model="local-model", local_rate=rate)
    a = exporter.get_finished_spans()[0].attributes
    assert a["llm.cost_usd"] == pytest.approx(400 * 5e-6, abs=EPS)
    assert json.loads(a["langfuse.observation.cost_details"])["input"] == pytest.approx(300 * 5e-6, abs=EPS)
    assert a["llm.counterfactual_cost_usd"] == pytest.approx((300 * 3.0 + 100 * 15.0) / 1e6, abs=EPS)
    assert sink.counter("router_counterfactual_cost_usd", backend="local", model="local-model") == pytest.approx(
        0.0024, abs=EPS
    )
    assert sink.counter("router_cost_usd", backend="local", model="local-model") == pytest.approx(0.002, abs=EPS)

    # a later cloud request's counterfactual uses the rate reported by then
    rate.value = 2e-6
    obs2 = begin(telemetry, request_id="req-2")
    obs2.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
    )
    tally2 = await observe(telemetry, stream([chunk("y", usage={"prompt_tokens": 40, "completion_tokens": 10})], clock))
    finish(obs2, telemetry, tally2, outcome="ok", local_rate=rate)
    a2 = exporter.get_finished_spans()[1].attributes
    assert a2["llm.counterfactual_cost_usd"] == pytest.approx(50 * 2e-6, abs=EPS)


async def test_observation_local_cost_is_unknown_until_the_model_replica_reports_a_rate() -> None:
    telemetry, exporter, _, clock = make()
    obs = begin(telemetry)
    obs.routed(backend="local", provider="vllm", model="local-model", reason="policy_local", fallback=False)
    tally = await observe(telemetry, stream([chunk("x", usage={"prompt_tokens": 3, "completion_tokens": 1})], clock))
    result = finish(
        obs, telemetry, tally, outcome="ok", backend="local", model="local-model", local_rate=LocalRate(None)
    )
    assert result.cost is not None and result.cost.actual is None
    assert "llm.cost_usd" not in exporter.get_finished_spans()[0].attributes


@pytest.mark.parametrize("outcome", ["cancelled", "error"])
async def test_observation_early_end_counts_at_least_the_streamed_content_chunks(outcome: str) -> None:
    # Anthropic: message_start says output_tokens 1; the real count would only come with message_delta
    telemetry, exporter, sink, clock = make()
    obs = begin(telemetry)
    routed_cloud(obs)
    start = chunk("", usage={"prompt_tokens": 200, "completion_tokens": 1})
    tally = await observe(telemetry, stream([start, *(chunk(w) for w in "abcde")], clock))
    result = finish(obs, telemetry, tally, outcome=outcome)
    a = exporter.get_finished_spans()[0].attributes
    assert a["gen_ai.usage.input_tokens"] == 200 and a["gen_ai.usage.output_tokens"] == 5
    assert a["llm.usage.estimated"] is True
    assert sink.counter("router_tokens", token_type="output") == 5
    assert result.cost.actual.total == pytest.approx((200 * 3.0 + 5 * 15.0) / 1e6, abs=EPS)


async def test_observation_finished_stream_keeps_the_reported_count() -> None:
    telemetry, exporter, _, clock = make()
    obs = begin(telemetry)
    routed_cloud(obs)
    chunks = [chunk("ab", usage={"prompt_tokens": 10, "completion_tokens": 1}), chunk("cd"), chunk("ef")]
    chunks.append(chunk(None, finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 2}))
    finish(obs, telemetry, await observe(telemetry, stream(chunks, clock)), outcome="ok")
    a = exporter.get_finished_spans()[0].attributes
    assert a["gen_ai.usage.output_tokens"] == 2 and "llm.usage.estimated" not in a  # the upstream's word is final


async def test_observation_without_reported_usage_estimates_and_flags_it() -> None:
    telemetry, exporter, _, clock = make()
    obs = begin(telemetry, prompt_tokens_estimated=77)
    routed_cloud(obs)
    tally = await observe(telemetry, stream([chunk("a"), chunk("b"), chunk("c")], clock))
    assert not tally.usage_known  # no usage reported
    result = finish(obs, telemetry, tally, outcome="cancelled", prompt_tokens_estimated=77)
    a = exporter.get_finished_spans()[0].attributes
    assert a["llm.usage.estimated"] is True
    assert a["gen_ai.usage.input_tokens"] == 77 and a["gen_ai.usage.output_tokens"] == 3
    assert result.cost.actual.total == pytest.approx((77 * 3.0 + 3 * 15.0) / 1e6, abs=EPS)


async def test_observation_captures_content_only_when_opted_in() -> None:
    messages = [{"role": "user", "content": "secret prompt"}]
    for capture in (False, True):
        telemetry, exporter, _, clock = make(capture_content=capture)
        obs = begin(telemetry, messages=messages)
        obs.routed(
            backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
        )
        finish(obs, telemetry, await observe(telemetry, stream([chunk("Hel"), chunk("lo")], clock)), outcome="ok")
        a = exporter.get_finished_spans()[0].attributes
        text = json.dumps(dict(a))
        if capture:
            assert json.loads(a["langfuse.observation.input"]) == messages
            assert json.loads(a["langfuse.observation.output"])["content"] == "Hello"
        else:
            assert "secret prompt" not in text and "Hello" not in text


async def test_observation_closed_label_values() -> None:
    telemetry, _, sink, _ = make()
    obs = begin(telemetry, requested_model="some-unknown-model-id-from-a-client")
    obs.routed(backend="cloud", provider="anthropic", model="claude-made-up", reason="Weird Reason!", fallback=False)
    finish(obs, telemetry, outcome="ok", model="claude-made-up")
    assert sink.counter("router_requests", model="other", route_reason="other", requested="concrete") == 1


@pytest.mark.parametrize(
    ("requested", "label"),
    [("auto", "auto"), ("local", "local"), ("cloud", "cloud"), ("claude", "cloud"), ("local-model", "concrete")],
)
async def test_observation_requested_label_is_the_alias_or_concrete(requested, label) -> None:
    telemetry, _, sink, _ = make()
    obs = begin(telemetry, requested_model=requested)
    obs.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
    )
    finish(obs, telemetry, outcome="ok", model="claude-sonnet-4-6")
    assert sink.counter("router_requests", requested=label) == 1
    assert label in REQUESTED


async def test_trace_headers_continue_the_request_span() -> None:
    telemetry, exporter, _, _ = make()
    obs = begin(telemetry, headers={"traceparent": TRACEPARENT})
    headers = obs.trace_headers()
    obs.record(ChatResult(outcome="ok"))
    span = exporter.get_finished_spans()[0]
    assert headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


def test_telemetry_without_exporters_uses_a_noop_tracer() -> None:
    args = RouterArgs.model_validate({"cloud": {"enabled": False}})
    sink = InMemoryMetricsSink()
    telemetry = Telemetry.from_args(args, meter=sink, environ={})
    obs = telemetry.begin(
        request_id="r", headers={}, requested_model="local", stream=False, max_tokens=None, prompt_tokens_estimated=1
    )
    obs.routed(backend="local", provider="vllm", model="local-model", reason="explicit_local", fallback=False)
    obs.record(ChatResult(outcome="ok"))
    assert sink.counter("router_requests", backend="local", outcome="ok") == 1
    telemetry.shutdown()


def test_without_traceparent_the_current_context_is_the_parent() -> None:
    """Ray Serve's tracing (when on) leaves its replica span current; the router span joins that trace."""
    telemetry, exporter, _, _ = make()
    outer_provider = TracerProvider()
    with outer_provider.get_tracer("ray.serve").start_as_current_span("replica_handle_request") as serve_span:
        obs = begin(telemetry, headers={"baggage": "langfuse_user_id=spoofed"})
    obs.record(ChatResult(outcome="ok"))
    span = exporter.get_finished_spans()[0]
    assert span.context.trace_id == serve_span.get_span_context().trace_id
    assert span.parent.span_id == serve_span.get_span_context().span_id
    assert "user.id" not in span.attributes


def test_client_traceparent_wins_and_client_baggage_is_ignored() -> None:
    telemetry, exporter, _, _ = make()
    obs = begin(telemetry, headers={"traceparent": TRACEPARENT, "baggage": "langfuse_user_id=spoofed"})
    obs.record(ChatResult(outcome="ok"))
    span = exporter.get_finished_spans()[0]
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert "user.id" not in span.attributes


@pytest.mark.parametrize(
    ("ratio", "traceparent", "recorded"),
    [
        (1.0, TRACEPARENT[:-2] + "00", True),  # the client does not sample its trace: the generation stays
        (0.0, TRACEPARENT[:-2] + "00", True),
        (0.0, TRACEPARENT, True),  # a sampled parent is followed whatever the ratio
        (0.0, None, False),  # the ratio governs only requests that start a trace
        (1.0, None, True),
    ],
)
def test_sampler_never_drops_a_request_span_for_an_unsampled_parent(ratio, traceparent, recorded) -> None:
    args = RouterArgs.model_validate({"cloud": {"enabled": False}, "telemetry": {"sampling_ratio": ratio}})
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=build_sampler(args.telemetry))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry.from_args(args, tracer_provider=provider, meter=InMemoryMetricsSink(), langfuse=False)
    obs = begin(telemetry, headers={"traceparent": traceparent} if traceparent else {})
    obs.record(ChatResult(outcome="ok"))
    spans = exporter.get_finished_spans()
    assert len(spans) == (1 if recorded else 0)
    if recorded and traceparent:
        assert f"{spans[0].context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
