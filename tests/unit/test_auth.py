"""auth: keys from env and a Secret file, their tenants, open mode only on request, constant-time checks."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import pytest

from serve_app import tenants
from serve_app.auth import KEYS_ENV, OPEN_ENV, ApiKeys
from serve_app.config import AuthArgs
from serve_app.errors import Unauthenticated
from serve_app.tenants import key_digest


def load(environ: dict[str, str] | None = None, **args: object) -> ApiKeys:
    return ApiKeys.load(AuthArgs(**args), environ=environ or {})  # type: ignore[arg-type]


def digests(keys: ApiKeys) -> tuple[bytes, ...]:
    return tuple(entry.digest for entry in keys.table.entries)


def hashed(*plain: str) -> tuple[bytes, ...]:
    return tuple(key_digest(k) for k in plain)


def keys_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keys"
    path.write_text(text)
    return str(path)


def test_api_keys_from_env_comma_separated():
    keys = load({KEYS_ENV: " k1, ,k2 ,"})
    assert digests(keys) == hashed("k1", "k2") and not keys.open
    keys.check("Bearer k1")
    keys.check("Bearer k2")


def test_api_keys_from_file_merged_with_env(tmp_path):
    keys = load({KEYS_ENV: "env-key"}, api_keys_file=keys_file(tmp_path, "file-key-1\n\n  file-key-2  \n"))
    assert digests(keys) == hashed("env-key", "file-key-1", "file-key-2")
    keys.check("Bearer file-key-2")


def test_api_keys_file_may_be_comma_separated(tmp_path):
    # cluster/deploy.sh writes ROUTER_API_KEYS (comma-separated) into the Secret as is
    keys = load({}, api_keys_file=keys_file(tmp_path, "k1,k2\nk3 , \n"))
    assert digests(keys) == hashed("k1", "k2", "k3")
    keys.check("Bearer k1")
    with pytest.raises(Unauthenticated):
        keys.check("Bearer k1,k2")


def test_api_keys_missing_file_warns_and_uses_env(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.auth"):
        keys = load({KEYS_ENV: "env-key"}, api_keys_file=str(tmp_path / "absent"))
    assert digests(keys) == hashed("env-key")
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

    monkeypatch.setattr(tenants.hmac, "compare_digest", spy)
    keys = load({KEYS_ENV: "k1,k2,k3"})
    keys.check("Bearer k1")  # matches the first key, yet all three are compared, as digests: no key is kept
    k1, k2, k3 = hashed("k1", "k2", "k3")
    assert compared == [(k1, k1), (k1, k2), (k1, k3)]


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


# ---- tenants ------------------------------------------------------------------------------------------------


def test_api_keys_env_entry_with_a_name_gives_its_tenant():
    keys = load({KEYS_ENV: "team-a:ka, kb ,team_b:kc"})
    assert keys.check("Bearer ka") == "team-a"
    assert keys.check("Bearer kb") == "default"
    assert keys.check("Bearer kc") == "team_b"
    with pytest.raises(Unauthenticated):
        keys.check("Bearer team-a:ka")  # the name is not part of the key


def test_api_keys_colon_after_an_invalid_name_is_part_of_the_key():
    keys = load({KEYS_ENV: "not a name:secret"})
    assert keys.check("Bearer not a name:secret") == "default"


def test_api_keys_line_file_with_tenants(tmp_path):
    keys = load({}, api_keys_file=keys_file(tmp_path, "alpha:k1\nk2,beta:k3\n"))
    assert [keys.check(f"Bearer {k}") for k in ("k1", "k2", "k3")] == ["alpha", "default", "beta"]


def test_api_keys_yaml_file_gives_tenants_hashes_and_limits(tmp_path):
    text = f"""
tenants:
  alpha:
    keys: [k1, k2]
    limits: {{requests_per_minute: 5, usd_per_day: {{usd: 2.5, over: local}}, usd_per_month: 40}}
  beta:
    key_sha256: ["{key_digest("k3").hex()}"]
"""
    keys = load({KEYS_ENV: "gamma:k4"}, api_keys_file=keys_file(tmp_path, text))
    assert [keys.check(f"Bearer {k}") for k in ("k1", "k2", "k3", "k4")] == ["alpha", "alpha", "beta", "gamma"]
    limits = keys.file_limits("alpha")
    assert limits is not None and limits.requests_per_minute == 5
    assert limits.usd_per_day is not None and (limits.usd_per_day.usd, limits.usd_per_day.over) == (2.5, "local")
    assert limits.usd_per_month is not None and (limits.usd_per_month.usd, limits.usd_per_month.over) == (40, "reject")
    assert keys.file_limits("beta") is None


@pytest.mark.parametrize(
    "text",
    [
        "tenants:\n  alpha:\n    keyz: [k1]\n",
        "tenants:\n  alpha:\n    key_sha256: [abc]\n",
        "tenants:\n  'bad name':\n    keys: [k1]\n",
        "tenants:\n  alpha:\n    keys: [k1]\n    limits: {requests_per_minute: 0}\n",
    ],
)
def test_api_keys_invalid_yaml_file_trusts_none_of_its_keys(tmp_path, caplog, text):
    with caplog.at_level(logging.ERROR, logger="serve_app.auth"):
        keys = load({KEYS_ENV: "env-key"}, api_keys_file=keys_file(tmp_path, text))
    assert "is invalid" in caplog.text
    with pytest.raises(Unauthenticated):
        keys.check("Bearer k1")
    assert keys.check("Bearer env-key") == "default"


def test_api_keys_rotation_moves_a_key_to_another_tenant_and_its_limits(tmp_path):
    path = Path(keys_file(tmp_path, "tenants:\n  alpha:\n    keys: [k1]\n    limits: {requests_per_minute: 1}\n"))
    keys = load({}, api_keys_file=str(path))
    assert keys.check("Bearer k1") == "alpha"
    _rotate(path, "tenants:\n  beta:\n    keys: [k1]\n    limits: {requests_per_minute: 9}\n")
    assert keys.check("Bearer k1") == "beta"
    limits = keys.file_limits("beta")
    assert keys.file_limits("alpha") is None and limits is not None and limits.requests_per_minute == 9


def test_api_keys_open_mode_names_a_presented_key_tenant():
    keys = load({OPEN_ENV: "1", KEYS_ENV: "alpha:k1"})
    assert keys.check(None) == "default"
    assert keys.check("Bearer nope") == "default"
    assert keys.check("Bearer k1") == "alpha"
