"""Settings every test process needs before Ray is imported anywhere in it.

Ray reads these at import time: without them a driver swaps 127.0.0.1 for the machine's routable address
and cannot reach a loopback cluster, and token authentication depends on files in the home directory.
"""

from __future__ import annotations

import os

from tests.support.ray_platform import RAY_ENV, REPO

for _name, _value in RAY_ENV.items():
    os.environ.setdefault(_name, _value)
# The models the platform builds (smoke, default) live where RayPlatform's replicas look for them, also when
# pytest runs without `make test` (which exports the same directory).
os.environ.setdefault("HYBRID_LLM_CACHE_DIR", str(REPO / ".cache"))
