"""backends.local: the engine's error payloads (vLLM's messages, through LLMServer) as the router's error types."""

from __future__ import annotations

import pytest

from serve_app.backends.local import _engine_error
from serve_app.errors import UpstreamContextExceeded, UpstreamRejected, UpstreamUnavailable


@pytest.mark.parametrize(
    "message",
    [
        "Input length (600) exceeds model's maximum context length (512).",
        "This model's maximum context length is 512 tokens. However, your prompt contains 530 input tokens, which "
        "exceeds this limit even without any output tokens. Please reduce the length of the input prompt.",
        # a prompt of exactly the window: vLLM clamps max_tokens to the 0 tokens left (the soak's two 400s)
        "max_tokens must be at least 1, got 0.",
    ],
)
def test_context_overflows_may_go_to_the_other_backend(message):
    error = _engine_error({"message": message, "code": 400})
    assert isinstance(error, UpstreamContextExceeded)
    assert error.retryable_elsewhere and error.status_code == 400


def test_other_rejections_stay_with_the_client():
    error = _engine_error({"message": "top_k must be 0 (disable), or at least 1, got -3.", "code": 400})
    assert type(error) is UpstreamRejected and not error.retryable_elsewhere


def test_engine_failures_are_unavailable():
    error = _engine_error({"message": "engine dead", "code": 500})
    assert isinstance(error, UpstreamUnavailable) and error.retryable_elsewhere
