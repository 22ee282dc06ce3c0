"""Generates the offline smoke model: a tiny random Llama with a trained byte-level BPE tokenizer.

It exists so the platform runs end to end with no model download. Its output is random tokens. Only the
model builder imports this (torch and transformers are engine-side dependencies).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SMOKE_MODEL_VERSION = "v1"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|eot|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = [
    "<|begin_of_text|>",
    "<|eot|>",
    "<pad>",
    "<|system|>",
    "<|developer|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
]
_CORPUS = (
    "The router sends each chat request to the local model or to the cloud model. "
    "Tokens, latency and cost are measured for every request. Hello world, how are you today? "
    "A quick brown fox jumps over the lazy dog. 0123456789 +-*/=()[]{}<>.,;:!?'\" "
)


def default_smoke_model_dir() -> Path:
    """Where the smoke model lives: $HYBRID_LLM_CACHE_DIR or ~/.cache/hybrid-llm, per version."""
    root = os.environ.get("HYBRID_LLM_CACHE_DIR") or os.path.join(Path.home(), ".cache", "hybrid-llm")
    return Path(root) / f"smoke-model-{SMOKE_MODEL_VERSION}"


def ensure_smoke_model(target: Path | None = None) -> Path:
    """Builds the smoke model at `target` unless it is already there; safe against concurrent callers."""
    target = target or default_smoke_model_dir()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smoke-", dir=target.parent))
    try:
        _build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.warning("built the smoke model at %s: its output is RANDOM tokens, not language", target)
    return target


def _build(path: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([_CORPUS] * 40, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: the smallest the CPU attention backend supports
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
