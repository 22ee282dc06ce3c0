"""Fixtures for the offline deploy tests (helpers live in deploy_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import REPO, load_yaml_docs


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def rayservice() -> dict:
    (doc,) = load_yaml_docs(REPO / "kuberay" / "rayservice.yaml")
    return doc
