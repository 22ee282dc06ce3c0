"""The integration harness stops what its cluster started, also the processes that name the GCS by the machine's
address (Ray's client server), also when `serve shutdown` cannot reach the cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_platform import RayPlatform
from tests.support.waiting import wait_for

_SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[RayPlatform]:
    ray = RayPlatform(workdir=tmp_path)
    yield ray
    shutil.rmtree(ray.ray_tmp, ignore_errors=True)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _SLEEP, *args])


def test_processes_that_name_the_gcs_by_any_address_or_the_temp_dir_are_the_clusters(platform: RayPlatform) -> None:
    ours = [
        _spawn(f"--address=192.0.2.2:{platform.gcs_port}"),  # the client server: the node's address, not loopback
        _spawn(f"--temp-dir={platform.ray_tmp}"),
    ]
    theirs = [
        _spawn(f"--address=192.0.2.2:{platform.gcs_port}1"),  # another cluster's port that merely starts alike
        _spawn("--temp-dir=/tmp/hl-ray-another"),
    ]
    try:
        found = {p.pid for p in platform._own_processes()}
        assert {p.pid for p in ours} <= found
        assert not {p.pid for p in theirs} & found
    finally:
        for process in ours + theirs:
            process.kill()
            process.wait()


def test_stop_ends_the_clusters_processes_when_serve_cannot_be_reached(platform: RayPlatform) -> None:
    """Nothing listens on the dashboard port: `serve shutdown` fails, and the processes are stopped all the same."""
    process = _spawn(f"--gcs-address=127.0.0.1:{platform.gcs_port}")
    try:
        platform.stop()
        wait_for(lambda: process.poll() is not None, "the cluster's process to end", timeout=30)
        assert not platform.ray_tmp.exists()
    finally:
        process.kill()
        process.wait()
