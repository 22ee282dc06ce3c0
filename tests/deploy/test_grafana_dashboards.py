"""The Grafana dashboards: structure, the metric-name contract, and every PromQL expression (dashboards and
rules) executed by a real Prometheus scraping the recorded DCGM exposition on loopback."""

from __future__ import annotations

import json
import re

import pytest
from deploy_support import REPO

from tests.support.prometheus import (
    ExpositionServer,
    PrometheusServer,
    all_expressions,
    dashboard_expressions,
    metric_names,
    rule_files,
    substitute,
)

DASHBOARD = REPO / "observability" / "dashboards" / "hybrid-llm.json"
ROUTER_METRICS = {
    "ray_router_requests_total",
    "ray_router_fallbacks_total",
    "ray_router_tokens_total",
    "ray_router_cost_usd_total",
    "ray_router_counterfactual_cost_usd_total",
    "ray_router_backend_ready",
    "ray_router_inflight_requests",
    "ray_router_gpu_cost_usd_per_hour",
    "ray_router_telemetry_dropped_total",
    "ray_router_tenant_requests_total",
    "ray_router_tenant_tokens_total",
    "ray_router_tenant_cost_usd_total",
    "ray_router_tenant_limited_total",
    "ray_router_tenant_spend_usd",
    "ray_router_tenant_budget_usd",
    *(
        f"ray_router_{h}_{suffix}"
        for h in ("request_duration_seconds", "time_to_first_token_seconds", "overhead_seconds")
        for suffix in ("bucket", "sum", "count")
    ),
}
DCGM_METRICS = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_GPU_TEMP",
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure(dashboard):
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert dashboard["uid"] and dashboard["title"] == "Hybrid LLM"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "cluster", "model"} <= set(variables)
    for panel in panels:
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def test_dashboard_answers_the_operators_questions(dashboard):
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needle in (
        "by backend",
        "route reasons",
        "fallbacks",
        "latency",
        "time to first token",
        "tokens per second",
        "usd/hour",
        "savings",
        "gpu utilisation",
        "gpu memory",
        "gpu power",
        "memory-copy utilisation",
        "sm clock",
        "temperature",
        "vllm queue",
        "kv-cache",
        "healthy replicas",
    ):
        assert needle in titles, needle


def test_dashboard_filters_use_template_variables_with_regex_match(dashboard):
    for expr in dashboard_expressions(DASHBOARD):
        if expr.kind != "panel" or not (expr.metrics & (ROUTER_METRICS | DCGM_METRICS)):
            continue
        assert 'namespace=~"$namespace"' in expr.raw, expr.location
        assert not re.search(r'=\s*"\$', expr.raw.replace("=~", "")), f"use =~ with variables: {expr.location}"


def test_expressions_use_only_contract_metrics():
    allowed_prefixes = ("ray_serve_", "ray_vllm_", "traces_spanmetrics_")  # the last: Tempo's, from the spans
    recorded = {e.location.split("/")[-1] for p in rule_files() for e in _rules(p) if e.kind == "record"}
    for expr in all_expressions():
        for name in expr.metrics:
            ok = name in ROUTER_METRICS or name in DCGM_METRICS or name in recorded or name.startswith(allowed_prefixes)
            assert ok, f"{expr.source} {expr.location}: {name} is not a contract metric"


def _rules(path):
    from tests.support.prometheus import rule_expressions

    return rule_expressions(path)


def test_substitution_and_metric_extraction():
    raw = 'sum by (le) (rate(ray_x_bucket{namespace=~"$namespace", m=~"${model}"}[$__rate_interval])) and on () y:z'
    assert substitute(raw) == 'sum by (le) (rate(ray_x_bucket{namespace=~".*", m=~".*"}[1m])) and on () y:z'
    assert metric_names(substitute(raw)) == {"ray_x_bucket", "y:z"}


@pytest.fixture(scope="module")
def prometheus():
    with ExpositionServer() as dcgm, PrometheusServer({"dcgm": [dcgm.address]}, rules=rule_files()) as prom:
        prom.wait_for_targets_up()
        prom.wait_for_samples("up", samples=3)
        yield prom


def test_every_expression_parses_and_runs_in_prometheus(prometheus):
    expressions = all_expressions()
    assert len(expressions) > 40
    failures = []
    for expr in expressions:
        try:
            prometheus.query(expr.promql)
        except AssertionError as exc:
            failures.append(f"{expr.source} {expr.location}: {exc}")
    assert failures == []


def test_broken_promql_is_reported(prometheus):
    with pytest.raises(AssertionError, match="bad_data"):
        prometheus.query("sum by (backend (rate(ray_router_requests_total[1m]))")


def test_gpu_panels_return_data_from_the_dcgm_exposition(prometheus):
    gpu = [e for e in dashboard_expressions(DASHBOARD) if e.kind == "panel" and e.metrics and e.metrics <= DCGM_METRICS]
    assert len(gpu) == 6  # utilisation, memory, power, memory copy, SM clock, temperature
    for expr in gpu:
        result = prometheus.query(expr.promql)
        assert result, f"{expr.location} returned no data"
        assert result[0]["metric"].get("Hostname"), expr.location
    (util,) = prometheus.query('DCGM_FI_DEV_GPU_UTIL{namespace=~"hybrid-llm"}')
    assert util["metric"]["modelName"] == "NVIDIA L4" and util["metric"]["pod"]


def test_recording_rule_config_feeds_the_budget_line(prometheus):
    (budget,) = [e for e in dashboard_expressions(DASHBOARD) if e.metrics == {"hybrid_llm:cloud_budget_usd_per_hour"}]
    assert prometheus.query(budget.promql), "rules are not loaded"


def test_dcgm_panels_read_the_exporters_default_counters_in_their_units(dashboard, prometheus):
    """Memory-copy utilisation, SM clock and temperature: counters the chart's default set exports (the recorded
    exposition is that set), each with its unit and the value an L4 under load reports."""
    panels = {p["title"]: p for p in dashboard["panels"]}
    wanted = {
        "GPU memory-copy utilisation": ("percent", {"DCGM_FI_DEV_MEM_COPY_UTIL"}),
        "GPU SM clock": ("rotmhz", {"DCGM_FI_DEV_SM_CLOCK"}),
        "GPU temperature": ("celsius", {"DCGM_FI_DEV_GPU_TEMP"}),
    }
    for title, (unit, metrics) in wanted.items():
        panel = panels[title]
        assert panel["fieldConfig"]["defaults"]["unit"] == unit, title
        exprs = [e for e in dashboard_expressions(DASHBOARD) if e.kind == "panel" and e.location.startswith(title)]
        assert set().union(*(e.metrics for e in exprs)) == metrics, title
        for expr in exprs:
            (series,) = prometheus.query(expr.promql)
            value = float(series["value"][1])
            assert series["metric"]["Hostname"] and value > 0, expr.location
            if unit == "percent":
                assert value <= 100
            if unit == "rotmhz":
                assert 200 < value <= 2100  # an L4's SM clock range
            if unit == "celsius":
                assert 20 < value < 110
