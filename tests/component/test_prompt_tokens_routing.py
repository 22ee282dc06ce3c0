"""Prompt counts with the smoke model's tokenizer files: exact where it matters, routed by them, and without them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from serve_app.config import RouterArgs
from serve_app.prompt_tokens import RETRY_S, LocalTokenizer, PromptCounter
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import estimate_prompt_tokens, local_prompt_budget
from serve_app.smoke_model import ensure_smoke_model
from tests.component.conftest import MakeRouter
from tests.component.fakes import chat_body, cloud_backend, local_backend, router_args

# The smoke model's window as the integration tests serve it (tests/support/ray_platform.py): prompt budget 384.
SMOKE_LOCAL = {"model_id": "local-model", "context_window": 512, "saturation_inflight": 8}
SMOKE_ROUTING = {"default_local_output_tokens": 128}
# Words outside the smoke tokenizer's training text: about 1.3 characters per token, where the cheap estimate
# assumes 3.5. A prompt of them was what the soak's local engine rejected (docs/hardening.md).
RARE = "please summarise the following meeting notes for me "
# Its training text: about 3.7 characters per token.
COMMON = "The router sends each chat request to the local model or to the cloud model. "


@pytest.fixture(scope="module")
def smoke_dir() -> Path:
    return ensure_smoke_model()


def smoke_args(tokenizer: str | None, **routing: Any) -> RouterArgs:
    return router_args(local=SMOKE_LOCAL, routing={**SMOKE_ROUTING, "tokenizer": tokenizer, **routing})


def counter_for(args: RouterArgs) -> PromptCounter:
    return PromptCounter.load(args.routing, args.local, environ={})


def request_of(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(chat_body(text))


def engine_count(smoke_dir: Path, messages: list[dict[str, str]]) -> int:
    """What vLLM's chat endpoint feeds the smoke model: the chat template, tokenized without added specials."""
    tokenizer = AutoTokenizer.from_pretrained(str(smoke_dir))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": RARE * 3}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": COMMON}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello world, how are you today?"},
            {"role": "user", "content": "ünïcödé 東京 and " + RARE},
        ],
    ],
    ids=["one", "system", "turns"],
)
def test_prompt_tokens_count_what_the_engine_sees(smoke_dir: Path, messages: list[dict[str, str]]) -> None:
    local = LocalTokenizer.load(smoke_dir / "tokenizer.json")
    assert local.overhead.measured
    counted = local.count(
        [m["content"] for m in messages], messages=len(messages), opens_with_system=messages[0]["role"] == "system"
    )
    assert counted == engine_count(smoke_dir, messages)


async def test_prompt_tokens_route_a_prompt_the_estimate_lets_through_but_the_window_cannot_take(
    make_router: MakeRouter, smoke_dir: Path
) -> None:
    args = smoke_args(str(smoke_dir))
    text = RARE * 10
    request = request_of(text)
    budget = local_prompt_budget(output_tokens=None, policy=args.routing, local=args.local)
    # The premise: the cheap estimate says it fits, the model's tokenizer says it does not.
    assert estimate_prompt_tokens(request, chars_per_token=args.routing.chars_per_token) <= budget
    assert engine_count(smoke_dir, [{"role": "user", "content": text}]) > budget
    local, cloud = local_backend(), cloud_backend()
    counter = counter_for(args)
    router = make_router(args=args, local=local, cloud=cloud, prompt_counter=counter)
    response = await router.client().post("/v1/chat/completions", json=chat_body(text))
    assert response.status_code == 200
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("cloud", "prompt_too_long")
    assert not local.calls and counter.exact_counts == 1
    # The decision takes the exact count: the request's span records it.
    (span,) = [s for s in router.spans.get_finished_spans() if s.name.startswith("chat")]
    assert span.attributes["llm.prompt_tokens_estimated"] == engine_count(
        smoke_dir, [{"role": "user", "content": text}]
    )


async def test_prompt_tokens_send_a_prompt_under_the_window_local_after_counting_it(
    make_router: MakeRouter, smoke_dir: Path
) -> None:
    args = smoke_args(str(smoke_dir))
    text = COMMON * 5  # more bytes than the budget, fewer tokens: the tokenizer counts and finds it fits
    budget = local_prompt_budget(output_tokens=None, policy=args.routing, local=args.local)
    assert len(text.encode()) > budget >= engine_count(smoke_dir, [{"role": "user", "content": text}])
    local = local_backend()
    counter = counter_for(args)
    response = (
        await make_router(args=args, local=local, prompt_counter=counter)
        .client()
        .post("/v1/chat/completions", json=chat_body(text))
    )
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("local", "policy_local")
    assert len(local.calls) == 1 and counter.exact_counts == 1


async def test_prompt_tokens_take_back_a_prompt_the_estimate_overcounts(
    make_router: MakeRouter, smoke_dir: Path
) -> None:
    # A cheap estimate that overcounts (2 characters per token on text of about 3.7) sends this prompt to the cloud;
    # within the band the tokenizer counts, and it fits.
    args = smoke_args(str(smoke_dir), chars_per_token=2.0)
    text = COMMON * 10
    budget = local_prompt_budget(output_tokens=None, policy=args.routing, local=args.local)
    assert estimate_prompt_tokens(request_of(text), chars_per_token=2.0) > budget
    assert engine_count(smoke_dir, [{"role": "user", "content": text}]) <= budget
    local = local_backend()
    response = (
        await make_router(args=args, local=local, prompt_counter=counter_for(args))
        .client()
        .post("/v1/chat/completions", json=chat_body(text))
    )
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("local", "policy_local")


async def test_prompt_tokens_leave_short_far_too_long_and_pinned_prompts_to_the_estimate(smoke_dir: Path) -> None:
    counter = counter_for(smoke_args(str(smoke_dir)))
    short = request_of("hi")  # fits even at one token per byte
    assert await counter.prompt_tokens(short) == estimate_prompt_tokens(short, chars_per_token=3.5)
    huge = request_of(COMMON * 40)  # cheap estimate above twice the budget: too long whatever the count
    assert await counter.prompt_tokens(huge) == estimate_prompt_tokens(huge, chars_per_token=3.5)
    cloud = ChatCompletionRequest.model_validate(chat_body(RARE * 10, model="cloud"))  # not routed by length
    assert await counter.prompt_tokens(cloud) == estimate_prompt_tokens(cloud, chars_per_token=3.5)
    assert counter.exact_counts == 0
    band = request_of(RARE * 10)
    assert await counter.prompt_tokens(band) > estimate_prompt_tokens(band, chars_per_token=3.5)
    assert counter.exact_counts == 1


async def test_prompt_tokens_without_a_tokenizer_are_the_estimate_and_route_as_before(
    make_router: MakeRouter, tmp_path: Path
) -> None:
    args = smoke_args(str(tmp_path / "absent"))
    counter = counter_for(args)
    assert counter.status()["counter"] == "estimate" and "not on this machine" in counter.status()["detail"]
    local = local_backend()
    router = make_router(args=args, local=local, prompt_counter=counter)
    response = await router.client().post("/v1/chat/completions", json=chat_body(RARE * 10))
    # The cheap estimate lets this prompt through (the smoke engine would reject it): the behaviour without a tokenizer.
    assert (response.headers["x-router-backend"], response.headers["x-router-reason"]) == ("local", "policy_local")
    readiness = (await router.client().get("/readyz")).json()
    assert readiness["prompt_tokens"]["counter"] == "estimate"


def test_prompt_tokens_find_a_tokenizer_that_appears_later(smoke_dir: Path, tmp_path: Path) -> None:
    now = [0.0]
    args = smoke_args(str(tmp_path / "model"))
    counter = PromptCounter.load(args.routing, args.local, environ={}, clock=lambda: now[0])
    assert not counter.exact
    shutil.copytree(smoke_dir, tmp_path / "model")  # the model application finished building it
    counter.refresh()
    assert not counter.exact  # looked for again only after RETRY_S
    now[0] += RETRY_S
    counter.refresh()
    status = counter.status()
    assert counter.exact and status["counter"] == "tokenizer" and status["template_overhead"]["measured"]


async def test_prompt_tokens_fall_back_to_the_estimate_when_the_tokenizer_fails(smoke_dir: Path) -> None:
    class Broken:
        def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> list[Any]:
            raise RuntimeError("tokenizer exploded")

    loaded = LocalTokenizer.load(smoke_dir / "tokenizer.json")
    args = smoke_args(None)
    counter = PromptCounter(args.routing, args.local, tokenizer=LocalTokenizer(Broken(), loaded.overhead, "broken"))
    request = request_of(RARE * 10)
    assert await counter.prompt_tokens(request) == estimate_prompt_tokens(request, chars_per_token=3.5)


async def test_prompt_tokens_readiness_checks_load_a_late_tokenizer_off_the_event_loop(
    make_router: MakeRouter, smoke_dir: Path, tmp_path: Path
) -> None:
    now = [0.0]
    args = smoke_args(str(tmp_path / "model"))
    counter = PromptCounter.load(args.routing, args.local, environ={}, clock=lambda: now[0])
    client = make_router(args=args, prompt_counter=counter).client()
    assert (await client.get("/readyz")).json()["prompt_tokens"]["counter"] == "estimate"
    shutil.copytree(smoke_dir, tmp_path / "model")
    now[0] += RETRY_S
    for _ in range(300):  # readiness checks, as the replica's refresher makes them, until a worker has loaded it
        status = (await client.get("/readyz")).json()["prompt_tokens"]
        if status["counter"] == "tokenizer":
            break
        await asyncio.sleep(0.1)
    assert status["counter"] == "tokenizer" and status["tokenizer"].endswith("tokenizer.json")


DEFAULT_SYSTEM_TEMPLATE = (  # SmolLM2's and Qwen2.5's shape: a default system prompt unless the first message is one
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|system|>You are a helpful assistant for the router tests.<|eot|>' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def default_system_dir(smoke_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke tokenizer with a template that adds a default system prompt."""
    target = tmp_path_factory.mktemp("default-system") / "model"
    shutil.copytree(smoke_dir, target)
    (target / "chat_template.jinja").write_text(DEFAULT_SYSTEM_TEMPLATE)
    return target


@pytest.mark.parametrize("first", ["user", "system", "developer"])
async def test_prompt_tokens_count_a_default_system_prompt_unless_a_system_message_replaces_it(
    default_system_dir: Path, first: str
) -> None:
    messages = [{"role": first, "content": "Be brief."}, {"role": "user", "content": RARE * 8}]
    args = smoke_args(str(default_system_dir))
    counter = counter_for(args)
    request = ChatCompletionRequest.model_validate({"model": "auto", "messages": messages})
    assert await counter.prompt_tokens(request) == engine_count(default_system_dir, messages)
    assert counter.exact_counts == 1
