"""Bearer API keys for the /v1 routes: from env and a mounted Secret file (re-read when it changes), constant-time.

The file is checked with one `stat` per key check (inode, mtime, size): a rotated Kubernetes Secret (its mount
swaps a symlink) or a rewritten file takes effect on the next request, and a revoked key gets 401 then, with no
restart.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from serve_app.config import AuthArgs
from serve_app.errors import Unauthenticated

logger = logging.getLogger(__name__)

KEYS_ENV = "HYBRID_LLM_API_KEYS"
OPEN_ENV = "HYBRID_LLM_ALLOW_UNAUTHENTICATED"

_Signature = tuple[int, int, int, int] | None  # (device, inode, mtime ns, size) of the keys file; None: absent


class ApiKeys:
    def __init__(self, *, env_keys: tuple[bytes, ...], path: Path | None, open: bool) -> None:
        self._env_keys = env_keys
        self._path = path
        self._file_keys: tuple[bytes, ...] = ()
        self._signature: _Signature = None
        self.open = open
        self._refresh(initial=True)

    @classmethod
    def load(cls, args: AuthArgs, environ: Mapping[str, str] = os.environ) -> ApiKeys:
        env_keys = [k.strip() for k in environ.get(KEYS_ENV, "").split(",") if k.strip()]
        path = Path(args.api_keys_file) if args.api_keys_file else None
        is_open = args.allow_unauthenticated or environ.get(OPEN_ENV, "").lower() in ("1", "true", "yes")
        keys = cls(env_keys=tuple(k.encode() for k in env_keys), path=path, open=is_open)
        if is_open:
            logger.warning("authentication is OFF: /v1 routes accept requests without an API key (%s)", OPEN_ENV)
        elif not keys.keys:
            logger.error("no API keys configured (%s or auth.api_keys_file): every /v1 request gets 401", KEYS_ENV)
        return keys

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._env_keys + self._file_keys

    def _refresh(self, *, initial: bool = False) -> None:
        """Re-reads the keys file when its identity or content changed since the last read (one `stat`)."""
        if self._path is None:
            return
        try:
            st = os.stat(self._path)  # follows symlinks: a Secret mount's swap changes the inode
            signature: _Signature = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        if signature == self._signature and not initial:
            return
        self._signature = signature
        if signature is None:
            self._file_keys = ()
            logger.warning("api_keys_file %s does not exist; using only %s", self._path, KEYS_ENV)
            return
        try:
            # One key per line or comma-separated (as ROUTER_API_KEYS is written into the Secret); bearer tokens
            # never contain commas.
            text = self._path.read_text()
        except (OSError, UnicodeDecodeError):
            self._file_keys = ()
            logger.warning("api_keys_file %s is unreadable; using only %s", self._path, KEYS_ENV)
            return
        self._file_keys = tuple(k.strip().encode() for k in text.replace(",", "\n").splitlines() if k.strip())
        if not initial:
            logger.info("api_keys_file %s changed: %d key(s) now", self._path, len(self._file_keys))

    def allows(self, authorization: str | None) -> bool:
        """Whether `check` would pass (for endpoints that answer less, not 401, without a key)."""
        try:
            self.check(authorization)
        except Unauthenticated:
            return False
        return True

    def check(self, authorization: str | None) -> None:
        """Raises Unauthenticated unless `authorization` is `Bearer <a configured key>`."""
        if self.open:
            return
        self._refresh()
        keys = self.keys
        if not keys:
            raise Unauthenticated("this server has no API keys configured; ask its operator for one")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        candidate = token.strip().encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated("invalid API key")
