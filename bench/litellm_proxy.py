"""LiteLLM's proxy, the usual alternative to the router, on the same Anthropic stand-in: pinned, in its own venv.

The venv is created by the benchmark under .cache/ (git-ignored) on first use, never in the project's
environment. The proxy runs with one worker, no callbacks, no database, the model cost map from the package
(no network), and one model, `cloud`, pointing at the stand-in: the same request the router gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench import common
from tests.support.prometheus import free_port

VERSION = "1.108.7"  # the version the issue measured; change it here only
VENV = common.REPO / ".cache" / f"litellm-{VERSION}"
MASTER_KEY = common.API_KEY  # the router's bearer key, so both get identical requests


def ensure_venv() -> Path:
    """The venv's python, creating the venv (one `pip install`, a few minutes) when it is missing."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if marker.exists():
        return python
    print(f"creating {VENV} with litellm[proxy]=={VERSION} (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={VERSION}"], check=True, timeout=1800)
    marker.write_text(VERSION + "\n")
    return python


def start(standin_url: str) -> tuple[common.Child, str]:
    """The proxy on a free loopback port, forwarding model `cloud` to the stand-in; (child, base URL)."""
    ensure_venv()
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": "cloud",
                "litellm_params": {
                    "model": f"anthropic/{common.CLOUD_MODEL}",
                    "api_base": standin_url,
                    "api_key": common.ANTHROPIC_KEY,
                    "max_retries": 0,
                },
            }
        ],
        "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": [], "num_retries": 0},
        "general_settings": {"master_key": MASTER_KEY},
    }
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / "litellm-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LANGFUSE_", "OTEL_", "ANTHROPIC_"))}
    env |= {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    child = common.spawn(
        [
            str(VENV / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--telemetry", "False",
        ],
        env=env,
        log_name="litellm-proxy",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    common.wait_http_ok(url + "/health/liveliness", 180, child)
    return child, url
