"""`make serve` helper: waits for the locally deployed app and prints where to send requests.

Not imported by the application. Prints the API key only to the terminal that asked for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_STANDIN = "OFFLINE MODE: the cloud backend is the project's Anthropic stand-in (scripted answers, not Claude)"
_NO_CLOUD = "cloud backend not configured: export ANTHROPIC_API_KEY before `make serve` to enable it"


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 from /readyz, or the proxy's 404 before routes exist
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}
    try:
        return status, json.loads(body or b"{}")
    except json.JSONDecodeError:
        return status, {}


_QUESTION = "What is the capital of France? Answer in one sentence."


def wait(port: int, timeout_s: float) -> dict:
    """Polls /readyz until the local model is ready; returns the last report."""
    deadline = time.monotonic() + timeout_s
    report: dict = {}
    announced = False
    while time.monotonic() < deadline:
        _, report = _get(f"http://127.0.0.1:{port}/readyz")
        local = report.get("backends", {}).get("local", {})
        if local.get("ready"):
            return report
        if report and not announced:
            print("router is up; waiting for the local model to load (vLLM on the CPU: about a minute) ...")
            announced = True
        time.sleep(1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.devserver")
    parser.add_argument("command", choices=["wait"])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    report = wait(args.port, args.timeout)
    if not report.get("backends", {}).get("local", {}).get("ready"):
        print(f"the local model did not become ready in {args.timeout:g}s; see `serve status` and the Ray dashboard")
        return 1
    key = args.key_file.read_text().strip() if args.key_file and args.key_file.exists() else "<your key>"
    base = f"http://127.0.0.1:{args.port}"
    cloud = report["backends"].get("cloud", {})
    print(
        f"""
hybrid-llm is serving on {base}  (backends: {json.dumps(report["backends"])})
{_STANDIN if cloud.get("standin") else "" if cloud.get("ready") else _NO_CLOUD}

  API key (HYBRID_LLM_API_KEYS of this cluster): {key}

  curl {base}/v1/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
       -d '{{"model": "auto", "messages": [{{"role": "user", "content": "{_QUESTION}"}}]}}'

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="auto", messages=[{{"role": "user", "content": "{_QUESTION}"}}], temperature=0
  )
  print(reply.model, reply.choices[0].message.content, reply.usage)
  PY

  Ray dashboard:   http://127.0.0.1:{args.dashboard_port}
  Metrics:         http://127.0.0.1:{args.metrics_port}/metrics   (ray_router_*, ray_serve_*, ray_vllm_*)
  Readiness:       {base}/readyz       Stop: make stop
"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
