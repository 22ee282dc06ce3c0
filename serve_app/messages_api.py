"""Pure translation of `POST /v1/messages` requests (the Anthropic-compatible ingress); no I/O, no SDK imports.

Inbound: an Anthropic Messages request body -> `ChatCompletionRequest` (so routing and backends see one type).
The way back (OpenAI chunks -> Anthropic events or one Message) is `messages_events`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from serve_app.errors import InvalidRequest
from serve_app.protocol import ChatCompletionRequest

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
