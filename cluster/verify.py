"""Checks a running hybrid-llm deployment through the Kubernetes API and its public HTTPS entry; changes nothing.

Usage: python -m cluster.verify [--kubeconfig PATH] [--context NAME] [--public-host NAME] ...
Exit status 0 when every check passes, 1 otherwise. The router is checked the way clients reach it, through the
ALB (the NetworkPolicies admit nothing else to its port); HYBRID_LLM_API_KEY, when set, is sent as its bearer key.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str = "hybrid-llm"
    rayservice: str = "hybrid-llm"
    serve_service: str = "hybrid-llm-serve-svc"
    monitoring_namespace: str = "monitoring"
    gpu_node_selector: str = "role=gpu"
    applications: tuple[str, ...] = ("llm", "router")
    pod_monitors: tuple[str, ...] = ("ray-head-monitor", "ray-workers-monitor")
    prometheus_rule: str = "hybrid-llm"
    dashboard_file: str = "hybrid-llm.json"
    ingress: str = "hybrid-llm"
    lb_controller_namespace: str = "kube-system"
    lb_controller: str = "aws-load-balancer-controller"
    # The name the ACM certificate is for (the DNS record pointing at the ALB); None: the ALB's own hostname.
    public_host: str | None = None
    https_port: int = 443
    ca_file: str | None = None
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _rayservice(api: client.ApiClient, t: Target) -> dict:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(
        "ray.io", "v1", t.namespace, "rayservices", t.rayservice
    )


def check_rayservice_ready(api: client.ApiClient, t: Target) -> Check:
    status = _rayservice(api, t).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None:
        return Check("RayService Ready", False, "no Ready condition yet")
    detail = f"{ready.get('status')} ({ready.get('reason', '')})"
    return Check("RayService Ready", ready.get("status") == "True", detail)


def check_serve_applications(api: client.ApiClient, t: Target) -> Check:
    active = (_rayservice(api, t).get("status") or {}).get("activeServiceStatus") or {}
    apps = active.get("applicationStatuses") or {}
    states = {name: (apps.get(name) or {}).get("status", "MISSING") for name in t.applications}
    detail = ", ".join(f"{name}={state}" for name, state in states.items())
    return Check("Serve applications RUNNING", all(s == "RUNNING" for s in states.values()), detail)


def check_gpu_allocatable(api: client.ApiClient, t: Target) -> Check:
    nodes = client.CoreV1Api(api).list_node(label_selector=t.gpu_node_selector).items
    gpus = sum(int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) for n in nodes)
    return Check("GPU node allocatable", gpus > 0, f"{len(nodes)} node(s), nvidia.com/gpu={gpus}")


def _pod_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions)


def check_dcgm_exporter(api: client.ApiClient, t: Target) -> Check:
    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod(t.monitoring_namespace, label_selector="app.kubernetes.io/name=dcgm-exporter")
        .items
    )
    ready = sum(_pod_ready(p) for p in pods)
    return Check("DCGM exporter running", ready > 0 and ready == len(pods), f"{ready}/{len(pods)} pods ready")


def check_monitors(api: client.ApiClient, t: Target) -> Check:
    custom = client.CustomObjectsApi(api)
    found = {
        item["metadata"]["name"]
        for plural in ("podmonitors", "servicemonitors", "prometheusrules")
        for item in custom.list_namespaced_custom_object(
            "monitoring.coreos.com", "v1", t.monitoring_namespace, plural
        ).get("items", [])
    }
    wanted = [*t.pod_monitors, t.prometheus_rule]
    missing = [name for name in wanted if name not in found]
    dcgm = any("dcgm" in name for name in found)
    detail = "missing: " + ", ".join(missing) if missing else f"{len(found)} objects"
    if not dcgm:
        detail += "; no dcgm-exporter ServiceMonitor"
    return Check("Monitors and rules present", not missing and dcgm, detail)


def check_dashboards(api: client.ApiClient, t: Target) -> Check:
    maps = client.CoreV1Api(api).list_config_map_for_all_namespaces(label_selector="grafana_dashboard=1").items
    files = sorted(key for cm in maps for key in (cm.data or {}))
    ok = t.dashboard_file in files
    return Check("Grafana dashboards present", ok, f"{len(files)} dashboard(s)" + ("" if ok else ", ours missing"))


def check_lb_controller(api: client.ApiClient, t: Target) -> Check:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(t.lb_controller, t.lb_controller_namespace)
    wanted = deployment.spec.replicas or 0
    ready = (deployment.status.available_replicas or 0) if deployment.status else 0
    return Check("Load balancer controller", wanted > 0 and ready == wanted, f"{ready}/{wanted} replicas available")


def _alb_hostname(api: client.ApiClient, t: Target) -> tuple[str | None, dict[str, str]]:
    ingress = client.NetworkingV1Api(api).read_namespaced_ingress(t.ingress, t.namespace)
    annotations = ingress.metadata.annotations or {}
    balancer = ingress.status.load_balancer if ingress.status else None
    entries = (balancer.ingress if balancer else None) or []
    return next((e.hostname or e.ip for e in entries if e.hostname or e.ip), None), annotations


def check_ingress(api: client.ApiClient, t: Target) -> Check:
    hostname, annotations = _alb_hostname(api, t)
    arn = annotations.get("alb.ingress.kubernetes.io/certificate-arn", "")
    if not arn.startswith("arn:aws"):
        return Check("Ingress with an ALB", False, f"certificate-arn is {arn!r}, not an ACM ARN")
    return Check("Ingress with an ALB", hostname is not None, hostname or "no ALB address yet")


class _HTTPSTo(http.client.HTTPSConnection):
    """HTTPS to one address while SNI, certificate check and Host name the public host (the ALB's DNS alias)."""

    def __init__(self, address: str, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=15)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def check_router(api: client.ApiClient, t: Target) -> Check:
    name = "Router via the ALB /readyz"
    address, _ = _alb_hostname(api, t)
    if address is None:
        return Check(name, False, "no ALB address yet")
    host = t.public_host or address
    headers = {"Authorization": f"Bearer {t.api_key}"} if t.api_key else {}
    connection = _HTTPSTo(address, host, t.https_port, ssl.create_default_context(cafile=t.ca_file))
    try:
        connection.request("GET", "/readyz", headers=headers)
        response = connection.getresponse()
        status, text = response.status, response.read().decode(errors="replace")
    except ssl.SSLCertVerificationError as exc:
        hint = "" if t.public_host else " (pass --public-host, the name the certificate is for)"
        return Check(name, False, f"TLS: {exc.verify_message}{hint}")
    except OSError as exc:
        return Check(name, False, f"https://{host}: {exc}")
    finally:
        connection.close()
    ok, summary = _readiness(text)
    return Check(name, status == 200 and ok, f"HTTPS {status} {summary}".strip())


def _readiness(text: str) -> tuple[bool, str]:
    """(every backend ready, 'local=ready cloud=not ready') from the router's /readyz JSON; a body without the
    per-backend detail (it may be kept for callers with a key) leaves the verdict to the status code."""
    try:
        body = json.loads(text)
    except ValueError:
        return False, text[:60]
    try:
        states = {name: bool(b.get("ready")) for name, b in body["backends"].items()}
    except (KeyError, TypeError, AttributeError):
        return True, "(no per-backend detail)"
    summary = " ".join(f"{name}={'ready' if ready else 'not ready'}" for name, ready in sorted(states.items()))
    return bool(states) and all(states.values()), summary


CHECKS: tuple[Callable[[client.ApiClient, Target], Check], ...] = (
    check_rayservice_ready,
    check_serve_applications,
    check_gpu_allocatable,
    check_dcgm_exporter,
    check_monitors,
    check_dashboards,
    check_lb_controller,
    check_ingress,
    check_router,
)


def run_checks(api: client.ApiClient, target: Target) -> list[Check]:
    results = []
    for fn in CHECKS:
        try:
            results.append(fn(api, target))
        except ApiException as exc:
            name = fn.__name__.removeprefix("check_").replace("_", " ")
            results.append(Check(name, False, f"API error {exc.status} {exc.reason}"))
    return results


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK'.ljust(width)}  RESULT  DETAIL"]
    lines += [f"{c.name.ljust(width)}  {'ok' if c.ok else 'FAIL':6}  {c.detail}" for c in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: current)")
    defaults = Target()
    parser.add_argument("--namespace", default=defaults.namespace)
    parser.add_argument("--rayservice", default=defaults.rayservice)
    parser.add_argument("--monitoring-namespace", default=defaults.monitoring_namespace)
    parser.add_argument("--public-host", help="the name the ACM certificate is for (default: the ALB's hostname)")
    parser.add_argument("--https-port", type=int, default=defaults.https_port)
    parser.add_argument("--ca-file", help="CA bundle for the public certificate (default: the system's)")
    args = parser.parse_args(argv)
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, context=args.context, client_configuration=configuration)
    target = Target(
        namespace=args.namespace,
        rayservice=args.rayservice,
        serve_service=f"{args.rayservice}-serve-svc",
        monitoring_namespace=args.monitoring_namespace,
        public_host=args.public_host,
        https_port=args.https_port,
        ca_file=args.ca_file,
        api_key=os.environ.get("HYBRID_LLM_API_KEY") or None,
    )
    with client.ApiClient(configuration) as api:
        checks = run_checks(api, target)
    print(render_table(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
