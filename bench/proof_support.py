"""What the scale proofs share: the platform with its stand-ins, one timed chat request, counters, replica probes.

The proofs (bench_replica_kill, bench_telemetry_blackhole, soak) are benchmarks, not tests: each prints its
figures, writes them as JSON under bench/results/ and states every property it checks as PASS or FAIL.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import wait_port
from tests.support.prometheus import free_port
from tests.support.ray_platform import RAY_ENV, REPO, RayPlatform, merge

os.environ.update(RAY_ENV)  # before anything imports ray: loopback addresses, no usage stats, no auth token

RESULTS = REPO / "bench" / "results"
API_KEY = "sk-proof-router"
ANTHROPIC_KEY = "sk-ant-proof-upstream"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


# ------------------------------------------------------------------------------------------------ processes


@dataclass
class StandinProcess:
    """The Anthropic stand-in (serve_app.sim.standin_server, aiohttp) in a process of its own."""

    token_delay_s: float = 0.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StandinProcess:
        command = [
            sys.executable, "-m", "serve_app.sim.standin_server", "--port", str(self.port),
            "--api-key", ANTHROPIC_KEY, "--token-delay", str(self.token_delay_s),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Blackhole:
    """A TCP server that accepts every connection and never reads or answers: a telemetry backend that hangs."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._server.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self.accepted = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = self._server.accept()
                self._held.append(connection)  # held open, never read: the client's send and read both wait
                self.accepted += 1

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in self._held:
            connection.close()
        self._server.close()


def wait_http(url: str, timeout_s: float) -> None:
    """Until `url` answers 200 (a router application that is still deploying answers 404 or not at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:g}s")


@dataclass
class Routers(RayPlatform):
    """RayPlatform plus copies of the router application: name -> (route prefix, args overrides, env vars of its
    runtime_env, which win over the cluster's: e.g. another telemetry endpoint)."""

    routers: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=dict)

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        base = next(app for app in config["applications"] if app["name"] == "router")
        for name, (prefix, overrides, env_vars) in self.routers.items():
            app = copy.deepcopy(base)
            app["name"], app["route_prefix"] = name, prefix
            merge(app["args"], copy.deepcopy(overrides))
            app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
            config["applications"].append(app)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@contextlib.contextmanager
def platform(
    standin: StandinProcess,
    *,
    apps: tuple[str, ...] = ("llm", "router"),
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    model: str = "smoke",
    routers: dict[str, tuple[str, dict[str, Any], dict[str, str]]] | None = None,
) -> Iterator[RayPlatform]:
    """A Ray cluster of its own with the profile's applications, the cloud pointed at the stand-in."""
    workdir = Path(tempfile.mkdtemp(prefix="hl-proof-"))
    ray = Routers(
        routers=routers or {},
        workdir=workdir,
        apps=apps,
        model=model,
        env={
            "RAY_SERVE_ENABLE_HA_PROXY": "1",  # the ingress `make serve` uses
            "HYBRID_LLM_API_KEYS": API_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": standin.base_url,
            **(env or {}),
        },
        overrides={"cloud": {"max_retries": 0, "timeout_s": 30}, **(overrides or {})},
    )
    started = time.monotonic()
    print(f"starting Ray + Serve ({', '.join(apps)}; {model} model) ...", flush=True)
    try:
        ray.start()
        print(f"platform ready in {time.monotonic() - started:.0f}s at {ray.base_url}", flush=True)
        yield ray
    finally:
        ray.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the router replica


def router_pid(ray: RayPlatform, app: str = "router") -> int:
    """The PID of the live replica actor of `app` (Ray's state API on this cluster's dashboard)."""
    from ray.util.state import list_actors

    alive = list_actors(address=ray.dashboard_url, filters=[("state", "=", "ALIVE")], limit=10_000)
    pids = [a.pid for a in alive if a.class_name.startswith(f"ServeReplica:{app}:")]
    if len(pids) != 1:
        raise RuntimeError(f"expected one live replica of {app}, found {pids}")
    return int(pids[0])


def process_sample(pid: int) -> dict[str, int]:
    """RSS (KiB, /proc/<pid>/status VmRSS), open file descriptors and threads of one process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


# ------------------------------------------------------------------------------------------------ verdicts


@dataclass
class Verdicts:
    """Properties a proof checks, each PASS or FAIL with the figures behind it."""

    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"property": name, "pass": bool(passed), "detail": detail})
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}", flush=True)

    @property
    def passed(self) -> bool:
        return all(c["pass"] for c in self.checks)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"figures written to {path.relative_to(REPO)}", flush=True)
    return path


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
