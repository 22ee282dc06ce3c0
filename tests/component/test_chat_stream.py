"""ChatStream, the one owner of a request's result: one close of the upstream, one record, and the client's usage
and cost the same numbers telemetry records (priced from the local rate source the service was given)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.protocol import ChatCompletionRequest
from tests.component.fakes import HANG, chat_body, local_backend, reply, sse_events

pytestmark = pytest.mark.timeout(30)

RATE = 2e-6  # USD per token, as the model replica would last have reported it
USAGE = {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}


def _request(**body: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(chat_body(**body))


def _count_closes(stream: object) -> list[int]:
    closes: list[int] = []
    close = stream.aclose  # type: ignore[attr-defined]

    async def counting() -> None:
        closes.append(1)
        await close()

    stream.aclose = counting  # type: ignore[attr-defined]
    return closes


async def test_the_upstream_is_closed_once_and_the_result_recorded_once(make_router):
    local = local_backend()
    local.script(*reply("local-model", "a", "b", usage=USAGE))
    router = make_router(local=local)
    stream = await router.service.start(_request(stream=True), request_id="r1", headers={})
    closes = _count_closes(local.streams[0])
    async with stream:
        chunks = [chunk async for chunk in stream.chunks()]
    await stream.aclose()  # again: nothing more happens
    await stream.aclose()
    assert len(chunks) == 4 and closes == [1]
    assert stream.result is not None and stream.result.outcome == "ok"
    assert len(router.spans.get_finished_spans()) == 1 and router.metrics.counter("router_requests") == 1


async def test_leaving_early_closes_the_upstream_and_records_cancelled_with_the_tokens_seen(make_router):
    local = local_backend()
    chunks = reply("local-model", "a", "b", "c", usage=USAGE)[1:3]
    for n, chunk in enumerate(chunks, start=1):
        chunk["usage"] = {"prompt_tokens": 30, "completion_tokens": n, "total_tokens": 30 + n}
    local.script(*chunks, HANG)
    router = make_router(local=local)
    async with await router.service.start(_request(stream=True), request_id="r2", headers={}) as stream:
        async for chunk in stream.chunks():
            if chunk is chunks[1]:
                break  # the client went away
    assert local.streams[0].aclosed
    assert stream.result.outcome == "cancelled" and stream.result.usage.output == 2
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "cancelled" and span.attributes["gen_ai.usage.output_tokens"] == 2


async def test_a_non_streamed_answer_cut_while_read_closes_the_upstream_and_counts_its_tokens(make_router):
    """A non-streamed answer is read whole before it is handed over: leaving then still records the tokens seen."""
    local = local_backend()
    chunks = reply("local-model", "a", "b", "c", usage=USAGE)[1:3]
    for n, chunk in enumerate(chunks, start=1):
        chunk["usage"] = {"prompt_tokens": 30, "completion_tokens": n, "total_tokens": 30 + n}
    local.script(*chunks, HANG)
    router = make_router(local=local)
    start = asyncio.create_task(router.service.start(_request(), request_id="r4", headers={}))
    for _ in range(1000):  # until the router has read both chunks and waits on the hanging upstream
        if local.streams and local.streams[0].yielded == len(chunks):
            break
        await asyncio.sleep(0.01)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert local.streams[0].aclosed
    assert router.metrics.counter("router_requests", outcome="cancelled") == 1
    assert router.metrics.counter("router_tokens", token_type="output") == 2
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "cancelled" and span.attributes["gen_ai.usage.output_tokens"] == 2


async def test_a_failing_upstream_close_still_records_the_result(make_router):
    local = local_backend()
    local.script(*reply("local-model", "a", usage=USAGE))
    router = make_router(local=local)
    stream = await router.service.start(_request(stream=True), request_id="r3", headers={})

    async def broken_close() -> None:
        raise RuntimeError("close failed")

    local.streams[0].aclose = broken_close  # type: ignore[method-assign]
    async with stream:
        _ = [chunk async for chunk in stream.chunks()]
    assert stream.result.outcome == "ok"
    assert len(router.spans.get_finished_spans()) == 1


@pytest.mark.parametrize("streamed", [False, True])
async def test_the_client_is_told_the_usage_and_cost_that_telemetry_records(make_router, streamed):
    local = local_backend()
    local.script(*reply("local-model", "a", "b", "c", usage=USAGE))
    router = make_router(local=local, local_rate=lambda: RATE)
    body = chat_body(stream=streamed, stream_options={"include_usage": True}) if streamed else chat_body()
    response = await router.client().post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    if streamed:
        usage = json.loads(sse_events(response.text)[-2])["usage"]
    else:
        usage = response.json()["usage"]
        assert float(response.headers["x-router-cost-usd"]) == pytest.approx(33 * RATE)
    assert usage["cost_usd"] == pytest.approx(33 * RATE)
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.cost_usd"] == pytest.approx(usage["cost_usd"])
    # what the same tokens would have cost on the cloud, so a client (the simulator) can total the savings
    assert usage["counterfactual_cost_usd"] == pytest.approx(span.attributes["llm.counterfactual_cost_usd"])
    assert usage["counterfactual_cost_usd"] > 0
    if not streamed:
        assert float(response.headers["x-router-counterfactual-cost-usd"]) == pytest.approx(
            usage["counterfactual_cost_usd"]
        )
    assert span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 3
    assert router.metrics.counter("router_cost_usd", backend="local") == pytest.approx(33 * RATE)


async def test_a_request_that_failed_before_its_first_chunk_is_recorded_once_with_zero_cost(make_router):
    from serve_app.errors import UpstreamRejected

    local = local_backend()
    local.script(UpstreamRejected("no", backend="local"))
    router = make_router(local=local)
    response = await router.client().post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 400
    assert local.streams[0].aclosed
    (span,) = router.spans.get_finished_spans()
    assert span.attributes["llm.outcome"] == "error" and span.attributes["error.type"] == "UpstreamRejected"
    assert json.loads(span.attributes["langfuse.observation.cost_details"])["total"] == 0.0
    assert router.metrics.counter("router_requests", outcome="error") == 1
