"""Telemetry over the real wire: OTLP/HTTP and OTLP/gRPC receivers and a Langfuse stand-in on loopback."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.chat_stream import Pricer, Tally, finished_result
from serve_app.config import RouterArgs
from serve_app.telemetry import InMemoryMetricsSink, Observation, Telemetry
from serve_app.telemetry.tracing import TRACER_NAME
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

EPS = 1e-9
SONNET = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}
LOCAL_USD_PER_TOKEN = 4e-6  # what a model replica's GPU ledger would report
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def router_args(**telemetry: Any) -> RouterArgs:
    return RouterArgs.model_validate(
        {
            "local": {"model_id": "local-model"},
            "pricing": {
                "source": "test",
                "as_of": "2026-11-30",
                "models": {"claude-sonnet-4-6": SONNET},
            },
            "telemetry": {"environment": "test", "export_timeout_s": 1.0, **telemetry},
        }
    )


def langfuse_env(standin: LangfuseStandin, secret: str) -> dict[str, str]:
    return {
        "LANGFUSE_PUBLIC_KEY": standin.public_key,
        "LANGFUSE_SECRET_KEY": secret,
        "LANGFUSE_BASE_URL": standin.base_url,
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def backend(usage: dict, n: int = 3, model: str = "claude-sonnet-4-6") -> AsyncIterator[dict]:
    for i in range(n):
        yield {"model": model, "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]}
    yield {"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}


async def one_request(
    telemetry: Telemetry,
    request_id: str,
    *,
    backend_name: str = "cloud",
    usage: dict,
    headers: dict[str, str] | None = None,
) -> None:
    obs = telemetry.begin(
        request_id=request_id,
        headers=headers or {},
        requested_model="auto",
        stream=True,
        max_tokens=32,
        prompt_tokens_estimated=10,
    )
    if backend_name == "cloud":
        model = "claude-sonnet-4-6"
        obs.routed(backend="cloud", provider="anthropic", model=model, reason="explicit_cloud", fallback=False)
    else:
        model = "local-model"
        obs.routed(backend="local", provider="vllm", model=model, reason="policy_local", fallback=False)
    await finish(obs, telemetry, backend(usage, model=model), backend_name=backend_name, model=model, outcome="ok")


async def finish(
    obs: Observation, telemetry: Telemetry, chunks: AsyncIterator[dict], *, backend_name: str, model: str, outcome: str
) -> None:
    """What the request's owner (ChatStream) records: the tally of the chunks, priced, with the outcome."""
    tally = Tally(clock=telemetry.clock)
    async for chunk in chunks:
        tally.add(chunk)
    pricer = Pricer(telemetry.args, lambda: LOCAL_USD_PER_TOKEN)
    price = lambda usage: pricer(backend=backend_name, model=model, usage=usage)  # noqa: E731
    obs.record(finished_result(tally, outcome=outcome, error=None, price=price, prompt_tokens_estimated=10))


async def cancelled_request(telemetry: Telemetry, request_id: str) -> None:
    obs = telemetry.begin(
        request_id=request_id,
        headers={},
        requested_model="cloud",
        stream=True,
        max_tokens=32,
        prompt_tokens_estimated=10,
    )
    obs.routed(
        backend="cloud", provider="anthropic", model="claude-sonnet-4-6", reason="explicit_cloud", fallback=False
    )

    async def until_cancelled() -> AsyncIterator[dict]:
        yield {
            "model": "claude-sonnet-4-6",
            "choices": [{"index": 0, "delta": {"content": "a"}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 1},
        }
        yield {
            "model": "claude-sonnet-4-6",
            "choices": [{"index": 0, "delta": {"content": "b"}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 2},
        }

    await finish(
        obs, telemetry, until_cancelled(), backend_name="cloud", model="claude-sonnet-4-6", outcome="cancelled"
    )


async def test_spans_reach_an_otlp_http_receiver_with_resource_and_parent() -> None:
    with OtlpHttpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url, "OTEL_SERVICE_NAME": "router-from-env"}
        telemetry = Telemetry.from_args(router_args(), meter=InMemoryMetricsSink(), environ=env)
        await one_request(
            telemetry,
            "http-1",
            usage={"prompt_tokens": 50, "completion_tokens": 3},
            headers={"traceparent": TRACEPARENT},
        )
        telemetry.shutdown()
        (span,) = receiver.spans
    assert span.name == "chat auto" and span.scope == TRACER_NAME
    assert span.kind == 3  # SPAN_KIND_CLIENT
    assert span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and span.parent_span_id == "00f067aa0ba902b7"
    assert span.resource["service.name"] == "router-from-env"
    assert span.resource["deployment.environment.name"] == "test"
    assert "service.version" in span.resource
    assert span.attributes["gen_ai.usage.input_tokens"] == 50
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)


async def test_spans_reach_an_otlp_grpc_receiver() -> None:
    with OtlpGrpcReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        telemetry = Telemetry.from_args(router_args(), meter=InMemoryMetricsSink(), environ=env)
        await one_request(telemetry, "grpc-1", usage={"prompt_tokens": 9, "completion_tokens": 4})
        telemetry.shutdown()
        (span,) = receiver.spans
    assert span.name == "chat auto" and span.attributes["llm.request_id"] == "grpc-1"
    assert span.resource["service.name"] == "hybrid-llm-router"


async def test_one_langfuse_generation_per_observation_with_exact_usage_and_cost() -> None:
    secret = "sk-lf-test"
    with OtlpHttpReceiver() as tempo, LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=secret) as lf:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url, **langfuse_env(lf, secret)}
        telemetry = Telemetry.from_args(router_args(), meter=InMemoryMetricsSink(), environ=env)
        assert telemetry.langfuse is not None
        usages = {
            f"cloud-{i}": {
                "prompt_tokens": 1000 + i,
                "completion_tokens": 10 + i,
                "prompt_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 100},
            }
            for i in range(5)
        }
        for rid, usage in usages.items():
            await one_request(telemetry, rid, usage=usage)
        await one_request(
            telemetry, "local-0", backend_name="local", usage={"prompt_tokens": 200, "completion_tokens": 50}
        )
        await cancelled_request(telemetry, "cancel-0")
        # spans of other instrumentation on the same provider: vLLM's (on Langfuse's default allow-list) and Serve's
        vllm = telemetry.provider.get_tracer("vllm.tracing")
        vllm.start_span("llm_request", attributes={"gen_ai.usage.prompt_tokens": 5, "gen_ai.request.id": "x"}).end()
        telemetry.provider.get_tracer("ray.serve").start_span("replica_handle_request").end()
        telemetry.shutdown()

        generations = {s.attributes["llm.request_id"]: s for s in lf.generations()}
        assert len(lf.spans) == len(generations) == 7  # nothing but router spans, one per observation
        assert all(s.scope == TRACER_NAME for s in lf.spans)
        assert len(tempo.spans) == 9  # the collector path gets every span, vLLM's and Serve's too
        assert lf.recorded.requests[0]["content-encoding"] == "gzip"

    for rid, usage in usages.items():
        span = generations[rid]
        buckets = LangfuseStandin.usage_details(span)
        assert buckets == {
            "input": usage["prompt_tokens"] - 500,
            "input_cache_read": 400,
            "input_cache_creation": 100,
            "output": usage["completion_tokens"],
        }
        cost = LangfuseStandin.cost_details(span)
        expected = {
            "input": buckets["input"] * SONNET["input"] / 1e6,
            "input_cache_read": 400 * SONNET["cache_read"] / 1e6,
            "input_cache_creation": 100 * SONNET["cache_write"] / 1e6,
            "output": buckets["output"] * SONNET["output"] / 1e6,
        }
        for key, value in expected.items():
            assert cost[key] == pytest.approx(value, abs=EPS)
        assert cost["total"] == pytest.approx(sum(expected.values()), abs=EPS)
        assert span.attributes["langfuse.observation.model.name"] == "claude-sonnet-4-6"
        assert LangfuseStandin.metadata(span) == {
            "backend": "cloud",
            "route_reason": "explicit_cloud",
            "request_id": rid,
        }
        assert "langfuse.observation.completion_start_time" in span.attributes

    cancelled = generations["cancel-0"]
    assert cancelled.attributes["llm.outcome"] == "cancelled"
    assert LangfuseStandin.usage_details(cancelled) == {
        "input": 120,
        "input_cache_read": 0,
        "input_cache_creation": 0,
        "output": 2,
    }
    assert LangfuseStandin.cost_details(cancelled)["total"] == pytest.approx((120 * 3.0 + 2 * 15.0) / 1e6, abs=EPS)
    local = generations["local-0"]
    assert local.attributes["gen_ai.provider.name"] == "vllm"
    assert LangfuseStandin.cost_details(local)["total"] == pytest.approx(250 * LOCAL_USD_PER_TOKEN, abs=EPS)
    assert local.attributes["llm.cost_usd"] == pytest.approx(250 * LOCAL_USD_PER_TOKEN, abs=EPS)
    assert local.attributes["llm.counterfactual_cost_usd"] == pytest.approx((200 * 3.0 + 50 * 15.0) / 1e6, abs=EPS)


async def test_langfuse_generations_with_an_injected_provider_and_in_memory_exporter() -> None:
    secret = "sk-lf-2"
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=secret) as lf:
        telemetry = Telemetry.from_args(
            router_args(), tracer_provider=provider, meter=InMemoryMetricsSink(), environ=langfuse_env(lf, secret)
        )
        # a client's baggage must not set Langfuse trace attributes (Langfuse reads `langfuse_*` baggage)
        spoof = {"traceparent": TRACEPARENT, "baggage": "langfuse_user_id=someone-else,langfuse_session_id=s"}
        await one_request(telemetry, "mem-1", usage={"prompt_tokens": 3, "completion_tokens": 1}, headers=spoof)
        telemetry.shutdown()
        assert [s.attributes["llm.request_id"] for s in lf.generations()] == ["mem-1"]
        (generation,) = lf.generations()
        assert "user.id" not in generation.attributes and "session.id" not in generation.attributes
        assert generation.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    (span,) = memory.get_finished_spans()
    assert span.attributes["llm.request_id"] == "mem-1"


async def test_langfuse_refusing_counts_drops_and_requests_still_succeed() -> None:
    with LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="right") as lf:
        sink = InMemoryMetricsSink()
        telemetry = Telemetry.from_args(router_args(), meter=sink, environ=langfuse_env(lf, "wrong"))
        for i in range(5):
            await one_request(telemetry, f"r{i}", usage={"prompt_tokens": 3, "completion_tokens": 1})
        telemetry.shutdown()
        assert lf.recorded.rejected >= 1 and lf.generations() == []
    assert telemetry.metrics.dropped["langfuse"] == 5
    assert sink.counter("router_telemetry_dropped", sink="langfuse") == 5
    assert sink.counter("router_requests", outcome="ok") == 5


@pytest.mark.parametrize("fault", ["closed_port", "hanging_server"])
async def test_500_observations_finish_fast_when_exporters_are_down(fault: str, monkeypatch: Any) -> None:
    n = 500
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")  # Langfuse's processor reads its queue bound from here
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "32")
    with (
        OtlpHttpReceiver(mode="hang") as otlp_hang,
        LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="s", mode="hang") as lf_hang,
    ):
        if fault == "closed_port":
            otlp_url = lf_url = f"http://127.0.0.1:{closed_port()}"
        else:
            otlp_url, lf_url = otlp_hang.base_url, lf_hang.base_url
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
            "LANGFUSE_PUBLIC_KEY": lf_hang.public_key,
            "LANGFUSE_SECRET_KEY": "s",
            "LANGFUSE_BASE_URL": lf_url,
        }
        sink = InMemoryMetricsSink()
        telemetry = Telemetry.from_args(
            router_args(export_queue_size=64), meter=sink, environ=env, shutdown_timeout_s=1.0
        )
        started = time.perf_counter()
        for i in range(n):
            await one_request(telemetry, f"r{i}", usage={"prompt_tokens": 20, "completion_tokens": 5})
        elapsed = time.perf_counter() - started
        shutdown_started = time.perf_counter()
        telemetry.shutdown()
        shutdown_s = time.perf_counter() - shutdown_started
    assert sink.counter("router_requests", outcome="ok") == n
    # a blocking exporter would take n x timeout (500 s); bounded queues take milliseconds per request at most
    assert elapsed < 20.0, elapsed
    assert shutdown_s < 3.0, shutdown_s
    dropped_otlp, dropped_lf = telemetry.metrics.dropped["otlp"], telemetry.metrics.dropped["langfuse"]
    # nothing arrived, and every span is counted as dropped: queue overflow, failed exports, and what
    # shutdown abandoned
    assert dropped_otlp == n and dropped_lf == n, (dropped_otlp, dropped_lf)
    assert otlp_hang.spans == [] and lf_hang.spans == []
    assert sink.counter("router_telemetry_dropped", sink="otlp") == dropped_otlp
    print(
        f"{fault}: {n} observations in {elapsed:.3f}s ({elapsed / n * 1e6:.0f} us each), "
        f"shutdown {shutdown_s:.2f}s, dropped otlp={dropped_otlp} langfuse={dropped_lf}"
    )
