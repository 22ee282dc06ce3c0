"""The model replica killed under mixed streamed and non-streamed `auto` load, and the properties that must hold.

`kill_under_load` runs clients against a RayPlatform, kills the llm replica with the simulator's fault action
(serve_app.sim.actions, `kill_model`: `ray.kill` of the replica actor, no restart, as a crash) and waits for the
model to serve again; `analyse` turns what the clients saw and the router's counters into figures, and `checks`
states each property with the figures behind it. bench/bench_replica_kill.py runs it at scale,
tests/integration/test_replica_kill.py briefly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from serve_app.sim import actions
from serve_app.sim.faults import FaultEvent
from tests.support import chat_load
from tests.support.chat_load import REQUESTS_TOTAL, Answer
from tests.support.ray_platform import RayPlatform


@dataclass(frozen=True)
class KillLoad:
    """The load around the kill. Without `stop_after_kill_s` it runs until the model is back plus `after_s`."""

    api_key: str
    workers: int = 12
    kill_at_s: float = 15.0
    after_s: float = 10.0
    stop_after_kill_s: float | None = None
    bound_s: float = 60.0  # the longest a request may take
    recover_timeout_s: float = 240.0
    think_s: float = 0.0  # each client's pause between requests
    max_tokens: tuple[int, int] = (32, 200)
    seed: int = 7


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


async def kill_under_load(ray: RayPlatform, load: KillLoad) -> tuple[list[Answer], dict[str, Any]]:
    """Runs the load, the kill and the recovery; returns the answers and the timeline (time.monotonic seconds)."""
    answers: list[Answer] = []
    stop = asyncio.Event()
    rng = random.Random(load.seed)
    counter = iter(range(1 << 30))
    timeline: dict[str, Any] = {"load_start": time.monotonic()}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            index = next(counter)
            body = chat_load.chat_body(index, stream=rng.random() < 0.5, max_tokens=rng.randint(*load.max_tokens))
            answers.append(
                await chat_load.chat(client, ray.base_url, index, body, api_key=load.api_key, bound_s=load.bound_s)
            )
            if load.think_s:
                await asyncio.sleep(load.think_s)

    async def fault() -> None:
        await asyncio.sleep(load.kill_at_s)
        target = actions.Target(ray_address=ray.address, dashboard_url=ray.dashboard_url)
        timeline["kill_start"] = time.monotonic()
        timeline["kill_detail"], _ = await actions.carry_out(FaultEvent("kill_model", load.kill_at_s), target)
        timeline["kill_end"] = time.monotonic()
        if load.stop_after_kill_s is not None:
            await asyncio.sleep(load.stop_after_kill_s)
            stop.set()
        await _watch_recovery(ray, timeline, load.recover_timeout_s)
        await asyncio.sleep(load.after_s)
        stop.set()

    limits = httpx.Limits(max_connections=load.workers + 4, max_keepalive_connections=load.workers + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        await asyncio.gather(fault(), *(client_loop(client) for _ in range(load.workers)))
    timeline["load_end"] = max(a.ended for a in answers)
    return answers, timeline


async def _watch_recovery(ray: RayPlatform, timeline: dict[str, Any], timeout_s: float) -> None:
    """Notes when /readyz first reports the local model down, and when it serves again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and "local_down" not in timeline:
        if not await asyncio.to_thread(_local_ready, ray):
            timeline["local_down"] = time.monotonic()
        await asyncio.sleep(0.25)
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_local_ready, ray):
            timeline["local_back"] = time.monotonic()
            return
        await asyncio.sleep(0.5)


def _local_ready(ray: RayPlatform) -> bool:
    return bool(ray.readiness().get("backends", {}).get("local", {}).get("ready"))


def analyse(answers: list[Answer], timeline: dict[str, Any], before: str, after: str) -> dict[str, Any]:
    """Figures of one run: what the clients saw around the kill, and the counters' rise over the run."""
    kill_start, kill_end = timeline["kill_start"], timeline["kill_end"]
    back = timeline.get("local_back")
    streams = [a for a in answers if a.stream]
    # Answers under way at some moment of the kill action (the replica dies between its start and its return: it
    # connects a driver, finds the actor and kills it), local streams counted once the router had answered.
    local_streams_at_kill = [
        a
        for a in streams
        if a.backend == "local" and a.headers_at is not None and a.headers_at <= kill_end and a.ended >= kill_start
    ]
    local_json_at_kill = [a for a in answers if not a.stream and a.started <= kill_end and a.ended >= kill_start]
    errored = [a for a in streams if a.error_event]
    during = [a for a in answers if kill_end < a.started < (back or timeline["load_end"])]
    router_total = chat_load.total(after, REQUESTS_TOTAL) - chat_load.total(before, REQUESTS_TOTAL)
    return {
        "requests": len(answers),
        "streamed": len(streams),
        "statuses": dict(sorted(Counter(str(a.status) for a in answers).items())),
        "timed_out": sum(a.timed_out for a in answers),
        "transport_failures": dict(Counter(a.failure for a in answers if a.failure)),
        "max_seconds": round(max(a.seconds for a in answers), 3),
        "streams_without_done": sum(1 for a in streams if a.status == 200 and not a.done),
        "streams_with_error_event": len(errored),
        "error_event_streams_backend": dict(Counter(a.backend or "none" for a in errored)),
        "local_streams_in_flight_at_kill": len(local_streams_at_kill),
        "non_streamed_in_flight_at_kill": len(local_json_at_kill),
        "non_streamed_in_flight_at_kill_answers": dict(
            Counter(f"{a.status} {a.backend}/{a.reason}" for a in local_json_at_kill)
        ),
        "5xx_answers": [
            {
                "stream": a.stream,
                "status": a.status,
                "backend": a.backend,
                "started_s": round(a.started - kill_start, 3),
                "ended_s": round(a.ended - kill_start, 3),
            }
            for a in answers
            if a.status >= 500
        ],
        "kill": timeline.get("kill_detail"),
        "kill_at_s": round(kill_start - timeline["load_start"], 3),
        "kill_action_s": round(kill_end - kill_start, 3),
        "local_down_after_kill_s": _since(timeline.get("local_down"), kill_end),
        "local_back_after_kill_s": _since(back, kill_end),
        "sent_while_model_down": len(during),
        "routes_while_model_down": dict(Counter(f"{a.backend}/{a.reason}" for a in during)),
        "routes": dict(Counter(f"{a.backend}/{a.reason}" for a in answers)),
        "counters": {
            "client_total": len(answers),
            "router_total": round(router_total),
            "client_by_backend": dict(sorted(Counter(a.backend or "none" for a in answers).items())),
            "router_by_backend": chat_load.delta(before, after, REQUESTS_TOTAL, "backend"),
            "client_by_outcome": dict(sorted(Counter(a.outcome for a in answers).items())),
            "router_by_outcome": chat_load.delta(before, after, REQUESTS_TOTAL, "outcome"),
        },
    }


def _since(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 3)


def checks(figures: dict[str, Any], *, bound_s: float) -> list[Check]:
    """Every property of the proof, passed or not, with the figures behind it."""
    fives = {s: n for s, n in figures["statuses"].items() if s.startswith("5")}
    c = figures["counters"]
    return [
        Check(
            "no request hangs",
            figures["timed_out"] == 0 and not figures["transport_failures"],
            f"{figures['timed_out']} over the {bound_s:g}s bound, transport failures {figures['transport_failures']}, "
            f"longest {figures['max_seconds']}s",
        ),
        Check(
            "every stream ends with [DONE]",
            figures["streams_without_done"] == 0,
            f"{figures['streams_without_done']} of {figures['streamed']} streams without it",
        ),
        Check(
            "no auto request gets a 5xx",
            not fives,
            f"statuses {figures['statuses']}; non-streamed requests under way at the kill: "
            f"{figures['non_streamed_in_flight_at_kill_answers']}",
        ),
        Check(
            "error events only on local streams in flight at the kill",
            figures["streams_with_error_event"] <= figures["local_streams_in_flight_at_kill"]
            and set(figures["error_event_streams_backend"]) <= {"local"},
            f"{figures['streams_with_error_event']} streams ended with an error event "
            f"({figures['error_event_streams_backend']}); {figures['local_streams_in_flight_at_kill']} local streams "
            "in flight at the kill",
        ),
        Check(
            "router counters account for every request",
            c["router_total"] == c["client_total"]
            and c["router_by_backend"] == c["client_by_backend"]
            and c["router_by_outcome"] == c["client_by_outcome"],
            f"sent {c['client_total']}, counted {c['router_total']}; by backend client {c['client_by_backend']} "
            f"router {c['router_by_backend']}; by outcome client {c['client_by_outcome']} router "
            f"{c['router_by_outcome']}",
        ),
        Check(
            "the model serves again",
            figures["local_back_after_kill_s"] is not None,
            f"local serving again {figures['local_back_after_kill_s']}s after the kill",
        ),
    ]
