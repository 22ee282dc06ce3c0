"""The model replica killed under mixed streamed and non-streamed `auto` load: the short version of
bench/bench_replica_kill.py, on the session's platform (smoke model), with the same properties asserted.

Six clients send `auto` requests (half streamed) for a few seconds, the simulator's `kill_model` action kills the
llm replica, the load goes on for a few seconds more, and the test waits until the model serves again (so the
tests after it find it back). No request may hang, every stream ends with `[DONE]`, no request gets a 5xx, only
local streams under way at the kill end with an error event, and the router's counters account for every request.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import chat_load
from tests.support.replica_kill import KillLoad, analyse, checks, kill_under_load


@pytest.fixture(scope="module")
def killed(platform):
    # The session platform sends outputs of 100 tokens and more to the cloud by rule: stay below it to go local.
    load = KillLoad(
        api_key=platform.api_key,
        workers=6,
        kill_at_s=4.0,
        stop_after_kill_s=4.0,
        after_s=0.0,
        bound_s=60.0,
        recover_timeout_s=300.0,
        think_s=0.1,
        max_tokens=(24, 90),
    )
    assert platform.ray.readiness()["backends"]["local"]["ready"]
    before = chat_load.settled(platform.ray)
    answers, timeline = asyncio.run(kill_under_load(platform.ray, load))
    after = chat_load.counted(platform.ray, before, len(answers))
    figures = analyse(answers, timeline, before, after)
    print({k: v for k, v in figures.items() if k != "counters"}, figures["counters"])
    return figures, {check.name: check for check in checks(figures, bound_s=load.bound_s)}


def test_the_kill_happened_under_mixed_load(killed):
    figures, _ = killed
    assert figures["kill"].startswith("killed replica actor"), figures["kill"]
    assert figures["routes"].get("local/policy_local", 0) > 0, figures["routes"]
    assert 0 < figures["streamed"] < figures["requests"]
    assert figures["sent_while_model_down"] > 0, "no request reached the router while the model was down"


@pytest.mark.parametrize(
    "name",
    [
        "no request hangs",
        "every stream ends with [DONE]",
        "no auto request gets a 5xx",
        "error events only on local streams in flight at the kill",
        "router counters account for every request",
        "the model serves again",
    ],
)
def test_replica_kill_property(killed, name):
    _, found = killed
    assert found[name].passed, found[name].detail
