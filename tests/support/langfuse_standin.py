"""A recording stand-in for Langfuse's OTLP ingestion endpoint, `POST /api/public/otel/v1/traces`, on loopback.

Checks what the real server needs (Basic auth with the project's keys, `x-langfuse-ingestion-version`),
gunzips, parses `ExportTraceServiceRequest` and records spans. `generations()` applies the server's first
mapping rule (`langfuse.observation.type`) so tests can count generations. Modes as `OtlpHttpReceiver`:
"ok", "hang", "refuse".
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.support.otlp_receiver import Mode, OtlpHttpReceiver, ReceivedSpan


class LangfuseStandin(OtlpHttpReceiver):
    path = "/api/public/otel/v1/traces"

    def __init__(self, *, public_key: str, secret_key: str, mode: Mode = "ok") -> None:
        super().__init__(mode)
        self.public_key = public_key
        self._auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")

    def check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if headers.get("authorization") != self._auth:
            return 401, "invalid credentials"
        if headers.get("x-langfuse-ingestion-version") != "4":
            return 400, "x-langfuse-ingestion-version: 4 required for real-time ingestion"
        if headers.get("content-type") != "application/x-protobuf":
            return 415, "protobuf only here"
        return None

    def generations(self) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.attributes.get("langfuse.observation.type") == "generation"]

    @staticmethod
    def usage_details(span: ReceivedSpan) -> dict[str, int]:
        return json.loads(span.attributes["langfuse.observation.usage_details"])

    @staticmethod
    def cost_details(span: ReceivedSpan) -> dict[str, float]:
        return json.loads(span.attributes["langfuse.observation.cost_details"])

    @staticmethod
    def metadata(span: ReceivedSpan) -> dict[str, Any]:
        prefix = "langfuse.observation.metadata."
        return {k[len(prefix) :]: json.loads(v) for k, v in span.attributes.items() if k.startswith(prefix)}
