"""One trace per request across the platform: router -> Anthropic (traceparent), and router -> model replica -> vLLM.

The real platform exports to the OTLP receiver stand-in; the structure is read from the spans it received
(trace id and parent span id), the way Tempo builds its trace view and service graph from them.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.support.otlp_receiver import ReceivedSpan
from tests.support.waiting import wait_for

ROUTER_SCOPE = "hybrid_llm.router"
CLIENT, SERVER = 3, 2  # OTLP span kinds


def _chat(platform, model: str, request_id: str, *, stream: bool) -> httpx.Response:
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": model, "max_tokens": 6, "stream": stream, "messages": [{"role": "user", "content": "trace"}]},
        headers={"Authorization": f"Bearer {platform.api_key}", "X-Request-Id": request_id},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-router-backend"] == ("local" if model == "local" else "cloud")
    return response


def _router_span(platform, request_id: str) -> ReceivedSpan:
    spans = wait_for(
        lambda: [s for s in platform.otlp.spans if s.attributes.get("llm.request_id") == request_id],
        f"the router span of {request_id}",
    )
    (span,) = spans
    assert span.scope == ROUTER_SCOPE and span.kind == CLIENT
    return span


def _children(platform, parent: ReceivedSpan, what: str) -> list[ReceivedSpan]:
    return wait_for(
        lambda: [
            s for s in platform.otlp.spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
        ],
        what,
    )


def _traceparent_ids(value: str) -> tuple[str, str]:
    _, trace_id, span_id, flags = value.split("-")
    assert int(flags, 16) & 1  # sampled
    return trace_id, span_id


@pytest.mark.parametrize("stream", [False, True])
def test_cloud_request_is_one_router_span_whose_context_goes_upstream(platform, stream: bool) -> None:
    """The local profile leaves `telemetry.http_client_spans` off: the upstream call records no span of its own
    (tests/component/test_trace_propagation.py covers the opt-in HTTP client span), and the upstream still
    receives the trace, with the router span as the parent of whatever it records."""
    request_id = f"trace-cloud-{uuid.uuid4().hex[:12]}"
    _chat(platform, "cloud", request_id, stream=stream)
    router = _router_span(platform, request_id)
    assert router.resource["service.name"] == "hybrid-llm-router"
    upstream = [
        r for r in platform.anthropic.requests if r.headers.get("traceparent", "").split("-")[1:2] == [router.trace_id]
    ]
    assert len(upstream) == 1
    assert _traceparent_ids(upstream[0].headers["traceparent"]) == (router.trace_id, router.span_id)
    # the router span has ended and been exported, so a child span would have been too (same batch or earlier)
    assert not [s for s in platform.otlp.spans if s.trace_id == router.trace_id and s.span_id != router.span_id]


@pytest.mark.parametrize("stream", [False, True])
def test_local_request_is_router_span_then_model_replica_then_engine(platform, stream: bool) -> None:
    request_id = f"trace-local-{uuid.uuid4().hex[:12]}"
    _chat(platform, "local", request_id, stream=stream)
    router = _router_span(platform, request_id)

    (model,) = _children(platform, router, "the model replica's span")
    assert model.kind == SERVER and model.name == "model chat" and model.scope == "hybrid_llm.model"
    assert model.resource["service.name"] == "hybrid-llm-model"  # Tempo: hybrid-llm-router -> hybrid-llm-model

    (engine_call,) = _children(platform, model, "the model replica's engine call span")
    assert engine_call.kind == CLIENT and engine_call.attributes["peer.service"] == "vllm"

    # vLLM's own request span, exported by the engine over OTLP, continues the trace (model -> vllm)
    (engine,) = _children(platform, engine_call, "vLLM's llm_request span")
    assert engine.name == "llm_request" and engine.kind == SERVER
    assert engine.resource["service.name"] == "vllm"
    assert engine.attributes["gen_ai.usage.completion_tokens"] >= 1


def test_only_router_spans_become_langfuse_generations(platform) -> None:
    ids = [f"trace-lf-{backend}-{uuid.uuid4().hex[:8]}" for backend in ("local", "cloud")]
    for request_id, model in zip(ids, ("local", "cloud"), strict=True):
        _chat(platform, model, request_id, stream=False)
    # the local request's child spans (model replica, engine) exist by now; the cloud request has none in this
    # profile (no HTTP client span), so its router span is all there is to send
    _children(platform, _router_span(platform, ids[0]), "a child span")
    _router_span(platform, ids[1])
    wait_for(
        lambda: all(any(g.attributes.get("llm.request_id") == i for g in platform.langfuse.generations()) for i in ids),
        "Langfuse generations",
    )
    time.sleep(1.0)  # a second flush interval: anything else exported to Langfuse would have arrived too
    for request_id in ids:
        mine = [s for s in platform.langfuse.spans if s.attributes.get("llm.request_id") == request_id]
        assert len(mine) == 1
    assert {s.scope for s in platform.langfuse.spans} == {ROUTER_SCOPE}
    assert not [s for s in platform.langfuse.spans if s.name in ("llm_request", "model chat", "engine generate")]
