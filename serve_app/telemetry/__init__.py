"""The router's one telemetry sink: spans (also Langfuse generations), Prometheus metrics and cost."""

from __future__ import annotations

from serve_app.telemetry.metrics import InMemoryMetricsSink, MetricsSink, RayMetricsSink
from serve_app.telemetry.observation import Observation
from serve_app.telemetry.sink import Telemetry

__all__ = ["InMemoryMetricsSink", "MetricsSink", "Observation", "RayMetricsSink", "Telemetry"]
