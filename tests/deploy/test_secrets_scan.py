"""No plaintext credential in the manifests, values, scripts or dashboards: secrets only by reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO

SCANNED = ("kuberay", "cluster", "observability")
SUFFIXES = {".yaml", ".yml", ".json", ".sh", ".py", ".env", ""}

# Well-known credential shapes (Anthropic, Langfuse, AWS, GitHub, Hugging Face, OpenAI, private keys).
TOKEN_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_-]{10,}"),
    re.compile(r"\b[ps]k-lf-[0-9a-f]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\bsk-[A-Za-z0-9]{32,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"Basic [A-Za-z0-9+/]{16,}={0,2}"),
]
# Keys whose value would be a credential; their values must be references or empty.
SENSITIVE_KEY = re.compile(
    r"(password|passwd|secret|token|api[_-]?key|apikey|salt|encryption[_-]?key|credentials?|private[_-]?key|auth)$",
    re.I,
)
# Values that are references, not credentials.
REFERENCE = re.compile(r"^(\$\{env:[A-Z_]+\}|\$[A-Z_]+|<[a-z -]+>)$")
# Keys that name a Secret or a key inside one, or are booleans/settings, not credentials.
NOT_A_CREDENTIAL = re.compile(
    r"(existingSecret|secretName|secretKeyRef|SecretKey|PasswordKey|userKey|passwordKey|Key$|enableAuth|"
    r"auth\.enabled|usersExistingSecret|existingConfigSecret|configSecret|tokenSecret)",
)


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        files += [
            p for p in (REPO / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return sorted(files)


def token_findings(text: str) -> list[str]:
    return [m.group(0)[:12] + "..." for pattern in TOKEN_PATTERNS for m in pattern.finditer(text)]


def value_findings(node: object, path: str = "") -> list[str]:
    """Sensitive-looking keys holding a literal (non-reference) value, anywhere in a YAML/JSON tree."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            # Langfuse's `{value: ..., secretKeyRef: ...}` shape: `value` inherits its parent's key.
            named = path.rsplit(".", 1)[-1] if key == "value" else str(key)
            literal = isinstance(value, str | int | float) and not isinstance(value, bool)
            if literal and SENSITIVE_KEY.search(named) and not NOT_A_CREDENTIAL.search(named):
                text = str(value).strip()
                if text and not REFERENCE.match(text):
                    found.append(where)
            found += value_findings(value, where)
        # env entries: {name: SOMETHING_SECRET, value: literal}
        name = node.get("name")
        if isinstance(name, str) and SENSITIVE_KEY.search(name.lower()) and str(node.get("value", "")).strip():
            found.append(f"{path}(env {name})")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += value_findings(item, f"{path}[{i}]")
    return found


def _tree(path: Path) -> list[object]:
    if path.suffix in {".yaml", ".yml"}:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    if path.suffix == ".json":
        return [yaml.safe_load(path.read_text())]
    return []


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_plaintext_credentials(path):
    text = path.read_text(errors="replace")
    assert token_findings(text) == []
    findings = [f for doc in _tree(path) for f in value_findings(doc)]
    # The RayService embeds serve_config.yaml: scan it as YAML too.
    for doc in _tree(path):
        if isinstance(doc, dict) and doc.get("kind") == "RayService":
            findings += value_findings(yaml.safe_load(doc["spec"]["serveConfigV2"]), "serveConfigV2")
    assert findings == []


def test_scanner_finds_planted_credentials():
    planted = yaml.safe_load(
        """
grafana: {adminPassword: hunter2}
langfuse: {salt: {value: changeme}}
env:
  - {name: ANTHROPIC_API_KEY, value: not-a-ref}
  - {name: LANGFUSE_SECRET_KEY, valueFrom: {secretKeyRef: {name: s, key: secret-key}}}
postgresql: {auth: {existingSecret: langfuse, password: pw}}
"""
    )
    assert sorted(value_findings(planted)) == [
        "env[0](env ANTHROPIC_API_KEY)",
        "grafana.adminPassword",
        "langfuse.salt.value",
        "postgresql.auth.password",
    ]
    assert token_findings("key: sk-ant-api03-abcdefghijklmnop and pk-lf-0123456789abcdef") == [
        "sk-ant-api03...",
        "pk-lf-012345...",
    ]
