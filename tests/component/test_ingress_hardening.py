"""What a client controls and must not: span names, log volume, request ids, what is readable without a key."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.component.fakes import chat_body, router_args

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


# ---- log volume per request is bounded ----------------------------------------------------------------------


async def test_unknown_fields_write_at_most_one_short_log_line_per_request(make_router, caplog):
    """Thousands of distinct unknown field names, at the top and nested: one bounded line, then none for names
    already named."""
    tag = uuid.uuid4().hex[:8]  # names no earlier test logged
    body = chat_body(**{f"top_{tag}_{i}": i for i in range(1500)})
    body["messages"][0] |= {f"nested_{tag}_{i}_" + "y" * 200: i for i in range(1500)}
    caplog.set_level(logging.DEBUG, logger="serve_app.protocol")
    client = make_router(args=router_args(max_request_bytes=4 * 1024 * 1024)).client()
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "serve_app.protocol" and r.levelno >= logging.INFO]
    assert len(lines) == 3 and all(len(line) < 1000 for line in lines)
    assert "and 2995 more" in lines[0] and "and 2990 more" in lines[1]
