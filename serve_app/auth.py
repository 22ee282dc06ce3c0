"""Bearer API keys for the /v1 routes and the tenant each belongs to: from env and a mounted Secret file.

Keys are held as SHA-256 digests and compared in constant time (serve_app.tenants parses both formats).

The file is checked with one `stat` per key check (inode, mtime, size): a rotated Kubernetes Secret (its mount
swaps a symlink) or a rewritten file takes effect on the next request, and a revoked key gets 401 then, with no
restart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from serve_app.config import DEFAULT_TENANT, AuthArgs, TenantLimits
from serve_app.errors import Unauthenticated
from serve_app.tenants import KeyTable, parse_env, parse_key_file

logger = logging.getLogger(__name__)

KEYS_ENV = "HYBRID_LLM_API_KEYS"
OPEN_ENV = "HYBRID_LLM_ALLOW_UNAUTHENTICATED"

_Signature = tuple[int, int, int, int] | None  # (device, inode, mtime ns, size) of the keys file; None: absent


class ApiKeys:
    def __init__(self, *, env_keys: KeyTable, path: Path | None, open: bool) -> None:
        self._env_keys = env_keys
        self._path = path
        self._file_keys = KeyTable()
        self._signature: _Signature = None
        self.open = open
        self._refresh(initial=True)

    @classmethod
    def load(cls, args: AuthArgs, environ: Mapping[str, str] = os.environ) -> ApiKeys:
        path = Path(args.api_keys_file) if args.api_keys_file else None
        is_open = args.allow_unauthenticated or environ.get(OPEN_ENV, "").lower() in ("1", "true", "yes")
        keys = cls(env_keys=parse_env(environ.get(KEYS_ENV, "")), path=path, open=is_open)
        if is_open:
            logger.warning("authentication is OFF: /v1 routes accept requests without an API key (%s)", OPEN_ENV)
        elif not keys.table.entries:
            logger.error("no API keys configured (%s or auth.api_keys_file): every /v1 request gets 401", KEYS_ENV)
        return keys

    @property
    def table(self) -> KeyTable:
        """Every key's digest and tenant (env first, then the file) and the file's tenant limits."""
        return self._env_keys + self._file_keys

    def file_limits(self, tenant: str) -> TenantLimits | None:
        """The limits the keys file gives `tenant` (they override the config's), as last read."""
        return self._file_keys.limits.get(tenant)

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
            self._file_keys = KeyTable()
            logger.warning("api_keys_file %s does not exist; using only %s", self._path, KEYS_ENV)
            return
        try:
            # One key per line or comma-separated (as ROUTER_API_KEYS is written into the Secret); bearer tokens
            # never contain commas.
            text = self._path.read_text()
            self._file_keys = parse_key_file(text)
        except (OSError, UnicodeDecodeError):
            self._file_keys = KeyTable()
            logger.warning("api_keys_file %s is unreadable; using only %s", self._path, KEYS_ENV)
            return
        except ValueError as exc:  # a YAML file that does not validate: none of its keys is trusted
            self._file_keys = KeyTable()
            logger.error("api_keys_file %s is invalid (%s); using only %s", self._path, exc, KEYS_ENV)
            return
        if not initial:
            logger.info("api_keys_file %s changed: %d key(s) now", self._path, len(self._file_keys.entries))

    def allows(self, authorization: str | None) -> bool:
        """Whether `check` would pass (for endpoints that answer less, not 401, without a key)."""
        try:
            self.check(authorization)
        except Unauthenticated:
            return False
        return True

    def check(self, authorization: str | None) -> str:
        """The tenant of the key in `authorization` (`Bearer <key>`); raises Unauthenticated unless it is a configured
        key. In open mode every request is `default`'s unless it presents a configured key."""
        if not self.open:
            self._refresh()
        table = self.table
        scheme, _, token = (authorization or "").partition(" ")
        presented = scheme.lower() == "bearer" and bool(token.strip())
        tenant = table.match(token.strip()) if presented else None
        if self.open:
            return tenant or DEFAULT_TENANT
        if not table.entries:
            raise Unauthenticated("this server has no API keys configured; ask its operator for one")
        if not presented:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant
