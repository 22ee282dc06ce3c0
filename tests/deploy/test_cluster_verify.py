"""`python -m cluster.verify` against a loopback server speaking the Kubernetes REST wire format, replaying
recorded API responses (tests/deploy/fixtures/k8s/*.json: request path -> status and JSON body), and a loopback
HTTPS server standing in for the ALB (its certificate made by openssl for the public name)."""

from __future__ import annotations

import copy
import http.server
import json
import os
import ssl
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
PUBLIC_HOST = "llm.example.test"
READY = {"backends": {"cloud": {"ready": True}, "local": {"ready": True}}}
NOT_READY = {"backends": {"cloud": {"ready": False}, "local": {"ready": False}}}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for PUBLIC_HOST, standing in for the operator's ACM certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={PUBLIC_HOST}"),
            *("-addext", f"subjectAltName=DNS:{PUBLIC_HOST}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class _ReadyzHandler(http.server.BaseHTTPRequestHandler):
    status = 200
    body: dict = READY
    seen: list[tuple[str, str | None, str | None]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host"), self.headers.get("Authorization")))
        data = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def alb(certificate) -> Iterator[tuple[int, type[_ReadyzHandler]]]:
    """The ALB: HTTPS on loopback with the public name's certificate, answering the router's /readyz."""
    handler = type("A", (_ReadyzHandler,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


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


def _verify(kubeconfig: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.verify", "--kubeconfig", str(kubeconfig), *args],
        cwd=REPO,
        env={**os.environ, **env},
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


def _public(port: int, cert: Path, host: str = PUBLIC_HOST) -> list[str]:
    return ["--public-host", host, "--https-port", str(port), "--ca-file", str(cert)]


@pytest.mark.parametrize("api", ["healthy"], indirect=True)
def test_verify_healthy_cluster_passes_every_check(api, alb, certificate):
    kubeconfig, seen = api
    port, handler = alb
    done = _verify(kubeconfig, *_public(port, certificate[0]), HYBRID_LLM_API_KEY="hl-test-key")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert len(rows) == 9 and all(result == "ok" for result, _ in rows.values()), done.stdout
    assert rows["Serve applications RUNNING"][1] == "llm=RUNNING, router=RUNNING"
    assert rows["GPU node allocatable"][1] == "1 node(s), nvidia.com/gpu=1"
    assert rows["Load balancer controller"][1] == "2/2 replicas available"
    assert rows["Ingress with an ALB"][1] == "127.0.0.1"
    assert rows["Router via the ALB /readyz"][1] == "HTTPS 200 cloud=ready local=ready"
    # Through the ALB with the public name, the client key as its bearer; never the API server's service proxy.
    assert handler.seen == [("/readyz", PUBLIC_HOST + f":{port}", "Bearer hl-test-key")]
    assert not any("/proxy/" in path for path in seen)


@pytest.mark.parametrize("api", ["healthy"], indirect=True)
def test_verify_fails_on_a_certificate_for_another_name_or_a_router_not_ready(api, alb, certificate):
    kubeconfig, _ = api
    port, handler = alb
    wrong = _rows(_verify(kubeconfig, *_public(port, certificate[0], "other.example.test")).stdout)
    assert wrong["Router via the ALB /readyz"][0] == "FAIL"
    assert wrong["Router via the ALB /readyz"][1].startswith("TLS: Hostname mismatch")
    untrusted = _rows(_verify(kubeconfig, "--public-host", PUBLIC_HOST, "--https-port", str(port)).stdout)
    assert untrusted["Router via the ALB /readyz"][1].startswith("TLS: ")
    handler.status, handler.body = 503, NOT_READY
    done = _verify(kubeconfig, *_public(port, certificate[0]))
    assert done.returncode == 1
    assert _rows(done.stdout)["Router via the ALB /readyz"] == ("FAIL", "HTTPS 503 cloud=not ready local=not ready")


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
    assert rows["Load balancer controller"] == ("FAIL", "0/2 replicas available")
    assert rows["Ingress with an ALB"] == ("FAIL", "no ALB address yet")
    assert rows["Router via the ALB /readyz"] == ("FAIL", "no ALB address yet")


def test_verify_readiness_without_per_backend_detail_goes_by_status():
    from cluster.verify import _readiness

    assert _readiness(json.dumps(READY)) == (True, "cloud=ready local=ready")
    assert _readiness("{}") == (True, "(no per-backend detail)")
    assert _readiness("<html>oops</html>") == (False, "<html>oops</html>")


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
