"""Offline mode: the stand-in starts (once) without ANTHROPIC_API_KEY, never with it, and `stop` ends it."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest

from serve_app.sim import offline
from tests.support.prometheus import free_port


def _env(capsys: pytest.CaptureFixture[str], state: object, port: int) -> tuple[str, str]:
    offline.main(["env", "--state", str(state), "--port", str(port)])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_offline_env_starts_the_standin_once_and_stop_ends_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    port = free_port()
    try:
        out, err = _env(capsys, tmp_path, port)
        url = f"http://127.0.0.1:{port}"
        assert (
            out.strip()
            == f"export ANTHROPIC_API_KEY=offline-standin ANTHROPIC_BASE_URL={url} HYBRID_LLM_CLOUD_STANDIN=1"
        )
        assert "OFFLINE MODE" in err and "not Claude" in err
        pid = int((tmp_path / "standin.pid").read_text())
        assert (tmp_path / "standin-url").read_text().strip() == url
        with urllib.request.urlopen(url + "/") as response:
            assert b"not Claude" in response.read()
        _env(capsys, tmp_path, port)
        assert int((tmp_path / "standin.pid").read_text()) == pid  # reused, not a second process
    finally:
        assert offline.stop(tmp_path) is True
    assert not (tmp_path / "standin-url").exists()
    with pytest.raises(ChildProcessError):
        for _ in range(200):  # SIGTERM was sent: poll (up to 20 s) until the child exited and was reaped
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                os.waitpid(pid, 0)
            time.sleep(0.1)


def test_offline_never_with_an_api_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    (tmp_path / "standin-url").write_text("http://127.0.0.1:1\n")
    out, _ = _env(capsys, tmp_path, free_port())
    assert out == ""
    assert not (tmp_path / "standin.pid").exists() and not (tmp_path / "standin-url").exists()
