"""sse: the `data:` framing the router writes and the decoder that reads vLLM's pre-encoded chunks."""

from __future__ import annotations

import json

import pytest

from serve_app.sse import DONE, encode_data, encode_event, iter_data


def test_encode_data_is_one_compact_event():
    assert encode_data({"a": 1, "b": [1, 2]}) == b'data: {"a":1,"b":[1,2]}\n\n'


def test_encode_data_keeps_non_ascii_as_utf8():
    encoded = encode_data({"content": "héllo ✓"})
    assert encoded == 'data: {"content":"héllo ✓"}\n\n'.encode()


def test_encode_data_escapes_newlines_inside_the_payload():
    encoded = encode_data({"content": "line1\nline2\n\n"})
    assert encoded.count(b"\n\n") == 1 and encoded.endswith(b"\n\n")


def test_encode_event_names_the_event():
    assert encode_event("message_stop", {"type": "message_stop"}) == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def test_done_marker():
    assert DONE == b"data: [DONE]\n\n"


def test_iter_data_round_trips_encoded_events():
    payloads = [{"i": 1}, {"content": "a\nb"}, {"x": "✓"}]
    text = b"".join(encode_data(p) for p in payloads).decode() + DONE.decode()
    assert list(iter_data(text)) == payloads


def test_iter_data_skips_done_comments_event_names_and_empty_data():
    text = ': keep-alive\n\nevent: chunk\ndata: {"a":1}\n\ndata:\n\ndata: [DONE]\n\nid: 7\nretry: 10\n'
    assert list(iter_data(text)) == [{"a": 1}]


def test_iter_data_accepts_data_without_a_space():
    assert list(iter_data('data:{"a":1}\r\ndata:  {"b":2}  \n')) == [{"a": 1}, {"b": 2}]


def test_iter_data_rejects_invalid_json():
    with pytest.raises(json.JSONDecodeError):
        list(iter_data("data: {not json}\n\n"))
