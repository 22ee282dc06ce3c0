"""The request log's writer: whole lines appended off the caller's thread, a full queue dropped and counted."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from serve_app.errors import ModelNotFound, UpstreamRateLimited
from serve_app.records import read_records
from serve_app.telemetry.request_log import RequestLog, http_status
from tests.support.sim_runs import record


def test_request_log_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(record(request_id="earlier").to_json() + "\n")  # an existing log is appended to
    drops: list[int] = []
    log = RequestLog(path, capacity=16, on_drop=drops.append)
    for i in range(10):
        log.write(record(request_id=f"r{i}", source="router"))
    log.close()
    log.write(record(request_id="late"))  # after close: dropped, counted
    ids = [r.request_id for r in read_records(path.read_text().splitlines())]
    assert ids == ["earlier", *(f"r{i}" for i in range(10))]
    assert drops == [1]


def test_request_log_drops_and_counts_when_the_writer_is_stuck(tmp_path: Path) -> None:
    """A pipe nobody reads blocks the writer thread: `write` still returns at once, and every record is either
    written or counted as dropped."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open; nothing is read yet
    drops: list[int] = []
    log = RequestLog(fifo, capacity=16, on_drop=drops.append)
    total = 3000  # ~1.5 MB, far beyond the pipe's buffer
    for i in range(total):
        log.write(record(request_id=f"r{i}", source="router"))
    assert sum(drops) > 0
    received = bytearray()
    done = threading.Event()

    def drain() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 1 << 16):
            received.extend(chunk)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    log.close(timeout_s=10)
    assert done.wait(10)
    written = len(list(read_records(received.decode().splitlines())))
    assert written + sum(drops) == total


def test_http_status_is_what_the_client_got() -> None:
    assert http_status(outcome="ok", error=None, stream=False, started=True) == 200
    assert http_status(outcome="error", error=ModelNotFound("x"), stream=False, started=False) == 404
    assert (
        http_status(outcome="error", error=UpstreamRateLimited("x", backend="cloud"), stream=True, started=False) == 429
    )
    assert http_status(outcome="error", error=RuntimeError(), stream=True, started=True) == 200  # in-band error
    assert http_status(outcome="error", error=RuntimeError(), stream=False, started=True) == 500
    assert http_status(outcome="cancelled", error=None, stream=False, started=False) == 499


def test_request_log_close_gives_up_on_a_stuck_writer_and_counts_each_record_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    drops: list[int] = []
    log = RequestLog(fifo, capacity=64, on_drop=drops.append)
    total = 3000
    for i in range(total):
        log.write(record(request_id=f"r{i}", source="router"))
    log.close(timeout_s=0.2)  # nobody reads: the writer is stuck in a write
    received = bytearray()
    os.set_blocking(reader, True)
    while chunk := os.read(reader, 1 << 16):  # unblocks the writer, which then finds the rest abandoned
        received.extend(chunk)
    written = len(list(read_records(received.decode().splitlines())))
    assert 0 < written < total
    assert written + sum(drops) == total
