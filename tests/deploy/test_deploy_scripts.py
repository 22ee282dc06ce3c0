"""cluster/deploy.sh and teardown.sh: syntax, order, idempotent commands, and docs/deploy.md kept in step."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from deploy_support import REPO

DOC = REPO / "docs" / "deploy.md"
STEPS = ["cluster", "secrets", "alerting", "observability", "operator", "rayservice", "ingress"]
# What an operator exports before a full run (the values are illustrative, not credentials).
OPERATOR_ENV = {
    "ACM_CERTIFICATE_ARN": "arn:aws:acm:us-east-1:123456789012:certificate/6f1c2b9e-0d3a-4f5b-9c7e-2a8d4e6f1b3c",
    "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T0/B0/x",
}


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    done = subprocess.run(
        ["bash", str(REPO / "cluster" / script), *args],
        env={**os.environ, "DRY_RUN": "1", **OPERATOR_ENV, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("script", ["deploy.sh", "teardown.sh"])
def test_scripts_parse_and_are_executable(script):
    path = REPO / "cluster" / script
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    assert os.access(path, os.X_OK)
    assert "set -euo pipefail" in path.read_text()


def test_deploy_runs_the_steps_in_order():
    steps = [line[3:] for line in dry_run("deploy.sh") if line.startswith("== ")]
    assert steps == STEPS


def test_deploy_commands_are_idempotent_and_files_exist():
    for line in dry_run("deploy.sh"):
        if not line.startswith("+ "):
            continue
        command = line[2:]
        if command.startswith("helm upgrade"):
            assert "--install" in command and "--version" in command, command
        assert not command.startswith(("helm install", "kubectl create -f", "kubectl create namespace")), command
        for path in re.findall(r"(?:-f|-k) ((?:cluster|kuberay|observability)\S*)", command):
            assert (REPO / path).exists(), path


def test_deploy_rejects_an_unknown_step():
    done = subprocess.run(
        ["bash", str(REPO / "cluster" / "deploy.sh"), "clsuter"],
        env={**os.environ, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "unknown step" in done.stderr


def test_dry_run_prints_no_secret_values():
    output = "\n".join(dry_run("deploy.sh", "secrets"))
    assert "--from-literal" not in output
    assert not re.search(r"[0-9a-f]{24,}", output)


def test_the_collector_is_deployed_with_its_langfuse_route_and_only_it_gets_langfuse_keys():
    observability = "\n".join(dry_run("deploy.sh", "observability"))
    (collector,) = [line for line in observability.splitlines() if "install otel-collector" in line]
    assert "opentelemetry-collector.yaml" in collector
    secrets = "\n".join(dry_run("deploy.sh", "secrets"))
    assert "otel-langfuse-auth" in secrets
    assert "langfuse-api-keys" not in secrets  # the router sends Langfuse nothing itself


def test_teardown_removes_pvcs_before_the_cluster():
    lines = dry_run("teardown.sh")
    pvc = [i for i, line in enumerate(lines) if "delete pvc --all" in line]
    cluster = [i for i, line in enumerate(lines) if "eksctl delete cluster" in line]
    assert len(pvc) == 3 and len(cluster) == 1 and max(pvc) < cluster[0]
    uninstall = [i for i, line in enumerate(lines) if "helm uninstall" in line]
    assert max(uninstall) < min(pvc)
    assert not any("eksctl delete" in line for line in dry_run("teardown.sh", KEEP_CLUSTER="1"))


@pytest.mark.parametrize("script", ["deploy.sh", "teardown.sh"])
def test_docs_list_exactly_what_the_scripts_run(script):
    doc = DOC.read_text()
    for line in dry_run(script):
        if line.startswith("+ "):
            assert line in doc, f"docs/deploy.md is missing: {line}"


def test_docs_commands_exist():
    doc = DOC.read_text()
    for step in re.findall(r"cluster/deploy\.sh (\w+)", doc):
        assert step in STEPS, step
    assert "python -m cluster.verify" in doc and "python -m kuberay.render" in doc
    assert "# Deploy to EKS" in doc


def test_troubleshooting_names_what_the_manifests_and_values_use():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    for path in re.findall(r"`((?:cluster|kuberay|observability|tests)/[\w./-]+)`", doc):
        assert (REPO / path).exists(), path
    policies = (REPO / "kuberay" / "networkpolicies.yaml").read_text()
    for label in ("app.kubernetes.io/name: opentelemetry-collector", 'ray.io/is-ray-node: "yes"'):
        assert label in doc and label in policies
    dcgm = (REPO / "observability" / "values" / "dcgm-exporter.yaml").read_text()
    assert "role: gpu" in doc and "role: gpu" in dcgm
    for heading in ("GPU utilisation stays at 0", "No DCGM series", "No spans in Tempo", "No generations in Langfuse"):
        assert f"## {heading}" in doc
    assert "## Langfuse's databases for production" in doc
