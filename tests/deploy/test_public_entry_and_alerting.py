"""The public entry point (ALB Ingress, AWS Load Balancer Controller, ACM certificate) and Alertmanager's receivers
from a Secret: manifests, values, what deploy.sh and teardown.sh run and refuse, and `amtool` on the routing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO, load_yaml_docs
from test_deploy_scripts import OPERATOR_ENV, dry_run

ALERTMANAGER = REPO / "observability" / "alertmanager" / "alertmanager.yaml"
KPS_VALUES = REPO / "observability" / "values" / "kube-prometheus-stack.yaml"


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "cluster" / script), *args],
        env={**{k: v for k, v in os.environ.items() if k not in OPERATOR_ENV}, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


# --- The ALB Ingress ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingress() -> dict:
    (doc,) = load_yaml_docs(REPO / "kuberay" / "ingress.yaml")
    return doc


def test_ingress_is_an_https_only_alb_to_the_serve_service(ingress, rayservice):
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing"
    # ip targets: the ALB connects to the pods from its subnets, which the NetworkPolicy admits on 8000.
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert yaml.safe_load(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"] == "${ACM_CERTIFICATE_ARN}"
    assert annotations["alb.ingress.kubernetes.io/ssl-policy"].startswith("ELBSecurityPolicy-TLS13")
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/healthz"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    serve = rayservice["spec"]["serveService"]
    assert path["backend"]["service"] == {"name": serve["metadata"]["name"], "port": {"number": 8000}}
    assert serve["spec"]["ports"][0]["port"] == 8000
    assert ingress["metadata"]["namespace"] == rayservice["metadata"]["namespace"]


def test_load_balancer_controller_uses_the_eksctl_service_account_and_no_metadata_service():
    values = yaml.safe_load((REPO / "cluster" / "aws-load-balancer-controller.yaml").read_text())
    (eksctl,) = load_yaml_docs(REPO / "cluster" / "eksctl-cluster.yaml")
    accounts = {a["metadata"]["name"]: a for a in eksctl["iam"]["serviceAccounts"]}
    assert values["serviceAccount"] == {"create": False, "name": "aws-load-balancer-controller"}
    assert accounts[values["serviceAccount"]["name"]]["metadata"]["namespace"] == "kube-system"
    lines = dry_run("deploy.sh", "ingress")
    (install,) = [line for line in lines if "helm upgrade --install aws-load-balancer-controller" in line]
    # Pods cannot read the region or the VPC from IMDS: the controller gets them from the command line.
    for flag in ("--set clusterName=hybrid-llm", "--set region=us-east-1", "--set vpcId=", "-n kube-system"):
        assert flag in install


def test_ingress_step_installs_the_controller_then_applies_the_ingress_and_waits_for_the_alb():
    lines = [line for line in dry_run("deploy.sh", "ingress") if line.startswith("+ ")]
    controller = next(i for i, line in enumerate(lines) if "aws-load-balancer-controller" in line)
    apply = next(i for i, line in enumerate(lines) if "kuberay/ingress.yaml" in line)
    wait = next(i for i, line in enumerate(lines) if "kubectl wait" in line and "ingress/hybrid-llm" in line)
    assert controller < apply < wait


@pytest.mark.parametrize(
    ("arn", "message"),
    [
        (None, "ACM_CERTIFICATE_ARN must name an ACM certificate"),
        ("", "ACM_CERTIFICATE_ARN must name an ACM certificate"),
        ("arn:aws:iam::123456789012:server-certificate/x", "ACM_CERTIFICATE_ARN must name an ACM certificate"),
        ("arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d", "needs a certificate from us-east-1"),
    ],
)
def test_ingress_step_refuses_without_a_certificate_of_the_region(arn, message):
    env = {} if arn is None else {"ACM_CERTIFICATE_ARN": arn}
    done = _run("deploy.sh", "ingress", **env)
    assert done.returncode == 1 and message in done.stderr
    assert "helm upgrade" not in done.stdout


def test_deploy_substitutes_only_the_certificate_into_the_ingress(tmp_path):
    # A real (not dry) run of the step with stand-ins for aws, helm and kubectl that record what they got.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "aws").write_text("#!/bin/bash\necho vpc-0123456789abcdef0\n")
    (bin_dir / "helm").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/helm.log\n')
    (bin_dir / "kubectl").write_text(
        f'#!/bin/bash\necho "$*" >> {tmp_path}/kubectl.log\n'
        f'[[ "$*" == "apply -f -" ]] && cat > {tmp_path}/applied.yaml\nexit 0\n'
    )
    for tool in ("aws", "helm", "kubectl"):
        (bin_dir / tool).chmod(0o755)
    arn = OPERATOR_ENV["ACM_CERTIFICATE_ARN"]
    done = subprocess.run(
        ["/bin/bash", str(REPO / "cluster" / "deploy.sh"), "ingress"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), "ACM_CERTIFICATE_ARN": arn},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "--set vpcId=vpc-0123456789abcdef0" in (tmp_path / "helm.log").read_text()
    (applied,) = [d for d in yaml.safe_load_all((tmp_path / "applied.yaml").read_text()) if d]
    (original,) = load_yaml_docs(REPO / "kuberay" / "ingress.yaml")
    assert applied["metadata"]["annotations"].pop("alb.ingress.kubernetes.io/certificate-arn") == arn
    original["metadata"]["annotations"].pop("alb.ingress.kubernetes.io/certificate-arn")
    assert applied == original


def test_teardown_deletes_the_ingress_while_its_controller_still_runs():
    lines = _run("teardown.sh", KEEP_CLUSTER="1").stdout.splitlines()
    ingress = next(i for i, line in enumerate(lines) if "kubectl delete -f kuberay/ingress.yaml" in line)
    controller = next(i for i, line in enumerate(lines) if "helm uninstall aws-load-balancer-controller" in line)
    rayservice = next(i for i, line in enumerate(lines) if "kubectl delete -f kuberay/rayservice.yaml" in line)
    assert ingress < controller < rayservice


# --- Alertmanager receivers from a Secret ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:  # fail, not skip: the routing below is only checked by the real tool
        raise RuntimeError(
            "`amtool` is not on PATH: `apt-get install -y --no-install-recommends prometheus-alertmanager`"
        )
    return path


def _alerts() -> list[dict]:
    (rule,) = load_yaml_docs(REPO / "observability" / "rules" / "hybrid-llm.rules.yaml")
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def _route(amtool: str, config: Path, labels: dict[str, str]) -> str:
    done = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items())],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_alertmanager_config_is_valid(amtool):
    done = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_of_ours_reaches_a_receiver(amtool):
    alerts = _alerts()
    assert len(alerts) >= 5
    for alert in alerts:
        labels = {"alertname": alert["alert"], "namespace": "monitoring", **alert["labels"]}
        assert _route(amtool, ALERTMANAGER, labels) == "slack", alert["alert"]
    # The chart's own rules too (any other alert name), but not its deliberate heartbeats.
    assert _route(amtool, ALERTMANAGER, {"alertname": "KubePodCrashLooping", "severity": "warning"}) == "slack"
    assert _route(amtool, ALERTMANAGER, {"alertname": "Watchdog", "severity": "none"}) == "null"


def test_routing_check_catches_alerts_that_go_nowhere(amtool, tmp_path):
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["route"]["receiver"] = "null"
    broken = tmp_path / "alertmanager.yaml"
    broken.write_text(yaml.safe_dump(config))
    assert _route(amtool, broken, {"alertname": _alerts()[0]["alert"], "severity": "warning"}) == "null"


def test_alertmanager_reads_config_and_receiver_credentials_from_the_secrets_deploy_creates():
    spec = yaml.safe_load(KPS_VALUES.read_text())["alertmanager"]["alertmanagerSpec"]
    assert spec["useExistingSecret"] is True and spec["configSecret"] == "alertmanager-hybrid-llm"
    assert spec["secrets"] == ["alertmanager-receivers"]
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (slack,) = [r for r in config["receivers"] if r["name"] == "slack"]
    # Secrets listed in alertmanagerSpec.secrets are mounted at /etc/alertmanager/secrets/<name>/<key>.
    assert (
        slack["slack_configs"][0]["api_url_file"]
        == "/etc/alertmanager/secrets/alertmanager-receivers/slack-webhook-url"
    )
    assert "api_url" not in slack["slack_configs"][0]  # the URL is a credential: never in the committed file
    lines = dry_run("deploy.sh", "alerting")
    assert (
        "+ kubectl apply -f - # Secret monitoring/alertmanager-hybrid-llm, key alertmanager.yaml = "
        "observability/alertmanager/alertmanager.yaml" in lines
    )
    assert any("alertmanager-receivers, key slack-webhook-url = $ALERT_SLACK_WEBHOOK_URL" in line for line in lines)
    assert OPERATOR_ENV["ALERT_SLACK_WEBHOOK_URL"] not in "\n".join(lines)


def test_alerting_runs_before_the_charts_and_takes_an_operator_file(tmp_path):
    steps = [line[3:] for line in dry_run("deploy.sh") if line.startswith("== ")]
    assert steps.index("alerting") < steps.index("observability")
    own = tmp_path / "alertmanager.yaml"
    own.write_text(ALERTMANAGER.read_text())
    done = _run("deploy.sh", "alerting", ALERTMANAGER_CONFIG=str(own))
    assert done.returncode == 0, done.stderr
    assert f"key alertmanager.yaml = {own}" in done.stdout
    assert "alertmanager-receivers -n monitoring --from-env-file=/dev/stdin  # keys: slack-webhook-url" in done.stdout


def test_alerting_refuses_to_leave_alerts_going_nowhere(tmp_path):
    done = _run("deploy.sh", "alerting")
    assert done.returncode == 1 and "no alert receiver" in done.stderr
    missing = _run("deploy.sh", "alerting", ALERTMANAGER_CONFIG=str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "not a readable file" in missing.stderr
