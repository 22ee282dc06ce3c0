"""Each observability/kuberay values file against its chart's own default values (vendored in schemas/helm),
and the wiring between the charts: release labels, Tempo datasource, Collector -> Tempo, retention."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_support import REPO, SCHEMAS, load_json

from serve_app.telemetry.tracing import TRACER_NAME

HELM = SCHEMAS / "helm"
VALUES = REPO / "observability" / "values"
KPS_RELEASE = "prometheus"

# values file -> chart folder
CHARTS = {
    VALUES / "kube-prometheus-stack.yaml": "kube-prometheus-stack",
    VALUES / "dcgm-exporter.yaml": "dcgm-exporter",
    VALUES / "tempo.yaml": "tempo",
    VALUES / "opentelemetry-collector.yaml": "opentelemetry-collector",
    VALUES / "langfuse.yaml": "langfuse",
    REPO / "kuberay" / "operator-values.yaml": "kuberay-operator",
    REPO / "cluster" / "aws-load-balancer-controller.yaml": "aws-load-balancer-controller",
}
# Maps whose keys are free-form even though the default is a non-empty map.
FREE_FORM = {
    "kube-prometheus-stack": {"grafana.grafana.ini"},
    "opentelemetry-collector": {"config"},
    "tempo": {"tempo.overrides.defaults"},
}
# Kubernetes-shaped maps (resource requirements, label maps...) are free-form wherever they appear.
FREE_NAMES = {"resources", "annotations", "labels", "nodeSelector", "additionalLabels", "extraLabels", "affinity"}
# Keys a chart documents only in a comment of its values.yaml (checked below to really be there).
COMMENTED = {
    "kube-prometheus-stack": {"grafana.persistence.storageClassName", "alertmanager.alertmanagerSpec.configSecret"}
}
SUBCHARTS = {"kube-prometheus-stack": ["grafana"]}


def chart_defaults(chart: str) -> dict:
    defaults = yaml.safe_load((HELM / chart / "values.yaml").read_text())
    for sub in SUBCHARTS.get(chart, []):
        merged = yaml.safe_load((HELM / chart / "charts" / sub / "values.yaml").read_text())
        defaults[sub] = deep_merge(merged, defaults.get(sub) or {})
    return defaults


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)  # helm: null deletes a default key
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def unknown_keys(ours: dict, defaults: dict, chart: str, path: str = "") -> list[str]:
    problems = []
    for key, value in ours.items():
        where = f"{path}.{key}" if path else key
        if key in FREE_NAMES or where in FREE_FORM.get(chart, ()) or where in COMMENTED.get(chart, ()):
            continue
        if key not in defaults:
            problems.append(f"{chart}: unknown key {where}")
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict) and default:
            problems += unknown_keys(value, default, chart, where)
        elif isinstance(value, dict) and default not in (None, {}) and not isinstance(default, dict):
            problems.append(f"{chart}: {where} is a map but the chart's default is {default!r}")
    return problems


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted(CHARTS), ids=lambda p: p.name)
def test_values_keys_exist_in_the_chart_defaults(path):
    chart = CHARTS[path]
    assert unknown_keys(load(path), chart_defaults(chart), chart) == []


def test_key_check_catches_a_renamed_key():
    ours = {"service": {"enabled": True}, "serviceMonitor": {"honourLabels": True}}
    problems = unknown_keys(ours, chart_defaults("dcgm-exporter"), "dcgm-exporter")
    assert problems == [
        "dcgm-exporter: unknown key service.enabled",
        "dcgm-exporter: unknown key serviceMonitor.honourLabels",
    ]


def test_commented_keys_are_documented_in_the_chart():
    for chart, keys in COMMENTED.items():
        text = "\n".join((HELM / chart / f).read_text() for f in ("values.yaml", "charts/grafana/values.yaml"))
        for key in keys:
            assert re.search(rf"#\s*{re.escape(key.rsplit('.', 1)[1])}:", text), key


def test_collector_values_pass_the_chart_json_schema():
    merged = deep_merge(chart_defaults("opentelemetry-collector"), load(VALUES / "opentelemetry-collector.yaml"))
    schema = load_json(HELM / "opentelemetry-collector" / "values.schema.json")
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(merged)
    ]
    assert errors == []


def test_chart_versions_match_the_deploy_script():
    script = (REPO / "cluster" / "deploy.sh").read_text()
    for var, chart in [
        ("KPS_VERSION", "kube-prometheus-stack"),
        ("DCGM_VERSION", "dcgm-exporter"),
        ("TEMPO_VERSION", "tempo"),
        ("OTEL_VERSION", "opentelemetry-collector"),
        ("LANGFUSE_VERSION", "langfuse"),
        ("KUBERAY_VERSION", "kuberay-operator"),
        ("LBC_VERSION", "aws-load-balancer-controller"),
    ]:
        pinned = re.search(rf"^{var}=(\S+)$", script, re.M)
        assert pinned, var
        assert pinned.group(1) == load(HELM / chart / "Chart.yaml")["version"], chart
    assert f"helm upgrade --install {KPS_RELEASE} prometheus-community/kube-prometheus-stack" in script


def test_every_monitor_carries_the_release_label_prometheus_selects():
    kps = load(VALUES / "kube-prometheus-stack.yaml")
    spec = kps["prometheus"]["prometheusSpec"]
    for kind in ("serviceMonitor", "podMonitor", "rule"):
        assert spec.get(f"{kind}SelectorNilUsesHelmValues", True) is True
    assert load(VALUES / "dcgm-exporter.yaml")["serviceMonitor"]["additionalLabels"]["release"] == KPS_RELEASE
    assert load(VALUES / "tempo.yaml")["serviceMonitor"]["additionalLabels"]["release"] == KPS_RELEASE
    assert load(VALUES / "opentelemetry-collector.yaml")["serviceMonitor"]["extraLabels"]["release"] == KPS_RELEASE
    operator = load(REPO / "kuberay" / "operator-values.yaml")
    assert operator["metrics"]["serviceMonitor"]["additionalLabels"]["release"] == KPS_RELEASE


def test_dcgm_keeps_workload_labels_and_runs_on_gpu_nodes():
    dcgm = load(VALUES / "dcgm-exporter.yaml")
    assert dcgm["serviceMonitor"]["honorLabels"] is True  # pod/namespace, not exported_pod/exported_namespace
    assert dcgm["nodeSelector"] == {"role": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in dcgm["tolerations"]


def test_prometheus_and_tempo_have_retention_and_storage():
    spec = load(VALUES / "kube-prometheus-stack.yaml")["prometheus"]["prometheusSpec"]
    assert spec["retention"] and spec["retentionSize"]
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
    assert spec["enableRemoteWriteReceiver"] is True  # Tempo's metrics generator writes here
    tempo = load(VALUES / "tempo.yaml")
    assert tempo["tempo"]["retention"] and tempo["persistence"]["enabled"] is True
    assert tempo["tempo"]["metricsGenerator"]["remoteWriteUrl"].startswith(
        f"http://{KPS_RELEASE}-kube-prometheus-prometheus.monitoring.svc:9090/"
    )


def test_grafana_has_tempo_with_trace_to_metrics_and_admin_from_a_secret():
    grafana = load(VALUES / "kube-prometheus-stack.yaml")["grafana"]
    assert grafana["admin"]["existingSecret"] and "adminPassword" not in grafana
    prom_uid = chart_defaults("kube-prometheus-stack")["grafana"]["sidecar"]["datasources"]["uid"]
    (tempo,) = [d for d in grafana["additionalDataSources"] if d["type"] == "tempo"]
    assert tempo["url"] == "http://tempo.monitoring.svc:3200"
    assert tempo["jsonData"]["tracesToMetrics"]["datasourceUid"] == prom_uid
    assert tempo["jsonData"]["serviceMap"]["datasourceUid"] == prom_uid
    assert grafana["sidecar"]["datasources"]["exemplarTraceIdDestinations"]["datasourceUid"] == tempo["uid"]
    assert grafana["sidecar"]["dashboards"]["label"] == "grafana_dashboard"


def test_collector_receives_otlp_and_exports_to_tempo():
    values = load(VALUES / "opentelemetry-collector.yaml")
    merged = deep_merge(chart_defaults("opentelemetry-collector"), values)
    config = merged["config"]
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    (exporter,) = traces["exporters"]
    assert exporter.startswith("otlp_grpc/")  # not the deprecated `otlp` alias
    assert config["exporters"][exporter]["endpoint"] == "tempo.monitoring.svc:4317"
    for name in traces["processors"]:
        assert name in config["processors"]
    assert set(config["receivers"]) >= {"otlp"} and "jaeger" not in config["receivers"]
    # The RayService points its OTLP endpoint at this release's Service.
    rs = (REPO / "kuberay" / "rayservice.yaml").read_text()
    assert f"http://{values['fullnameOverride']}.monitoring.svc:4318" in rs


def test_collector_langfuse_pipeline_filters_router_spans_and_reads_auth_from_a_secret():
    overlay = load(VALUES / "opentelemetry-collector.yaml")
    pipeline = overlay["config"]["service"]["pipelines"]["traces/langfuse"]
    (name,) = [p for p in pipeline["processors"] if p.startswith("filter/")]
    # The filter drops what is not the router's scope, so every router span (failed ones too) gets through.
    (condition,) = overlay["config"]["processors"][name]["traces"]["span"]
    assert condition == f'instrumentation_scope.name != "{TRACER_NAME}"'
    (exporter,) = pipeline["exporters"]
    headers = overlay["config"]["exporters"][exporter]["headers"]
    assert headers["Authorization"] == "${env:LANGFUSE_AUTH}"
    (env,) = overlay["extraEnvs"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == "otel-langfuse-auth"


def test_langfuse_credentials_all_come_from_existing_secrets():
    values = load(VALUES / "langfuse.yaml")
    for key in ("salt", "encryptionKey"):
        assert values["langfuse"][key]["secretKeyRef"]["name"]
    assert values["langfuse"]["nextauth"]["secret"]["secretKeyRef"]["name"]
    assert values["postgresql"]["auth"]["existingSecret"] == values["postgresql"]["settings"]["existingSecret"]
    assert values["postgresql"]["userDatabase"]["existingSecret"] == values["postgresql"]["auth"]["existingSecret"]
    assert values["redis"]["auth"]["existingSecret"] and values["redis"]["auth"]["usersExistingSecret"]
    assert values["clickhouse"]["auth"]["existingSecret"]
