"""`pip install -e .` builds without a single warning (setuptools turns its deprecations into failures later)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_BUILD = """
import pathlib, sys, tempfile, warnings
from setuptools import build_meta
from setuptools.warnings import SetuptoolsWarning
warnings.simplefilter("error", SetuptoolsWarning)  # deprecations of the project's own configuration included
out = tempfile.mkdtemp()
name = build_meta.prepare_metadata_for_build_editable(out)
sys.stdout.write(pathlib.Path(out, name, "METADATA").read_text())
build_meta.build_editable(tempfile.mkdtemp())  # what `pip install -e .` runs; its strategy warns or not
"""


def test_editable_build_is_warning_free_with_an_spdx_license(tmp_path):
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "serve_app", tmp_path / "serve_app", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-c", _BUILD], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "License-Expression: Apache-2.0" in result.stdout.splitlines()
    assert "Warning" not in result.stderr, result.stderr[-3000:]
