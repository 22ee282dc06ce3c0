"""`promtool check rules` and `promtool test rules` on the PrometheusRule's groups (Debian package `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO

from tests.support.prometheus import require_binary, rule_expressions, rule_files, rule_groups

RULES = REPO / "observability" / "rules"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")  # fails (not skips) with the install command when missing


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for path in rule_files(RULES):
        plain = tmp_path / path.name.replace(".yaml", ".yml")
        plain.write_text(yaml.safe_dump({"groups": rule_groups(path)}, sort_keys=False))
    for test in RULES.glob("*.test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    return tmp_path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def test_promtool_check_rules(promtool, workdir):
    files = sorted(str(p) for p in workdir.glob("*.yml"))
    assert files
    done = _run([promtool, "check", "rules", *files], workdir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules(promtool, workdir):
    tests = sorted(str(p) for p in workdir.glob("*.test.yaml"))
    assert tests
    done = _run([promtool, "test", "rules", *tests], workdir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_can_fail(promtool, workdir):
    test = workdir / "hybrid-llm.rules.test.yaml"
    test.write_text(test.read_text().replace("value: 30\n", "value: 31\n"))
    done = _run([promtool, "test", "rules", str(test)], workdir)
    assert done.returncode != 0


def test_every_alert_has_a_unit_test_and_severity():
    tested = "\n".join(p.read_text() for p in RULES.glob("*.test.yaml"))
    alerts = [e for path in rule_files(RULES) for e in rule_expressions(path) if e.kind == "alert"]
    assert len(alerts) >= 6
    for alert in alerts:
        name = alert.location.split("/")[-1]
        assert f"alertname: {name}\n" in tested, f"{name} has no promtool test"
    for group in rule_groups(RULES / "hybrid-llm.rules.yaml"):
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning"}
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]
