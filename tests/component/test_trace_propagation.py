"""A request's trace across the backends, over the real wire where it exists here.

Cloud: the real ChatService, Telemetry and AnthropicBackend (real SDK, both HTTP transports) against the Anthropic
stand-in, exporting to an OTLP/HTTP receiver and the Langfuse stand-in. Local: the real LocalBackend on a scripted
DeploymentHandle, its body handed to the model replica's `chat_json` (vLLM's chat stubbed to record what it gets).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serve_app.backends.anthropic import AnthropicBackend
from serve_app.backends.local import LocalBackend
from serve_app.chat import ChatService
from serve_app.config import CloudBackendArgs, LocalBackendArgs, RoutingPolicy
from serve_app.engine import RouterLLMServer
from serve_app.protocol import LOCAL_TRACE_KEY, ChatCompletionRequest
from serve_app.telemetry import InMemoryMetricsSink, Telemetry
from serve_app.telemetry.replica_tracing import MODEL_TRACER_NAME, ModelTracing
from serve_app.telemetry.tracing import TRACER_NAME
from tests.component.fakes import local_backend, router_args
from tests.support.anthropic_standin import AnthropicStandIn
from tests.support.langfuse_standin import LangfuseStandin
from tests.support.otlp_receiver import OtlpHttpReceiver

KEY = "sk-ant-test-trace"
HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"
CLIENT, SERVER = 3, 2  # OTLP span kinds


@pytest.fixture(scope="module")
def standin() -> Iterator[AnthropicStandIn]:
    with AnthropicStandIn(token_delay_s=0.001) as server:
        yield server


def _request(model: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8}
    )


async def _serve(service: ChatService, model: str, request_id: str) -> None:
    async with await service.start(_request(model), request_id=request_id, headers={}) as stream:
        async for _ in stream.chunks():
            pass


def _parent_of(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C `traceparent`; its flags also carry the SDK's random-trace-id bit."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_cloud_call_is_a_child_span_of_the_router_span_and_sends_its_traceparent(
    standin: AnthropicStandIn, transport: str
) -> None:
    secret = "sk-lf-trace"
    with OtlpHttpReceiver() as tempo, LangfuseStandin(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=secret) as lf:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url,
            "LANGFUSE_PUBLIC_KEY": lf.public_key,
            "LANGFUSE_SECRET_KEY": secret,
            "LANGFUSE_BASE_URL": lf.base_url,
        }
        args = router_args(telemetry={"http_client_spans": True})  # the Tempo service-graph setup
        telemetry = Telemetry.from_args(args, meter=InMemoryMetricsSink(), environ=env)
        cloud = AnthropicBackend(
            CloudBackendArgs(base_url=standin.base_url, max_retries=0, http_client=transport),
            api_key=KEY,
            tracer_provider=telemetry.client_tracer_provider,
        )
        service = ChatService(args, backends={"local": local_backend(ready=False), "cloud": cloud}, telemetry=telemetry)
        request_id = f"trace-{uuid.uuid4().hex}"
        await _serve(service, "claude-sonnet-4-6", request_id)
        await cloud.aclose()
        telemetry.shutdown()

        (router,) = [s for s in tempo.spans if s.scope == TRACER_NAME]
        (http,) = [s for s in tempo.spans if s.scope == HTTPX_SCOPE]
        assert len(tempo.spans) == 2
        assert router.attributes["llm.request_id"] == request_id and router.kind == CLIENT
        assert http.trace_id == router.trace_id and http.parent_span_id == router.span_id
        assert http.kind == CLIENT and http.attributes["peer.service"] == "anthropic"
        assert http.resource["service.name"] == "hybrid-llm-router"
        # the upstream got the HTTP span's context (its server span would be the HTTP span's child)
        (upstream,) = [r for r in standin.requests if http.trace_id in r.headers.get("traceparent", "")]
        assert _parent_of(upstream.headers["traceparent"]) == (http.trace_id, http.span_id)
        # Langfuse: exactly the one generation, never the HTTP span
        assert [s.scope for s in lf.spans] == [TRACER_NAME]
        assert [s.attributes["llm.request_id"] for s in lf.generations()] == [request_id]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_without_client_spans_the_cloud_call_records_nothing_but_still_names_the_router_span_upstream(
    standin: AnthropicStandIn, transport: str
) -> None:
    with OtlpHttpReceiver() as tempo:
        args = router_args()  # http_client_spans: off by default
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url}
        telemetry = Telemetry.from_args(args, meter=InMemoryMetricsSink(), langfuse=False, environ=env)
        cloud = AnthropicBackend(
            CloudBackendArgs(base_url=standin.base_url, max_retries=0, http_client=transport),
            api_key=KEY,
            tracer_provider=telemetry.client_tracer_provider,
        )
        service = ChatService(args, backends={"local": local_backend(ready=False), "cloud": cloud}, telemetry=telemetry)
        request_id = f"trace-{uuid.uuid4().hex}"
        await _serve(service, "claude-sonnet-4-6", request_id)
        await cloud.aclose()
        telemetry.shutdown()
        # one span per request: the router's, nothing of the HTTP client
        (router,) = tempo.spans
        assert router.scope == TRACER_NAME and router.attributes["llm.request_id"] == request_id
        # the upstream still got a sampled traceparent, whose parent is the router span itself
        (upstream,) = [r for r in standin.requests if router.trace_id in r.headers.get("traceparent", "")]
        assert _parent_of(upstream.headers["traceparent"]) == (router.trace_id, router.span_id)


async def test_only_the_sdk_client_is_instrumented(standin: AnthropicStandIn) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cloud = AnthropicBackend(
        CloudBackendArgs(base_url=standin.base_url, max_retries=0), api_key=KEY, tracer_provider=provider
    )
    before = len(standin.requests)
    with provider.get_tracer("test").start_as_current_span("parent"):
        async with httpx2.AsyncClient() as other:  # any other client of the process: left alone
            await other.post(f"{standin.base_url}/v1/messages", json={})
    await cloud.aclose()
    assert [s.name for s in exporter.get_finished_spans()] == ["parent"]
    assert "traceparent" not in standin.requests[before].headers
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # the global provider was never set


async def test_a_sampled_out_request_sends_no_client_spans(standin: AnthropicStandIn) -> None:
    with OtlpHttpReceiver() as tempo:
        args = router_args(telemetry={"sampling_ratio": 0.0})
        telemetry = Telemetry.from_args(
            args, meter=InMemoryMetricsSink(), langfuse=False, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url}
        )
        cloud = AnthropicBackend(
            CloudBackendArgs(base_url=standin.base_url, max_retries=0),
            api_key=KEY,
            tracer_provider=telemetry.client_tracer_provider,
        )
        service = ChatService(args, backends={"local": local_backend(ready=False), "cloud": cloud}, telemetry=telemetry)
        await _serve(service, "claude-sonnet-4-6", "sampled-out")
        await cloud.aclose()
        telemetry.shutdown()
        assert tempo.spans == []  # no orphan HTTP span under a router span the sampler dropped


# ---- local: router -> DeploymentHandle -> model replica -> engine ------------------------------------------


class _Response:
    def __init__(self, items: list[str]) -> None:
        self._items = iter(items)

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> str:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        pass


class _Handle:
    """A DeploymentHandle whose remote() hands the body to a model replica in-process, as Serve would."""

    is_initialized = True

    def __init__(self, replica: RouterLLMServer) -> None:
        self.replica = replica
        self.bodies: list[dict[str, Any]] = []

    def options(self, **_: Any) -> _Handle:
        return self

    def remote(self, body: dict[str, Any]) -> Any:
        self.bodies.append(dict(body))
        return self.replica.chat_json(body)

    def running_replicas_populated(self) -> bool:
        return True


class _Replica(RouterLLMServer):
    def __del__(self) -> None:  # LLMServer's shuts an engine down; this one never had one
        pass


CHUNK = 'data: {"model": "local-model", "choices": [{"index": 0, "delta": {"content": "hey"}}]}\n\n'
USAGE = 'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}\n\n'


def _replica(tracing: ModelTracing, engine_calls: list[Any]) -> RouterLLMServer:
    replica = _Replica.__new__(_Replica)
    replica._ledger = None
    replica._tracing = tracing

    async def chat(request: Any, raw_request_info: Any = None) -> AsyncIterator[str]:
        engine_calls.append(raw_request_info)

        async def items() -> AsyncIterator[str]:
            for item in (CHUNK, USAGE, "data: [DONE]\n\n"):
                yield item

        return items()

    replica.chat = chat  # type: ignore[method-assign]
    return replica


async def test_local_call_continues_the_trace_in_the_model_replica_and_hands_vllm_its_context() -> None:
    router_spans, model_spans = InMemorySpanExporter(), InMemorySpanExporter()
    router_provider, model_provider = TracerProvider(), TracerProvider()
    router_provider.add_span_processor(SimpleSpanProcessor(router_spans))
    model_provider.add_span_processor(SimpleSpanProcessor(model_spans))
    engine_calls: list[Any] = []
    tracing = ModelTracing(provider=model_provider, engine_traced=True, model="local-model")
    handle = _Handle(_replica(tracing, engine_calls))
    local = LocalBackend(LocalBackendArgs(), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    args = router_args()
    telemetry = Telemetry.from_args(args, tracer_provider=router_provider, meter=InMemoryMetricsSink(), langfuse=False)
    service = ChatService(args, backends={"local": local}, telemetry=telemetry)

    await _serve(service, "local", "local-1")

    (router,) = router_spans.get_finished_spans()
    server, client = sorted(model_spans.get_finished_spans(), key=lambda s: s.kind != SpanKind.SERVER)
    assert router.kind == SpanKind.CLIENT and router.instrumentation_scope.name == TRACER_NAME
    (body,) = handle.bodies
    router_ids = (f"{router.context.trace_id:032x}", f"{router.context.span_id:016x}")
    assert _parent_of(body[LOCAL_TRACE_KEY]["traceparent"]) == router_ids
    # router -> model replica (SERVER) -> its engine call (CLIENT), one trace
    assert server.kind == SpanKind.SERVER and server.parent.span_id == router.context.span_id
    assert server.context.trace_id == router.context.trace_id
    assert client.kind == SpanKind.CLIENT and client.parent.span_id == server.context.span_id
    assert client.attributes["peer.service"] == "vllm"
    assert {server.instrumentation_scope.name, client.instrumentation_scope.name} == {MODEL_TRACER_NAME}
    assert not any(k.startswith("gen_ai.") for s in (server, client) for k in s.attributes)  # never a generation
    # vLLM gets the engine call's context as `traceparent` (how Ray Serve LLM passes headers to it)
    (raw,) = engine_calls
    assert list(raw.headers) == ["traceparent"]
    client_ids = (f"{client.context.trace_id:032x}", f"{client.context.span_id:016x}")
    assert _parent_of(raw.headers["traceparent"]) == client_ids
    telemetry.shutdown()


async def test_model_replica_without_its_own_exporter_passes_the_routers_context_to_vllm() -> None:
    engine_calls: list[Any] = []
    tracing = ModelTracing(provider=None, engine_traced=True, model="local-model")
    replica = _replica(tracing, engine_calls)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = {"model": "local-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
    [item async for item in replica.chat_json({**body, LOCAL_TRACE_KEY: {"traceparent": traceparent}})]
    assert engine_calls[0].headers == {"traceparent": traceparent}
    # vLLM without tracing gets no trace headers (it would only warn about them)
    engine_calls.clear()
    untraced = _replica(ModelTracing(provider=None, engine_traced=False, model="local-model"), engine_calls)
    [item async for item in untraced.chat_json({**body, LOCAL_TRACE_KEY: {"traceparent": traceparent}})]
    assert engine_calls == [None]


def test_model_replica_exports_its_spans_over_otlp_as_its_own_service() -> None:
    with OtlpHttpReceiver() as tempo:
        tracing = ModelTracing.from_environ(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url}, engine_traced=True, model="local-model", on_drop=print
        )
        spans = tracing.begin({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        spans.end()
        tracing.shutdown()
        by_name = {s.name: s for s in tempo.spans}
    assert set(by_name) == {"model chat", "engine generate"}
    assert {s.resource["service.name"] for s in by_name.values()} == {"hybrid-llm-model"}
    assert by_name["model chat"].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert by_name["model chat"].parent_span_id == "00f067aa0ba902b7"
    # without an endpoint there is nothing to export to, and no provider is built
    assert ModelTracing.from_environ({}, engine_traced=False, model="m", on_drop=print)._provider is None


def test_backends_get_the_routers_provider_only_when_its_spans_leave_the_process() -> None:
    args = router_args()
    quiet = Telemetry.from_args(args, meter=InMemoryMetricsSink(), langfuse=False, environ={})
    assert quiet.client_tracer_provider is None
    with OtlpHttpReceiver() as tempo:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": tempo.base_url}
        exporting = Telemetry.from_args(args, meter=InMemoryMetricsSink(), langfuse=False, environ=env)
        assert isinstance(exporting.client_tracer_provider, trace.NoOpTracerProvider)  # traceparent only
        spans_on = router_args(telemetry={"http_client_spans": True})
        graphing = Telemetry.from_args(spans_on, meter=InMemoryMetricsSink(), langfuse=False, environ=env)
        assert graphing.client_tracer_provider is graphing.provider
        exporting.shutdown()
        graphing.shutdown()
    quiet.shutdown()


def test_a_sampled_out_request_leaves_no_spans_in_the_model_replica_and_tells_vllm_so() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = ModelTracing(provider=provider, engine_traced=True, model="local-model")
    spans = tracing.begin({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"})
    spans.end()
    assert exporter.get_finished_spans() == ()
    _, trace_id, _, flags = spans.engine_headers["traceparent"].split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and int(flags, 16) & 1 == 0  # vLLM follows: not sampled
