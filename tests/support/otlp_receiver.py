"""Recording OTLP trace receivers on loopback: HTTP/protobuf (stdlib server) and gRPC (grpcio).

They speak the real wire format (`ExportTraceServiceRequest`, gzip when the client sends it) and record each
span as a plain `ReceivedSpan`. `mode` makes the HTTP receiver misbehave: "hang" (holds each request until
`release()`), "refuse" (answers 503). Use as context managers; everything binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Mode = Literal["ok", "hang", "refuse"]


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a Python value (arrays as tuples, like the SDK's attributes)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    scope: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for rs in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        name=s.name,
                        scope=ss.scope.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        status_code=s.status.code,
                        attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                        resource=resource,
                    )
                )
    return spans


@dataclass
class Recorded:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)  # headers of each accepted request
    rejected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, headers: dict[str, str], spans: list[ReceivedSpan]) -> None:
        with self.lock:
            self.requests.append(headers)
            self.spans.extend(spans)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path != receiver.path:
            return self._reply(404, b"not found")
        if receiver.mode == "hang":
            receiver.held += 1
            receiver.released.wait(60)
            return self._reply(503, b"hung")
        if receiver.mode == "refuse":
            receiver.recorded.rejected += 1
            return self._reply(503, b"refused")
        problem = receiver.check(headers)
        if problem is not None:
            receiver.recorded.rejected += 1
            return self._reply(problem[0], problem[1].encode())
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        receiver.recorded.add(headers, spans_of(request))
        payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self._reply(200, payload, "application/x-protobuf")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout): nothing to answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpHttpReceiver


class OtlpHttpReceiver:
    """OTLP/HTTP protobuf receiver: `POST {path}` (default `/v1/traces`)."""

    path = "/v1/traces"

    def __init__(self, mode: Mode = "ok") -> None:
        self.mode = mode
        self.recorded = Recorded()
        self.released = threading.Event()
        self.held = 0  # requests held in "hang" mode
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """A (status, message) to refuse a well-formed request with, or None to accept it."""
        return None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self.recorded.lock:
            return list(self.recorded.spans)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, recorded: Recorded) -> None:
        self._recorded = recorded

    def Export(self, request: Any, context: Any) -> Any:
        headers = {k: v for k, v in context.invocation_metadata()}
        self._recorded.add(headers, spans_of(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcReceiver:
    """OTLP/gRPC TraceService on loopback."""

    def __init__(self) -> None:
        self.recorded = Recorded()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self.recorded), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self.recorded.lock:
            return list(self.recorded.spans)

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
