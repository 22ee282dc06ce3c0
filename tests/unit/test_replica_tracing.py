"""Where vLLM exports its spans: resolved from the OTel variables as the router resolves its own exporter."""

from __future__ import annotations

import pytest

from serve_app.telemetry.replica_tracing import ENGINE_SERVICE_NAME, engine_tracing
from serve_app.telemetry.tracing import otlp_traces_target

BASE = {"max_model_len": 2048}


def test_without_an_otlp_endpoint_the_engine_exports_nothing() -> None:
    assert engine_tracing(BASE, {}) == (BASE, {})
    assert engine_tracing(BASE, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == (BASE, {})


@pytest.mark.parametrize(
    ("environ", "endpoint", "protocol"),
    [
        # the generic endpoint is a base URL for HTTP (as the router's exporter takes it) ...
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"}, "http://otel:4318/v1/traces", "http/protobuf"),
        # ... and used as it is for gRPC, which vLLM assumes unless told otherwise
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http://otel:4317",
            "grpc",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            "http://t:4318/custom",
            "http/protobuf",
        ),
    ],
)
def test_engine_exports_where_the_router_exports(environ: dict[str, str], endpoint: str, protocol: str) -> None:
    kwargs, env = engine_tracing(BASE, environ)
    assert kwargs == {**BASE, "otlp_traces_endpoint": endpoint}
    assert env == {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol, "OTEL_SERVICE_NAME": ENGINE_SERVICE_NAME}
    assert otlp_traces_target(environ) == (endpoint, protocol)


def test_an_operators_engine_endpoint_is_kept_untouched() -> None:
    mine = {**BASE, "otlp_traces_endpoint": "grpc://elsewhere:4317"}
    assert engine_tracing(mine, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}) == (mine, {})


def test_an_unknown_protocol_falls_back_to_http() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    assert otlp_traces_target(environ) == ("http://otel:4318/v1/traces", "http/protobuf")
