"""`python -m cluster.verify` against a loopback server speaking the Kubernetes REST wire format, replaying
recorded API responses (tests/deploy/fixtures/k8s/*.json: request path -> status and JSON body)."""

from __future__ import annotations

import copy
import http.server
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_support import REPO, SCHEMAS, load_json, strict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "k8s"
RAYSERVICE_PATH = "/apis/ray.io/v1/namespaces/hybrid-llm/rayservices/hybrid-llm"


class _Handler(http.server.BaseHTTPRequestHandler):
    responses: dict[str, dict] = {}
    seen: list[str] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        key = path + (f"?labelSelector={query['labelSelector'][0]}" if "labelSelector" in query else "")
        self.seen.append(key)
        assert self.headers.get("Authorization") == "Bearer test-token"
        recorded = self.responses.get(key)
        if recorded is None:
            status, body = (
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "message": f"{key} not found",
                    "code": 404,
                },
            )
        else:
            status, body = recorded["status"], recorded["body"]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(responses: dict, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    handler = type("H", (_Handler,), {"responses": responses, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "recorded",
                "clusters": [
                    {"name": "recorded", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}
                ],
                "users": [{"name": "u", "user": {"token": "test-token"}}],
                "contexts": [{"name": "recorded", "context": {"cluster": "recorded", "user": "u"}}],
            }
        )
    )
    try:
        yield kubeconfig, handler.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(request, tmp_path):
    responses = load_json(FIXTURES / f"{request.param}.json")
    yield from _serve(responses, tmp_path)


def _verify(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.verify", "--kubeconfig", str(kubeconfig)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in stdout.splitlines()[1:]:
        name, rest = line.split("  ", 1)
        result, _, detail = rest.strip().partition("  ")
        rows[name.strip()] = (result.strip(), detail.strip())
    return rows


@pytest.mark.parametrize("api", ["healthy"], indirect=True)
def test_verify_healthy_cluster_passes_every_check(api):
    kubeconfig, seen = api
    done = _verify(kubeconfig)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert len(rows) == 7 and all(result == "ok" for result, _ in rows.values()), done.stdout
    assert rows["Serve applications RUNNING"][1] == "llm=RUNNING, router=RUNNING"
    assert rows["GPU node allocatable"][1] == "1 node(s), nvidia.com/gpu=1"
    assert rows["Router answering /readyz"][1] == "HTTP 200 cloud=ready local=ready"
    assert "/api/v1/namespaces/hybrid-llm/services/hybrid-llm-serve-svc:serve/proxy/readyz" in seen


@pytest.mark.parametrize("api", ["degraded"], indirect=True)
def test_verify_degraded_cluster_fails_and_says_why(api):
    kubeconfig, _ = api
    done = _verify(kubeconfig)
    assert done.returncode == 1
    rows = _rows(done.stdout)
    assert rows["RayService Ready"] == ("FAIL", "False (ZeroServeEndpoints)")
    assert rows["Serve applications RUNNING"] == ("FAIL", "llm=DEPLOYING, router=RUNNING")
    assert rows["GPU node allocatable"] == ("FAIL", "0 node(s), nvidia.com/gpu=0")
    assert rows["DCGM exporter running"] == ("FAIL", "0/0 pods ready")
    assert rows["Monitors and rules present"] == ("FAIL", "missing: ray-workers-monitor")
    assert rows["Grafana dashboards present"] == ("FAIL", "0 dashboard(s), ours missing")
    assert rows["Router answering /readyz"] == ("FAIL", "HTTP 503 cloud=not ready local=not ready")


def test_verify_reports_a_missing_rayservice_as_an_api_error(tmp_path):
    responses = load_json(FIXTURES / "healthy.json")
    del responses[RAYSERVICE_PATH]
    for kubeconfig, _ in _serve(responses, tmp_path):
        done = _verify(kubeconfig)
    assert done.returncode == 1
    assert "API error 404" in done.stdout


@pytest.mark.parametrize("name", ["healthy", "degraded"])
def test_recorded_rayservice_status_matches_the_crd_schema(name):
    body = copy.deepcopy(load_json(FIXTURES / f"{name}.json")[RAYSERVICE_PATH]["body"])
    schema = strict(load_json(SCHEMAS / "kuberay" / "rayservice-v1.schema.json"))
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    assert errors == []
