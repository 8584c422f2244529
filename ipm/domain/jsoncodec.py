"""JSON as ipm stores and hashes it.

orjson is the fast path. It will not write integers beyond 64 bits, and it
reads them as floats, silently losing digits; NDJSON imports keep such
integers exactly. So writing falls back to the standard library when
orjson refuses, and reading does whenever the text holds a run of 19 or
more digits (the only way such an integer can appear).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from ipm.domain.errors import Problem, type_name


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


MAX_DEPTH = 64


def strict_problems(value: Any, pointer: str = "", depth: int = 0) -> list[Problem]:
    """Every place where ``value`` is not strict JSON, with its pointer.

    Strict means: objects with string keys, arrays, valid Unicode strings,
    integers, finite floats, booleans and null, nested at most
    :data:`MAX_DEPTH` deep. orjson would write NaN as ``null`` and the
    standard library as ``NaN``; neither belongs in a stored event.
    """
    if depth > MAX_DEPTH:
        return [Problem(pointer, f"nested deeper than {MAX_DEPTH} levels")]
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if is_writable(value) else [Problem(pointer, "too many digits")]
    if isinstance(value, float):
        return [] if math.isfinite(value) else [Problem(pointer, "not a finite number")]
    if isinstance(value, str):
        return [] if is_unicode(value) else [Problem(pointer, "not valid Unicode")]
    if isinstance(value, list | tuple):
        return [
            p
            for i, item in enumerate(value)
            for p in strict_problems(item, f"{pointer}/{i}", depth + 1)
        ]
    if isinstance(value, dict):
        return _object_problems(value, pointer, depth)

    return [Problem(pointer, f"{type_name(value)} is not a JSON value")]


def _object_problems(value: dict[Any, Any], pointer: str, depth: int) -> list[Problem]:
    problems: list[Problem] = []
    for key, item in value.items():
        if not isinstance(key, str) or not is_unicode(key):
            problems.append(Problem(pointer, "object keys must be valid strings"))
            continue
        escaped = key.replace("~", "~0").replace("/", "~1")
        problems += strict_problems(item, f"{pointer}/{escaped}", depth + 1)

    return problems


MAX_INT_DIGITS = 4_300
"""The most digits an integer ipm stores may have: Python's default limit
on turning an int into text or back. Ours, not the interpreter's: a host
that lifted that limit (``sys.set_int_max_str_digits(0)``) must not store
what every other process, with the default, would fail to read."""

_INT_BOUND = 10**MAX_INT_DIGITS


def is_writable(value: int) -> bool:
    """Whether an integer can be written as JSON text (and so stored)."""
    # 14,000 bits is under 4,215 digits: the common case needs no big power.
    return value.bit_length() < 14_000 or -_INT_BOUND < value < _INT_BOUND


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate): UTF-8 can hold it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False

    return True
