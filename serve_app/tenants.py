"""Tenants' keys: which tenant a bearer key belongs to, parsed from env entries and key files, held as digests; pure.

Two formats, told apart by content. Lines (the original format, still valid): one `KEY` or `TENANT:KEY` per line
or comma-separated; a key without a tenant belongs to `default`. YAML: a mapping with a `tenants:` key, each tenant
with `keys` (plain keys), `key_sha256` (hex SHA-256 of keys, so the file need not hold them) and optional `limits`.
Only SHA-256 digests are kept; a presented key is hashed once and compared with every digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.config import DEFAULT_TENANT, TENANT_NAME_PATTERN, TenantLimits

_TENANT = re.compile(TENANT_NAME_PATTERN)


def key_digest(key: str | bytes) -> bytes:
    """The SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    tenant: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Key digests with their tenants, and the limits a key file gives tenants (they override the config's)."""

    entries: tuple[KeyEntry, ...] = ()
    limits: Mapping[str, TenantLimits] = field(default_factory=dict)

    def __add__(self, other: KeyTable) -> KeyTable:
        return KeyTable(self.entries + other.entries, {**self.limits, **other.limits})

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.tenant for entry in self.entries))

    def match(self, key: str | bytes) -> str | None:
        """The tenant of `key`, or None. Every digest is compared, so timing tells nothing about near matches."""
        candidate = key_digest(key)
        tenant: str | None = None
        for entry in self.entries:
            if hmac.compare_digest(candidate, entry.digest):
                tenant = entry.tenant
        return tenant


def parse_entries(entries: Iterable[str]) -> KeyTable:
    """`KEY` or `TENANT:KEY` entries (blank ones skipped). A prefix that is not a valid tenant name is part of the
    key (keys may contain colons), so `TENANT` is the text before the first colon only when it is a valid name."""
    parsed: list[KeyEntry] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        name, colon, key = entry.partition(":")
        if colon and key.strip() and _TENANT.match(name.strip()):
            parsed.append(KeyEntry(name.strip(), key_digest(key.strip())))
        else:
            parsed.append(KeyEntry(DEFAULT_TENANT, key_digest(entry)))
    return KeyTable(tuple(parsed))


def parse_env(value: str) -> KeyTable:
    """HYBRID_LLM_API_KEYS: comma-separated entries."""
    return parse_entries(value.split(","))


class _FileTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(default_factory=list)
    key_sha256: list[str] = Field(default_factory=list)
    limits: TenantLimits | None = None


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, _FileTenant]


def parse_key_file(text: str) -> KeyTable:
    """A keys file in either format; raises ValueError for a YAML file that does not validate."""
    document = _yaml_mapping(text)
    if document is None or "tenants" not in document:
        return parse_entries(text.replace(",", "\n").splitlines())
    try:
        parsed = _KeyFile.model_validate(document)
    except ValidationError as exc:
        raise ValueError(f"keys file: {exc.errors(include_url=False)[0]['msg']} at {exc.errors()[0]['loc']}") from None
    entries: list[KeyEntry] = []
    limits: dict[str, TenantLimits] = {}
    for name, tenant in parsed.tenants.items():
        if not _TENANT.match(name):
            raise ValueError(f"keys file: tenant name {name!r} must match {TENANT_NAME_PATTERN}")
        entries += [KeyEntry(name, key_digest(key.strip())) for key in tenant.keys if key.strip()]
        for hexdigest in tenant.key_sha256:
            try:
                digest = bytes.fromhex(hexdigest.strip())
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"keys file: tenant {name!r} has a key_sha256 that is not 64 hex digits")
            entries.append(KeyEntry(name, digest))
        if tenant.limits is not None:
            limits[name] = tenant.limits
    return KeyTable(tuple(entries), limits)


def _yaml_mapping(text: str) -> dict[str, Any] | None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return document if isinstance(document, dict) else None
