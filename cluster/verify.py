"""Checks a running hybrid-llm deployment through the Kubernetes API and prints a table; changes nothing.

Usage: python -m cluster.verify [--kubeconfig PATH] [--context NAME] [--namespace hybrid-llm] ...
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
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


def check_router(api: client.ApiClient, t: Target) -> Check:
    # The API server's service proxy reaches the router without a port-forward or a load balancer.
    core = client.CoreV1Api(api)
    try:
        body = core.connect_get_namespaced_service_proxy_with_path(
            f"{t.serve_service}:serve", t.namespace, "readyz", _preload_content=False
        )
        status, text = body.status, body.data.decode()
    except ApiException as exc:
        status, text = exc.status, exc.body or exc.reason or ""
    ok, summary = _readiness(text)
    return Check("Router answering /readyz", status == 200 and ok, f"HTTP {status} {summary}".strip())


def _readiness(text: str) -> tuple[bool, str]:
    """(every backend ready, 'local=ready cloud=not ready') from the router's /readyz JSON."""
    try:
        backends = json.loads(text)["backends"]
        states = {name: bool(b.get("ready")) for name, b in backends.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return False, text[:60]
    summary = " ".join(f"{name}={'ready' if ready else 'not ready'}" for name, ready in sorted(states.items()))
    return bool(states) and all(states.values()), summary


CHECKS: tuple[Callable[[client.ApiClient, Target], Check], ...] = (
    check_rayservice_ready,
    check_serve_applications,
    check_gpu_allocatable,
    check_dcgm_exporter,
    check_monitors,
    check_dashboards,
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
    args = parser.parse_args(argv)
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, context=args.context, client_configuration=configuration)
    target = Target(
        namespace=args.namespace,
        rayservice=args.rayservice,
        serve_service=f"{args.rayservice}-serve-svc",
        monitoring_namespace=args.monitoring_namespace,
    )
    with client.ApiClient(configuration) as api:
        checks = run_checks(api, target)
    print(render_table(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
