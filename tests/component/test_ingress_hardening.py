"""What a client controls and must not: span names, log volume, request ids, what is readable without a key."""

from __future__ import annotations

import pytest

from tests.component.fakes import chat_body

pytestmark = pytest.mark.timeout(30)


# ---- span names come from a closed set ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "name"),
    [
        ("auto", 200, "chat auto"),
        ("local-model", 200, "chat local-model"),
        ("claude-haiku-4-5", 200, "chat claude-haiku-4-5"),
        ("no-such-model-7f3a", 404, "chat"),
        ("x" * 256, 404, "chat"),
    ],
)
async def test_span_names_come_only_from_the_models_the_router_serves(router, client, model, status, name):
    """A span name is a dimension of Tempo's span metrics: random model names must not create series."""
    response = await client.post("/v1/chat/completions", json=chat_body(model=model))
    assert response.status_code == status
    (span,) = router.spans.get_finished_spans()
    assert span.name == name
    assert span.attributes["gen_ai.request.model"] == model  # the client's string stays an attribute
