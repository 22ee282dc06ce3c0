"""A telemetry sink that costs nothing while it is measured: it reads each OTLP or Langfuse POST and keeps its bytes.

Spans and generations are counted afterwards, when asked (`counts()`), by decoding what was kept: the
benchmark's receivers must not compete for the CPU the router replica is measured on, as the recording
stand-ins of tests/support (which decode every span on arrival) would.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

LANGFUSE_PATH = "/api/public/otel/v1/traces"
ROUTER_SCOPE = "hybrid_llm.router"


class DiscardSink:
    """One loopback HTTP server for both routes: `/v1/traces` (OTLP) and Langfuse's OTLP path."""

    def __init__(self) -> None:
        self._bodies: list[tuple[str, bool, bytes]] = []
        self._lock = threading.Lock()
        self._counted = 0
        self.spans = 0
        self.router_spans = 0  # of `spans`: the router's own (one per request); the rest are its HTTP client's
        self.generations = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gzipped = (self.headers.get("Content-Encoding") or "") == "gzip"
                with sink._lock:
                    sink._bodies.append((self.path, gzipped, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DiscardSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def counts(self) -> tuple[int, int, int]:
        """(spans received on the OTLP route, of them the router's, router spans on Langfuse's route) so far."""
        with self._lock:
            new = self._bodies[self._counted :]
            self._counted = len(self._bodies)
        for path, gzipped, body in new:
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(gzip.decompress(body) if gzipped else body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    if path == LANGFUSE_PATH:
                        if scope_spans.scope.name == ROUTER_SCOPE:
                            self.generations += len(scope_spans.spans)
                    else:
                        self.spans += len(scope_spans.spans)
                        if scope_spans.scope.name == ROUTER_SCOPE:
                            self.router_spans += len(scope_spans.spans)
        return self.spans, self.router_spans, self.generations
