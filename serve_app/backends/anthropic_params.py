"""Request parameters on the cloud path: what passes to Anthropic as is, what is translated, what is dropped; pure.

Nothing a client sends is lost silently: a field the Messages API (version 2026-10-21) rejects or has no place
for is named by `dropped_params`, and the router reports it on the span, in the Langfuse generation and in the
`X-Router-Dropped-Params` response header. Prompt caching: `cache_control` breakpoints a client put on blocks
pass through, and `cache_system_prompt_min_tokens` adds one to a long system prompt.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from serve_app.errors import InvalidRequest
from serve_app.protocol import ChatCompletionRequest, ImagePart, TextPart

# OpenAI fields the Messages API has no place for; temperature/top_p (and top_k, which the Messages ingress
# carries) are rejected with a 400 under 2026-10-21 even at default values, so they are never sent.
DROPPED_FIELDS = ("temperature", "top_p", "seed")
# Messages API request fields a client may send (the /v1/messages ingress carries them on the chat request);
# sent as they are. Each is a keyword of the SDK's `messages.create`.
PASSTHROUGH = ("thinking", "cache_control", "output_config", "container", "speed", "inference_geo")
_SERVICE_TIERS = ("auto", "standard_only")  # Anthropic's; OpenAI's `service_tier` values mean something else
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no text, code fences or explanation around it."
)
EPHEMERAL = {"type": "ephemeral"}
_CHARS_PER_TOKEN = 3.5  # the routing estimate's default; a breakpoint on a block below the model's minimum is inert
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")  # no dots: those name the nested fields below
_MAX_NAMES = 32


def extra(model: BaseModel, name: str) -> Any:
    """A field the client sent that the wire model does not declare (None when absent)."""
    return (model.__pydantic_extra__ or {}).get(name)


def with_cache_control(block: dict[str, Any], source: BaseModel) -> dict[str, Any]:
    """`block` with the `cache_control` breakpoint the client put on `source`, if any."""
    cache_control = extra(source, "cache_control")
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def dropped_params(request: ChatCompletionRequest) -> tuple[str, ...]:
    """Names of the fields the client set that the Anthropic request will not carry, sorted (header-safe)."""
    names = {name for name in DROPPED_FIELDS if getattr(request, name) is not None}
    for name, value in (request.__pydantic_extra__ or {}).items():
        if name in PASSTHROUGH or value is None:
            continue
        if name == "service_tier" and value in _SERVICE_TIERS:
            continue
        if name == "response_format" and _response_format_kind(value) is not None:
            continue
        names.add(name if _NAME.match(name) else "_unnamed")  # a key is client text: never echo it raw
    names.update(_dropped_nested(request))
    return tuple(sorted(names)[:_MAX_NAMES])


def _dropped_nested(request: ChatCompletionRequest) -> set[str]:
    """Declared fields inside messages and tools that the Messages API has no place for."""
    names: set[str] = set()
    for message in request.messages:
        if message.name:
            names.add("messages.name")
        for part in message.content if isinstance(message.content, list) else ():
            if isinstance(part, ImagePart) and part.image_url.detail is not None:
                names.add("messages.content.image_url.detail")
    if any(tool.function.strict is not None for tool in request.tools or ()):
        names.add("tools.function.strict")
    return names


def translated_params(request: ChatCompletionRequest) -> tuple[str, ...]:
    """Names of OpenAI fields expressed in Anthropic's terms instead (today `response_format` json modes)."""
    kind = _response_format_kind(extra(request, "response_format"))
    return ("response_format",) if kind in ("json_object", "json_schema") else ()


def top_level_params(request: ChatCompletionRequest) -> dict[str, Any]:
    """The Messages API fields that come from the request as they are, or translated: passthrough, service
    tier, and `response_format` json_schema as `output_config.format` (structured outputs)."""
    params: dict[str, Any] = {}
    for name in PASSTHROUGH:
        value = extra(request, name)
        if value is not None:
            params[name] = value
    if extra(request, "service_tier") in _SERVICE_TIERS:
        params["service_tier"] = extra(request, "service_tier")
    response_format = extra(request, "response_format")
    if _response_format_kind(response_format) == "json_schema":
        output_config = params.get("output_config")
        if output_config is not None and not isinstance(output_config, dict):
            raise InvalidRequest("output_config: an object is required", param="output_config")
        output_config = dict(output_config or {})
        output_config.setdefault("format", {"type": "json_schema", "schema": _json_schema(response_format)})
        params["output_config"] = output_config
    return params


def system_param(request: ChatCompletionRequest, *, cache_min_tokens: int | None) -> str | list[dict[str, Any]] | None:
    """The `system` field: a string as before, or text blocks when a block carries a cache breakpoint (the
    client's, or one added because the system prompt reaches `cache_min_tokens`)."""
    blocks: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role not in ("system", "developer"):
            continue
        if isinstance(message.content, str):
            blocks.append(with_cache_control({"type": "text", "text": message.content}, message))
        else:
            parts = [p for p in message.content or () if isinstance(p, TextPart)]
            blocks.extend(with_cache_control({"type": "text", "text": part.text}, part) for part in parts)
    if _response_format_kind(extra(request, "response_format")) == "json_object":
        blocks.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    blocks = [b for b in blocks if b["text"]]  # Anthropic rejects empty text blocks
    if not blocks:
        return None
    chars = sum(len(b["text"]) for b in blocks)
    cached = any("cache_control" in b for b in blocks)
    if not cached and cache_min_tokens is not None and chars / _CHARS_PER_TOKEN >= cache_min_tokens:
        blocks[-1]["cache_control"] = dict(EPHEMERAL)
        cached = True
    if cached:
        return blocks
    return "\n".join(b["text"] for b in blocks)


def _response_format_kind(value: Any) -> str | None:
    """`text`, `json_object` or `json_schema` for a well-formed `response_format`, else None (dropped)."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    return kind if kind in ("text", "json_object", "json_schema") else None


def _json_schema(response_format: dict[str, Any]) -> dict[str, Any]:
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "response_format.json_schema.schema: a JSON schema object is required",
            param="response_format.json_schema.schema",
        )
    return schema
