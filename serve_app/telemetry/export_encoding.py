"""The export process's savings on the SDK's OTLP encoder: the encoding itself stays the SDK's.

The encoder builds two protobuf messages in Python for every attribute of every span (about 1.5 µs each on the
development machine; a router span has 33 attributes), and it hashes the span's resource, which serialises it to
JSON, once per span. In the export process (`export_worker`), which only encodes spans, two things are reused:

- `OneResource`: the resource's hash is computed once (it is immutable).
- `memoize_attribute_encoding`: the `KeyValue` the encoder built for an attribute is handed out again for the same
  key and value. Most of a router span's attributes repeat from request to request (model, backend, route reason,
  tenant, zero cache tokens); a key seen with more than `max_values_per_key` distinct values (ids, token counts) is
  no longer memoized, and neither are floats, whose equal values may encode differently (0.0 and -0.0). Protobuf
  copies a message into the span that holds it, so sharing one is safe, and the bytes are the SDK's own
  (tests/unit/test_export_encoding.py).

Upstream, both would belong in the SDK: a cached `Resource.__hash__`, and an encoder that does not wrap each value.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Resource

logger = logging.getLogger(__name__)

MAX_KEYS = 1024  # attribute names memoized at most (the router's spans have a fixed set)
# Value types memoized: those whose equal values encode to equal bytes (and tuples of str).
_KEPT = frozenset({str, bool, int, bytes})


class OneResource(Resource):
    """A Resource whose hash is computed once; the SDK's serialises the attributes to JSON on every call."""

    def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:  # defined with __hash__, as Python requires; the SDK's comparison
        return super().__eq__(other)


def memoize_attribute_encoding(max_values_per_key: int = 32) -> Callable[[], None] | None:
    """Makes the SDK's OTLP encoder reuse the `KeyValue` of an attribute it has encoded before with the same value.

    Returns the function that undoes it, or None (nothing changed) when the SDK's encoder is not the shape this
    was written against: then the export is as fast as the SDK makes it, and as correct.
    """
    from opentelemetry.exporter.otlp.proto.common import _internal as encoder

    original = getattr(encoder, "_encode_key_value", None)
    if original is None or list(inspect.signature(original).parameters) != ["key", "value"]:
        logger.info("the OTLP encoder is not the expected shape; attribute encoding is not memoized")
        return None
    seen: dict[str, dict[tuple[type, Any], Any]] = {}
    varying: set[str] = set()

    def encode_key_value(key: str, value: Any) -> Any:
        values = seen.get(key)
        if values is None:
            if key in varying or len(seen) >= MAX_KEYS:
                return original(key, value)
            values = seen[key] = {}
        kind = value.__class__
        if kind not in _KEPT and not (kind is tuple and all(v.__class__ is str for v in value)):
            return original(key, value)  # floats (0.0 == -0.0), mixed tuples ((1,) == (True,)), lists
        memo = (kind, value)  # True == 1, but they encode differently
        found = values.get(memo)
        if found is None:
            found = original(key, value)
            if len(values) < max_values_per_key:
                values[memo] = found
            else:  # ids, timings, costs: not worth keeping
                del seen[key]
                varying.add(key)
        return found

    encoder._encode_key_value = encode_key_value

    def undo() -> None:
        encoder._encode_key_value = original

    return undo
