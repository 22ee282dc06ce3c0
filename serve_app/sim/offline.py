"""Offline mode of `make serve`: the Anthropic stand-in as the cloud when no ANTHROPIC_API_KEY is set, never when it is.

`python -m serve_app.sim.offline env` starts the stand-in (once; its pid and URL go to .cache/) and prints the
shell exports that point the router at it; with ANTHROPIC_API_KEY set it stops a stand-in left from an earlier
run and prints nothing. `python -m serve_app.sim.offline stop` stops it (make stop).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BANNER = (
    "OFFLINE MODE: no ANTHROPIC_API_KEY, so the cloud backend is the project's Anthropic stand-in at {url}\n"
    "  (answers are scripted, not Claude; costs use Claude's list prices; models answer as <model>-standin).\n"
    "  Export ANTHROPIC_API_KEY and run `make stop serve` for the real API."
)


def start(state: Path, port: int) -> str:
    """Starts the stand-in unless one of ours is already answering; returns its URL."""
    url = f"http://127.0.0.1:{port}"
    pid_file, url_file = state / "standin.pid", state / "standin-url"
    if _alive(pid_file) and _answers(url):
        return url
    state.mkdir(parents=True, exist_ok=True)
    log = (state / "standin.log").open("ab")
    command = [sys.executable, "-m", "serve_app.sim.standin_server", "--port", str(port), "--model-suffix=-standin"]
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 20
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the Anthropic stand-in did not start on port {port}; see {state / 'standin.log'}")
        time.sleep(0.2)
    url_file.write_text(url + "\n")
    return url


def stop(state: Path) -> bool:
    """Stops the stand-in this checkout started (by its recorded pid); True if one was running."""
    pid_file = state / "standin.pid"
    (state / "standin-url").unlink(missing_ok=True)
    if not _alive(pid_file):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    with contextlib.suppress(OSError):
        return "serve_app.sim.standin_server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.sim.offline", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["env", "stop"])
    parser.add_argument("--state", type=Path, default=Path(".cache"))
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args(argv)
    if args.command == "stop" or os.environ.get("ANTHROPIC_API_KEY"):
        if stop(args.state) and args.command == "stop":
            print("stopped the Anthropic stand-in", file=sys.stderr)
        return 0
    url = start(args.state, args.port)
    print(BANNER.format(url=url), file=sys.stderr)
    exports = {"ANTHROPIC_API_KEY": "offline-standin", "ANTHROPIC_BASE_URL": url, "HYBRID_LLM_CLOUD_STANDIN": "1"}
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
