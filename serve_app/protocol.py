"""OpenAI chat wire models and the error body; validation only, no conversions or I/O.

Chunks and responses travel inside the router as plain JSON dicts (they are produced by one backend and
re-encoded once); only requests are parsed into models, because that is where bad input must be caught.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)


class OpenAIBaseModel(BaseModel):
    """Accepts fields it does not know (clients send many); the request logs them, boundedly (`log_ignored_fields`)."""

    model_config = ConfigDict(extra="allow")


def ignored_fields(model: BaseModel) -> set[str]:
    """`Model.field` for every field of `model` and the models inside it that no model declares."""
    names: set[str] = set()
    stack: list[Any] = [model]
    while stack:
        node = stack.pop()
        if isinstance(node, BaseModel):
            names.update(f"{type(node).__name__}.{name}" for name in node.__pydantic_extra__ or ())
            stack.extend(getattr(node, name) for name in type(node).model_fields)
        elif isinstance(node, list):
            stack.extend(node)
    return names


class _IgnoredFieldLog:
    """At most one log line per request, naming only fields not named before, and at most `capacity` names per
    process: a client choosing field names must not choose how much this process writes."""

    def __init__(self, *, capacity: int = 512, per_line: int = 5, name_chars: int = 64) -> None:
        self._seen: set[str] = set()
        self._capacity, self._per_line, self._name_chars = capacity, per_line, name_chars

    def __call__(self, names: set[str]) -> None:
        new = sorted(names - self._seen)
        if not new:
            return
        room = self._capacity - len(self._seen)
        if room <= 0:
            logger.debug("ignoring %d unsupported request field(s)", len(names))
            return
        shown = [name[: self._name_chars] for name in new[: min(self._per_line, room)]]
        self._seen.update(new[: min(self._per_line, room)])
        more = f" and {len(new) - len(shown)} more" if len(new) > len(shown) else ""
        logger.info("ignoring unsupported request field(s) %s%s", ", ".join(shown), more)


log_ignored_fields = _IgnoredFieldLog()


class ImageURL(OpenAIBaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImagePart(OpenAIBaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = TextPart | ImagePart


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str = Field(description="JSON-encoded arguments, as the model produced them.")


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id'")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a message with role '{self.role}' needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        text_only = self.role in ("system", "developer", "tool")
        if text_only and isinstance(self.content, list) and any(not isinstance(p, TextPart) for p in self.content):
            raise ValueError(f"a '{self.role}' message may only contain text parts")
        return self


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None


class ChatCompletionRequest(OpenAIBaseModel):
    """The subset of the Chat Completions request the router honours; unknown fields are ignored."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=1, description="Only n=1 is supported.")
    stop: str | list[str] | None = None
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > 4:
                raise ValueError("at most 4 stop sequences are allowed")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        return value

    @model_validator(mode="after")
    def _log_ignored_fields(self) -> ChatCompletionRequest:
        log_ignored_fields(ignored_fields(self))  # after the nested models: one line for the whole request
        return self

    @model_validator(mode="after")
    def _check_stream_options(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("'tool_choice' needs 'tools'")
        return self

    @property
    def output_budget(self) -> int | None:
        """The client's output token limit; `max_completion_tokens` wins over the deprecated `max_tokens`."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def wants_usage(self) -> bool:
        """Whether the client gets usage: always when not streaming, on request when streaming."""
        if not self.stream:
            return True
        return bool(self.stream_options and self.stream_options.include_usage)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """`{"error": {"message", "type", "param", "code"}}`, the body of every error the router returns."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# The model replica appends one event with this key to every finished stream: its GPU's amortised USD per
# token (serve_app.telemetry.gpu). The router reads it and never forwards it to a client.
LOCAL_COST_KEY = "hybrid_llm_gpu"
# The router puts the request's W3C trace context (`traceparent`, `tracestate`) under this key of the body it sends
# the model replica, which removes it before the engine sees the request (an older replica ignores it).
LOCAL_TRACE_KEY = "hybrid_llm_trace"
