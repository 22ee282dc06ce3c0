"""A real local Ray cluster running the real Serve config, for integration tests and benchmarks.

Starts `ray start --head` on loopback with free ports and the given environment (which every Ray worker
inherits: API keys, the Anthropic base URL, OTLP and Langfuse endpoints), deploys a copy of
serve_config.local.yaml with `serve deploy` exactly as a user does, and waits for the local model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.support.prometheus import free_port

REPO = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = REPO / "serve_config.local.yaml"
BIN = Path(sys.executable).parent

# Ray's metric export interval (its default; the platform does not change it). A shorter one shrinks the time
# Ray keeps a gauge whose export is late (two intervals), and on a loaded machine panels then flicker.
METRICS_REPORT_INTERVAL_MS = 10_000

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

# The smoke model (LOCAL_MODEL=smoke: exact token counts, loads in seconds) has a 512-token window; the local
# profile's sizes are for the default SmolLM2-135M. Tests that need the real model pass model="default".
SMOKE_LLM_ARGS: dict[str, Any] = {"engine_kwargs": {"max_model_len": 512}}
SMOKE_ROUTER_ARGS: dict[str, Any] = {
    "local": {"context_window": 512, "saturation_inflight": 16},
    "routing": {"default_local_output_tokens": 128},
}


def http_json(url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body.decode(errors="replace")


@dataclass
class RayPlatform:
    """One Ray cluster + the two Serve applications; `start()` returns once the local model answers."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # router args merged over the local profile
    llm_overrides: dict[str, Any] = field(default_factory=dict)
    apps: tuple[str, ...] = ("llm", "router")  # which applications of the profile to deploy
    model: str = "smoke"  # LOCAL_MODEL: "smoke", or "default" for SmolLM2-135M-Instruct (the profile's sizes)
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    haproxy_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    # Ray's socket paths must stay short (AF_UNIX limit), so its temp dir is not under the pytest tmp tree.
    ray_tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hl-ray-")))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "serve_config.test.yaml"

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "LANGFUSE_", "OTEL_"))}
        env.update(RAY_ENV)
        env["HYBRID_LLM_CACHE_DIR"] = str(REPO / ".cache")
        env["LOCAL_MODEL"] = "" if self.model == "default" else self.model
        # HAProxy's metrics and stats ports are fixed by default: two clusters on one machine would clash.
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(self.haproxy_ports[0])
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(self.haproxy_ports[1])
        # So are its config file, admin socket and server state (under /tmp/haproxy-serve): a second cluster's HAProxy
        # would rewrite the first one's config and route its clients to the other cluster's replicas.
        haproxy = self.ray_tmp / "haproxy"
        env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = str(haproxy / "haproxy.cfg")
        env["RAY_SERVE_HAPROXY_SOCKET_PATH"] = str(haproxy / "admin.sock")
        env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(haproxy)
        env["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = str(haproxy / "server-state")
        env.update(self.env)
        return env

    def write_config(self) -> Path:
        config = yaml.safe_load(LOCAL_CONFIG.read_text())
        config["http_options"]["port"] = self.http_port
        config["applications"] = [app for app in config["applications"] if app["name"] in self.apps]
        smoke = self.model == "smoke"
        for app in config["applications"]:
            if app["name"] == "router":
                merge(app["args"], copy.deepcopy(SMOKE_ROUTER_ARGS) if smoke else {})
                merge(app["args"], self.overrides)
            if app["name"] == "llm":
                merge(app["args"], copy.deepcopy(SMOKE_LLM_ARGS) if smoke else {})
                merge(app["args"], self.llm_overrides)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            env=self.process_env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def start(self, *, ready_timeout: float = 420) -> RayPlatform:
        """Starts the cluster and deploys; a failure raises with Ray's own output. Call `stop()` either way:
        a `ray start` that fails part-way leaves the processes it had started."""
        self.write_config()
        started = self.run(
            str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={self.metrics_port}", "--num-cpus=8", "--disable-usage-stats",
            f"--temp-dir={self.ray_tmp}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", check=False,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(
                f"ray start failed ({started.returncode}):\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
            )
        self.deploy()
        if "llm" in self.apps:
            self.wait_local_ready(ready_timeout)
        else:
            self.wait_router(ready_timeout)
        return self

    def wait_router(self, timeout: float) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.readiness():
                return
            time.sleep(0.25)
        raise TimeoutError(f"the router did not answer /readyz after {timeout}s")

    def deploy(self, timeout: float = 90) -> None:
        """`serve deploy`, retried while the dashboard that accepts it is still starting after `ray start`."""
        deadline = time.monotonic() + timeout
        while True:
            command = (str(BIN / "serve"), "deploy", str(self.config_path), "-a", self.dashboard_url)
            result = self.run(*command, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve deploy failed:\n{result.stdout}\n{result.stderr}")
            time.sleep(2)

    def readiness(self) -> dict[str, Any]:
        _, body = http_json(f"{self.base_url}/readyz", timeout=2)
        return body if isinstance(body, dict) else {}

    def wait_local_ready(self, timeout: float, *, ready: bool = True) -> float:
        """Seconds until /readyz reports the local backend's readiness as `ready`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.readiness().get("backends", {}).get("local", {}).get("ready") is ready:
                return time.monotonic() - start
            time.sleep(0.25)
        status = self.run(str(BIN / "serve"), "status", "-a", self.dashboard_url, check=False)
        raise TimeoutError(f"local backend not ready={ready} after {timeout}s:\n{status.stdout}\n{status.stderr}")

    def stop(self) -> None:
        """Stops this cluster only (`ray stop` would stop every Ray cluster on the machine), also one that never
        fully started or no longer answers; never raises."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):  # a hung `serve shutdown` must not skip the rest
            self.run(str(BIN / "serve"), "shutdown", "-y", "-a", self.dashboard_url, check=False, timeout=60)
        for _ in range(3):  # a dying cluster may still start a process (a replica's restart) while we wait
            processes = self._own_processes()
            if not processes:
                break
            _terminate(processes)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def _own_processes(self) -> list[psutil.Process]:
        """This cluster's processes: those naming its temp dir or its GCS (by any of the node's addresses: the Ray
        client server names the machine's address, not the loopback one), and their children."""
        gcs = f":{self.gcs_port}"
        roots = []
        for process in psutil.process_iter(["cmdline"]):
            args = process.info["cmdline"] or []
            if any(str(self.ray_tmp) in arg or arg.endswith(gcs) for arg in args):
                roots.append(process)
        found = {p.pid: p for p in roots}
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found.update({child.pid: child for child in root.children(recursive=True)})
        return list(found.values())


def _terminate(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def merge(target: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep-merges `overrides` into `target` in place (dicts merge, everything else replaces)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
