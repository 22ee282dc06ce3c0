"""OTLP span export in a child process: the replica hands each finished batch over a pipe and waits, bounded.

The OTLP encoder is pure Python: in the replica it holds the GIL that the request loop needs for about 0.1 ms per
router span (docs/benchmarks.md, telemetry). With `telemetry.export_process` the replica's export thread only
flattens each span into a tuple and pickles the batch (a few microseconds); a child process
(`python -m serve_app.telemetry.export_worker`) rebuilds the spans and exports them with the SDK's own OTLP
exporter. The SDK's BatchSpanProcessor still batches and bounds the queue in the replica, and its accounting is
unchanged: a batch is a SUCCESS only when the child says the collector took it.

The router's own span usually arrives here already flat: with the export process as its only sink it is a
`light_span.LightSpan`, whose record has the same shape, so the replica never builds the SDK's span for it.

The child is started with the exporter and restarted (at most every `restart_backoff_s`) when it has died.
It exits when its stdin closes, so it never outlives the replica. This module must not encode OTLP itself.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import Attributes

from serve_app.telemetry.light_span import LightSpan, Record, attribute_limits, fold

logger = logging.getLogger(__name__)

FRAME = struct.Struct(">IQ")  # payload length, batch id (0: the settings frame)
REPLY = struct.Struct(">Q?")  # batch id, exported
WORKER_MODULE = "serve_app.telemetry.export_worker"


# ---- a span as plain data, both ways ------------------------------------------------------------------------------


def _attrs(attributes: Attributes) -> dict[str, Any]:
    return dict(attributes) if attributes else {}


def _dropped(values: object) -> int:
    return getattr(values, "dropped", 0) or 0


def span_record(span: ReadableSpan) -> Record:
    """Everything the OTLP encoder reads from `span`, as picklable builtins (the resource travels once)."""
    ctx, parent, scope, status = span.context, span.parent, span.instrumentation_scope, span.status
    return (
        span.name,
        (ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.trace_state.to_header()) if ctx else None,
        (parent.trace_id, parent.span_id, int(parent.trace_flags), parent.is_remote) if parent else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        status.status_code.value,
        status.description,
        _attrs(span.attributes),
        span.dropped_attributes,
        tuple((e.name, e.timestamp, _attrs(e.attributes)) for e in span.events),
        span.dropped_events,
        tuple(
            (link.context.trace_id, link.context.span_id, int(link.context.trace_flags), _attrs(link.attributes))
            for link in span.links
        ),
        span.dropped_links,
        (scope.name, scope.version, scope.schema_url, _attrs(scope.attributes)) if scope else None,
        (),  # deferred attribute updates: an SDK span has none
    )


def _record(span: ReadableSpan | LightSpan) -> Record:
    return span.record() if isinstance(span, LightSpan) else span_record(span)


def _bounded_attrs(values: dict[str, Any], dropped: int) -> Mapping[str, Any]:
    """The attributes as the encoder reads them; a plain dict unless some were dropped (the count rides on a
    BoundedAttributes, whose construction would validate every value a second time)."""
    if not dropped:
        return values
    bounded = BoundedAttributes(attributes=values, immutable=True, max_value_len=None)
    bounded.dropped = dropped
    return bounded


def _bounded_list(items: list[Any], dropped: int) -> Sequence[Any]:
    if not dropped:
        return items
    bounded = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def readable_span(record: Record, resource: Resource, limits: tuple[int, int | None] | None = None) -> ReadableSpan:
    """The span `span_record` (or `LightSpan.record`) flattened, as the SDK's exporters take it; `limits`, the
    attribute limits for deferred updates (`light_span.attribute_limits()`, read once by the caller that has many
    spans to rebuild)."""
    (name, ctx, parent, kind, start, end, code, description, attributes, dropped_attributes,
     events, dropped_events, links, dropped_links, scope, updates) = record  # fmt: skip
    if updates:  # a LightSpan's attributes set after its start: built here, off the replica's loop
        limits = limits or attribute_limits()  # the replica's: the export process has its environment
        # a copy: in process (no pickle in between) the record's dict is still the span's own
        attributes, dropped_attributes = fold(dict(attributes), dropped_attributes, updates, limits)
    context = None
    if ctx is not None:
        trace_id, span_id, flags, state = ctx
        context = SpanContext(trace_id, span_id, False, TraceFlags(flags), TraceState.from_header([state]))
    parent_context = None
    if parent is not None:
        trace_id, span_id, flags, remote = parent
        parent_context = SpanContext(trace_id, span_id, remote, TraceFlags(flags))
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent_context,
        resource=resource,
        attributes=_bounded_attrs(attributes, dropped_attributes),
        events=_bounded_list([Event(n, a, timestamp=t) for n, t, a in events], dropped_events),
        links=_bounded_list([Link(SpanContext(t, s, False, TraceFlags(f)), a) for t, s, f, a in links], dropped_links),
        kind=SpanKind(kind),
        status=Status(StatusCode(code), description),
        start_time=start,
        end_time=end,
        instrumentation_scope=_scope(scope) if scope else None,
    )


_SCOPES: dict[tuple[Any, ...], InstrumentationScope] = {}


def _scope(scope: tuple[Any, ...]) -> InstrumentationScope:
    """One InstrumentationScope per scope without attributes (the encoder groups spans by it: the same object
    is found by identity, a new one is compared field by field)."""
    name, version, schema_url, attributes = scope
    if attributes:
        return InstrumentationScope(name, version, schema_url, attributes)
    found = _SCOPES.get((name, version, schema_url))
    if found is None:
        found = InstrumentationScope(name, version, schema_url, attributes)
        if len(_SCOPES) < 256:
            _SCOPES[(name, version, schema_url)] = found
    return found


# ---- framing -------------------------------------------------------------------------------------------------------


def write_frame(stream: IO[bytes], batch_id: int, payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data), batch_id) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> tuple[int, Any] | None:
    """The next frame, or None at end of stream."""
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        return None
    length, batch_id = FRAME.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return batch_id, pickle.loads(data)


# ---- the replica's side ---------------------------------------------------------------------------------------------


class ChildProcessExporter(SpanExporter):
    """A SpanExporter whose export runs in a child process; one batch at a time, each answered or timed out.

    `settings` is what the child needs to build the same OTLP exporter: the resource (its attributes and schema
    URL) and the telemetry arguments; the OTLP variables come from `environ`, the child's environment.
    """

    def __init__(
        self,
        *,
        resource: Resource,
        telemetry_args: Mapping[str, Any],
        timeout_s: float,
        environ: Mapping[str, str] | None = None,
        restart_backoff_s: float = 5.0,
        command: Sequence[str] | None = None,
    ) -> None:
        self._settings = {
            "resource": dict(resource.attributes),
            "schema_url": resource.schema_url,
            "telemetry": dict(telemetry_args),
        }
        self._wait_s = timeout_s + 1.0  # the child's exporter gives up after timeout_s; this is its answer's margin
        self._environ = dict(os.environ if environ is None else environ)
        # the child imports this package as the replica does: Ray's runtime env puts it on sys.path, not PYTHONPATH
        self._environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._command = list(command or (sys.executable, "-m", WORKER_MODULE))
        self._restart_backoff_s = restart_backoff_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._next_start = 0.0
        self._next_id = 1
        self._pending: int | None = None  # a batch sent and not answered yet
        self._replies = b""
        self._lock = threading.Lock()
        self._shut = False
        self.restarts = 0  # children started after the first
        with self._lock:
            self._running()  # now, so that its imports are done before the first batch

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._shut or not self._running():
                return SpanExportResult.FAILURE
            if self._pending is not None and self._await(self._pending) is None:
                return SpanExportResult.FAILURE  # the child still works on an earlier batch (or died): dropped
            proc = self._proc
            if proc is None or proc.stdin is None:
                return SpanExportResult.FAILURE
            batch_id, self._next_id = self._next_id, self._next_id + 1
            try:
                write_frame(proc.stdin, batch_id, [_record(s) for s in spans])
            except (OSError, ValueError):
                self._lost("its pipe closed")
                return SpanExportResult.FAILURE
            self._pending = batch_id
            ok = self._await(batch_id)
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        with self._lock:
            self._shut = True
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the child flushes nothing of ours: every batch was answered or given up
            proc.wait(timeout=self._wait_s)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here: the processor in front of us holds the queue

    # ---- internals ----------------------------------------------------------------------------------------------

    def _running(self) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        if self._proc is not None:
            self._lost(f"it exited with {self._proc.returncode}")
        now = time.monotonic()
        if now < self._next_start:
            return False
        self._next_start = now + self._restart_backoff_s
        try:
            proc = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._environ, close_fds=True
            )
            assert proc.stdin is not None
            write_frame(proc.stdin, 0, self._settings)
        except (OSError, ValueError):
            logger.exception("the span export process could not be started; spans are dropped until it is")
            return False
        self.restarts += self._started
        self._started = True
        self._proc, self._pending, self._replies = proc, None, b""
        return True

    def _await(self, batch_id: int) -> bool | None:
        """The child's answer for `batch_id` (earlier answers are skipped), None when none came in time."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self._wait_s
        while True:
            while len(self._replies) >= REPLY.size:
                got, ok = REPLY.unpack_from(self._replies)
                self._replies = self._replies[REPLY.size :]
                if got == batch_id:
                    self._pending = None
                    return ok
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                self._lost("it closed its output")
                return None
            self._replies += chunk

    def _lost(self, why: str) -> None:
        logger.warning("span export process lost (%s); restarting it", why)
        proc, self._proc, self._pending = self._proc, None, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
