"""The default local model (SmolLM2-135M-Instruct, converted once into the cache) answers real questions.

Its own platform: the session platform serves the smoke model (exact token counts, fast); this one deploys the
local profile as `make serve` does with LOCAL_MODEL unset, without a cloud key, so `auto` goes local.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.ray_platform import RayPlatform

API_KEY = "sk-test-default-model"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    ray = RayPlatform(
        workdir=tmp_path_factory.mktemp("default-model"),
        model="default",
        env={"RAY_SERVE_ENABLE_HA_PROXY": "1", "HYBRID_LLM_API_KEYS": API_KEY},
    )
    try:
        ray.start()
        yield openai.OpenAI(base_url=f"{ray.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    finally:
        ray.stop()


def test_default_model_answers_a_factual_question(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=32,
        temperature=0,
    )
    reply = raw.parse()
    assert raw.headers["x-router-backend"] == "local"
    assert reply.model == "local-model"
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"  # a whole sentence, not a cut at max_tokens
    assert 0 < reply.usage.completion_tokens < 32


def test_default_model_streams_its_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "What is the capital of Japan? Answer in one sentence."}],
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "Tokyo" in "".join(pieces)
    assert len(pieces) > 1  # streamed token by token, not in one piece
    assert usage is not None and usage.completion_tokens >= len(pieces)
