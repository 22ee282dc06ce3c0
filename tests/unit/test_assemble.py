"""assemble: delta chunks folded into one completion, and chunks prepared for the wire."""

from __future__ import annotations

import copy
from typing import Any

from serve_app.assemble import ChatAssembler, client_chunk, usage_chunk

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "local-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    body.update(top)
    return body


def call_delta(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    delta: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        delta["id"], delta["type"] = id, "function"
    return {"tool_calls": [delta]}


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = ChatAssembler()
    for c in chunks:
        assembler.add(c)
    return assembler.completion(usage=USAGE)


def test_chat_assembler_joins_text():
    body = assemble(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish="stop"),
        ]
    )
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "local-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": USAGE,
    }


def test_chat_assembler_merges_tool_call_deltas_by_index():
    body = assemble(
        [
            chunk({"role": "assistant"}),
            chunk(call_delta(0, id="call_a", name="lookup", args="")),
            chunk(call_delta(1, id="call_b", name="clock", args='{"tz"')),
            chunk(call_delta(0, args='{"city":')),
            chunk(call_delta(1, args=':"UTC"}')),
            chunk(call_delta(0, args='"Paris"}')),
            chunk({}, finish="tool_calls"),
        ]
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "clock", "arguments": '{"tz":"UTC"}'}},
    ]


def test_chat_assembler_orders_tool_calls_by_index_not_arrival():
    body = assemble([chunk(call_delta(1, id="second", name="b")), chunk(call_delta(0, id="first", name="a"))])
    assert [c["id"] for c in body["choices"][0]["message"]["tool_calls"]] == ["first", "second"]


def test_chat_assembler_keeps_text_next_to_tool_calls():
    body = assemble([chunk({"content": "Let me look."}), chunk(call_delta(0, id="c", name="lookup", args="{}"))])
    message = body["choices"][0]["message"]
    assert message["content"] == "Let me look." and len(message["tool_calls"]) == 1


def test_chat_assembler_empty_answer_has_empty_string_content():
    body = assemble([chunk({"role": "assistant"}), chunk({}, finish="length")])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_assembler_finish_reason_not_cleared_by_later_null():
    body = assemble([chunk({"content": "x"}, finish="stop"), chunk(choices=[], usage=USAGE)])
    assert body["choices"][0]["finish_reason"] == "stop"


def test_chat_assembler_identity_from_first_chunk_model_from_last():
    body = assemble(
        [
            chunk({"content": "a"}, id="first", created=11, model="m1"),
            chunk({"content": "b"}, id="second", created=22, model="m2"),
            chunk({"content": "c"}, id="third", created=33, model=None),
        ]
    )
    assert (body["id"], body["created"], body["model"]) == ("first", 11, "m2")


def test_client_chunk_drops_usage_only_chunks():
    assert client_chunk({"id": "x", "choices": [], "usage": USAGE}) is None
    assert client_chunk({"id": "x", "usage": USAGE}) is None


def test_client_chunk_strips_usage_without_mutating_the_input():
    original = chunk({"content": "a"}, usage=USAGE)
    kept = copy.deepcopy(original)
    out = client_chunk(original)
    assert out is not None and "usage" not in out and out["choices"] == kept["choices"]
    assert original == kept


def test_client_chunk_passes_plain_chunks_through():
    plain = chunk({"content": "a"})
    assert client_chunk(plain) is plain


def test_usage_chunk_shape():
    assert usage_chunk(chunk_id="c1", created=5, model="m", usage=USAGE) == {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [],
        "usage": USAGE,
    }
