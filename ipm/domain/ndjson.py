"""Strict NDJSON reading for bulk imports: framing on bytes, one verdict per line.

Theory of operation
-------------------
The reader consumes an iterable of byte chunks of any size and yields one
:class:`Line` per physical line. It never does I/O of its own.

Framing works on bytes and splits only on ``\\n``. A line that is not yet
complete is carried to the next chunk, so a multi-byte UTF-8 sequence cut by
a chunk boundary is whole again before anything decodes it; the lines and
their verdicts never depend on the read size. Each line knows its number
(from 1), the byte offset where it starts and the offset just after its
newline: a job stores that pair after each committed slice and resumes there
with ``start_offset``/``start_line``.

Memory stays bounded by ``max_line_bytes``: once a partial line outgrows the
limit, its bytes are dropped (only a short prefix is kept for the excerpt)
until the next ``\\n``, and the line becomes one ``line_too_long`` error.

Before the first line, the first bytes of the file are sniffed: a UTF-8 BOM
is stripped, and a UTF-16/UTF-32 file (by its BOM or by the NUL bytes that
ASCII text has in those encodings) is refused whole with
:class:`UnsupportedEncoding`, because splitting it on ``\\n`` bytes would
produce nonsense lines.

Parsing has two paths that must agree (a differential test holds them
equal). :func:`parse_record_reference` is the obviously-correct one: strict
UTF-8 decoding, a nesting scan, then the standard library's parser with
hooks that refuse non-finite constants, out-of-range or inexact numbers,
then a walk that refuses duplicate keys and lone surrogates. The fast path
in :func:`parse_record` lets orjson parse the line and only trusts its
result when cheap checks prove that orjson's leniencies could not have
mattered:

- duplicate keys: orjson keeps the last one, so a dict holds fewer keys
  than the text. Every key is a string closed by ``"`` and followed by
  optional whitespace and ``:``; counting those patterns in the bytes gives
  an upper bound on the keys written, and the walk counts the keys parsed.
  Equal counts prove there was no duplicate;
- numbers: orjson turns integers beyond 64 bits into floats, lets ``1e-400``
  underflow to ``0.0`` and never says whether a long literal lost digits.
  A float is trusted only if it lies in the normal range below 2**63 and
  no number in the bytes has 16 or more digits in its mantissa (a literal
  with at most 15 significant digits always survives a double exactly);
  a zero is trusted only if no number has a negative exponent;
- depth: the walk stops as soon as it goes deeper than ``max_depth``.

Any doubt, and every orjson error, sends the line to the reference parser,
which gives the verdict and the error code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any, Literal

import attrs
import orjson

from ipm.domain.errors import InvalidRequest, Problem, pointer_token
from ipm.domain.jsoncodec import MAX_INT_DIGITS

LINE_ERROR_CODES: tuple[str, ...] = (
    "invalid_utf8",
    "invalid_json",
    "trailing_data",
    "not_an_object",
    "duplicate_key",
    "non_finite_number",
    "number_out_of_range",
    "inexact_number",
    "lone_surrogate",
    "too_deep",
    "line_too_long",
    "schema_violation",
    "duplicate_record",
)
"""Every code a line error may carry. The last two belong to later stages."""

DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 64
MAX_DEPTH_LIMIT = 256
"""Deeper limits would bring the parsers close to Python's recursion limit."""

LineKind = Literal["record", "blank", "error"]

_EXCERPT_CHARS = 80
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
_JSON_SPACE = b" \t\r"
_JSON_SPACE_TEXT = " \t\r\n"
"""The same (and the line ending), for an excerpt's text."""
_MIN_NORMAL = 2.2250738585072014e-308
_BIG_FLOAT = 2.0**63
_SCALARS = frozenset({str, int, bool, type(None)})

# A key's closing quote, optional JSON whitespace, then its colon. A line
# never holds a newline, but a request body read by the same parser may.
_KEY_COLON = re.compile(rb'"[ \t\r\n]*:')
_QUOTE_SPACE = re.compile(rb'"[ \t\r\n]')

# A number token (it follows ":", "," or "[") whose mantissa holds 16 or more
# digits and that is a float: a dot in it, or an exponent after it.
_LONG_FLOAT = re.compile(rb"[:,\[][ \t\r]*-?(?:(?=[0-9.]{17})[0-9]+\.|[0-9]{16,}[eE])")

# A number token with a negative exponent: the only way to underflow to 0.0
# with a mantissa short enough to pass _LONG_FLOAT.
_NEGATIVE_EXPONENT = re.compile(rb"[:,\[][ \t\r]*-?[0-9.]+[eE]-")


def _number_shape_table() -> bytes:
    """Digits and dots become "0", exponent marks "e", minus stays, rest " "."""
    table = bytearray(b" " * 256)
    for char in b"0123456789.":
        table[char] = ord("0")
    table[ord("e")] = table[ord("E")] = ord("e")
    table[ord("-")] = ord("-")

    return bytes(table)


_NUMBER_SHAPE = _number_shape_table()
_SIXTEEN_DIGITS = b"0" * 16

_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
)
_UTF8_BOM = b"\xef\xbb\xbf"
BOM_BYTES = len(_UTF8_BOM)
"""The length of the UTF-8 byte order mark a file may start with."""

# Which of the first four bytes are NUL when the text starts with ASCII.
_NUL_PATTERNS = {
    (True, True, True, False): "UTF-32BE",
    (False, True, True, True): "UTF-32LE",
    (True, False, True, False): "UTF-16BE",
    (False, True, False, True): "UTF-16LE",
}


@attrs.frozen
class LineError:
    """Why one line was refused: a code from LINE_ERROR_CODES and where."""

    code: str = attrs.field(validator=attrs.validators.in_(LINE_ERROR_CODES))
    message: str
    pointer: str
    excerpt: str


@attrs.frozen
class Line:
    """One physical line and its verdict.

    ``end_offset`` is where the next line starts: with ``number`` it is the
    position a job stores to resume after this line.
    """

    number: int
    offset: int
    end_offset: int
    kind: LineKind
    record: dict[str, Any] | None = None
    error: LineError | None = None


Scanned = tuple[int, int, int, dict[str, Any] | LineError | None]
"""One line as :meth:`NdjsonReader.scan` yields it: number, offset, end
offset, and the record, the error, or ``None`` for a blank line."""


class UnsupportedEncoding(InvalidRequest):
    """The file is UTF-16 or UTF-32: it is refused whole, before any line."""

    def __init__(self, encoding: str) -> None:
        message = f"the file is {encoding}; NDJSON imports must be UTF-8"
        super().__init__(message, [Problem("", message)])
        self.encoding = encoding


def sniff_encoding(head: bytes) -> str | None:
    """Name the UTF-16/32 encoding the first bytes of a file reveal, if any.

    ``head`` holds the first four bytes (fewer only for a shorter file).
    ``None`` means the file may be UTF-8.
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name

    if len(head) >= 4:
        first, second, third, fourth = (byte == 0 for byte in head[:4])
        return _NUL_PATTERNS.get((first, second, third, fourth))

    if len(head) >= 2 and (head[0] == 0) != (head[1] == 0):
        return "UTF-16BE" if head[0] == 0 else "UTF-16LE"

    return None


def parse_record(
    raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any] | LineError:
    """Parse one line (without its newline) into a record, or say why not."""
    _check_max_depth(max_depth)

    return _parse(raw, max_depth)


def parse_record_reference(
    raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any] | LineError:
    """The slow, obviously-correct parser that gives every verdict its code.

    Checks run in this order, the first failure wins: UTF-8, nesting depth,
    the JSON grammar and its numbers (first fault in text order), the top
    level being an object, then duplicate keys and lone surrogates (first in
    document order).
    """
    _check_max_depth(max_depth)

    try:
        return _strict_parse(raw, max_depth)
    except _Fault as fault:
        return LineError(fault.code, fault.message, fault.pointer, _excerpt(raw))


class NdjsonReader:
    """Frames a byte stream into numbered lines and parses each one.

    Use one reader per pass over a file. ``start_offset``/``start_line``
    resume after a line already processed (``Line.end_offset`` and
    ``Line.number``); the encoding sniff and BOM check only happen when
    reading from offset 0, so ``bom`` stays ``None`` on a resumed pass.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        start_offset: int = 0,
        start_line: int = 0,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        _check_max_depth(max_depth)
        if start_offset < 0 or start_line < 0:
            raise ValueError("start_offset and start_line cannot be negative")
        if (start_offset == 0) != (start_line == 0):
            raise ValueError("a resume position needs both offset and line")

        self._max_line_bytes = max_line_bytes
        self._max_depth = max_depth
        self._start_offset = start_offset
        self._start_line = start_line
        self.bom: bool | None = None

    def read(self, chunks: Iterable[bytes]) -> Iterator[Line]:
        """Yield every line of the chunks, which start at ``start_offset``.

        Raises :class:`UnsupportedEncoding` before the first line when the
        file is UTF-16 or UTF-32.
        """
        return _lines(self.scan(chunks))

    def scan(self, chunks: Iterable[bytes]) -> Iterator[Scanned]:
        """:meth:`read` as plain tuples, for callers that handle many lines.

        Each line is ``(number, offset, end_offset, verdict)``: the record,
        the :class:`LineError`, or ``None`` for a blank line.
        """
        stream = iter(chunks)
        base = self._start_offset

        if base == 0:
            head, stream = self._open(stream)
            base = len(_UTF8_BOM) if self.bom else 0
            stream = _prepend(head, stream)

        return self._frame(stream, base)

    def _open(self, stream: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
        """Read the first bytes, refuse UTF-16/32, strip a UTF-8 BOM."""
        head = b""
        for chunk in stream:
            head += chunk
            if len(head) >= 4:
                break

        encoding = sniff_encoding(head)
        if encoding is not None:
            raise UnsupportedEncoding(encoding)

        self.bom = head.startswith(_UTF8_BOM)
        if self.bom:
            head = head[len(_UTF8_BOM) :]

        return head, stream

    def _frame(self, chunks: Iterable[bytes], base: int) -> Iterator[Scanned]:
        """Split on newlines; ``base`` is the file offset of the first chunk."""
        # One byte of slack: a line at the limit may still end with "\r".
        keep = self._max_line_bytes + 1
        classify = self._classify
        number = self._start_line
        start = self._start_offset
        pending = bytearray()
        # Set while an over-long line is being dropped: its first bytes.
        prefix: bytes | None = None

        for chunk in chunks:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)
            # One split in C per chunk: the loop below only numbers lines.
            bodies = chunk.split(b"\n")
            tail = bodies.pop()

            if bodies:
                first = bodies[0]
                end = base + len(first) + 1
                number += 1
                if prefix is not None:
                    line = _too_long(number, start, end, _fill(prefix, first))
                    prefix = None
                elif pending:
                    pending += first
                    line = classify(bytes(pending), number, start, end)
                    pending.clear()
                else:
                    line = classify(first, number, start, end)
                yield line
                start = end

                for index in range(1, len(bodies)):
                    body = bodies[index]
                    end = start + len(body) + 1
                    number += 1
                    yield classify(body, number, start, end)
                    start = end

            if prefix is not None:
                prefix = _fill(prefix, tail)
            elif len(pending) + len(tail) > keep:
                prefix = _fill(bytes(pending[:_EXCERPT_BYTES]), tail)
                pending.clear()
            else:
                pending += tail
            base += len(chunk)

        # A last line without a newline ends at the end of the file.
        if prefix is not None:
            yield _too_long(number + 1, start, base, prefix)
        elif pending:
            yield classify(bytes(pending), number + 1, start, base)

    def _classify(self, raw: bytes, number: int, start: int, end: int) -> Scanned:
        body = raw[:-1] if raw.endswith(b"\r") else raw
        if len(body) > self._max_line_bytes:
            return _too_long(number, start, end, raw)

        if body[:1] != b"{" and not body.strip(_JSON_SPACE):
            return (number, start, end, None)

        return (number, start, end, _parse(body, self._max_depth))


def _lines(scanned: Iterator[Scanned]) -> Iterator[Line]:
    for number, start, end, verdict in scanned:
        if verdict is None:
            yield Line(number, start, end, "blank")
        elif type(verdict) is dict:
            yield Line(number, start, end, "record", verdict)
        else:
            assert isinstance(verdict, LineError)
            yield Line(number, start, end, "error", None, verdict)


def _prepend(head: bytes, stream: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from stream


def _fill(prefix: bytes, more: bytes) -> bytes:
    """Grow an over-long line's kept prefix up to what an excerpt needs."""
    room = _EXCERPT_BYTES - len(prefix)
    if room <= 0:
        return prefix

    return prefix + more[:room]


def _too_long(number: int, start: int, end: int, raw: bytes) -> Scanned:
    error = LineError(
        "line_too_long",
        "line is longer than the limit; its content was skipped",
        "",
        _excerpt(raw),
    )

    return (number, start, end, error)


def _excerpt(raw: bytes) -> str:
    text = raw[:_EXCERPT_BYTES].decode("utf-8", "replace")

    # Only what JSON itself skips: str.rstrip() would also take a form
    # feed, a no-break space or U+2028, the very character at fault.
    return text[:_EXCERPT_CHARS].rstrip(_JSON_SPACE_TEXT)


def _check_max_depth(max_depth: int) -> None:
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_LIMIT}")


def _parse(raw: bytes, max_depth: int) -> dict[str, Any] | LineError:
    record = _parse_fast(raw, max_depth)
    if record is None:
        return parse_record_reference(raw, max_depth=max_depth)

    return record


# The fast path -------------------------------------------------------------


def _parse_fast(raw: bytes, max_depth: int) -> dict[str, Any] | None:
    """orjson's result when it provably equals the reference's, else None."""
    try:
        tree = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(tree) is not dict:
        return None
    if _reprinted(tree, raw, max_depth):
        return tree

    floats: list[float] = []
    keys = _count_keys(tree, 1, max_depth, floats)
    if keys < 0 or keys != _key_bound(raw):
        return None

    if floats and not _floats_exact(raw, floats):
        return None

    return tree


def _reprinted(tree: dict[str, Any], raw: bytes, max_depth: int) -> bool:
    """True when orjson writes the tree back as exactly the line's bytes.

    Equal bytes prove every leniency irrelevant at once: a dropped duplicate
    key, an integer read as a float or a float that lost digits would all
    print differently. Compact lines written by a serialiser (the common
    case) are proven so, in C, with a bracket count for the depth.
    """
    if raw.count(b"{") + raw.count(b"[") > max_depth:
        return False
    try:
        return orjson.dumps(tree) == raw
    except orjson.JSONEncodeError:
        return False


def _count_keys(
    node: dict[str, Any] | list[Any], depth: int, max_depth: int, floats: list[float]
) -> int:
    """Keys in the tree, or -1 once it is deeper than max_depth; collects floats."""
    if depth > max_depth:
        return -1

    keys = 0
    values: Iterable[Any] = node
    if type(node) is dict:
        keys = len(node)
        values = node.values()

    for value in values:
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is float:
            floats.append(value)
            continue
        # orjson builds nothing else: this is a dict or a list.
        inner = _count_keys(value, depth + 1, max_depth, floats)
        if inner < 0:
            return -1
        keys += inner

    return keys


def _key_bound(raw: bytes) -> int:
    """An upper bound on the keys written in the line."""
    if _QUOTE_SPACE.search(raw):
        return len(_KEY_COLON.findall(raw))

    # Without whitespace after any quote, every key ends with exactly '":'.
    return raw.count(b'":')


def _floats_exact(raw: bytes, floats: list[float]) -> bool:
    """True when every float provably holds its literal's exact value."""
    has_zero = False
    for value in floats:
        if value == 0.0:
            has_zero = True
        elif not _MIN_NORMAL <= abs(value) < _BIG_FLOAT:
            return False

    # The regexes are slow on every line; their translated shape is a cheap
    # necessary condition, so most lines never run them.
    shape = raw.translate(_NUMBER_SHAPE)
    if _SIXTEEN_DIGITS in shape and _LONG_FLOAT.search(raw):
        return False

    return not (has_zero and b"0e-" in shape and _NEGATIVE_EXPONENT.search(raw))


# The reference path --------------------------------------------------------


class _Fault(Exception):
    def __init__(self, code: str, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.pointer = pointer


class _Pairs:
    """An object's members in text order, kept so duplicates stay visible."""

    __slots__ = ("members",)

    def __init__(self, members: list[tuple[str, Any]]) -> None:
        self.members = members


def _strict_parse(raw: bytes, max_depth: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Fault("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None

    if _too_deep(text, max_depth):
        raise _Fault("too_deep", f"nesting is deeper than {max_depth}")

    # The standard library's own message for this suggests a Python codec.
    if text.startswith("\ufeff"):
        raise _Fault("invalid_json", "a byte order mark is only allowed at byte 0")

    tree = _load(text)
    if type(tree) is not _Pairs:
        raise _Fault("not_an_object", f"the line is a JSON {_json_type(tree)}")

    record: dict[str, Any] = _build(tree, "")

    return record


def _too_deep(text: str, max_depth: int) -> bool:
    # Brackets inside strings only ever inflate this count.
    if text.count("{") + text.count("[") <= max_depth:
        return False

    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1

    return False


def _load(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_Pairs,
            parse_constant=_refuse_constant,
            parse_float=_exact_float,
            parse_int=_checked_int,
        )
    except json.JSONDecodeError as exc:
        code = "trailing_data" if exc.msg == "Extra data" else "invalid_json"
        # The standard library ends some messages with "at" already.
        message = exc.msg.removesuffix(" at")
        raise _Fault(code, f"{message} at column {exc.colno}") from None
    except _Fault as fault:
        # A number refused mid-parse: find where it sits, for the report.
        fault.pointer = _pointer_of_first_bad_number(text)
        raise


class _Marker:
    """Stands in for the refused number in a second, pointer-finding parse."""


def _pointer_of_first_bad_number(text: str) -> str:
    """The JSON pointer of the first number the strict hooks refuse, or "".

    The text is parsed again with hooks that put a marker where that number
    was (the same verdicts as the strict hooks, so the same number); the
    tree is then searched for it. A fault further on in the text leaves
    the pointer empty, as the document has no tree to point into.
    """
    marker = _Marker()
    found: list[_Marker] = []

    def mark() -> Any:
        if found:
            return 0  # only the first refused number matters
        found.append(marker)
        return marker

    def checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
        def hook(literal: str) -> Any:
            try:
                return check(literal)
            except _Fault:
                return mark()

        return hook

    try:
        tree = json.loads(
            text,
            object_pairs_hook=_Pairs,
            parse_constant=lambda name: mark(),
            parse_float=checked(_exact_float),
            parse_int=checked(_checked_int),
        )
    except (json.JSONDecodeError, RecursionError):
        return ""

    return _find(tree, marker, "") or ""


def _find(node: Any, marker: _Marker, pointer: str) -> str | None:
    if node is marker:
        return pointer
    if type(node) is _Pairs:
        for key, value in node.members:
            if _encodable(key):
                found = _find(value, marker, f"{pointer}/{pointer_token(key)}")
            elif _find(value, marker, pointer) is not None:
                # Under a key no pointer can hold (a lone surrogate): the
                # object is pointed at, as _build does for the key itself.
                return pointer
            else:
                found = None
            if found is not None:
                return found
    elif type(node) is list:
        for index, item in enumerate(node):
            found = _find(item, marker, f"{pointer}/{index}")
            if found is not None:
                return found

    return None


def _refuse_constant(name: str) -> Any:
    raise _Fault("non_finite_number", f"{name} is not a JSON number")


def _exact_float(literal: str) -> float:
    value = float(literal)
    mantissa = literal.lower().partition("e")[0]
    underflow = value == 0.0 and mantissa.strip("-.0") != ""
    if math.isinf(value) or underflow:
        raise _Fault("number_out_of_range", "number is outside the range of a double")

    if value == 0.0:
        return value

    # Kept exactly: the double is the literal, or prints back as the literal
    # in one of the two round-trip formats producers use (shortest, 17 digits).
    exact = Decimal(literal)
    printed = (Decimal(value), Decimal(repr(value)), Decimal(f"{value:.17g}"))
    if exact not in printed:
        raise _Fault("inexact_number", "number has more digits than a double keeps")

    return value


def _checked_int(literal: str) -> int:
    # ipm's own bound (see MAX_INT_DIGITS), whatever the interpreter allows;
    # int() still refuses past a lower limit a host may have set.
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise _Fault("number_out_of_range", "integer has too many digits")
    try:
        return int(literal)
    except ValueError:
        raise _Fault("number_out_of_range", "integer has too many digits") from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"

    return "number"


def _build(node: Any, pointer: str) -> Any:
    """Plain dicts and lists from the parse, refusing duplicates and surrogates."""
    if type(node) is _Pairs:
        record: dict[str, Any] = {}
        for key, value in node.members:
            # A bad key is reported at its object: a pointer that held it
            # could not be stored or sent either.
            _check_text(key, pointer, "an object key")
            member = f"{pointer}/{pointer_token(key)}"
            if key in record:
                raise _Fault("duplicate_key", "duplicate key", member)
            record[key] = _build(value, member)
        return record

    if type(node) is list:
        return [_build(item, f"{pointer}/{index}") for index, item in enumerate(node)]

    if type(node) is str:
        _check_text(node, pointer)

    return node


def _check_text(text: str, pointer: str, what: str = "string") -> None:
    if not _encodable(text):
        raise _Fault("lone_surrogate", f"{what} holds a lone surrogate", pointer)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False

    return True
