"""Embeds serve_config.yaml into kuberay/rayservice.yaml as serveConfigV2; never edits anything else.

Usage: python -m kuberay.render            rewrite kuberay/rayservice.yaml in place
       python -m kuberay.render --check    exit 1 when the embedded copy has drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serve_config.yaml"
RAYSERVICE = REPO / "kuberay" / "rayservice.yaml"

_KEY = "  serveConfigV2: |"
_INDENT = "    "


def render(rayservice_text: str, serve_config_text: str) -> str:
    """Return rayservice_text with the serveConfigV2 block replaced by serve_config_text, indented."""
    lines = rayservice_text.splitlines()
    try:
        start = lines.index(_KEY)
    except ValueError:
        raise ValueError(f"{RAYSERVICE.name} has no top-level spec line {_KEY!r}") from None
    end = start + 1
    # The block runs until the first non-empty line indented less than the block itself.
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(_INDENT)):
        end += 1
    block = [(_INDENT + line) if line.strip() else "" for line in serve_config_text.rstrip("\n").splitlines()]
    return "\n".join([*lines[: start + 1], *block, *lines[end:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of writing when out of date")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if current == wanted:
        print(f"{RAYSERVICE.relative_to(REPO)} is up to date")
        return 0
    if args.check:
        print(f"{RAYSERVICE.relative_to(REPO)} is out of date: run `python -m kuberay.render`", file=sys.stderr)
        return 1
    RAYSERVICE.write_text(wanted)
    print(f"wrote {RAYSERVICE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
