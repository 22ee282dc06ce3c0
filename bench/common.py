"""Shared benchmark machinery: one platform per proxy mode, stand-ins in child processes, clients, stats, JSON.

Nothing here asserts on timing. Every comparison a benchmark reports is measured in one run against one
cluster, with both sides interleaved (c=1) or in alternating back-to-back batches (c>1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import importlib.metadata
import json
import multiprocessing
import os
import platform as pyplatform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.support.prometheus import free_port
from tests.support.ray_platform import RAY_ENV, REPO, RayPlatform, http_json, merge

# Before anything imports ray: it reads these at import time (loopback only, no usage stats, no auth token),
# and bench_local's driver connection must resolve the cluster on 127.0.0.1 as the cluster itself does.
os.environ.update(RAY_ENV)

RESULTS = REPO / "bench" / "results"
API_KEY = "sk-bench-router"
ANTHROPIC_KEY = "sk-ant-bench-upstream"
LANGFUSE_PUBLIC = "pk-lf-bench"
LANGFUSE_SECRET = "sk-lf-bench"
CLOUD_MODEL = "claude-sonnet-4-6"
ANTHROPIC_VERSION = "2023-06-01"
# The router application at / is configured as deployed: OTLP to the sink (the Collector's place), Langfuse fed
# by the Collector, so no Langfuse exporter in the replica. Copies of it in the same cluster:
NOTEL_PREFIX = "/notel"  # telemetry off
LANGFUSE_DIRECT_PREFIX = "/langfuse-direct"  # OTLP and the direct Langfuse exporter (setups without a Collector)
HTTPX_PREFIX = "/httpx"  # a fourth, as deployed but with the Anthropic SDK on its default httpx transport
FORWARDER_PREFIX = "/forwarder"  # bench/forwarder.py: a bare FastAPI forwarder, Ray Serve's floor
INGRESS_PREFIX = "/ray-ingress"  # bench/ray_ingress.py: Ray Serve LLM's OpenAiIngress on the same LLMServer

Sample = dict[str, float]  # {"ttft": s, "total": s} (ttft absent for non-stream)


# ------------------------------------------------------------------------------------------------ stats


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (numpy's default), of a non-empty list."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of values in seconds."""
    if not values:
        return {"n": 0}
    ms = [v * 1000.0 for v in values]
    return {
        "n": len(ms),
        "p50": round(pct(ms, 50), 3),
        "p95": round(pct(ms, 95), 3),
        "p99": round(pct(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def fmt_row(label: str, stats: dict[str, float]) -> str:
    if not stats.get("n"):
        return f"  {label:<34} (no samples)"
    return (
        f"  {label:<34} n={stats['n']:<5} p50 {stats['p50']:8.2f}  p95 {stats['p95']:8.2f}  p99 {stats['p99']:8.2f} ms"
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# ------------------------------------------------------------------------------------------------ machine


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": load_average(),
        "python": pyplatform.python_version(),
        "ray": importlib.metadata.version("ray"),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def wait_idle(max_load: float = 1.0, timeout_s: float = 60.0) -> float:
    """Waits (up to `timeout_s`) for the 1-minute load to drop below `max_load`; returns the load seen."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(2)
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------------ child processes


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class Child:
    """A process this benchmark started (its own session, so it and its children are stopped together)."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def spawn(args: list[str], *, env: dict[str, str] | None = None, log_name: str) -> Child:
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{log_name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )  # fmt: skip
    return Child(process, log)


def start_anthropic_standin() -> tuple[Child, str]:
    """The Anthropic stand-in in its own process (it must not share the client's GIL): instant answers."""
    port = free_port()
    # TCP_NODELAY: the stdlib server writes headers and body separately, and without it Nagle + delayed ACK
    # add 40 ms to a share of the answers (as no real API front end does); the stand-in module leaves it off.
    script = "from tests.support import anthropic_standin as s; s._Handler.disable_nagle_algorithm = True; s.main()"
    child = spawn(
        [sys.executable, "-c", script, "--port", str(port), "--token-delay", "0"],
        log_name="anthropic-standin",
    )
    wait_port(port)
    return child, f"http://127.0.0.1:{port}"


def _receivers(conn: Any) -> None:
    """Child process: one sink that reads and discards every OTLP and Langfuse POST until told to stop, and
    counts what it got (spans, generations) only when asked, so that it costs no CPU while a run is measured."""
    from bench.discard_sink import DiscardSink

    with DiscardSink() as sink:
        conn.send((sink.base_url, sink.base_url))
        while True:
            message = conn.recv()
            conn.send(sink.counts())
            if message == "stop":
                return


class TelemetryReceivers:
    """bench/discard_sink.py in a spawned child process; `counts()` = (otlp spans, router spans, generations)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_receivers, args=(child,), daemon=True)
        self._process.start()
        self.otlp_url, self.langfuse_url = self._conn.recv()

    def counts(self) -> tuple[int, int, int]:
        self._conn.send("count")
        return self._conn.recv()

    def stop(self) -> tuple[int, int, int]:
        self._conn.send("stop")
        counts = self._conn.recv()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
        return counts


def start_vllm_direct(model_dir: Path, *, max_model_len: int = 512) -> tuple[Child, str]:
    """vLLM's own OpenAI server on the same model with the engine arguments of serve_config.local.yaml."""
    port = free_port()
    env = dict(os.environ) | RAY_ENV
    child = spawn(
        [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", "local-model", "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--disable-log-stats",
        ],
        env=env,
        log_name="vllm-direct",
    )  # fmt: skip
    return child, f"http://127.0.0.1:{port}"


def wait_http_ok(url: str, timeout_s: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited; see {child.log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


# ------------------------------------------------------------------------------------------------ platform


@dataclass
class BenchPlatform(RayPlatform):
    """RayPlatform plus copies of the router application (e.g. telemetry off at NOTEL_PREFIX) and other
    applications (the forwarder and Ray ingress baselines) in the same cluster."""

    extra_routers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    extra_apps: list[dict[str, Any]] = field(default_factory=list)

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        base = next(app for app in config["applications"] if app["name"] == "router")
        for name, (prefix, overrides) in self.extra_routers.items():
            app = copy.deepcopy(base)
            app["name"], app["route_prefix"] = name, prefix
            merge(app["args"], overrides)
            config["applications"].append(app)
        for extra in copy.deepcopy(self.extra_apps):
            if "runtime_env" in base:  # the same Serve settings as the router, so the floor is comparable
                extra.setdefault("runtime_env", copy.deepcopy(base["runtime_env"]))
            config["applications"].append(extra)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


FORWARDER_APP = {
    "name": "forwarder",
    "route_prefix": FORWARDER_PREFIX,
    "import_path": "bench.forwarder:build",
    "args": {"model": CLOUD_MODEL},
    "deployments": [{"name": "Forwarder", "num_replicas": 1, "max_ongoing_requests": 256}],
}
RAY_INGRESS_APP = {
    "name": "ray-ingress",
    "route_prefix": INGRESS_PREFIX,
    "import_path": "bench.ray_ingress:build",
    "args": {"model_id": "local-model", "app_name": "llm"},
    "deployments": [{"name": "RayIngress", "num_replicas": 1, "max_ongoing_requests": 256}],
}
TELEMETRY_OFF = {"telemetry": {"tracing": False, "langfuse": False}}
AS_DEPLOYED = {"telemetry": {"langfuse": False}}  # the router's spans reach Langfuse through the Collector
LANGFUSE_DIRECT = {"telemetry": {"langfuse": True}}
HTTPX_TRANSPORT = {"cloud": {"http_client": "httpx"}}
BASELINE_ROUTERS = {
    "router-direct": (LANGFUSE_DIRECT_PREFIX, LANGFUSE_DIRECT),
    "router-httpx": (HTTPX_PREFIX, HTTPX_TRANSPORT),
}


@dataclass
class Session:
    """One cluster (default proxy or HAProxy) with the stand-ins every benchmark needs; reused by all of them."""

    proxy: str  # "default" | "haproxy"
    platform: BenchPlatform
    standin: Child
    standin_url: str
    receivers: TelemetryReceivers
    vllm_url: str | None = None
    started_s: float = 0.0
    litellm: Child | None = None  # LiteLLM's proxy on the same stand-in (bench/litellm_proxy.py), when started
    litellm_url: str | None = None

    @property
    def router_url(self) -> str:
        return self.platform.base_url

    @property
    def notel_url(self) -> str:
        return self.platform.base_url + NOTEL_PREFIX

    @property
    def langfuse_direct_url(self) -> str:
        return self.platform.base_url + LANGFUSE_DIRECT_PREFIX

    @property
    def httpx_url(self) -> str:
        return self.platform.base_url + HTTPX_PREFIX

    @property
    def forwarder_url(self) -> str:
        return self.platform.base_url + FORWARDER_PREFIX

    @property
    def ingress_url(self) -> str:
        return self.platform.base_url + INGRESS_PREFIX


@contextlib.contextmanager
def session(
    proxy: str,
    *,
    vllm_url: str | None = None,
    with_model: bool = True,
    model: str = "smoke",
    litellm: bool = False,
    routers: dict[str, tuple[str, dict[str, Any]]] | None = None,
    baselines: bool = True,
) -> Iterator[Session]:
    """Starts the stand-ins and one Ray cluster with both Serve applications (+ the telemetry-off router).

    `with_model=False` deploys the routers only (no model load): enough for the cloud-path benchmarks. `routers`
    adds router applications ({name: (route prefix, args overrides)}), e.g. telemetry variants. `baselines=False`
    leaves out the bare forwarder and the direct-Langfuse and httpx routers (idle replicas still cost CPU)."""
    started = time.monotonic()
    session: Session | None = None
    standin, standin_url = start_anthropic_standin()
    try:
        receivers = TelemetryReceivers()
    except BaseException:
        standin.stop()
        raise
    env = {
        "HYBRID_LLM_API_KEYS": API_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": standin_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receivers.otlp_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "LANGFUSE_PUBLIC_KEY": LANGFUSE_PUBLIC,
        "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
        "LANGFUSE_BASE_URL": receivers.langfuse_url,
        "PYTHONPATH": str(REPO),  # the forwarder baseline is imported from bench/
    }
    if proxy == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix=f"hl-bench-{proxy}-"))
    platform = BenchPlatform(
        workdir=workdir,
        env=env,
        overrides={"cloud": {"max_retries": 0, "timeout_s": 30}} | AS_DEPLOYED,
        extra_routers={"router-notel": (NOTEL_PREFIX, TELEMETRY_OFF)}
        | (BASELINE_ROUTERS if baselines else {})
        | (routers or {}),
        extra_apps=([FORWARDER_APP] if baselines else []) + ([RAY_INGRESS_APP] if with_model else []),
        apps=("llm", "router") if with_model else ("router",),
        model=model,
    )
    try:
        print(f"[{proxy}] starting Ray + Serve{' (model load takes a minute)' * with_model} ...", flush=True)
        platform.start()
        wait_http_ok(platform.base_url + NOTEL_PREFIX + "/healthz", 120)
        elapsed = time.monotonic() - started
        print(f"[{proxy}] platform ready in {elapsed:.0f}s at {platform.base_url}", flush=True)
        session = Session(proxy, platform, standin, standin_url, receivers, vllm_url=vllm_url, started_s=elapsed)
        if litellm:
            from bench import litellm_proxy

            session.litellm, session.litellm_url = litellm_proxy.start(standin_url)
        yield session
    finally:
        try:
            platform.stop()
        finally:
            if session is not None and session.litellm is not None:
                session.litellm.stop()
            with contextlib.suppress(Exception):
                receivers.stop()
            standin.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def readiness(url: str) -> dict[str, Any]:
    _, body = http_json(url + "/readyz", timeout=2)
    return body if isinstance(body, dict) else {}


# ------------------------------------------------------------------------------------------------ measuring


Call = Callable[[], Awaitable[Sample]]


async def interleaved(
    calls: dict[str, Call], *, concurrency: int, rounds: int, warmup_rounds: int = 2
) -> dict[str, list[Sample]]:
    """Runs every side `rounds` times: per round each side once, as a batch of `concurrency` simultaneous
    requests, sides in a fresh random order each round so neither always goes first."""
    samples: dict[str, list[Sample]] = {name: [] for name in calls}
    order = list(calls)
    rng = random.Random(1234)
    for index in range(warmup_rounds + rounds):
        rng.shuffle(order)
        for name in order:
            batch = await asyncio.gather(*(calls[name]() for _ in range(concurrency)), return_exceptions=True)
            if index < warmup_rounds:
                continue
            for result in batch:
                if isinstance(result, BaseException):
                    samples[name].append({"error": 1.0})
                else:
                    samples[name].append(result)
    return samples


def stats_of(samples: list[Sample]) -> dict[str, Any]:
    """Percentiles (ms) of every timing a side recorded (`total`, `ttft`, `first_chunk`), errors, tokens."""
    ok = [s for s in samples if "error" not in s]
    out: dict[str, Any] = {"errors": len(samples) - len(ok)}
    for key in ("total", "ttft", "first_chunk"):
        values = [s[key] for s in ok if key in s]
        if values:
            out[f"{key}_ms"] = summary_ms(values)
    tokens = [s["tokens"] for s in ok if "tokens" in s]
    if tokens:
        out["tokens_mean"] = round(statistics.fmean(tokens), 2)
    return out


# ------------------------------------------------------------------------------------------------ wrk


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,\\"non2xx\\":%%d," ..
    "\\"p50_us\\":%%d,\\"p95_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk(url: str, body: dict[str, Any], headers: dict[str, str], *, connections: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load with `wrk` (C, one thread): req/s and latency percentiles of non-stream POSTs."""
    lua_headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = _WRK_SCRIPT % {"body": json.dumps(body), "headers": lua_headers}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", handle.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON ") :])
    seconds_run = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "seconds": round(seconds_run, 2),
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / seconds_run, 1),
        "errors": raw["errors"],
        "non2xx": raw["non2xx"],
        "latency_ms": {k[:-3]: round(v / 1000.0, 3) for k, v in raw.items() if k.endswith("_us")},
    }


# ------------------------------------------------------------------------------------------------ CPU accounting


# CPU groups that are not Ray's: the upstream stand-in and LiteLLM's process tree (see CpuMeter's `extra`)
NOT_RAY = frozenset({"standin", "litellm"})


EXPORT_WORKER = "serve_app.telemetry.export_worker"
EXPORT_SUFFIX = "/export"  # the CPU group of a replica's export process: the replica's group and this


def app_cpu(cpu: dict[str, float], app: str) -> tuple[float, float]:
    """A Serve application's CPU per request from `CpuMeter.per_request_ms`: (replica and export process together,
    the export process's part)."""
    export = cpu.get(app + EXPORT_SUFFIX, 0.0)
    return cpu.get(app, 0.0) + export, export


def _group(cmdline: str) -> str:
    """A process's role: the Serve application of a replica (`ServeReplica:<app>:<deployment>`), else its kind."""
    if "ServeReplica:" in cmdline:
        return cmdline.split("ServeReplica:", 1)[1].split(":", 1)[0]
    if "ProxyActor" in cmdline:
        return "serve-proxy"
    if "haproxy" in cmdline:
        return "haproxy"
    return "other"


class CpuMeter:
    """CPU seconds (user + system) of this cluster's processes, by role, and of one more process (the upstream).

    CPU per request is far less disturbed by other work on a shared machine than wall time, and it says what
    one router replica would serve with a core of its own: 1000 / (router ms per request)."""

    def __init__(self, platform: RayPlatform, extra: dict[str, int] | None = None) -> None:
        self._procs: dict[str, list[psutil.Process]] = {}
        for process in platform._own_processes():
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(process.cmdline())
                group = _group(cmdline)
                if EXPORT_WORKER in cmdline:  # a replica's span export process: `<its replica's group>/export`
                    parent = process.parent()
                    group = _group(" ".join(parent.cmdline()) if parent is not None else cmdline) + EXPORT_SUFFIX
                self._procs.setdefault(group, []).append(process)
        for name, pid in (extra or {}).items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                self._procs.setdefault(name, []).extend([process, *process.children(recursive=True)])

    def pids(self, group: str) -> list[int]:
        return [process.pid for process in self._procs.get(group, [])]

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, processes in self._procs.items():
            total = 0.0
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
            out[name] = total
        return out

    @staticmethod
    def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
        if requests <= 0:
            return {}
        return {name: round((after[name] - before.get(name, 0.0)) * 1000.0 / requests, 3) for name in after}


def run_sized(run: Callable[..., Any], doc: str | None) -> None:
    """The command line of an in-process benchmark sized by `--quick`, `--requests` and `--batches`."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--batches", type=int)
    opts = parser.parse_args()
    run(quick=opts.quick, requests=opts.requests, batches=opts.batches)


def wait_quiet(*, busy_below: float = 25.0, timeout_s: float = 90.0) -> float:
    """Waits (at most `timeout_s`) until the machine's CPU is less than `busy_below` percent busy over a second:
    a cluster that was just stopped keeps both cores busy for a while. The last reading, for the result."""
    deadline = time.monotonic() + timeout_s
    busy = psutil.cpu_percent(interval=1.0)
    while busy >= busy_below and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def banner(title: str) -> None:
    print(f"\n=== {title} === (load {' '.join(map(str, load_average()))})", flush=True)
