"""auth: keys from env and a Secret file, open mode only on request, and bearer checks in constant time."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import pytest

from serve_app import auth
from serve_app.auth import KEYS_ENV, OPEN_ENV, ApiKeys
from serve_app.config import AuthArgs
from serve_app.errors import Unauthenticated


def load(environ: dict[str, str] | None = None, **args: object) -> ApiKeys:
    return ApiKeys.load(AuthArgs(**args), environ=environ or {})  # type: ignore[arg-type]


def keys_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keys"
    path.write_text(text)
    return str(path)


def test_api_keys_from_env_comma_separated():
    keys = load({KEYS_ENV: " k1, ,k2 ,"})
    assert keys.keys == (b"k1", b"k2") and not keys.open
    keys.check("Bearer k1")
    keys.check("Bearer k2")


def test_api_keys_from_file_merged_with_env(tmp_path):
    keys = load({KEYS_ENV: "env-key"}, api_keys_file=keys_file(tmp_path, "file-key-1\n\n  file-key-2  \n"))
    assert keys.keys == (b"env-key", b"file-key-1", b"file-key-2")
    keys.check("Bearer file-key-2")


def test_api_keys_file_may_be_comma_separated(tmp_path):
    # cluster/deploy.sh writes ROUTER_API_KEYS (comma-separated) into the Secret as is
    keys = load({}, api_keys_file=keys_file(tmp_path, "k1,k2\nk3 , \n"))
    assert keys.keys == (b"k1", b"k2", b"k3")
    keys.check("Bearer k1")
    with pytest.raises(Unauthenticated):
        keys.check("Bearer k1,k2")


def test_api_keys_missing_file_warns_and_uses_env(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.auth"):
        keys = load({KEYS_ENV: "env-key"}, api_keys_file=str(tmp_path / "absent"))
    assert keys.keys == (b"env-key",)
    assert "does not exist" in caplog.text


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes"])
def test_api_keys_open_mode_from_env_logs_a_warning(value, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.auth"):
        keys = load({OPEN_ENV: value})
    assert keys.open
    assert "authentication is OFF" in caplog.text
    keys.check(None)
    keys.check("Bearer anything")


def test_api_keys_open_mode_from_args():
    keys = load(allow_unauthenticated=True)
    assert keys.open
    keys.check(None)


@pytest.mark.parametrize("value", ["0", "false", "", "on"])
def test_api_keys_open_mode_needs_an_explicit_yes(value):
    keys = load({OPEN_ENV: value})
    assert not keys.open
    with pytest.raises(Unauthenticated):
        keys.check("Bearer anything")


def test_api_keys_none_configured_refuses_everything_with_explanation(caplog):
    with caplog.at_level(logging.ERROR, logger="serve_app.auth"):
        keys = load({})
    assert "no API keys configured" in caplog.text
    with pytest.raises(Unauthenticated, match="no API keys configured; ask its operator") as info:
        keys.check("Bearer whatever")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "header", [None, "", "k1", "Basic k1", "Token k1", "Bearer", "Bearer ", "Bearer    ", "Bearerk1"]
)
def test_api_keys_missing_or_wrong_scheme(header):
    with pytest.raises(Unauthenticated, match="missing API key"):
        load({KEYS_ENV: "k1"}).check(header)


@pytest.mark.parametrize("header", ["Bearer k2", "Bearer k1x", "Bearer K1", "Bearer k"])
def test_api_keys_wrong_key(header):
    with pytest.raises(Unauthenticated, match="invalid API key"):
        load({KEYS_ENV: "k1"}).check(header)


@pytest.mark.parametrize("header", ["Bearer k1", "bearer k1", "BEARER k1", "Bearer  k1 "])
def test_api_keys_scheme_is_case_insensitive_and_token_trimmed(header):
    load({KEYS_ENV: "k1"}).check(header)


def test_api_keys_compare_every_key_in_constant_time(monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = load({KEYS_ENV: "k1,k2,k3"})
    keys.check("Bearer k1")  # matches the first key, yet all three are compared
    assert compared == [(b"k1", b"k1"), (b"k1", b"k2"), (b"k1", b"k3")]


def _rotate(path: Path, text: str) -> None:
    """As a Kubernetes Secret mount rotates: the new content under a new inode, swapped in atomically."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def test_api_keys_file_rotation_takes_effect_without_a_restart(tmp_path):
    path = Path(keys_file(tmp_path, "old-key\nkept-key\n"))
    keys = load({KEYS_ENV: "env-key"}, api_keys_file=str(path))
    keys.check("Bearer old-key")
    _rotate(path, "kept-key\nnew-key\n")
    with pytest.raises(Unauthenticated, match="invalid API key"):
        keys.check("Bearer old-key")  # revoked: refused on the very next request
    keys.check("Bearer new-key")
    keys.check("Bearer kept-key")
    keys.check("Bearer env-key")


def test_api_keys_file_rewritten_in_place_takes_effect(tmp_path):
    path = Path(keys_file(tmp_path, "key-aaaa\n"))
    keys = load({}, api_keys_file=str(path))
    keys.check("Bearer key-aaaa")
    before = path.stat().st_mtime_ns
    path.write_text("key-bbbb\n")  # same size, same inode
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))  # a coarse clock may not have ticked
    with pytest.raises(Unauthenticated):
        keys.check("Bearer key-aaaa")
    keys.check("Bearer key-bbbb")


def test_api_keys_file_removed_revokes_its_keys_and_keeps_env_keys(tmp_path, caplog):
    path = Path(keys_file(tmp_path, "file-key\n"))
    keys = load({KEYS_ENV: "env-key"}, api_keys_file=str(path))
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="serve_app.auth"), pytest.raises(Unauthenticated):
        keys.check("Bearer file-key")
    keys.check("Bearer env-key")
    assert "does not exist" in caplog.text
    path.write_text("file-key\n")
    keys.check("Bearer file-key")


def test_api_keys_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    keys = load({}, api_keys_file=keys_file(tmp_path, "k1\n"))
    reads: list[Path] = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
    for _ in range(100):
        keys.check("Bearer k1")
    assert reads == []
