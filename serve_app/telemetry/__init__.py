"""The router's one telemetry sink: spans (also Langfuse generations) and Prometheus metrics, recorded from results."""

from __future__ import annotations

from serve_app.telemetry.metrics import InMemoryMetricsSink, MetricsSink, RayMetricsSink
from serve_app.telemetry.observation import ChatResult, Observation
from serve_app.telemetry.sink import Telemetry

__all__ = ["ChatResult", "InMemoryMetricsSink", "MetricsSink", "Observation", "RayMetricsSink", "Telemetry"]
