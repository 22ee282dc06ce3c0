"""Pure parts of prompt counting: the band where the tokenizer counts, where tokenizers are found, template overhead."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app import default_model, smoke_model
from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.prompt_tokens import DEFAULT_MODEL_DIR, SMOKE_MODEL_DIR, measure_overhead, tokenizer_path
from serve_app.routing import count_plan, local_prompt_budget

POLICY = RoutingPolicy()


@pytest.mark.parametrize(
    ("estimate", "plan"),
    [(100, "exact"), (250, "exact")],  # says it fits / says too long, but not twice the budget
)
def test_count_plan_counts_in_the_band(estimate: int, plan: str) -> None:
    # One token per byte would not fit: only the tokenizer can tell.
    assert count_plan(estimate=estimate, byte_bound=1000, budget=200, policy=POLICY) == plan


def test_count_plan_leaves_the_edges_to_the_estimate() -> None:
    assert count_plan(estimate=401, byte_bound=5000, budget=200, policy=POLICY) == "estimate"  # > 2x: too long
    assert count_plan(estimate=400, byte_bound=5000, budget=200, policy=POLICY) == "exact"
    assert count_plan(estimate=50, byte_bound=200, budget=200, policy=POLICY) == "estimate"  # fits per byte
    assert count_plan(estimate=50, byte_bound=201, budget=200, policy=POLICY) == "exact"


def test_count_plan_honours_a_configured_band() -> None:
    narrow = RoutingPolicy(exact_count_below=0.5, exact_count_above=1.5)
    assert count_plan(estimate=99, byte_bound=5000, budget=200, policy=narrow) == "estimate"
    assert count_plan(estimate=100, byte_bound=5000, budget=200, policy=narrow) == "exact"
    assert count_plan(estimate=301, byte_bound=5000, budget=200, policy=narrow) == "estimate"


def test_local_prompt_budget_is_the_window_minus_the_output_budget() -> None:
    local = LocalBackendArgs(context_window=512)
    policy = RoutingPolicy(default_local_output_tokens=128)
    assert local_prompt_budget(output_tokens=None, policy=policy, local=local) == 384
    assert local_prompt_budget(output_tokens=12, policy=policy, local=local) == 500
    assert local_prompt_budget(output_tokens=10_000, policy=policy, local=local) == 256  # at most half the window
    pinned = RoutingPolicy(max_local_prompt_tokens=100)
    assert local_prompt_budget(output_tokens=12, policy=pinned, local=local) == 100


def test_tokenizer_auto_names_the_directories_the_model_application_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRID_LLM_CACHE_DIR", str(tmp_path))
    assert smoke_model.default_smoke_model_dir() == tmp_path / SMOKE_MODEL_DIR
    assert default_model.default_model_dir() == tmp_path / DEFAULT_MODEL_DIR


def test_tokenizer_auto_follows_local_model(tmp_path: Path) -> None:
    for name in (SMOKE_MODEL_DIR, DEFAULT_MODEL_DIR, "mine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text("{}")
    cache = {"HYBRID_LLM_CACHE_DIR": str(tmp_path)}
    assert tokenizer_path("auto", cache | {"LOCAL_MODEL": "smoke"}) == tmp_path / SMOKE_MODEL_DIR / "tokenizer.json"
    assert tokenizer_path("auto", cache) == tmp_path / DEFAULT_MODEL_DIR / "tokenizer.json"
    mine = {"LOCAL_MODEL": str(tmp_path / "mine")}
    assert tokenizer_path("auto", cache | mine) == tmp_path / "mine" / "tokenizer.json"
    assert tokenizer_path(str(tmp_path / "mine" / "tokenizer.json"), {}) == tmp_path / "mine" / "tokenizer.json"


def test_tokenizer_not_on_this_machine_is_none(tmp_path: Path) -> None:
    assert tokenizer_path("auto", {"HYBRID_LLM_CACHE_DIR": str(tmp_path)}) is None
    assert (
        tokenizer_path("auto", {"HYBRID_LLM_CACHE_DIR": str(tmp_path), "LOCAL_MODEL": "no-such-org/no-such-model"})
        is None
    )
    assert tokenizer_path(str(tmp_path / "nowhere"), {}) is None


def _chatml(messages: list[dict[str, str]], *, default_system: str | None = "You are a bot") -> str:
    """A ChatML-like template, one 'token' per word: BOS, a default system prompt, role tags."""
    parts = ["<bos>"]
    if default_system and messages[0]["role"] != "system":
        parts += ["<s>", "system", default_system, "</s>"]
    for message in messages:
        parts += ["<s>", message["role"], message["content"], "</s>"]
    return " ".join([*parts, "<s>", "assistant"])


def _words(text: str) -> int:
    return len(text.split())


def test_measure_overhead_separates_fixed_and_per_message_parts() -> None:
    overhead = measure_overhead(_words, _chatml)
    # bos + default system (2 tags + role + 4 words) + generation prompt (2); 3 per message around the content.
    assert (overhead.fixed, overhead.per_message, overhead.fixed_after_system) == (10, 3, 3)
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]
    assert overhead.tokens(messages=2, opens_with_system=True) + 5 == _words(_chatml(conversation))
    assert overhead.tokens(messages=1, opens_with_system=False) + 3 == _words(_chatml(conversation[1:]))


def test_measure_overhead_of_a_template_that_refuses_system_messages() -> None:
    def strict(messages: list[dict[str, str]]) -> str:
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return _chatml(messages, default_system=None)

    overhead = measure_overhead(_words, strict)
    assert (overhead.fixed, overhead.per_message, overhead.fixed_after_system) == (3, 3, 3)
