"""kuberay/rayservice.yaml against the KubeRay v1 CRD schema with unknown fields rejected, and against
serve_config.yaml; the PodMonitors against the ports the RayService declares."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml
from deploy_support import K8S_VERSION, REPO, SCHEMAS, load_json, load_yaml_docs, strict
from kubernetes_validate import validate
from kubernetes_validate.utils import ValidationError

from kuberay import render


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = load_json(SCHEMAS / "kuberay" / "rayservice-v1.schema.json")
    # metadata is `type: object` in a CRD; the API server validates it, not the CRD schema.
    return jsonschema.Draft7Validator(strict(schema))


def _errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def _groups(rs: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_rayservice_matches_the_crd_schema_with_no_unknown_fields(rayservice, validator):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    assert _errors(validator, rayservice) == []


@pytest.mark.parametrize(
    ("where", "key"),
    [(("spec",), "serveConfigV3"), (("spec", "rayClusterConfig", "headGroupSpec"), "rayStartParam")],
)
def test_rayservice_schema_check_catches_a_typo(rayservice, validator, where, key):
    broken = copy.deepcopy(rayservice)
    node = broken
    for part in where:
        node = node[part]
    node[key] = {}
    assert any(key in e for e in _errors(validator, broken))


def test_rayservice_incremental_upgrade_without_its_options_is_rejected(rayservice, validator):
    broken = copy.deepcopy(rayservice)
    broken["spec"]["upgradeStrategy"] = {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "istio"},
    }
    assert any("intervalSeconds" in e for e in _errors(validator, broken))


def test_rayservice_serve_config_equals_serve_config_yaml(rayservice):
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((REPO / "serve_config.yaml").read_text())


def test_rayservice_render_check_passes_and_detects_drift():
    done = subprocess.run([sys.executable, "-m", "kuberay.render", "--check"], cwd=REPO, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    current = (REPO / "kuberay" / "rayservice.yaml").read_text()
    changed = (REPO / "serve_config.yaml").read_text().replace("max_replicas: 4", "max_replicas: 5")
    assert render.render(current, changed) != current
    assert render.render(current, (REPO / "serve_config.yaml").read_text()) == current


def test_rayservice_pod_templates_are_valid_pod_specs(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, "spec": template["spec"]}
        try:
            validate(pod, K8S_VERSION, strict=True)
        except ValidationError as exc:
            pytest.fail(f"{template['spec']['containers'][0]['name']}: {exc.message}")


def test_rayservice_head_is_cpu_only_on_system_nodes_with_metrics_ports(rayservice):
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    spec = head["template"]["spec"]
    assert spec["nodeSelector"] == {"role": "system"}
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 8080 and ports["as-metrics"] == 44217 and ports["dash-metrics"] == 44227
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_GRAFANA_HOST"]["value"].startswith("http://")
    assert env["RAY_PROMETHEUS_HOST"]["value"].startswith("http://")
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_rayservice_gpu_group_tolerates_the_taint_and_requests_a_gpu(rayservice):
    gpu = _groups(rayservice)["gpu-l4"]
    spec = gpu["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"]["role"] == "gpu"
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    llm = next(a for a in serve["applications"] if a["name"] == "llm")
    assert gpu["resources"] == {f"accelerator_type:{llm['args']['accelerator_type']}": "1"}
    assert gpu["maxReplicas"] >= llm["args"]["deployment_config"]["autoscaling_config"]["max_replicas"]


def test_rayservice_secrets_come_from_secret_refs_and_otlp_env_is_set(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for container in containers[1:]:  # the head runs no application code that traces
        env = {e["name"]: e for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://otel-collector.")
    # The router's group: its secrets by reference, its keys file mounted (tests/deploy/test_cluster_hardening.py
    # checks that no other group has them).
    router = _groups(rayservice)["cpu"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in router["env"]}
    for name in ("ANTHROPIC_API_KEY",):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"]
    # Langfuse gets the router's spans from the Collector; keys here would make the replica export each span
    # a second time and Langfuse record every generation twice
    assert not {n for n in env if n.startswith("LANGFUSE_")}
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    keys_file = next(a for a in serve["applications"] if a["name"] == "router")["args"]["auth"]["api_keys_file"]
    assert any(keys_file.startswith(m + "/") for m in mounts)


def test_rayservice_upgrade_strategy_is_explicit(rayservice):
    assert rayservice["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "None", "NewClusterWithIncrementalUpgrade"}


def test_rayservice_image_matches_ray_version_and_dockerfile(rayservice):
    version = rayservice["spec"]["rayClusterConfig"]["rayVersion"]
    base = re.search(r"^FROM rayproject/ray-llm:(\S+)", (REPO / "kuberay" / "Dockerfile").read_text(), re.M)
    assert base and base.group(1).startswith(f"{version}-py311-")
    pin = re.search(r'"ray\[serve\]==([\d.*]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and version.startswith(pin.group(1).rstrip(".*"))
    images = {c["image"] for c in _all_containers(rayservice)}
    assert len(images) == 1  # head and workers run the same image


def _all_containers(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    specs = [
        cluster["headGroupSpec"]["template"]["spec"],
        *(g["template"]["spec"] for g in cluster["workerGroupSpecs"]),
    ]
    return [c for s in specs for c in s["containers"]]


def test_podmonitors_select_ray_pods_by_declared_port_names(rayservice):
    monitors = {m["metadata"]["name"]: m for m in load_yaml_docs(REPO / "kuberay" / "podmonitors.yaml")}
    sample = {m["metadata"]["name"]: m for m in load_yaml_docs(SCHEMAS / "kuberay" / "podMonitor.yaml")}
    assert set(monitors) == set(sample)
    head_ports = {
        p["name"]
        for p in rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [rayservice["metadata"]["namespace"]]
        assert monitor["spec"]["selector"] == sample[name]["spec"]["selector"]
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        assert ports == {e["port"] for e in sample[name]["spec"]["podMetricsEndpoints"]}
        if name == "ray-head-monitor":
            assert ports <= head_ports
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["relabelings"][0]["targetLabel"] == "ray_io_cluster"


def test_rayservice_every_serve_proxy_guards_the_request_id(rayservice):
    # Serve runs a proxy on every node (proxy_location: EveryNode); each reads the callback from its container's
    # environment, and the router's replicas from their runtime_env.
    callback = "serve_app.ingress:serve_http_middlewares"
    spec = rayservice["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for pod in pods:
        (ray,) = [c for c in pod["template"]["spec"]["containers"] if c["name"].startswith("ray")]
        env = {e["name"]: e.get("value") for e in ray.get("env", [])}
        assert env.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH") == callback, pod.get("groupName", "head")
    serve = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert serve["proxy_location"] == "EveryNode"
    (router,) = [app for app in serve["applications"] if app["name"] == "router"]
    assert router["runtime_env"]["env_vars"]["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == callback
