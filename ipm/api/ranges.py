"""Byte ranges of a download (RFC 9110, 14): resuming a large export.

A client whose download of a multi-gigabyte export broke asks for the rest
with ``Range: bytes=<first>-``; ``If-Range`` with the ETag it got makes
sure the rest belongs to the same file. ipm answers one range: a request
for several, in another unit or malformed is answered with the whole file,
as RFC 9110 lets a server do (and as it must for a malformed one), and so
is the last N bytes of an empty file. A range that starts past the end is
a 416 whose ``Content-Range`` gives the size.
"""

from __future__ import annotations

import re

from ipm.domain.errors import RangeNotSatisfiable

_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
_OWS = " \t"
_LONGEST = 19
"""Digits of the largest position read as a number; a longer one is past
any file (and int() refuses texts past 4,300 digits)."""
_PAST_ANY_FILE: int = 10**_LONGEST


def requested_range(
    header: str | None, if_range: str | None, etag: str, size: int
) -> tuple[int, int] | None:
    """The one range ``[first, last]`` (inclusive) of a ``size``-byte file that
    ``header`` asks for, or None to send the whole file.

    ``if_range`` must be ``etag`` exactly (a strong comparison; a date or
    a weak tag never matches) for the range to count. Raises
    :class:`RangeNotSatisfiable` for a range no byte of the file answers.
    """
    if header is None or (if_range is not None and if_range.strip(_OWS) != etag):
        return None
    unit, equals, listed = header.strip(_OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    # A list may hold empty elements (RFC 9110, 5.6.1); more than one range
    # is answered whole (a multipart answer helps no NDJSON client).
    specs = [spec.strip(_OWS) for spec in listed.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    found = _SPEC.fullmatch(specs[0])
    if found is None or found[0] == "-":
        return None
    first_text, last_text = found.groups()

    if not first_text:  # "-N": the last N bytes
        suffix = _position(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        if size == 0:
            return None  # all of nothing (RFC 9110, 14.1.3): the empty file
        return max(0, size - suffix), size - 1

    first = _position(first_text)
    last = _position(last_text) if last_text else None
    if last is not None and last < first:
        return None  # not a range at all: RFC 9110 has it ignored
    if first >= size:
        raise RangeNotSatisfiable(size)

    return first, size - 1 if last is None else min(last, size - 1)


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    if len(significant) > _LONGEST:
        return _PAST_ANY_FILE

    return int(significant)


def content_range(first: int, last: int, size: int) -> str:
    """The ``Content-Range`` of a 206 answer."""
    return f"bytes {first}-{last}/{size}"
