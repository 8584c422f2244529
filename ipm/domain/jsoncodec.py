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

from ipm.domain.errors import MAX_PROBLEMS, Problem, capped, type_name


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


def as_stored(value: Any) -> tuple[Any, int]:
    """``value`` read back as the plain JSON ipm stores, and the size of
    the text stored for it.

    A host's tuples, enum members and subclasses become lists, ints and
    str. When orjson refuses one of them (a str-subclass key, a float
    subclass) the standard library writes the value, differently (``1e-05``
    where orjson writes ``0.00001``): the plain form is then written again
    to be measured as it will be stored.
    """
    try:
        data = orjson.dumps(value)
    except TypeError:
        plain = loads(_stdlib(value, sort_keys=False))
        return plain, len(dumps(plain))

    return loads(data), len(data)


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


def strict_problems(
    value: Any, pointer: str = "", depth: int = 0, *, max_depth: int = MAX_DEPTH
) -> list[Problem]:
    """Every place where ``value`` is not strict JSON, with its pointer, up
    to :data:`MAX_PROBLEMS` (past it the walk stops, and one more item at
    ``pointer`` says so).

    Strict means: objects with string keys, arrays, valid Unicode strings,
    integers, finite floats, booleans and null, nested at most
    ``max_depth`` deep (``value`` itself at ``depth``). orjson would
    write NaN as ``null`` and the standard library as ``NaN``; neither
    belongs in a stored event.
    """
    found: list[Problem] = []
    _walk(value, pointer, depth, found, max_depth)

    return capped(found, pointer)


def _walk(
    value: Any, pointer: str, depth: int, found: list[Problem], max_depth: int
) -> None:
    # One list for the whole walk, so the loops can stop once it holds enough.
    # Levels are containers, as the NDJSON reader counts them: a scalar
    # inside the deepest one adds none.
    if depth > max_depth and isinstance(value, list | tuple | dict):
        found.append(Problem(pointer, f"nested deeper than {max_depth} levels"))
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not is_writable(value):
            found.append(Problem(pointer, "too many digits"))
    elif isinstance(value, float):
        if not math.isfinite(value):
            found.append(Problem(pointer, "not a finite number"))
    elif isinstance(value, str):
        if not is_unicode(value):
            found.append(Problem(pointer, "not valid Unicode"))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if len(found) > MAX_PROBLEMS:
                return
            _walk(item, f"{pointer}/{i}", depth + 1, found, max_depth)
    elif isinstance(value, dict):
        for key, item in value.items():
            if len(found) > MAX_PROBLEMS:
                return
            if not isinstance(key, str) or not is_unicode(key):
                found.append(Problem(pointer, "object keys must be valid strings"))
                continue
            escaped = key.replace("~", "~0").replace("/", "~1")
            _walk(item, f"{pointer}/{escaped}", depth + 1, found, max_depth)
    else:
        found.append(Problem(pointer, f"{type_name(value)} is not a JSON value"))


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
