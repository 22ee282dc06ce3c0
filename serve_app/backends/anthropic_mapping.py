"""Pure OpenAI <-> Anthropic Messages translation (requests, stream events, whole messages); no SDK, no I/O.

Everything here works on JSON-ready dicts and frozen values so it is tested without a network, and so the
same translation serves the SDK backend and any other transport.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from serve_app.backends.anthropic_errors import upstream_error
from serve_app.backends.anthropic_params import (
    dropped_params,
    extra,
    system_param,
    top_level_params,
    translated_params,
    with_cache_control,
)
from serve_app.errors import InvalidRequest
from serve_app.protocol import ChatCompletionRequest, ChatMessage, ImagePart, TextPart
from serve_app.usage import Usage, accumulate_anthropic_event, usage_from_anthropic

# ---------------------------------------------------------------------------------------------- requests

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"^data:(?P<media>[\w/+.-]+)(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    """Keyword arguments for `messages.create` (without `stream`), the OpenAI fields left behind and the ones
    expressed in Anthropic's terms (see `anthropic_params`)."""

    params: dict[str, Any]
    dropped: tuple[str, ...] = ()
    translated: tuple[str, ...] = ()


__all__ = ["AnthropicRequest", "dropped_params", "to_anthropic_request"]


def to_anthropic_request(
    request: ChatCompletionRequest, *, model: str, default_max_tokens: int, cache_system_min_tokens: int | None = None
) -> AnthropicRequest:
    """The Messages API call for `request`; raises `InvalidRequest` for input Anthropic cannot express.

    `cache_system_min_tokens`: a system prompt at least this long (estimated) gets a cache breakpoint.
    """
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            continue
        role, blocks = _message_blocks(message, param=f"messages[{i}]")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("at least one user or assistant message with content is required", param="messages")
    for turn in turns:
        if turn["role"] == "user":
            # tool_result blocks must open the user turn that answers a tool_use turn
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")

    params: dict[str, Any] = {
        "model": model,
        "max_tokens": request.output_budget or default_max_tokens,
        "messages": turns,
    }
    system = system_param(request, cache_min_tokens=cache_system_min_tokens)
    if system is not None:
        params["system"] = system
    if request.stop:
        params["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.tools:
        params["tools"] = [with_cache_control(_tool(tool.function), tool) for tool in request.tools]
        choice = _tool_choice(request)
        if choice is not None:
            params["tool_choice"] = choice
    if request.user:
        params["metadata"] = {"user_id": request.user}
    params.update(top_level_params(request))
    return AnthropicRequest(params=params, dropped=dropped_params(request), translated=translated_params(request))


def _plain_text(message: ChatMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content or () if isinstance(part, TextPart))


def _message_blocks(message: ChatMessage, *, param: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": _plain_text(message)}
        return "user", [with_cache_control(result, message)]
    blocks = _content_blocks(message.content, param=param, allow_images=message.role == "user")
    if message.role == "assistant":
        # signed thinking blocks of an earlier Claude answer go back first, as the API requires with tool use
        thinking = extra(message, "thinking_blocks")
        if isinstance(thinking, list):
            blocks = [dict(block) for block in thinking if isinstance(block, dict)] + blocks
        for j, call in enumerate(message.tool_calls or ()):
            block = {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _tool_input(call.function.arguments, param=f"{param}.tool_calls[{j}].function.arguments"),
            }
            blocks.append(with_cache_control(block, call))
    return message.role, blocks


def _content_blocks(content: str | list[Any] | None, *, param: str, allow_images: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        if isinstance(part, TextPart):
            if part.text:  # Anthropic rejects empty text blocks
                blocks.append(with_cache_control({"type": "text", "text": part.text}, part))
        elif isinstance(part, ImagePart):
            if not allow_images:
                raise InvalidRequest("images are only allowed in user messages", param=f"{param}.content[{k}]")
            block = _image_block(part.image_url.url, param=f"{param}.content[{k}].image_url.url")
            blocks.append(with_cache_control(block, part))
    return blocks


def _image_block(url: str, *, param: str) -> dict[str, Any]:
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("image_url must be an http(s) URL or a data: URL", param=param)
    media = match["media"].lower()
    if media not in _IMAGE_MEDIA_TYPES:
        raise InvalidRequest(f"unsupported image type {media!r}; use jpeg, png, gif or webp", param=param)
    if not match["b64"]:
        raise InvalidRequest("image data: URLs must be base64-encoded", param=param)
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": match["data"]}}


def _tool_input(arguments: str, *, param: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise InvalidRequest(f"tool call arguments are not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return value


def _tool(function: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function.name,
        "input_schema": function.parameters or {"type": "object", "properties": {}},
    }
    if function.description:
        tool["description"] = function.description
    return tool


def _tool_choice(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice == "none":
        return {"type": "none"}  # disable_parallel_tool_use is not allowed with "none"
    if choice is None:
        result: dict[str, Any] = {"type": "auto"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    else:
        result = {"type": "tool", "name": choice.function.name}
    if request.parallel_tool_calls is False:
        result["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto with parallel use: send nothing
    return result


# ------------------------------------------------------------------------------------------ stop reasons

# pause_turn (a server-tool loop paused) and model_context_window_exceeded both end an answer that is not
# complete; "length" tells an OpenAI client so instead of passing a truncated answer off as a natural stop.
FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "length",
    "model_context_window_exceeded": "length",
}


def finish_reason(stop_reason: str | None) -> str | None:
    """The OpenAI finish_reason for an Anthropic stop_reason; an unknown reason counts as a plain stop."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


# ---------------------------------------------------------------------------------------- stream events


@dataclass(frozen=True, slots=True)
class StreamState:
    """What the translator remembers between events; each event returns a new state."""

    completion_id: str
    model: str
    created: int
    usage: Usage = field(default_factory=Usage)
    usage_sent: Usage | None = None
    tool_blocks: tuple[int, ...] = ()  # Anthropic block indices of tool_use blocks, in OpenAI tool-call order
    stop_reason: str | None = None
    started: bool = False
    finished: bool = False  # message_stop seen
    message_id: str | None = None


def new_stream_state(*, completion_id: str, model: str, created: int) -> StreamState:
    return StreamState(completion_id=completion_id, model=model, created=created)


def translate_event(
    state: StreamState, event: Mapping[str, Any], *, backend: str = "cloud"
) -> tuple[StreamState, list[dict[str, Any]]]:
    """One Anthropic stream event (a JSON dict) -> the new state and the OpenAI chunks it produces.

    Raises the mapped `UpstreamError` for an in-band `error` event. Ping and unknown events produce nothing.
    """
    kind = event.get("type")
    usage = accumulate_anthropic_event(event=event, snapshot=state.usage)
    match kind:
        case "message_start":
            message = event.get("message") or {}
            state = replace(
                state,
                usage=usage,
                started=True,
                model=message.get("model") or state.model,
                message_id=message.get("id"),
            )
            return _emit(state, {"role": "assistant", "content": ""}, None)
        case "content_block_start":
            return _block_start(state, event)
        case "content_block_delta":
            return _block_delta(state, event)
        case "message_delta":
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            state = replace(state, usage=usage, stop_reason=stop_reason or state.stop_reason)
            if stop_reason is None:
                return _emit(state, None, None)
            return _emit(state, {}, finish_reason(stop_reason))
        case "message_stop":
            state = replace(state, finished=True)
            if state.usage_sent == state.usage:
                return state, []
            return _emit(state, None, None)  # the last chunk must carry the final usage
        case "error":
            error = event.get("error") or {}
            raise upstream_error(
                status=None,
                error_type=error.get("type"),
                message=str(error.get("message") or "error event in the Anthropic stream"),
                backend=backend,
            )
        case _:  # ping, content_block_stop, and event types added after this was written
            return state, []


def _block_start(state: StreamState, event: Mapping[str, Any]) -> tuple[StreamState, list[dict[str, Any]]]:
    block = event.get("content_block") or {}
    match block.get("type"):
        case "text":
            text = block.get("text") or ""
            return _emit(state, {"content": text}, None) if text else (state, [])
        case "tool_use":
            slot = len(state.tool_blocks)
            state = replace(state, tool_blocks=(*state.tool_blocks, int(event.get("index", 0))))
            initial = block.get("input")
            call = {
                "index": slot,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": json.dumps(initial) if initial else ""},
            }
            return _emit(state, {"tool_calls": [call]}, None)
        case "thinking":  # requested with `thinking`: the reasoning is streamed as `reasoning_content`, as vLLM does
            text = block.get("thinking") or ""
            return _emit(state, {"reasoning_content": text}, None) if text else (state, [])
        case _:  # redacted thinking, server tool blocks: not part of an OpenAI chat answer
            return state, []


def _block_delta(state: StreamState, event: Mapping[str, Any]) -> tuple[StreamState, list[dict[str, Any]]]:
    delta = event.get("delta") or {}
    match delta.get("type"):
        case "text_delta":
            text = delta.get("text") or ""
            return _emit(state, {"content": text}, None) if text else (state, [])
        case "input_json_delta":
            index = int(event.get("index", 0))
            partial = delta.get("partial_json") or ""
            if index not in state.tool_blocks or not partial:
                return state, []
            call = {"index": state.tool_blocks.index(index), "function": {"arguments": partial}}
            return _emit(state, {"tool_calls": [call]}, None)
        case "thinking_delta":
            text = delta.get("thinking") or ""
            return _emit(state, {"reasoning_content": text}, None) if text else (state, [])
        case "signature_delta":  # lets the Messages ingress hand the thinking block back whole (multi-turn)
            signature = delta.get("signature") or ""
            return _emit(state, {"reasoning_signature": signature}, None) if signature else (state, [])
        case _:  # citations_delta, unknown
            return state, []


def _emit(
    state: StreamState, delta: dict[str, Any] | None, finish: str | None
) -> tuple[StreamState, list[dict[str, Any]]]:
    """One chunk; `delta=None` makes a usage-only chunk (`choices: []`). Usage rides along when it changed."""
    chunk: dict[str, Any] = {
        "id": state.completion_id,
        "object": "chat.completion.chunk",
        "created": state.created,
        "model": state.model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if state.usage_sent != state.usage:
        chunk["usage"] = state.usage.to_openai()
        state = replace(state, usage_sent=state.usage)
    elif delta is None:
        return state, []
    return state, [chunk]


# -------------------------------------------------------------------------------------- whole messages


def completion_from_message(message: Mapping[str, Any], *, completion_id: str, created: int) -> dict[str, Any]:
    """A non-streamed Anthropic Message as an OpenAI `chat.completion` dict."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason(message.get("stop_reason"))}
        ],
        "usage": usage_from_anthropic(message.get("usage") or {}).to_openai(),
    }
