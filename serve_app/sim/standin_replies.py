"""What the Anthropic stand-in answers, as data: request checks, scenario markers, scripted errors, replies; pure.

Both servers (the stdlib one in serve_app.sim.standin, the aiohttp one in serve_app.sim.standin_server) share
these; they own only the transport: writing, pacing, cutting or stalling a stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

THINKING = "The user wants a word count."
SIGNATURE = "EqQBCgIYAhIMstandinsignature"
MARKER = re.compile(r"#(scenario|tokens)=([\w=.:-]+)")
_REMOVED_PARAMS = ("temperature", "top_p", "top_k")  # rejected by API version 2026-10-21
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def scripted_error(
    fault_status: int, scenarios: list[str], retry_count: str
) -> tuple[int, str, dict[str, str] | None] | None:
    """The error an open fault window (its status, or 0) or a scenario marker asks for (status, message, headers)."""
    status = fault_status
    if status == 429 or (status == 0 and "rate_limit" in scenarios):
        return 429, "Number of requests has exceeded your rate limit", {"retry-after": "7"}
    if status == 529 or (status == 0 and "overloaded" in scenarios):
        return 529, "Overloaded", {"retry-after-ms": "2500"}
    for scenario in scenarios:
        if scenario == "rate_limit_once" and retry_count == "0":
            return 429, "Number of requests has exceeded your rate limit", {"retry-after-ms": "50"}
        if scenario == "error=context":
            return 400, "prompt is too long: 250000 tokens > 200000 maximum", None
        if scenario.startswith("error="):
            return int(scenario[6:]), f"scripted error {scenario[6:]}", None
    return None


def check_request(headers: Any, body: Any, api_key: str | None) -> tuple[int, str] | None:
    """What the real API would reject in a Messages request (auth, version header, required fields)."""
    key = headers.get("x-api-key") or _bearer(headers.get("authorization"))
    if not key or (api_key is not None and key != api_key):
        return 401, "invalid x-api-key"
    version = headers.get("anthropic-version")
    if not version:
        return 400, "anthropic-version: header is required"
    if not isinstance(body, dict):
        return 400, "request body must be a JSON object"
    if version >= "2026-10-21":
        for name in _REMOVED_PARAMS:
            if name in body:
                return 400, f"{name}: this parameter is not supported in API version {version}"
    if not isinstance(body.get("model"), str):
        return 400, "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return 400, "max_tokens: field required (integer >= 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "messages: at least one message is required"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return 400, f"messages.{i}.role: Input should be 'user' or 'assistant'"
    return None


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


def markers(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    for text in _texts(last_user["content"] if last_user else ""):
        for name, value in MARKER.findall(text):
            found.setdefault(name, []).append(value)
    return found


def _texts(content: Any) -> Iterator[str]:
    """Text the model would read: strings, text blocks and tool results (not image data or ids)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if block.get("type") == "text":
                yield block.get("text", "")
            elif block.get("type") == "tool_result":
                yield from _texts(block.get("content", ""))
            elif block.get("type") == "tool_use":
                yield json.dumps(block.get("input", {}))


def prompt_tokens(body: dict[str, Any]) -> int:
    """The stand-in's token count of a request: words of the system prompt and messages, 1 per image."""
    words = sum(len(text.split()) for text in _texts(body.get("system") or ""))
    for message in body.get("messages", []):
        words += sum(len(text.split()) for text in _texts(message.get("content")))
        if isinstance(message.get("content"), list):
            words += sum(1 for block in message["content"] if block.get("type") == "image")
    return max(words, 1)


@dataclass(frozen=True)
class Reply:
    words: list[str]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, int]
    tool: dict[str, Any] | None
    thinking: bool = False

    @staticmethod
    def build(body: dict[str, Any], scenarios: list[str], tokens: list[str] | None) -> Reply:
        last = next(m for m in reversed(body["messages"]) if m["role"] == "user")
        said = sum(len(MARKER.sub("", t).split()) for t in _texts(last["content"]))
        words = [f"w{i}" for i in range(int(tokens[0]))] if tokens else ["You", "sent", str(said), "words."]
        stop_reason, stop_sequence, tool = "end_turn", None, None
        if "tool_use" in scenarios:
            name = (body.get("tools") or [{"name": "get_weather"}])[0]["name"]
            tool = {"id": "toolu_standin_01", "name": name, "input": {"city": "Paris", "unit": "celsius"}}
            words, stop_reason = ["Let", "me", "check."], "tool_use"
        for sequence in body.get("stop_sequences") or ():
            text = " ".join(words)
            if sequence in text:
                words = text[: text.index(sequence)].split()
                stop_reason, stop_sequence = "stop_sequence", sequence
                break
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        forced = [s.split("=", 1)[1] for s in scenarios if s.startswith("stop_reason=")]
        if forced:
            stop_reason = forced[0]
        prompt = prompt_tokens(body)
        usage = {"input_tokens": prompt, "output_tokens": len(words) + (8 if tool else 0)}
        usage["cache_creation_input_tokens"] = usage["cache_read_input_tokens"] = 0
        if "cache" in scenarios:
            read, created = prompt // 2, prompt // 4
            usage.update(
                input_tokens=prompt - read - created, cache_read_input_tokens=read, cache_creation_input_tokens=created
            )
        thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") in ("enabled", "adaptive")
        return Reply(words, stop_reason, stop_sequence, usage, tool, thinking)

    def _pieces(self) -> list[str]:
        return [word + ("" if i == len(self.words) - 1 else " ") for i, word in enumerate(self.words)]

    def message(self, model: str, message_id: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(self._pieces())}] if self.words else []
        if self.thinking:
            content.insert(0, {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE})
        if self.tool:
            content.append({"type": "tool_use", **self.tool})
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage,
        }

    def events(self, model: str, message_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        start = {**self.message(model, message_id), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**self.usage, "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        index = 0
        if self.thinking:
            yield "content_block_start", _block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
            yield "content_block_delta", _delta(index, {"type": "thinking_delta", "thinking": THINKING})
            yield "content_block_delta", _delta(index, {"type": "signature_delta", "signature": SIGNATURE})
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        if self.words:
            yield "content_block_start", _block_start(index, {"type": "text", "text": ""})
            for piece in self._pieces():
                yield "content_block_delta", _delta(index, {"type": "text_delta", "text": piece})
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        if self.tool:
            block = {"type": "tool_use", "id": self.tool["id"], "name": self.tool["name"], "input": {}}
            yield "content_block_start", _block_start(index, block)
            text = json.dumps(self.tool["input"])
            for piece in ("", text[:10], text[10:20], text[20:]):
                yield "content_block_delta", _delta(index, {"type": "input_json_delta", "partial_json": piece})
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        yield (
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": self.usage["output_tokens"]}},
        )
        yield "message_stop", {"type": "message_stop"}


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}
