"""JSON as ipm stores and hashes it.

orjson is the fast path. It refuses integers beyond 64 bits, which NDJSON
imports keep exactly, so those values fall back to the standard library.
Both refuse NaN and infinities: stored JSON is always strict JSON.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return _stdlib(value, sort_keys=False)


def canonical_bytes(value: Any) -> bytes:
    """Key-sorted, compact bytes: equal values give equal bytes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib(value, sort_keys=True)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # Integers beyond 64 bits are valid JSON that orjson will not read.
        return json.loads(data)


def _stdlib(value: Any, *, sort_keys: bool) -> bytes:
    text = json.dumps(
        value,
        sort_keys=sort_keys,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode()
