"""Workload files: the shipped ones load, sampling follows the declared distributions, bad files say why."""

from __future__ import annotations

import base64
import random
import statistics
import struct
import zlib
from pathlib import Path

import pytest

from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import estimate_prompt_tokens
from serve_app.sim import prompts, workload
from serve_app.sim.run import planned_requests
from serve_app.sim.workload import Distribution, WorkloadError

WINDOW = 2048  # the local model's context window (SmolLM2-135M profile)


def test_workload_every_shipped_file_loads():
    names = workload.available()
    assert {"short_chat", "multi_turn", "json_extract", "summarise", "code", "long_context", "tool_use", "images",
            "anthropic_messages", "mixed"} <= set(names)  # fmt: skip
    for name in names:
        mix = workload.load(name)
        assert sum(share for _, share in mix.parts) == pytest.approx(1.0)


def test_workload_mixed_weights_normalised():
    shares = {w.name: share for w, share in workload.load("mixed").parts}
    assert shares["short_chat"] == pytest.approx(0.4)
    assert len(shares) == 9


@pytest.mark.parametrize(
    ("dist", "mean", "median"),
    [
        (Distribution("uniform", 10, 30), 20.0, 20.0),
        (Distribution("normal", 1, 1000, mean=200.0, sd=20.0), 200.0, 200.0),
        (Distribution("lognormal", 1, 100_000, median=300.0, sigma=0.5), 300.0 * 2.718281828 ** (0.5**2 / 2), 300.0),
    ],
)
def test_workload_sampling_follows_the_distribution(dist, mean, median):
    rng = random.Random(3)
    draws = [dist.sample(rng) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(mean, rel=0.03)
    assert statistics.median(draws) == pytest.approx(median, rel=0.03)
    assert min(draws) >= dist.min and max(draws) <= dist.max


def test_workload_sampling_is_clipped_and_fixed_is_fixed():
    rng = random.Random(1)
    clipped = Distribution("normal", 50, 60, mean=0.0, sd=100.0)
    assert {clipped.sample(rng) for _ in range(500)} <= set(range(50, 61))
    assert {Distribution("fixed", 48, 48, value=48).sample(rng) for _ in range(10)} == {48}


def _route_features(request: prompts.PlannedRequest) -> int:
    body = {"model": request.model, "max_tokens": request.max_tokens, **request.body}
    return estimate_prompt_tokens(ChatCompletionRequest.model_validate(body), chars_per_token=3.5)


def test_workload_prompts_meet_the_routing_rules_they_are_for():
    """Long-context prompts exceed the local window; tools and images carry what the rules look for."""
    policy, local = RoutingPolicy(), LocalBackendArgs(model_id="m", context_window=WINDOW)
    rng = random.Random(9)
    for _ in range(50):
        long = prompts.plan(workload.load("long_context").parts[0][0], rng)
        assert _route_features(long) > local.context_window
        short = prompts.plan(workload.load("short_chat").parts[0][0], rng)
        assert _route_features(short) < local.context_window - policy.default_local_output_tokens
    tools = prompts.plan(workload.load("tool_use").parts[0][0], rng)
    assert tools.has_tools and tools.body["tools"][0]["type"] == "function"
    images = prompts.plan(workload.load("images").parts[0][0], rng)
    url = images.body["messages"][0]["content"][1]["image_url"]["url"]
    assert images.has_images and url.startswith("data:image/png;base64,")


def test_workload_prompt_length_tracks_the_drawn_tokens():
    item = workload.load("summarise").parts[0][0]
    rng = random.Random(2)
    for _ in range(30):
        state = rng.getstate()
        drawn = item.prompt_tokens.sample(rng)
        rng.setstate(state)
        request = prompts.plan(item, rng)
        assert request.prompt_chars == pytest.approx(drawn * prompts.CHARS_PER_TOKEN, rel=0.1)


def test_workload_images_are_valid_pngs():
    data = base64.b64decode(prompts.png_data_url(random.Random(0), 16).split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length = struct.unpack(">I", data[8:12])[0]
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (16, 16)
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(data[12 : 16 + length])


def test_workload_anthropic_requests_use_the_messages_format():
    item = workload.load("anthropic_messages").parts[0][0]
    request = prompts.plan(item, random.Random(4))
    assert request.api == "anthropic" and request.body["messages"][0]["role"] == "user"
    image = prompts._anthropic_body(
        [{"role": "user", "content": "x", "image": prompts.png_data_url(random.Random(), 2)}], []
    )
    assert image["messages"][0]["content"][1]["source"]["media_type"] == "image/png"


def test_workload_same_seed_same_request_sequence():
    mix = workload.load("mixed")
    first = [r for r, _ in zip(planned_requests(mix, 42), range(50), strict=False)]
    again = [r for r, _ in zip(planned_requests(mix, 42), range(50), strict=False)]
    other = [r for r, _ in zip(planned_requests(mix, 43), range(50), strict=False)]
    assert first == again and [r.body for r in first] == [r.body for r in again]
    assert first != other


def _write(tmp_path: Path, text: str, name: str = "w.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD = """version: 1
name: mine
kind: chat
prompt_tokens: {dist: uniform, min: 10, max: 20}
output_tokens: 32
"""


def test_workload_users_bring_their_own_file(tmp_path):
    mix = workload.load(_write(tmp_path, GOOD))
    ((item, share),) = mix.parts
    assert (item.name, item.api, item.stream, item.models, share) == ("mine", "openai", 0.0, (("auto", 1.0),), 1.0)
    _write(tmp_path, GOOD, "base.yaml")
    include = f"  - {{workload: {tmp_path}/base.yaml, weight: 1}}\n  - {{workload: images, weight: 3}}\n"
    mixed = workload.load(_write(tmp_path, f"version: 1\nname: m\ninclude:\n{include}", "mix.yaml"))
    assert [round(s, 2) for _, s in mixed.parts] == [0.25, 0.75]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list", "must be a mapping"),
        ("version: 2\nname: x", "version: must be 1"),
        (GOOD.replace("kind: chat", "kind: poetry"), "kind: 'poetry' is not one of"),
        (GOOD + "stream: 1.5\n", "stream: the share"),
        (GOOD + "colour: red\n", "unknown field"),
        (GOOD.replace("output_tokens: 32", "output_tokens: {dist: lognormal, min: 1, max: 9}"), "needs median, sigma"),
        (GOOD.replace("min: 10, max: 20", "min: 30, max: 20"), "1 <= min <= max"),
        (GOOD.replace("dist: uniform", "dist: zipf"), "dist: one of"),
        (GOOD + "model: {auto: 0}\n", "a share > 0"),
        (GOOD.replace("kind: chat", "kind: multi_turn"), "turns: required"),
        ("version: 1\nname: m\ninclude: []\n", "non-empty list"),
        ("version: 1\nname: m\ninclude:\n  - {workload: nope, weight: 1}\n", "unknown workload 'nope'"),
        ("version: 1\nname: m\ninclude:\n  - {workload: short_chat}\n", "weight: a number > 0"),
        ("version: 1\nname: [unclosed", "not valid YAML"),
    ],
)
def test_workload_bad_files_name_file_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(WorkloadError, match=message) as caught:
        workload.load(path)
    assert str(tmp_path) in str(caught.value)


def test_workload_include_cycle_is_refused(tmp_path):
    _write(tmp_path, f"version: 1\nname: a\ninclude:\n  - {{workload: {tmp_path}/b.yaml, weight: 1}}\n", "a.yaml")
    _write(tmp_path, f"version: 1\nname: b\ninclude:\n  - {{workload: {tmp_path}/a.yaml, weight: 1}}\n", "b.yaml")
    with pytest.raises(WorkloadError, match="includes itself"):
        workload.load(f"{tmp_path}/a.yaml")
