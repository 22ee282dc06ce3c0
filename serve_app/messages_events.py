"""Pure translation of answers for `POST /v1/messages`: OpenAI chunks -> Anthropic stream events or one Message.

The stream side is a pure reducer (`events_from_chunk` over an `EventState`); `message_from_chunks` builds the
non-streamed Message from the same chunks. The request side is `messages_api`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from serve_app.errors import RouterError
from serve_app.usage import Usage, accumulate_openai_chunk

# ------------------------------------------------------------------------------------------------ stream

STOP_REASONS: Mapping[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


@dataclass(frozen=True, slots=True)
class EventState:
    """What the event translator remembers between chunks; each call returns a new state."""

    message_id: str
    model: str
    started: bool = False
    open_index: int | None = None  # Anthropic index of the open content block
    open_tool: int | None = None  # OpenAI tool-call index of the open block, when it is a tool_use
    open_thinking: bool = False  # the open block is a thinking block
    next_index: int = 0
    tool_index: tuple[tuple[int, int], ...] = ()  # (OpenAI tool-call index, Anthropic block index)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


def new_event_state(*, message_id: str, model: str) -> EventState:
    return EventState(message_id=message_id, model=model)


def events_from_chunk(state: EventState, chunk: Mapping[str, Any]) -> tuple[EventState, list[dict[str, Any]]]:
    """The Anthropic events for one OpenAI chunk (message_start comes with the first chunk)."""
    state = replace(state, usage=accumulate_openai_chunk(chunk=chunk, snapshot=state.usage))
    events: list[dict[str, Any]] = []
    if not state.started:
        state = replace(state, started=True, model=chunk.get("model") or state.model)
        events.append(_message_start(state))
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content") or delta.get("reasoning_signature"):
            state = _thinking_delta(state, events, delta)
        if delta.get("content"):
            if state.open_index is None or state.open_tool is not None or state.open_thinking:
                state = _open(state, events, {"type": "text", "text": ""}, tool=None)
            text_delta = {"type": "text_delta", "text": delta["content"]}
            events.append({"type": "content_block_delta", "index": state.open_index, "delta": text_delta})
        for call in delta.get("tool_calls") or ():
            state = _tool_delta(state, events, call)
        if choice.get("finish_reason"):
            state = _close(replace(state, finish_reason=choice["finish_reason"]), events)
    return state, events


def finish_events(state: EventState) -> tuple[EventState, list[dict[str, Any]]]:
    """The closing events once the OpenAI stream has ended: open block stop, message_delta, message_stop."""
    events: list[dict[str, Any]] = []
    if not state.started:
        state = replace(state, started=True)
        events.append(_message_start(state))
    state = _close(state, events)
    stop_reason = STOP_REASONS.get(state.finish_reason or "stop", "end_turn")
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": _anthropic_usage(state.usage),
        }
    )
    events.append({"type": "message_stop"})
    return state, events


def usage_event(usage: Usage) -> dict[str, Any]:
    """A `message_delta` with the usage billed so far and no stop reason (sent before an in-band error)."""
    return {
        "type": "message_delta",
        "delta": {"stop_reason": None, "stop_sequence": None},
        "usage": _anthropic_usage(usage),
    }


def error_event(exc: RouterError) -> dict[str, Any]:
    """The in-band `error` event for a failure after the stream started (also the JSON error body)."""
    return {"type": "error", "error": {"type": error_type(exc), "message": exc.message}}


def error_type(exc: RouterError) -> str:
    """Anthropic's `error.type` for a RouterError, chosen from its status."""
    if exc.error_type == "overloaded_error":
        return "overloaded_error"
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        503: "overloaded_error",
    }.get(exc.status_code, "api_error")


def _message_start(state: EventState) -> dict[str, Any]:
    message = {
        "id": state.message_id,
        "type": "message",
        "role": "assistant",
        "model": state.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(state.usage),
    }
    return {"type": "message_start", "message": message}


def _anthropic_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_creation,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.output,
    }


def _open(state: EventState, events: list[dict[str, Any]], block: dict[str, Any], *, tool: int | None) -> EventState:
    state = _close(state, events)
    events.append({"type": "content_block_start", "index": state.next_index, "content_block": block})
    thinking = block["type"] == "thinking"
    return replace(
        state, open_index=state.next_index, open_tool=tool, open_thinking=thinking, next_index=state.next_index + 1
    )


def _thinking_delta(state: EventState, events: list[dict[str, Any]], delta: Mapping[str, Any]) -> EventState:
    """`reasoning_content` (Claude's thinking, or a local reasoning parser's) as a thinking block."""
    if state.open_index is None or not state.open_thinking:
        state = _open(state, events, {"type": "thinking", "thinking": "", "signature": ""}, tool=None)
    if delta.get("reasoning_content"):
        thinking_delta = {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
        events.append({"type": "content_block_delta", "index": state.open_index, "delta": thinking_delta})
    if delta.get("reasoning_signature"):
        signature_delta = {"type": "signature_delta", "signature": delta["reasoning_signature"]}
        events.append({"type": "content_block_delta", "index": state.open_index, "delta": signature_delta})
    return state


def _close(state: EventState, events: list[dict[str, Any]]) -> EventState:
    if state.open_index is None:
        return state
    events.append({"type": "content_block_stop", "index": state.open_index})
    return replace(state, open_index=None, open_tool=None, open_thinking=False)


def _tool_delta(state: EventState, events: list[dict[str, Any]], call: Mapping[str, Any]) -> EventState:
    tool = int(call.get("index", 0))
    function = call.get("function") or {}
    known = dict(state.tool_index)
    if tool not in known:
        block = {
            "type": "tool_use",
            "id": call.get("id") or f"toolu_{state.message_id}_{tool}",
            "name": function.get("name") or "",
            "input": {},
        }
        state = _open(state, events, block, tool=tool)
        state = replace(state, tool_index=(*state.tool_index, (tool, state.open_index)))
        known[tool] = state.open_index
    if function.get("arguments"):
        json_delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
        events.append({"type": "content_block_delta", "index": known[tool], "delta": json_delta})
    return state


# ---------------------------------------------------------------------------------------------- message


def message_from_chunks(chunks: Iterable[Mapping[str, Any]], *, message_id: str, model: str) -> dict[str, Any]:
    """One non-streamed Anthropic Message from the whole OpenAI chunk stream (via the same event translator)."""
    state = new_event_state(message_id=message_id, model=model)
    events: list[dict[str, Any]] = []
    for chunk in chunks:
        state, out = events_from_chunk(state, chunk)
        events.extend(out)
    state, out = finish_events(state)
    events.extend(out)
    return message_from_events(events)


def message_from_events(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accumulates Anthropic stream events into a Message (tool inputs parsed from their JSON pieces)."""
    message: dict[str, Any] = {}
    pieces: dict[int, list[str]] = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = {**event["message"], "content": [], "usage": dict(event["message"]["usage"])}
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                pieces.setdefault(event["index"], []).append(delta["partial_json"])
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update({k: v for k, v in event["usage"].items() if v is not None})
    for index, parts in pieces.items():
        message["content"][index]["input"] = _parse_input("".join(parts))
    return message


def _parse_input(text: str) -> dict[str, Any]:
    # A local model can emit arguments that are not a JSON object; keep them rather than drop them silently.
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"_raw_arguments": text}
