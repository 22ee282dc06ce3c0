"""Every built-in Kubernetes object in the repo passes `kubernetes-validate --strict`; the kustomization that
ships the dashboards and rules renders with the real kubectl."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from deploy_support import K8S_VERSION, REPO, kubectl_binary, load_yaml_docs
from kubernetes_validate import validate
from kubernetes_validate.utils import ValidationError

# Kinds served by custom resource definitions, checked by their own tests (RayService, PodMonitor, rules).
CRD_KINDS = {"RayService", "PodMonitor", "PrometheusRule", "ServiceMonitor"}


@pytest.fixture(scope="module")
def kustomized() -> list[dict]:
    done = subprocess.run(
        [kubectl_binary(), "kustomize", str(REPO / "observability")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _manifest_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted([*REPO.glob("cluster/*.yaml"), *REPO.glob("kuberay/*.yaml")]):
        if path.name in {"eksctl-cluster.yaml", "operator-values.yaml", "aws-load-balancer-controller.yaml"}:
            continue  # not Kubernetes objects: eksctl's config and Helm values
        docs += [(str(path.relative_to(REPO)), d) for d in load_yaml_docs(path)]
    return docs


@pytest.mark.parametrize(("path", "doc"), _manifest_docs(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_builtin_objects_validate_strictly(path, doc):
    if doc["kind"] in CRD_KINDS:
        assert doc["apiVersion"] in {"ray.io/v1", "monitoring.coreos.com/v1"}
        return
    try:
        validate(doc, K8S_VERSION, strict=True)
    except ValidationError as exc:
        pytest.fail(f"{path} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_strict_validation_rejects_an_unknown_field():
    bad = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "lables": {}}}
    with pytest.raises(ValidationError):
        validate(bad, K8S_VERSION, strict=True)


def test_kustomization_renders_dashboard_configmaps_and_the_rule(kustomized):
    kinds = sorted(d["kind"] for d in kustomized)
    rules = [p for p in (REPO / "observability" / "rules").glob("*.yaml") if not p.name.endswith(".test.yaml")]
    assert kinds == ["ConfigMap"] + ["PrometheusRule"] * len(rules)  # every rule file is shipped
    for doc in kustomized:
        assert doc["metadata"]["namespace"] == "monitoring"
        if doc["kind"] == "ConfigMap":
            validate(doc, K8S_VERSION, strict=True)
            assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
            for name, body in doc["data"].items():
                assert name.endswith(".json")
                assert json.loads(body) == json.loads((REPO / "observability" / "dashboards" / name).read_text())
        else:
            assert doc["metadata"]["labels"]["release"] == "prometheus"


def test_every_dashboard_file_is_in_the_kustomization(kustomized):
    shipped = {name for d in kustomized if d["kind"] == "ConfigMap" for name in d["data"]}
    assert shipped == {p.name for p in (REPO / "observability" / "dashboards").glob("*.json")}
