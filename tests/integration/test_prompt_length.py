"""Routing by prompt length on the real platform: the router counts with the smoke model's tokenizer (`tokenizer: auto`
in the local profile), so a prompt the engine cannot take goes to the cloud up front, and one it can goes local."""

from __future__ import annotations

import time

import httpx
import pytest
from transformers import AutoTokenizer

from serve_app.prompt_tokens import LocalTokenizer
from serve_app.smoke_model import default_smoke_model_dir

RARE = "please summarise the following meeting notes for me "  # ~1.3 characters per smoke token
COMMON = "The router sends each chat request to the local model or to the cloud model. "  # ~3.7


@pytest.fixture(scope="module")
def counting(platform) -> dict:
    """The router's /readyz once its tokenizer is loaded (it looks again every 10 s while the model is being built)."""
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    deadline = time.monotonic() + 120
    while True:
        status = httpx.get(f"{platform.base_url}/readyz", headers=headers, timeout=10).json()["prompt_tokens"]
        if status["counter"] == "tokenizer" or time.monotonic() > deadline:
            return status
        time.sleep(1)


def _engine_count(text: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(str(default_smoke_model_dir()))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_prompt_length_router_counts_with_the_local_models_tokenizer(counting):
    assert counting["counter"] == "tokenizer", counting
    assert counting["tokenizer"].endswith("tokenizer.json") and counting["template_overhead"]["measured"]


def test_prompt_length_auto_sends_a_prompt_the_engine_rejects_to_the_cloud_up_front(platform, counting):
    text = RARE * 14  # the cheap estimate: 212 tokens of a 384 budget; the smoke tokenizer: over the 512 window
    assert _engine_count(text) > 512
    messages = [{"role": "user", "content": text}]
    # The premise, from the engine itself: pinned to it, the prompt fails there and the cloud answers.
    pinned = platform.openai().chat.completions.with_raw_response.create(model="local", messages=messages)
    assert pinned.headers["x-router-reason"] == "fallback_local_error"
    raw = platform.openai().chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert (raw.headers["x-router-backend"], raw.headers["x-router-reason"]) == ("cloud", "prompt_too_long")


def test_prompt_length_auto_keeps_a_long_prompt_that_fits_local_and_counts_it_as_the_engine(platform, counting):
    text = COMMON * 5  # more bytes than the budget, fewer tokens: the tokenizer counts it
    raw = platform.openai().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], max_tokens=8
    )
    assert (raw.headers["x-router-backend"], raw.headers["x-router-reason"]) == ("local", "policy_local")
    router_count = LocalTokenizer.load(default_smoke_model_dir() / "tokenizer.json").count([text], messages=1)
    assert raw.parse().usage.prompt_tokens == router_count == _engine_count(text)
