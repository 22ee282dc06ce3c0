"""Token usage as one value, and pure accumulators over OpenAI chunks and Anthropic stream events.

Buckets are exclusive (what Langfuse and the price table need): `input` excludes cached tokens, which are
counted once in `cache_read` or `cache_creation`. Every provider reports cumulative counts, so accumulators
assign what they see and never add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All input tokens, cached ones included (OpenAI `prompt_tokens`, GenAI `gen_ai.usage.input_tokens`)."""
        return self.input + self.cache_read + self.cache_creation

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object; cache details only when there were cached tokens."""
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read or self.cache_creation:
            body["prompt_tokens_details"] = {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_creation,
            }
        return body

    def to_buckets(self) -> dict[str, int]:
        """Langfuse `usage_details`: exclusive buckets with its price keys."""
        return {
            "input": self.input,
            "input_cache_read": self.cache_read,
            "input_cache_creation": self.cache_creation,
            "output": self.output,
        }


def usage_from_openai(usage: Mapping[str, Any]) -> Usage:
    """Reads an OpenAI `usage` object (vLLM's, or our own `to_openai`) into exclusive buckets."""
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cache_read = int(details.get("cached_tokens") or 0)
    cache_creation = int(details.get("cache_write_tokens") or 0)
    return Usage(
        input=max(0, prompt - cache_read - cache_creation),
        output=int(usage.get("completion_tokens") or 0),
        cache_read=cache_read,
        cache_creation=cache_creation,
    )


def accumulate_openai_chunk(*, chunk: Mapping[str, Any], snapshot: Usage) -> Usage:
    """The usage after `chunk`: a chunk's `usage` is cumulative, so it replaces the snapshot."""
    usage = chunk.get("usage")
    if not usage:
        return snapshot
    return usage_from_openai(usage)


def accumulate_anthropic_event(*, event: Mapping[str, Any], snapshot: Usage) -> Usage:
    """The usage after one Anthropic stream event (a JSON-ready dict).

    `message_start` carries input and cache counts plus an initial output count; each `message_delta`
    carries cumulative counts, and fields it leaves out (or sends as null) keep their earlier values.
    """
    match event.get("type"):
        case "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
        case "message_delta":
            usage = event.get("usage") or {}
        case _:
            return snapshot
    return _assign_anthropic_usage(usage, snapshot)


def usage_from_anthropic(usage: Mapping[str, Any]) -> Usage:
    """Reads a non-streamed Anthropic `usage` object (its `input_tokens` already exclude cached tokens)."""
    return _assign_anthropic_usage(usage, Usage())


def _assign_anthropic_usage(usage: Mapping[str, Any], snapshot: Usage) -> Usage:
    updates: dict[str, int] = {}
    for source, target in (
        ("input_tokens", "input"),
        ("output_tokens", "output"),
        ("cache_read_input_tokens", "cache_read"),
        ("cache_creation_input_tokens", "cache_creation"),
    ):
        value = usage.get(source)
        if value is not None:
            updates[target] = int(value)
    return replace(snapshot, **updates)
