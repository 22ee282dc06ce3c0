"""Turns a backend's chunk stream into what the client asked for; pure, no I/O.

`ChatAssembler` folds chunks into one `chat.completion` (non-streamed requests), `client_chunk` prepares a
chunk for the wire (usage is the router's to add, once, at the end) and `usage_chunk` builds that last chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def client_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The chunk as the client sees it, or None for a usage-only chunk (the router sends its own at the end)."""
    if not chunk.get("choices"):
        return None
    if chunk.get("usage") is not None:
        chunk = {key: value for key, value in chunk.items() if key != "usage"}
    return chunk


def usage_chunk(*, chunk_id: str, created: int, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """The final `include_usage` chunk: empty choices and the whole usage."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class ChatAssembler:
    """Accumulates delta chunks into one non-streamed completion."""

    chunk_id: str = ""
    created: int = 0
    model: str = ""
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunk_id = self.chunk_id or str(chunk.get("id") or "")
        self.created = self.created or int(chunk.get("created") or 0)
        self.model = str(chunk.get("model") or self.model)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content.append(delta["content"])
            if delta.get("reasoning_content"):
                self.reasoning.append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(int(call.get("index", 0)), _ToolCall())
                slot.id = call.get("id") or slot.id
                function = call.get("function") or {}
                slot.name = function.get("name") or slot.name
                if function.get("arguments"):
                    slot.arguments.append(function["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def completion(self, *, usage: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) if self.content else None}
        if self.reasoning:  # vLLM's field for a reasoning model's thinking (and Claude's, when asked for)
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self.tool_calls.items())
            ]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": self.chunk_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason, "logprobs": None}],
            "usage": usage,
        }
