"""The span export process: reads batches of flattened spans on stdin, exports them over OTLP, answers each.

Started by `export_process.ChildProcessExporter` as `python -m serve_app.telemetry.export_worker`. The first frame
holds the settings (resource, telemetry arguments); each later frame one batch, answered on stdout with its id and
whether the collector took it. The OTLP endpoint, headers, TLS and compression come from the OTEL_EXPORTER_OTLP_*
variables, as in the replica. It exits when stdin closes or its answers cannot be written: the replica shut it
down, gave up on it, or died.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import IO

from opentelemetry.sdk.trace.export import SpanExportResult

from serve_app.config import TelemetryArgs
from serve_app.telemetry.export_encoding import OneResource, memoize_attribute_encoding
from serve_app.telemetry.export_process import REPLY, read_frame, readable_span
from serve_app.telemetry.light_span import attribute_limits
from serve_app.telemetry.tracing import build_otlp_exporter

logger = logging.getLogger(__name__)


def serve(source: IO[bytes], answers: IO[bytes]) -> None:
    """Exports every batch read from `source` and answers it on `answers` until `source` ends or `answers` is
    closed."""
    first = read_frame(source)
    if first is None:
        return
    _, settings = first
    resource = OneResource(settings["resource"], settings.get("schema_url"))
    exporter = build_otlp_exporter(TelemetryArgs.model_validate(settings["telemetry"]), os.environ)
    memoize_attribute_encoding()  # this process only encodes spans: the SDK's encoder is ours to tune
    limits = attribute_limits()  # the replica's OTEL_*_LIMIT variables: this process has its environment
    try:
        while (frame := read_frame(source)) is not None:
            batch_id, records = frame
            try:
                ok = exporter.export([readable_span(r, resource, limits) for r in records]) is SpanExportResult.SUCCESS
            except Exception:
                logger.exception("span export failed")
                ok = False
            try:
                answers.write(REPLY.pack(batch_id, ok))
                answers.flush()
            except BrokenPipeError:  # the replica closed its end (it stopped waiting): we are done
                return
    finally:
        exporter.shutdown()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the replica decides when we stop
    logging.basicConfig(level=logging.WARNING, format="export-worker %(levelname)s %(name)s: %(message)s")
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the answers
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
