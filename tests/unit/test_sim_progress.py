"""The live progress table: sent, answered, errors, local share, p95 TTFT per backend, USD so far."""

from __future__ import annotations

from rich.console import Console

from serve_app.records import RequestRecord
from serve_app.sim.faults import FaultEvent
from serve_app.sim.progress import Progress


def _record(backend: str | None, **kw: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": "r", "source": "sim", "t_start": 0.0, "t_end": 1.0, "api": "openai", "stream": True,
        "model_requested": "auto", "prompt_chars": 10, "prompt_tokens_estimated": None, "max_tokens": 16,
        "has_tools": False, "has_images": False, "backend": backend, "status": 200,
    }  # fmt: skip
    return RequestRecord(**(base | kw))  # type: ignore[arg-type]


def test_progress_table_shows_the_runs_figures():
    progress = Progress(enabled=True, title="mixed")
    for _ in range(5):
        progress.sent()
    progress.answered(_record("local", ttft_s=0.1, cost_usd=0.001))
    progress.answered(_record("local", ttft_s=0.3, cost_usd=0.001))
    progress.answered(_record("local", ttft_s=0.2))
    progress.answered(_record("cloud", ttft_s=0.5, cost_usd=0.0125))
    progress.answered(_record(None, status=503, outcome="error"))
    progress.fault(FaultEvent("kill_model", 20.0))
    console = Console(record=True, width=200)
    console.print(progress._table())
    text = console.export_text()
    row = next(line for line in text.splitlines() if "$" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[1:] == ["5", "5", "1", "75%", "290 ms", "500 ms", "$0.0145"]
    assert "kill_model@20s" in text


def test_progress_disabled_prints_nothing(capsys):
    progress = Progress(enabled=False, title="x")
    with progress.live():
        progress.note("hidden")
    assert capsys.readouterr() == ("", "")
