"""cluster/eksctl-cluster.yaml against eksctl's own ClusterConfig schema, plus what the platform needs from it."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from deploy_support import REPO, SCHEMAS, load_json, load_yaml_docs


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    (doc,) = load_yaml_docs(REPO / "cluster" / "eksctl-cluster.yaml")
    return doc


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_json(SCHEMAS / "eksctl" / "schema.json"))


def _errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_eksctl_config_matches_the_schema(cluster_config, validator):
    assert _errors(validator, cluster_config) == []


def test_eksctl_schema_rejects_an_unknown_field(cluster_config, validator):
    broken = copy.deepcopy(cluster_config)
    broken["managedNodeGroups"][1]["gpuTaint"] = True
    assert any("gpuTaint" in e for e in _errors(validator, broken))


def test_eksctl_cluster_has_oidc_ebs_csi_and_a_current_version(cluster_config):
    assert cluster_config["iam"]["withOIDC"] is True
    assert "aws-ebs-csi-driver" in {a["name"] for a in cluster_config["addons"]}
    major, minor = map(int, cluster_config["metadata"]["version"].split("."))
    assert (major, minor) >= (1, 34)


def test_eksctl_gpu_group_is_tainted_labelled_and_scales_from_zero(cluster_config):
    groups = {g["name"]: g for g in cluster_config["managedNodeGroups"]}
    system, gpu = groups["system"], groups["gpu-l4"]
    assert system["labels"]["role"] == "system" and not system.get("taints")
    assert gpu["labels"]["role"] == "gpu"
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in gpu["taints"]
    assert gpu["minSize"] == 0 and gpu["maxSize"] >= 2
    assert gpu["propagateASGTags"] is True
    tags = gpu["tags"]
    assert tags["k8s.io/cluster-autoscaler/enabled"] == "true"
    assert tags["k8s.io/cluster-autoscaler/node-template/label/role"] == "gpu"
    assert tags["k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"] == "true:NoSchedule"
    assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"
    assert gpu["instanceType"].startswith("g6.")  # L4, the accelerator_type in serve_config.yaml
