"""A real Prometheus on loopback for tests, the DCGM fixture server, and every PromQL expression in the repo.

Owns: starting/stopping the `prometheus` binary (Debian package `prometheus`) with static scrape targets and
rule files, querying its HTTP API, serving a recorded exposition file, and extracting the expressions of the
Grafana dashboards and PrometheusRules with Grafana's template variables substituted. It must not skip
anything: a missing binary is an error with the fix in its message.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "observability" / "dashboards"
RULES = REPO / "observability" / "rules"
DCGM_FIXTURE = REPO / "tests" / "fixtures" / "dcgm" / "l4-vllm.prom"

# Grafana's built-ins, replaced by values that make sense for a short test run (scrapes every second).
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "15000",
}
# User variables (namespace, cluster, model...) become "match anything", including a missing label: the
# dashboards only use them with =~, so `.*` keeps every series.
ANY = ".*"


class PromQLError(AssertionError):
    """Prometheus rejected an expression (parse or execution error)."""


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not on PATH. Install the Prometheus server and promtool: "
            "`apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu)."
        )
    return path


_ISSUED: set[int] = set()


def free_port() -> int:
    """A free loopback port never handed out before by this process.

    The kernel may offer a port again as soon as the probe socket closes; a cluster asks for seven at once
    (GCS, dashboard, agents, ...), and two equal ones make `ray start` fail.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


# ---------------------------------------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Expression:
    source: str  # repo-relative file
    kind: str  # "panel" | "variable" | "record" | "alert"
    location: str  # panel title + refId, variable name, or rule name
    raw: str  # as written in the file
    promql: str  # with template variables substituted

    @property
    def metrics(self) -> frozenset[str]:
        return metric_names(self.promql)


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables: built-ins by fixed durations, anything else by `values` or `.*`."""
    values = {**GRAFANA_BUILTINS, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, ANY)

    return _VAR.sub(repl, expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<sel>.*),\s*[\w.]+\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<sel>.*)\)\s*$", re.S)


def variable_promql(query: str) -> str | None:
    """The PromQL inside a Grafana variable query, or None when it holds none (`label_values(job)`)."""
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        if m := pattern.match(query):
            return m.group("sel")
    if query.strip().startswith(("label_names(", "metrics(", "label_values(")):
        return None
    return query


def _panels(panels: Iterable[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_expressions(path: Path) -> list[Expression]:
    doc = json.loads(path.read_text())
    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    found: list[Expression] = []
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        if inner := variable_promql(query):
            found.append(Expression(rel, "variable", var["name"], query, substitute(inner)))
    for panel in _panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            if expr := target.get("expr"):
                where = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
                found.append(Expression(rel, "panel", where, expr, substitute(expr)))
    return found


def rule_groups(path: Path) -> list[dict]:
    """The rule groups of a PrometheusRule manifest or a plain Prometheus rule file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    groups: list[dict] = []
    for doc in docs:
        groups += doc["spec"]["groups"] if doc.get("kind") == "PrometheusRule" else doc.get("groups", [])
    return groups


def rule_expressions(path: Path) -> list[Expression]:
    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    found = []
    for group in rule_groups(path):
        for rule in group["rules"]:
            kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
            found.append(Expression(rel, kind, f"{group['name']}/{name}", rule["expr"], rule["expr"]))
    return found


def rule_files(root: Path = RULES) -> list[Path]:
    return sorted(p for p in root.glob("*.yaml") if not p.name.endswith(".test.yaml"))


def all_expressions(dashboards: Path = DASHBOARDS, rules: Path = RULES) -> list[Expression]:
    found: list[Expression] = []
    for path in sorted(dashboards.glob("*.json")):
        found += dashboard_expressions(path)
    for path in rule_files(rules):
        found += rule_expressions(path)
    return found


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "le",
        "start",
        "end",
    }
)


def metric_names(promql: str) -> frozenset[str]:
    """Metric names a PromQL expression reads (a regex over the expression, good enough for our own files)."""
    text = _STRING.sub('""', promql)
    text = _GROUPING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    return frozenset(t for t in _IDENT.findall(text) if t not in _KEYWORDS and not t[0].isdigit())


# ---------------------------------------------------------------------------------------------- DCGM fixture


class _FileHandler(http.server.BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class ExpositionServer:
    """Serves one recorded exposition file at http://127.0.0.1:<port>/metrics, like dcgm-exporter on :9400."""

    def __init__(self, path: Path = DCGM_FIXTURE) -> None:
        handler = type("Handler", (_FileHandler,), {"body": path.read_bytes()})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> ExpositionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- Prometheus


class PrometheusServer:
    """A real Prometheus scraping static targets every second, with optional rule files (PrometheusRule or plain).

    targets: job name -> ["host:port", ...], scraped at /metrics.
    """

    def __init__(
        self,
        targets: Mapping[str, Iterable[str]],
        *,
        rules: Iterable[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        self._binary = require_binary("prometheus")
        self._dir = Path(tempfile.mkdtemp(prefix="prom-test-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = {job: list(addrs) for job, addrs in targets.items()}
        rule_paths = []
        for i, path in enumerate(rules):
            plain = self._dir / f"rules-{i}.yml"
            # Groups run at the test's evaluation interval (1s), not their production interval, so recording
            # rules have values within seconds of start.
            groups = [{k: v for k, v in g.items() if k != "interval"} for g in rule_groups(Path(path))]
            plain.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
            rule_paths.append(str(plain))
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "rule_files": rule_paths,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]} for job, addrs in self.targets.items()
            ],
        }
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._dir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        log = self._log.open("wb")
        self._proc = subprocess.Popen(
            [
                self._binary,
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    # -- HTTP API

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' JSON error body
            body = json.loads(exc.read() or b"{}")
            return body or {"status": "error", "error": str(exc)}

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Evaluate an instant query; raises PromQLError on a parse or execution error."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        body = self._get("/api/v1/query", params)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def active_targets(self) -> list[dict]:
        return self._get("/api/v1/targets", {"state": "active"})["data"]["activeTargets"]

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict]:
        """Wait until every configured target has been scraped successfully at least once."""
        expected = sum(len(a) for a in self.targets.values())
        deadline = time.monotonic() + timeout
        targets: list[dict] = []
        while time.monotonic() < deadline:
            targets = self.active_targets()
            if len(targets) == expected and all(t["health"] == "up" for t in targets):
                return targets
            time.sleep(0.3)
        states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise TimeoutError(f"targets not up after {timeout}s: {states}")

    def wait_for_samples(self, selector: str, samples: int = 3, timeout: float = 30.0) -> None:
        """Wait until every series of `selector` (e.g. `up`) has `samples` points in the last minute, enough
        for rate() over $__rate_interval (1m here) to return data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(f"count_over_time({selector}[1m])")
            if result and min(float(r["value"][1]) for r in result) >= samples:
                return
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {samples} samples of {selector!r} after {timeout}s")

    def metric_names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values")["data"])
