"""Bearer API keys for the /v1 routes: loaded once from env and a mounted Secret file, compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve_app.config import AuthArgs
from serve_app.errors import Unauthenticated

logger = logging.getLogger(__name__)

KEYS_ENV = "HYBRID_LLM_API_KEYS"
OPEN_ENV = "HYBRID_LLM_ALLOW_UNAUTHENTICATED"


@dataclass(frozen=True)
class ApiKeys:
    keys: tuple[bytes, ...]
    open: bool

    @classmethod
    def load(cls, args: AuthArgs, environ: Mapping[str, str] = os.environ) -> ApiKeys:
        keys = [k.strip() for k in environ.get(KEYS_ENV, "").split(",") if k.strip()]
        if args.api_keys_file:
            path = Path(args.api_keys_file)
            if path.is_file():
                # One key per line or comma-separated (as ROUTER_API_KEYS is written into the Secret); bearer
                # tokens never contain commas.
                keys += [k.strip() for k in path.read_text().replace(",", "\n").splitlines() if k.strip()]
            else:
                logger.warning("api_keys_file %s does not exist; using only %s", path, KEYS_ENV)
        is_open = args.allow_unauthenticated or environ.get(OPEN_ENV, "").lower() in ("1", "true", "yes")
        if is_open:
            logger.warning("authentication is OFF: /v1 routes accept requests without an API key (%s)", OPEN_ENV)
        elif not keys:
            logger.error("no API keys configured (%s or auth.api_keys_file): every /v1 request gets 401", KEYS_ENV)
        return cls(keys=tuple(k.encode() for k in keys), open=is_open)

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
        if not self.keys:
            raise Unauthenticated("this server has no API keys configured; ask its operator for one")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        candidate = token.strip().encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated("invalid API key")
