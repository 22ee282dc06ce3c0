"""Embeds serve_config.yaml into kuberay/rayservice.yaml as serveConfigV2 and pins its image by digest; nothing else.

Usage: python -m kuberay.render                                 rewrite kuberay/rayservice.yaml in place
       python -m kuberay.render --check                         exit 1 when the embedded copy has drifted
       python -m kuberay.render --image <repo>@sha256:<digest>  also set every Ray container's image
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serve_config.yaml"
RAYSERVICE = REPO / "kuberay" / "rayservice.yaml"

_KEY = "  serveConfigV2: |"
_INDENT = "    "
# An image reference pinned by digest (a tag before the digest is allowed and ignored by the runtime).
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
# The digest committed before a real build exists; cluster/deploy.sh refuses to apply it.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
_IMAGE_LINE = re.compile(r"^(\s+image: )(\S+)$", re.M)


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


def images(rayservice_text: str) -> list[str]:
    """Every container image the RayService names, in file order."""
    return [m.group(2) for m in _IMAGE_LINE.finditer(rayservice_text)]


def pin_image(rayservice_text: str, image: str) -> str:
    """Return rayservice_text with every container image set to image, which must be pinned by digest."""
    if not DIGEST_REF.match(image):
        raise ValueError(f"{image!r} is not pinned by digest (<repository>[:tag]@sha256:<64 hex>)")
    return _IMAGE_LINE.sub(lambda m: m.group(1) + image, rayservice_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of writing when out of date")
    parser.add_argument("--image", help="pin every Ray container to this <repository>[:tag]@sha256:<digest>")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if args.image:
        try:
            wanted = pin_image(wanted, args.image)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
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
