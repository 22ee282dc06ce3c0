"""Pure translation for the Anthropic-compatible ingress `POST /v1/messages`; no I/O, no SDK imports.

Inbound: an Anthropic Messages request body -> `ChatCompletionRequest` (so routing and backends see one type).
Outbound: the backend's OpenAI chunks -> Anthropic stream events (a pure reducer) or one Anthropic Message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from serve_app.errors import InvalidRequest, RouterError
from serve_app.protocol import ChatCompletionRequest
from serve_app.usage import Usage, accumulate_openai_chunk

# Request fields with no equivalent in the chat request (`thinking`, `cache_control`, `top_k`, `output_config`, ...,
# listed by `ignored_fields`) ride on it as extra fields: the cloud path sends Anthropic's own as they are and
# reports the others as dropped (serve_app.backends.anthropic_params); the local engine gets `top_k`.
_KNOWN = frozenset(
    {"model", "max_tokens", "messages", "system", "stop_sequences", "stream", "tools", "tool_choice", "metadata"}
    | {"temperature", "top_p"}
)
# Earlier reasoning: not input for another model; a signed one (Claude's) rides along as the assistant message's
# `thinking_blocks`, which the cloud path sends back first in that turn.
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})

# ------------------------------------------------------------------------------------------------ request

_TEXT_BLOCK = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
# The Messages request as this router reads it (JSON Schema, for the OpenAPI document): what `to_chat_request`
# checks, not all of Anthropic's API; other fields are accepted and ignored.
MESSAGES_REQUEST_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"enum": ["user", "assistant"]}, "content": _CONTENT},
            },
        },
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_BLOCK}]},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object", "properties": {"user_id": {"type": "string"}}},
    },
}


def ignored_fields(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Request fields with no place in the chat request; they are carried on it as extra fields."""
    return tuple(sorted(name for name in body if name not in _KNOWN))


def _carried(body: Mapping[str, Any]) -> dict[str, Any]:
    # a chat request field of the same name (`n`, `seed`, ...) is not Anthropic's: never let it change the request
    return {name: body[name] for name in ignored_fields(body) if name not in ChatCompletionRequest.model_fields}


def _cache(block: Mapping[str, Any]) -> dict[str, Any]:
    """The block's prompt-cache breakpoint, to carry onto the chat request's part, message or tool."""
    return {"cache_control": block["cache_control"]} if block.get("cache_control") is not None else {}


def to_chat_request(body: Any) -> ChatCompletionRequest:
    """The chat request for an Anthropic Messages request body; raises `InvalidRequest` naming the bad field."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: a model id is required", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: an integer >= 1 is required", param="max_tokens")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("messages: at least one message is required", param="messages")

    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system_content(system)})
    for i, message in enumerate(raw_messages):
        messages.extend(_chat_messages(message, param=f"messages.{i}"))

    chat: dict[str, Any] = {"model": model, "messages": messages, "max_completion_tokens": max_tokens}
    chat.update(_carried(body))
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    stop = _typed(body, "stop_sequences", list)
    if stop:
        if not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop_sequences: a list of strings is required", param="stop_sequences")
        chat["stop"] = list(stop)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # message_delta needs the usage
    tools = _typed(body, "tools", list)
    if tools:
        chat["tools"] = [_tool(tool, param=f"tools.{i}") for i, tool in enumerate(tools)]
    tool_choice = _typed(body, "tool_choice", Mapping)
    if tool_choice:
        chat.update(_tool_choice(tool_choice))
    user_id = (_typed(body, "metadata", Mapping) or {}).get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidRequest("metadata.user_id: a string is required", param="metadata.user_id")
    if user_id:
        chat["user"] = user_id
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from exc


_TYPE_NAMES = {list: "a list", Mapping: "an object"}


def _typed(body: Mapping[str, Any], name: str, kind: type) -> Any:
    """`body[name]` if it is absent, null or of `kind`; otherwise an InvalidRequest naming the field."""
    value = body.get(name)
    if value is None or isinstance(value, kind):
        return value
    raise InvalidRequest(f"{name}: {_TYPE_NAMES[kind]} is required", param=name)


def _system_content(system: Any) -> str | list[dict[str, Any]]:
    text = _text_of(system, param="system")
    if isinstance(system, list) and any(_cache(block) for block in system):  # keep the blocks and breakpoints
        return [{"type": "text", "text": str(block.get("text", "")), **_cache(block)} for block in system]
    return text


def _chat_messages(message: Any, *, param: str) -> list[dict[str, Any]]:
    if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
        raise InvalidRequest(f"{param}.role: must be 'user' or 'assistant'", param=f"{param}.role")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{param}.content: a string or a list of blocks is required", param=f"{param}.content")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.content.{j}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", "")), **_cache(block)})
        elif kind == "image" and role == "user":
            url = _image_url(block.get("source"), param=where)
            parts.append({"type": "image_url", "image_url": {"url": url}, **_cache(block)})
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input") or {})
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                    **_cache(block),
                }
            )
        elif kind == "tool_result" and role == "user":
            text = _text_of(block.get("content") or "", param=f"{where}.content")
            if block.get("is_error"):
                text = f"[tool error] {text}"
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text, **_cache(block)})
        elif kind in _SKIPPED_BLOCKS:
            if role == "assistant" and (block.get("signature") or block.get("data")):
                thinking.append(dict(block))
        else:
            raise InvalidRequest(f"{where}: block type {kind!r} is not supported in a {role} message", param=where)
    out: list[dict[str, Any]] = list(results)  # tool answers must directly follow the assistant's calls
    if role == "assistant" and (parts or calls):
        text = "".join(p["text"] for p in parts)
        content: Any = parts if any("cache_control" in p for p in parts) else text or None
        signed = {"thinking_blocks": thinking} if thinking else {}
        out.append({"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {}), **signed})
    elif parts:
        out.append({"role": role, "content": parts})
    return out


def _text_of(value: Any, *, param: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, Mapping) and b.get("type") == "text" for b in value):
        return "\n".join(str(b.get("text", "")) for b in value)
    raise InvalidRequest(f"{param}: only text is supported here", param=param)


def _image_url(source: Any, *, param: str) -> str:
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if kind == "url":
        return str(source.get("url"))
    raise InvalidRequest(f"{param}.source: image sources must be 'base64' or 'url'", param=f"{param}.source")


def _tool(tool: Any, *, param: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type") not in (None, "custom") or not tool.get("name"):
        raise InvalidRequest(f"{param}: only client tools with a name and input_schema are supported", param=param)
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function, **_cache(tool)}


def _tool_choice(choice: Mapping[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    mapped: dict[str, Any]
    if kind == "auto":
        mapped = {"tool_choice": "auto"}
    elif kind == "any":
        mapped = {"tool_choice": "required"}
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool" and choice.get("name"):
        mapped = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest("tool_choice: type must be auto, any, tool (with name) or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        mapped["parallel_tool_calls"] = False
    return mapped


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
