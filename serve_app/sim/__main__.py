"""Entry point of `python -m serve_app.sim` (see serve_app.sim.cli)."""

import sys

from serve_app.sim.cli import main

sys.exit(main())
