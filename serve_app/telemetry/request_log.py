"""The router's opt-in request log: one RequestRecord per request appended to a JSONL file, off the event loop.

`Observation.finish` hands a record to `RequestLog.write`, which only puts it on a bounded queue; a daemon
thread appends whole lines (O_APPEND, so router replicas sharing a file never overwrite each other). A full
queue or a failing disk drops records and counts them in `router_telemetry_dropped_total{sink="request_log"}`.
No prompt or completion text is ever written: only what the routing policy saw and what came of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serve_app.errors import RouterError
from serve_app.records import RequestRecord
from serve_app.routing import RouteInput
from serve_app.telemetry.cost import RequestCost
from serve_app.usage import Usage

logger = logging.getLogger(__name__)

_BATCH = 512
_STOP = object()


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the policy saw for one request: its features and the backends' state at decision time."""

    api: str
    prompt_chars: int
    route: RouteInput
    tenant: str | None = None


def http_status(*, outcome: str, error: BaseException | None, stream: bool, started: bool) -> int:
    """The status the client got: 200 once a stream's headers went out (a later failure is in-band), else the
    error's own; 499 (client closed the request) when the client left before an answer started."""
    if outcome == "ok" or (stream and started):
        return 200
    if outcome == "cancelled":
        return 499
    return error.status_code if isinstance(error, RouterError) else 500


def build_record(
    *,
    request_id: str,
    t_end: float,
    latency_s: float,
    requested_model: str,
    stream: bool,
    prompt_tokens_estimated: int,
    max_tokens: int | None,
    features: RequestFeatures | None,
    backend: str | None,
    reason: str | None,
    model_served: str | None,
    status: int,
    outcome: str,
    error_type: str | None,
    usage: Usage,
    ttft_s: float | None,
    cost: RequestCost | None,
) -> RequestRecord:
    route = features.route if features else None
    return RequestRecord(
        request_id=request_id,
        source="router",
        t_start=t_end - latency_s,
        t_end=t_end,
        api="anthropic" if features and features.api == "anthropic" else "openai",
        stream=stream,
        model_requested=requested_model,
        prompt_chars=features.prompt_chars if features else 0,
        prompt_tokens_estimated=prompt_tokens_estimated,
        max_tokens=max_tokens,
        has_tools=bool(route and route.has_tools),
        has_images=bool(route and route.has_images),
        local_ready=route.local_ready if route else None,
        local_inflight=route.local_inflight if route else None,
        cloud_ready=route.cloud_ready if route else None,
        backend=backend if backend in ("local", "cloud") else None,  # type: ignore[arg-type]
        route_reason=reason,
        fallback=bool(reason and reason.startswith("fallback_")),
        model_served=model_served,
        status=status,
        outcome=outcome if outcome in ("ok", "error", "cancelled") else "error",  # type: ignore[arg-type]
        error_type=error_type,
        input_tokens=usage.input,
        output_tokens=usage.output,
        cache_read_tokens=usage.cache_read,
        cache_creation_tokens=usage.cache_creation,
        latency_s=latency_s,
        ttft_s=ttft_s,
        cost_usd=None if cost is None or cost.actual is None else cost.actual.total,
        counterfactual_cost_usd=None if cost is None or cost.counterfactual is None else cost.counterfactual.total,
        tenant=features.tenant if features else None,
    )


class RequestLog:
    """A bounded queue in front of one appending writer thread. `write` never blocks and never raises."""

    def __init__(
        self,
        path: str | Path,
        *,
        capacity: int,
        on_drop: Callable[[int], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.wall_clock = wall_clock
        self._on_drop = on_drop
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._thread = threading.Thread(target=self._drain, name="telemetry-request-log", daemon=True)
        self._thread.start()
        self._closed = False
        self._abandoned = False  # close() gave up: what is still queued is dropped and counted, not written

    def write(self, record: RequestRecord) -> None:
        if self._closed:
            self._on_drop(1)
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._on_drop(1)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if isinstance(r, RequestRecord)]
            if records and self._abandoned:
                self._on_drop(len(records))  # close() gave up on them
            elif records:
                self._append(records)
            if any(r is _STOP for r in batch):
                os.close(self._fd)  # the writer owns the file: closed once nothing more will be written
                return

    def _append(self, records: list[RequestRecord]) -> None:
        try:
            data = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except Exception:
            logger.warning("request log: %d record(s) not written to %s", len(records), self.path, exc_info=True)
            self._on_drop(len(records))

    def close(self, timeout_s: float = 2.0) -> None:
        """Writes what is queued, waiting at most `timeout_s`; what is left is counted as dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            # Each queued record is counted once: here if this takes it, by the thread if it wakes and takes it.
            self._abandoned = True
            left = 0
            with contextlib.suppress(queue.Empty):
                while True:
                    left += isinstance(self._queue.get_nowait(), RequestRecord)
            logger.warning("request log: gave up after %.1fs with %d record(s) unwritten", timeout_s, left)
            self._on_drop(left)
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)  # the writer stops (and closes the file) if it ever wakes
