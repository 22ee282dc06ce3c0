"""The local backend against a scripted DeploymentHandle, and the model replica's side of the GPU-cost trailer.

The model replica (RouterLLMServer.chat_json, with vLLM's own chat stubbed out) books every stream in its
ledger and writes the trailer once, in the same item as `[DONE]`, only when the stream finished. The local
backend (with a stand-in handle) keeps the rate and never passes the trailer on as a chunk, bounds every wait
with its timeouts, counts its in-flight calls and sends the engine only the fields it allows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ray.serve.exceptions import BackPressureError

from serve_app.backends.local import LocalBackend
from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.engine import RouterLLMServer
from serve_app.errors import UpstreamTimeout, UpstreamUnavailable, error_headers
from serve_app.protocol import LOCAL_COST_KEY, ChatCompletionRequest
from serve_app.telemetry.gpu import GpuLedger, trailer_event
from serve_app.telemetry.replica_tracing import ModelTracing

EPS = 1e-12
BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


CHUNK = _data({"choices": [{"index": 0, "delta": {"content": "hey"}}], "usage": {"total_tokens": 7}})
USAGE = _data({"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}})
DONE = "data: [DONE]\n\n"
HANG = object()


class _Server(RouterLLMServer):
    def __del__(self) -> None:  # LLMServer's shuts an engine down; this one never had one
        pass


def server(clock: Clock, *, price: float | None = 3.6) -> RouterLLMServer:
    """A RouterLLMServer without an engine: `chat` yields scripted items, advancing the clock 1 s per item."""
    instance = _Server.__new__(_Server)
    instance._ledger = None if price is None else GpuLedger(usd_per_hour=price, window_s=300, metrics=None, clock=clock)
    instance._tracing = ModelTracing(provider=None, engine_traced=False, model="local-model")

    async def chat(request: Any, raw_request_info: Any = None) -> AsyncIterator[str]:
        async def items() -> AsyncIterator[str]:
            for item in (CHUNK, USAGE, DONE):
                clock.t += 1.0
                yield item

        return items()

    instance.chat = chat  # type: ignore[method-assign]
    return instance


async def test_finished_stream_ends_with_the_trailer_in_the_same_item_as_done() -> None:
    clock = Clock()
    items = [item async for item in server(clock).chat_json(dict(BODY))]
    assert items[:2] == [CHUNK, USAGE]
    assert len(items) == 3 and items[2].endswith(DONE)  # no extra item, so no extra handle round
    (trailer,) = [json.loads(line[6:]) for line in items[2].splitlines() if line.startswith("data: {")]
    # busy 3 s of a 3.60 USD/h GPU = 0.003 USD over the 10 tokens of the final cumulative usage
    assert trailer[LOCAL_COST_KEY]["usd_per_token"] == pytest.approx(0.003 / 10, abs=EPS)


async def test_cancelled_stream_is_booked_as_busy_time_but_sends_no_trailer() -> None:
    clock = Clock()
    instance = server(clock)
    stream = instance.chat_json(dict(BODY))
    assert await anext(stream) == CHUNK
    await stream.aclose()  # the router cancelled: the GPU was busy, nothing was finished
    assert instance._ledger is not None
    # 1 busy second and the 7 tokens the cumulative usage had reached when it was cancelled
    assert instance._ledger.usd_per_token() == pytest.approx(3.6 * 1 / 3600 / 7, abs=EPS)
    items = [item async for item in instance.chat_json(dict(BODY))]
    (trailer,) = [json.loads(line[6:]) for line in items[-1].splitlines() if line.startswith("data: {")]
    assert trailer[LOCAL_COST_KEY]["usd_per_token"] == pytest.approx(3.6 * 4 / 3600 / 17, abs=EPS)


async def test_without_a_gpu_price_the_stream_passes_through_untouched() -> None:
    items = [item async for item in server(Clock(), price=None).chat_json(dict(BODY))]
    assert items == [CHUNK, USAGE, DONE]


class _Response:
    def __init__(self, items: list[Any]) -> None:
        self._items = iter(items)
        self.cancelled = False

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> str:
        try:
            item = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        if item is HANG:
            await asyncio.Event().wait()  # an engine that never sends: only a timeout or a cancel ends this
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """What LocalBackend uses of a DeploymentHandle: options() and a streaming remote()."""

    is_initialized = True

    def __init__(self) -> None:
        self.answers: list[list[Any]] = []
        self.bodies: list[dict[str, Any]] = []
        self.responses: list[_Response] = []
        self.options_given: list[dict[str, Any]] = []

    def options(self, **options: Any) -> _Handle:
        self.options_given.append(options)
        return self

    def remote(self, body: dict[str, Any]) -> _Response:
        self.bodies.append(body)
        self.responses.append(_Response(self.answers.pop(0)))
        return self.responses[-1]

    def running_replicas_populated(self) -> bool:
        return True


async def test_local_backend_keeps_the_reported_rate_and_never_yields_the_trailer() -> None:
    handle = _Handle()
    backend = LocalBackend(LocalBackendArgs(), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate({"model": "local", "messages": [{"role": "user", "content": "x"}]})
    assert backend.usd_per_token() is None
    handle.answers = [[CHUNK, USAGE, trailer_event(2.5e-6) + DONE], [CHUNK, USAGE, trailer_event(None) + DONE]]
    chunks = [c async for c in backend.stream(request, model="local-model", request_id="r1")]
    assert all(LOCAL_COST_KEY not in c for c in chunks) and len(chunks) == 2
    assert backend.usd_per_token() == 2.5e-6
    [c async for c in backend.stream(request, model="local-model", request_id="r2")]
    assert backend.usd_per_token() == 2.5e-6  # a report without a rate keeps the last known one


async def test_local_backend_forgets_a_rate_older_than_its_max_age() -> None:
    handle, clock = _Handle(), Clock()
    args = LocalBackendArgs(cost_rate_max_age_s=600)
    backend = LocalBackend(args, RoutingPolicy(), handle=handle, clock=clock)  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate({"model": "local", "messages": [{"role": "user", "content": "x"}]})
    handle.answers = [[CHUNK, trailer_event(2.5e-6) + DONE], [CHUNK, trailer_event(None) + DONE]]
    [c async for c in backend.stream(request, model="local-model", request_id="r1")]
    clock.t += 600
    assert backend.usd_per_token() == 2.5e-6  # exactly at the max age: still priced
    clock.t += 1
    [c async for c in backend.stream(request, model="local-model", request_id="r2")]
    assert backend.usd_per_token() is None  # a report without a rate does not make the old one fresh
    handle.answers = [[CHUNK, trailer_event(4e-6) + DONE]]
    [c async for c in backend.stream(request, model="local-model", request_id="r3")]
    assert backend.usd_per_token() == 4e-6


async def test_engine_body_carries_sampling_fields_and_drops_engine_knobs() -> None:
    handle = _Handle()
    backend = LocalBackend(LocalBackendArgs(), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate(
        {
            "model": "local",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 9,
            "user": "u-1",
            "seed": 7,
            "frequency_penalty": 0.5,
            "top_k": 20,
            "response_format": {"type": "json_object"},
            "priority": -100,  # vLLM's scheduler priority: not the client's to set
            "chat_template_kwargs": {"enable_thinking": True},
            "prompt_logprobs": 20,
        }
    )
    handle.answers = [[CHUNK, USAGE, DONE]]
    [c async for c in backend.stream(request, model="local-model", request_id="r1")]
    (body,) = handle.bodies
    assert body["model"] == "local-model" and body["max_tokens"] == 9 and body["stream"] is True
    assert body["seed"] == 7 and body["frequency_penalty"] == 0.5 and body["top_k"] == 20
    assert body["response_format"] == {"type": "json_object"}
    assert {"priority", "chat_template_kwargs", "prompt_logprobs", "user", "max_completion_tokens"}.isdisjoint(body)
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize(("hint", "header"), [(None, "1"), (4.2, "5")])
async def test_a_full_model_queue_is_a_503_with_retry_after(hint, header) -> None:
    handle = _Handle()
    backend = LocalBackend(LocalBackendArgs(), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate({"model": "local", "messages": [{"role": "user", "content": "x"}]})
    handle.answers = [[BackPressureError(num_queued_requests=8, max_queued_requests=8, retry_after_s=hint)]]
    with pytest.raises(UpstreamUnavailable) as info:
        [c async for c in backend.stream(request, model="local-model", request_id="r1")]
    assert info.value.status_code == 503 and info.value.code == "local_saturated"
    assert error_headers(info.value) == {"Retry-After": header}


def _request() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "local", "messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize(
    ("answer", "waited"),
    [([HANG], "first_chunk_timeout_s"), ([CHUNK, HANG], "chunk_timeout_s")],
    ids=["before_the_first_chunk", "between_chunks"],
)
async def test_an_engine_that_stops_sending_is_a_504_and_the_call_is_cancelled(answer, waited) -> None:
    handle = _Handle()
    args = LocalBackendArgs(first_chunk_timeout_s=0.05, chunk_timeout_s=0.08)
    backend = LocalBackend(args, RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    handle.answers = [answer]
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamTimeout) as info:
        async for chunk in backend.stream(_request(), model="local-model", request_id="r1"):
            got.append(chunk)
    assert info.value.status_code == 504
    assert f"{getattr(args, waited):g}s" in info.value.message  # the timeout that applied is the one named
    assert len(got) == len(answer) - 1
    assert handle.responses[0].cancelled  # the engine stops working on it
    assert backend.state().inflight == 0


async def test_in_flight_counts_calls_while_they_stream_and_none_after_any_ending() -> None:
    handle = _Handle()
    backend = LocalBackend(LocalBackendArgs(), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    handle.answers = [[CHUNK, USAGE, DONE], [CHUNK, USAGE, DONE], [CHUNK, RuntimeError("replica died")]]
    first = backend.stream(_request(), model="local-model", request_id="r1")
    second = backend.stream(_request(), model="local-model", request_id="r2")
    await anext(first)
    await anext(second)
    assert backend.state().inflight == 2
    [c async for c in first]  # finished
    assert backend.state().inflight == 1
    await second.aclose()  # the client went away mid-stream
    assert backend.state().inflight == 0 and handle.responses[1].cancelled
    with pytest.raises(RuntimeError):
        [c async for c in backend.stream(_request(), model="local-model", request_id="r3")]
    assert backend.state().inflight == 0


@pytest.mark.parametrize(("transport", "by_reference"), [("ray", True), ("grpc", False)])
def test_the_handle_streams_chat_json_over_the_configured_transport(transport, by_reference) -> None:
    handle = _Handle()
    LocalBackend(LocalBackendArgs(handle_transport=transport), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    assert handle.options_given == [{"stream": True, "method_name": "chat_json", "_by_reference": by_reference}]


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="replica went away")


@pytest.mark.parametrize(
    "answer", [[_rpc_error(grpc.StatusCode.INTERNAL)], [CHUNK, _rpc_error(grpc.StatusCode.UNKNOWN)]]
)
async def test_a_failed_grpc_stream_is_a_503_not_a_500(answer) -> None:
    """On the gRPC transport Serve raises the replica's failures (other than UNAVAILABLE) as gRPC errors."""
    handle = _Handle()
    backend = LocalBackend(LocalBackendArgs(handle_transport="grpc"), RoutingPolicy(), handle=handle)  # type: ignore[arg-type]
    handle.answers = [answer]
    with pytest.raises(UpstreamUnavailable) as info:
        [c async for c in backend.stream(_request(), model="local-model", request_id="r1")]
    assert info.value.status_code == 503
    assert backend.state().inflight == 0
