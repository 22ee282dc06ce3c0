"""Live progress of a run on the terminal (rich): sent, answered, errors, local share, p95 TTFT per backend, USD.

Only a view: it reads what the runner hands it and never changes a record. Disabled, it prints nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live
from rich.table import Table

from serve_app.records import RequestRecord
from serve_app.sim.faults import FaultEvent
from serve_app.sim.summary import percentile


class Progress:
    def __init__(self, *, enabled: bool, title: str) -> None:
        self.enabled = enabled
        self.title = title
        self.console = Console(stderr=True)
        self.start = time.monotonic()
        self.sent_n = self.answered_n = self.errors = self.local = self.cloud = 0
        self.usd = 0.0
        self.ttft: dict[str, deque[float]] = {"local": deque(maxlen=500), "cloud": deque(maxlen=500)}
        self.faults: list[str] = []
        self._live: Live | None = None

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with Live(self._table(), console=self.console, refresh_per_second=4, get_renderable=self._table) as live:
            self._live = live
            yield
        self._live = None

    def sent(self) -> None:
        self.sent_n += 1

    def answered(self, record: RequestRecord) -> None:
        self.answered_n += 1
        if record.outcome != "ok":
            self.errors += 1
        if record.backend == "local":
            self.local += 1
        elif record.backend == "cloud":
            self.cloud += 1
        if record.backend in self.ttft and record.ttft_s is not None:
            self.ttft[record.backend].append(record.ttft_s)
        self.usd += record.cost_usd or 0.0

    def fault(self, event: FaultEvent) -> None:
        self.faults.append(f"{time.monotonic() - self.start:5.1f}s {event}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def _table(self) -> Table:
        routed = self.local + self.cloud
        table = Table(title=self.title, show_header=True, header_style="bold")
        for column in ("elapsed", "sent", "answered", "errors", "local share", "p95 TTFT local", "p95 TTFT cloud"):
            table.add_column(column, justify="right")
        table.add_column("USD so far", justify="right")
        table.add_row(
            f"{time.monotonic() - self.start:.0f}s",
            str(self.sent_n),
            str(self.answered_n),
            str(self.errors),
            f"{self.local / routed:.0%}" if routed else "-",
            _ms(percentile(self.ttft["local"], 95)),
            _ms(percentile(self.ttft["cloud"], 95)),
            f"${self.usd:.4f}",
        )
        if self.faults:
            table.caption = "faults: " + "; ".join(self.faults[-3:])
        return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"
