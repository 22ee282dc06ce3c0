"""The production route of Langfuse generations: the router exports each span once, to the Collector, and the
Collector forwards the router's request spans to Langfuse's OTLP endpoint (structural: no otelcol schema offline)."""

from __future__ import annotations

import yaml
from deploy_support import REPO

from serve_app.telemetry.langfuse import OTEL_TRACES_PATH
from serve_app.telemetry.tracing import TRACER_NAME

VALUES = REPO / "observability" / "values" / "opentelemetry-collector.yaml"


def _config() -> dict:
    return yaml.safe_load(VALUES.read_text())["config"]


def test_the_collector_forwards_router_spans_to_langfuses_documented_otlp_endpoint() -> None:
    config = _config()
    pipelines = config["service"]["pipelines"]
    (name,) = [p for p in pipelines if p.startswith("traces/") and "langfuse" in p]
    pipeline = pipelines[name]
    assert pipeline["receivers"] == ["otlp"]  # the same receiver the router exports to
    (exporter_name,) = pipeline["exporters"]
    assert exporter_name.split("/")[0] == "otlp_http"
    exporter = config["exporters"][exporter_name]
    # the OTLP/HTTP exporter appends /v1/traces to `endpoint`: together, the path the direct exporter posts to
    assert (exporter["endpoint"].rstrip("/") + "/v1/traces").endswith(OTEL_TRACES_PATH)
    assert exporter["headers"]["x-langfuse-ingestion-version"] == "4"
    assert exporter["headers"]["Authorization"].startswith("${env:")  # from a Secret, never a literal
    # only router spans: the filter drops every span whose scope is not the router's
    filters = [p for p in pipeline["processors"] if p.startswith("filter/")]
    assert len(filters) == 1
    assert config["processors"][filters[0]]["traces"]["span"] == [f'instrumentation_scope.name != "{TRACER_NAME}"']
    # batched and memory-limited like the Tempo pipeline, and queued while Langfuse is away
    assert {"memory_limiter", "batch"} <= set(pipeline["processors"])
    assert pipeline["processors"][0] == "memory_limiter" and pipeline["processors"][-1] == "batch"
    assert exporter["sending_queue"]["enabled"] is True


def test_tempo_still_gets_every_span() -> None:
    traces = _config()["service"]["pipelines"]["traces"]
    assert not [p for p in traces["processors"] if p.startswith("filter/")]
    assert any(e.endswith("/tempo") for e in traces["exporters"])


def test_the_router_does_not_also_send_langfuse_its_spans_in_the_cluster() -> None:
    rayservice = (REPO / "kuberay" / "rayservice.yaml").read_text()
    assert "LANGFUSE_PUBLIC_KEY" not in rayservice and "LANGFUSE_SECRET_KEY" not in rayservice
