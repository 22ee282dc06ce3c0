"""vLLM's own OpenAI/Anthropic API server as a subprocess on loopback; starts, waits for /health, stops it.

It owns one process group (the API server and the engine core it spawns) and its log file; it never touches
processes it did not start. Failure messages carry the tail of the server's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.prometheus import free_port

VLLM_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
MAX_MODEL_LEN = 512


@dataclass
class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` for `model` under `served_model_name`."""

    model: Path
    served_model_name: str
    log_path: Path
    max_model_len: int = MAX_MODEL_LEN
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model), "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--enforce-eager",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, *, timeout: float = 120.0, attempts: int = 2) -> VllmServer:
        """Starts the server and returns once /health answers 200; retries on a port taken meanwhile."""
        for attempt in range(attempts):
            self._spawn()
            try:
                self._wait_healthy(timeout)
                return self
            except RuntimeError:
                port_lost = "address already in use" in self.log_tail().lower()
                self.stop()
                if not port_lost or attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **VLLM_ENV}
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            # A new session makes the server the leader of its own process group: stop() signals the group,
            # which reaches the engine core process too, and nothing outside it.
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode} while loading:\n{self.log_tail()}")
            if _health(f"{self.base_url}/health") == 200:
                return
            time.sleep(0.5)  # connection refused (or 503) while the engine loads
        raise RuntimeError(f"vLLM not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after `grace` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # the session leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        _wait_group_gone(pgid, timeout=min(grace, 10.0))
        _signal_group(pgid, signal.SIGKILL)  # no-op when the group is already gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no vLLM log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
