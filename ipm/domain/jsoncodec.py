"""JSON as ipm stores and hashes it.

orjson is the fast path. It will not write integers beyond 64 bits, and it
reads them as floats, silently losing digits; NDJSON imports keep such
integers exactly. So writing falls back to the standard library when
orjson refuses, and reading does whenever the text holds a run of 19 or
more digits (the only way such an integer can appear).
"""

from __future__ import annotations

import json
import re
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


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_DIGITS.search(raw):
        return json.loads(raw)

    return orjson.loads(raw)


def _stdlib(value: Any, *, sort_keys: bool) -> bytes:
    text = json.dumps(
        value,
        sort_keys=sort_keys,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode()
