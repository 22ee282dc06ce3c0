"""The router's opt-in request log through the app: one record per request with what the policy saw and what came
of it, no prompt or completion text; off by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.errors import UpstreamUnavailable
from serve_app.records import RequestRecord, read_records
from tests.component.conftest import MakeRouter
from tests.component.fakes import chat_body, router_args

pytestmark = pytest.mark.timeout(30)

PROMPT = "a secret prompt about the quarterly numbers"


def _records(path: Path) -> dict[str, RequestRecord]:
    with path.open(encoding="utf-8") as lines:
        return {r.request_id: r for r in read_records(lines)}


async def test_request_log_writes_one_record_per_request(make_router: MakeRouter, tmp_path: Path) -> None:
    path = tmp_path / "log" / "requests.jsonl"
    router = make_router(args=router_args(telemetry={"request_log_path": str(path)}))
    router.local.inflight = 3
    client = router.client()
    sent = {
        "local": await client.post(
            "/v1/chat/completions", json=chat_body(PROMPT, max_tokens=64), headers={"X-Request-Id": "local"}
        ),
        "tools": await client.post(
            "/v1/chat/completions",
            json=chat_body(PROMPT, stream=True, tools=[{"type": "function", "function": {"name": "lookup"}}]),
            headers={"X-Request-Id": "tools"},
        ),
        "missing": await client.post(
            "/v1/chat/completions", json=chat_body(model="no-such-model"), headers={"X-Request-Id": "missing"}
        ),
        "messages": await client.post(
            "/v1/messages",
            json={"model": "auto", "max_tokens": 32, "messages": [{"role": "user", "content": PROMPT}]},
            headers={"X-Request-Id": "messages"},
        ),
    }
    router.local.script(UpstreamUnavailable("replica died", backend="local"))
    sent["fallback"] = await client.post(
        "/v1/chat/completions", json=chat_body(PROMPT), headers={"X-Request-Id": "fallback"}
    )
    router.telemetry.shutdown()  # flushes the writer thread

    assert [r.status_code for r in sent.values()] == [200, 200, 404, 200, 200]
    text = path.read_text(encoding="utf-8")
    assert PROMPT not in text and "Hello" not in text  # neither prompt nor completion
    records = _records(path)
    assert set(records) == set(sent)
    local = records["local"]
    assert (local.source, local.api, local.stream, local.model_requested) == ("router", "openai", False, "auto")
    assert (local.backend, local.route_reason, local.fallback, local.status, local.outcome) == (
        "local",
        "policy_local",
        False,
        200,
        "ok",
    )
    assert (local.local_ready, local.local_inflight, local.cloud_ready) == (True, 3, True)
    assert local.prompt_chars == len(PROMPT) and local.max_tokens == 64
    assert local.prompt_tokens_estimated == int(len(PROMPT) / 3.5) + 4
    usage = sent["local"].json()["usage"]
    assert (local.input_tokens, local.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert local.latency_s is not None and local.latency_s >= 0 and local.t_end >= local.t_start
    assert local.ttft_s is not None and local.model_served == "local-model"
    assert local.cost_usd is None  # no local GPU rate in this router
    assert local.counterfactual_cost_usd is not None and local.counterfactual_cost_usd > 0

    tools = records["tools"]
    assert (tools.backend, tools.route_reason, tools.has_tools, tools.stream) == ("cloud", "has_tools", True, True)
    assert tools.cost_usd is not None and tools.cost_usd > 0

    missing = records["missing"]
    assert (missing.backend, missing.status, missing.outcome, missing.error_type) == (
        None,
        404,
        "error",
        "ModelNotFound",
    )
    assert records["messages"].api == "anthropic" and records["messages"].max_tokens == 32
    fallback = records["fallback"]
    assert (fallback.backend, fallback.route_reason, fallback.fallback) == ("cloud", "fallback_local_error", True)
    assert router.metrics.counter("router_telemetry_dropped", sink="request_log") == 0


async def test_request_log_is_off_by_default(make_router: MakeRouter, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    router = make_router()
    assert router.telemetry.request_log is None
    response = await router.client().post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240


async def test_request_log_that_cannot_open_is_off_and_counted(make_router: MakeRouter, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    router = make_router(args=router_args(telemetry={"request_log_path": str(blocker / "requests.jsonl")}))
    assert router.telemetry.request_log is None
    assert (await router.client().post("/v1/chat/completions", json=chat_body())).status_code == 200
    assert router.metrics.counter("router_telemetry_dropped", sink="request_log") == 1
