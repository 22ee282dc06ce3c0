"""Carries out fault events against a running platform: Ray or kubectl for the model, the stand-in for the cloud.

Every action returns a one-line description of what it did (it goes into events.jsonl and the report), and
raises FaultFailed with the reason when it could not act, so a run never claims a fault that did not happen.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from serve_app.sim.faults import FaultEvent


class FaultFailed(RuntimeError):
    """A fault event that could not be carried out."""


@dataclass(frozen=True)
class Target:
    """Where the platform runs and how to reach its control planes."""

    platform: str = "local"  # local (Ray on this machine) | eks (kubectl)
    ray_address: str = "127.0.0.1:6379"
    dashboard_url: str = "http://127.0.0.1:8265"
    serve_config: Path = Path("serve_config.local.yaml")
    standin_url: str | None = None  # the Anthropic stand-in's base URL (cloud faults)
    kube_namespace: str = "hybrid-llm"
    kube_selector: str = "ray.io/node-type=worker"
    llm_app: str = "llm"


async def carry_out(event: FaultEvent, target: Target) -> tuple[str, float | None]:
    """Does it; returns what was done and, for a window, when it ends (Unix seconds) as the target says."""
    if event.kind == "kill_model":
        return await asyncio.to_thread(_kill_model, target), None
    if event.kind == "redeploy_model":
        return await asyncio.to_thread(_redeploy_model, target), None
    if event.kind in ("cloud_429", "cloud_529"):
        assert event.duration_s is not None
        return await asyncio.to_thread(_cloud_errors, target, int(event.kind[-3:]), event.duration_s)
    raise FaultFailed(f"{event.kind} is carried out by the runner, not here")


def _kill_model(target: Target) -> str:
    if target.platform == "eks":
        command = ["kubectl", "delete", "pod", "-n", target.kube_namespace, "-l", target.kube_selector, "--wait=false"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise FaultFailed(f"kubectl delete pod failed: {result.stderr.strip()}")
        return result.stdout.strip() or "model pod deleted"
    # The replica actor of the llm application, killed without restart as a crash would (Serve replaces it).
    script = (
        "import ray, sys\n"
        "from ray.util.state import list_actors\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
        "alive = list_actors(address=sys.argv[2], filters=[('state', '=', 'ALIVE')], limit=10000)\n"
        "names = [a.name for a in alive if 'ServeReplica:' + sys.argv[3] + ':' in a.class_name]\n"
        "if not names: sys.exit('no live replica of the ' + sys.argv[3] + ' application')\n"
        "ray.kill(ray.get_actor(names[0], namespace='serve'), no_restart=True)\n"
        "print(names[0])\n"
    )
    command = [sys.executable, "-c", script, target.ray_address, target.dashboard_url, target.llm_app]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise FaultFailed(f"killing the model replica failed: {result.stderr.strip()[-400:]}")
    return f"killed replica actor {result.stdout.strip().splitlines()[-1]}"


def _redeploy_model(target: Target) -> str:
    if target.platform == "eks":
        raise FaultFailed("redeploy_model on EKS: change the RayService (kubectl apply), not supported by the runner")
    config = yaml.safe_load(target.serve_config.read_text())
    without = {**config, "applications": [a for a in config["applications"] if a["name"] != target.llm_app]}
    serve = str(Path(sys.executable).parent / "serve")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(without, handle, sort_keys=False)
    for path in (handle.name, str(target.serve_config)):
        result = subprocess.run(
            [serve, "deploy", path, "-a", target.dashboard_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise FaultFailed(f"serve deploy {path} failed: {result.stderr.strip()[-400:]}")
    Path(handle.name).unlink(missing_ok=True)
    return f"removed and redeployed the {target.llm_app} application from {target.serve_config.name}"


def _cloud_errors(target: Target, status: int, seconds: float) -> tuple[str, float]:
    if not target.standin_url:
        raise FaultFailed("cloud faults need the Anthropic stand-in (--standin-url); a real API is never faulted")
    body = json.dumps({"status": status, "seconds": seconds}).encode()
    request = urllib.request.Request(
        f"{target.standin_url.rstrip('/')}/_standin/fault",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read())
    except OSError as exc:
        raise FaultFailed(f"the stand-in at {target.standin_url} did not take the fault: {exc}") from None
    return f"the stand-in answers {status} for {seconds:g}s", float(answer["until"])
