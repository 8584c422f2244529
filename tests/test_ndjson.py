"""The NDJSON reader: framing, real-world files, strict JSON, fast = reference."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipm.domain.errors import InvalidRequest
from ipm.domain.ndjson import (
    LINE_ERROR_CODES,
    Line,
    LineError,
    NdjsonReader,
    UnsupportedEncoding,
    parse_record,
    parse_record_reference,
    sniff_encoding,
)

READ_SIZES = [1, 2, 3, 4095, 4096, 65536]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(data: bytes, size: int, **options: Any) -> list[Line]:
    return list(NdjsonReader(**options).read(chunked(data, size)))


def summary(lines: list[Line]) -> list[tuple[Any, ...]]:
    """(number, offset, end_offset, kind, record or error code) per line."""
    return [
        (
            line.number,
            line.offset,
            line.end_offset,
            line.kind,
            line.error.code if line.error else line.record,
        )
        for line in lines
    ]


@pytest.fixture(params=READ_SIZES, ids=lambda size: f"read{size}")
def size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


# Framing -------------------------------------------------------------------


def test_plain_lines_are_numbered_from_one_with_byte_offsets(size: int) -> None:
    """Each line carries its number, its start offset and its resume offset."""
    data = b'{"a":1}\n{"b":"\xc3\xa9"}\n'

    lines = read(data, size)

    assert summary(lines) == [
        (1, 0, 8, "record", {"a": 1}),
        (2, 8, 19, "record", {"b": "é"}),
    ]


def test_a_bom_at_byte_zero_is_stripped_and_reported(size: int) -> None:
    """A UTF-8 BOM at byte 0 is dropped, reported, and line 1 still starts at 0."""
    data = b'\xef\xbb\xbf{"a":1}\n{"b":2}\n'
    reader = NdjsonReader()

    lines = list(reader.read(chunked(data, size)))

    assert reader.bom is True
    assert summary(lines) == [
        (1, 0, 11, "record", {"a": 1}),
        (2, 11, 19, "record", {"b": 2}),
    ]


def test_a_file_without_bom_reports_none(size: int) -> None:
    """A file without a BOM says so once byte 0 has been read."""
    reader = NdjsonReader()

    list(reader.read(chunked(b'{"a":1}\n', size)))

    assert reader.bom is False


def test_a_bom_after_byte_zero_is_an_invalid_json_line(size: int) -> None:
    """A BOM that starts line 2 is not stripped: the line is invalid JSON."""
    data = b'{"a":1}\n\xef\xbb\xbf{"b":2}\n'

    lines = read(data, size)

    assert summary(lines) == [
        (1, 0, 8, "record", {"a": 1}),
        (2, 8, 19, "error", "invalid_json"),
    ]


def test_crlf_line_endings_are_accepted(size: int) -> None:
    """One trailing carriage return is part of the line ending, not the line."""
    data = b'{"a":1}\r\n{"b":2}\r\n'

    lines = read(data, size)

    assert summary(lines) == [
        (1, 0, 9, "record", {"a": 1}),
        (2, 9, 18, "record", {"b": 2}),
    ]


def test_blank_lines_are_counted_apart_from_errors(size: int) -> None:
    """Empty and whitespace-only lines are blank, not errors."""
    data = b'{"a":1}\n\n \t \n\r\n\r\r\n{"b":2}\n'

    lines = read(data, size)

    assert summary(lines) == [
        (1, 0, 8, "record", {"a": 1}),
        (2, 8, 9, "blank", None),
        (3, 9, 13, "blank", None),
        (4, 13, 15, "blank", None),
        (5, 15, 18, "blank", None),
        (6, 18, 26, "record", {"b": 2}),
    ]


def test_a_last_line_without_newline_ends_at_end_of_file(size: int) -> None:
    """The last line needs no newline; its resume offset is the file size."""
    data = b'{"a":1}\n{"b":2}'

    lines = read(data, size)

    assert summary(lines) == [
        (1, 0, 8, "record", {"a": 1}),
        (2, 8, 15, "record", {"b": 2}),
    ]


def test_a_final_newline_adds_no_empty_line(size: int) -> None:
    """A file ending with a newline has no phantom line after it."""
    lines = read(b'{"a":1}\n', size)

    assert [line.number for line in lines] == [1]


def test_an_empty_file_has_no_lines(size: int) -> None:
    """An empty file, or one holding only a BOM, yields nothing."""
    assert read(b"", size) == []
    assert read(b"\xef\xbb\xbf", size) == []


def test_utf8_sequences_cut_by_reads_are_whole_again(size: int) -> None:
    """Multi-byte characters split across chunks decode exactly."""
    data = '{"s":"é€😀"}\n'.encode()

    lines = read(data, size)

    assert summary(lines) == [(1, 0, len(data), "record", {"s": "é€😀"})]


# Over-long lines -------------------------------------------------------------


def test_an_over_long_line_is_one_error_and_reading_goes_on(size: int) -> None:
    """A line over the limit is one line_too_long error; the next line parses."""
    long_line = b'{"x":"' + b"y" * 5000 + b'"}'
    data = b'{"a":1}\n' + long_line + b'\n{"b":2}\n'

    lines = read(data, size, max_line_bytes=64)

    end = 8 + len(long_line) + 1
    assert summary(lines) == [
        (1, 0, 8, "record", {"a": 1}),
        (2, 8, end, "error", "line_too_long"),
        (3, end, end + 8, "record", {"b": 2}),
    ]
    assert lines[1].error == LineError(
        "line_too_long",
        "line is longer than the limit; its content was skipped",
        "",
        '{"x":"' + "y" * 74,
    )


def test_the_limit_counts_the_line_without_its_ending(size: int) -> None:
    """A line of exactly max_line_bytes passes with LF or CRLF; one more fails."""
    at_limit = b'{"a":"' + b"x" * 8 + b'"}'
    over = b'{"a":"' + b"x" * 9 + b'"}'
    data = at_limit + b"\n" + at_limit + b"\r\n" + over + b"\r\n" + over

    lines = read(data, size, max_line_bytes=len(at_limit))

    assert [line.kind for line in lines] == ["record", "record", "error", "error"]
    assert lines[3].end_offset == len(data)


def test_an_over_long_last_line_without_newline_is_reported(size: int) -> None:
    """An over-long line at the end of the file is still one error."""
    data = b'{"a":1}\n' + b"z" * 300

    lines = read(data, size, max_line_bytes=100)

    assert summary(lines)[1] == (2, 8, 308, "error", "line_too_long")


def test_an_over_long_line_is_not_held_in_memory() -> None:
    """Skipping a 32 MiB line allocates far less than the line."""
    block = b"x" * 65536

    def chunks() -> Iterator[bytes]:
        yield b'{"a":1}\n{"big":"'
        for _ in range(512):
            yield block
        yield b'"}\n{"b":2}\n'

    tracemalloc.start()
    lines = list(NdjsonReader(max_line_bytes=1024).read(chunks()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert [line.kind for line in lines] == ["record", "error", "record"]
    assert peak < 1 << 20


# Encodings -----------------------------------------------------------------

UTF16_AND_32_FILES = {
    "utf-16-le-bom": ("UTF-16LE", '{"a":1}\n'.encode("utf-16")),
    "utf-16-be-bom": ("UTF-16BE", b"\xfe\xff" + '{"a":1}\n'.encode("utf-16-be")),
    "utf-32-le-bom": ("UTF-32LE", '{"a":1}\n'.encode("utf-32")),
    "utf-32-be-bom": ("UTF-32BE", b"\x00\x00\xfe\xff" + "{}\n".encode("utf-32-be")),
    "utf-16-le": ("UTF-16LE", '{"a":1}\n'.encode("utf-16-le")),
    "utf-16-be": ("UTF-16BE", '{"a":1}\n'.encode("utf-16-be")),
    "utf-32-le": ("UTF-32LE", '{"a":1}\n'.encode("utf-32-le")),
    "utf-32-be": ("UTF-32BE", '{"a":1}\n'.encode("utf-32-be")),
    "utf-16-le-two-bytes": ("UTF-16LE", "{".encode("utf-16-le")),
}


@pytest.mark.parametrize("name", UTF16_AND_32_FILES)
def test_a_utf16_or_utf32_file_is_refused_whole_before_any_line(
    name: str, size: int
) -> None:
    """UTF-16/32, with or without BOM, raises UnsupportedEncoding up front."""
    encoding, data = UTF16_AND_32_FILES[name]
    consumed: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for chunk in chunked(data, size):
            consumed.append(chunk)
            yield chunk

    with pytest.raises(UnsupportedEncoding) as caught:
        NdjsonReader().read(chunks())

    assert caught.value.encoding == encoding
    assert encoding in caught.value.message
    assert isinstance(caught.value, InvalidRequest)
    assert sum(map(len, consumed)) < 4 + size


def test_utf8_files_are_not_mistaken_for_utf16() -> None:
    """Ordinary UTF-8 starts, short files included, sniff as UTF-8."""
    for head in [b'{"a"', b"{}", b"{", b"", b"\xef\xbb\xbf{", b'\n\n{"', b"\xc3\xa9"]:
        assert sniff_encoding(head) is None


def test_resuming_skips_the_encoding_sniff(size: int) -> None:
    """A resumed pass neither sniffs nor strips: bom stays unknown."""
    data = b'{"a":1}\n{"b":2}\n'
    reader = NdjsonReader(start_offset=8, start_line=1)

    lines = list(reader.read(chunked(data[8:], size)))

    assert reader.bom is None
    assert summary(lines) == [(2, 8, 16, "record", {"b": 2})]


# Strict JSON, line by line ---------------------------------------------------

ERROR_CASES: dict[str, tuple[bytes, str, str]] = {
    "invalid-utf8": (b'{"a":"\xff"}', "invalid_utf8", ""),
    "truncated-utf8": (b'{"a":"\xc3"}', "invalid_utf8", ""),
    "encoded-surrogate": (b'{"a":"\xed\xa0\x80"}', "invalid_utf8", ""),
    "not-json": (b"hello", "invalid_json", ""),
    "unclosed": (b'{"a":1', "invalid_json", ""),
    "single-quotes": (b"{'a':1}", "invalid_json", ""),
    "leading-zero": (b'{"a":0123}', "invalid_json", ""),
    "array": (b"[1,2]", "not_an_object", ""),
    "string": (b'"text"', "not_an_object", ""),
    "number": (b"42", "not_an_object", ""),
    "null": (b"null", "not_an_object", ""),
    "nan": (b'{"a":NaN}', "non_finite_number", "/a"),
    "infinity": (b'{"a":[Infinity]}', "non_finite_number", "/a/0"),
    "minus-infinity": (b'{"a":-Infinity}', "non_finite_number", "/a"),
    "float-overflow": (b'{"a":1e400}', "number_out_of_range", "/a"),
    "float-underflow": (b'{"a":-2.5e-400}', "number_out_of_range", "/a"),
    "int-with-5000-digits": (
        b'{"a":' + b"7" * 5000 + b"}",
        "number_out_of_range",
        "/a",
    ),
    "too-many-digits": (b'{"a":0.1000000000000000000001}', "inexact_number", "/a"),
    "duplicate-key": (b'{"a":1,"b":2,"a":3}', "duplicate_key", "/a"),
    "nested-duplicate": (b'{"a":{"b/c":1,"b/c":2}}', "duplicate_key", "/a/b~1c"),
    "escaped-duplicate": (b'{"ab":1,"a\\u0062":2}', "duplicate_key", "/ab"),
    "duplicate-in-array": (b'{"a":[{},{"x":1,"x":1}]}', "duplicate_key", "/a/1/x"),
    "lone-high-surrogate": (b'{"a":"\\ud800"}', "lone_surrogate", "/a"),
    "lone-low-surrogate": (b'{"a":["ok","\\udc00x"]}', "lone_surrogate", "/a/1"),
    "surrogate-in-key": (b'{"\\ud800":1}', "lone_surrogate", ""),
    "trailing-object": (b'{"a":1} {"b":2}', "trailing_data", ""),
    "trailing-brace": (b'{"a":1}}', "trailing_data", ""),
    "too-deep": (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", "too_deep", ""),
}


@pytest.mark.parametrize("name", ERROR_CASES)
def test_a_faulty_line_is_an_error_with_its_code_and_pointer(
    name: str, size: int
) -> None:
    """Each kind of fault becomes a line error; the lines around it still parse."""
    raw, code, pointer = ERROR_CASES[name]
    data = b'{"ok":1}\n' + raw + b'\n{"ok":2}\n'

    lines = read(data, size)

    end = 9 + len(raw) + 1
    assert summary(lines) == [
        (1, 0, 9, "record", {"ok": 1}),
        (2, 9, end, "error", code),
        (3, end, end + 9, "record", {"ok": 2}),
    ]
    error = lines[1].error
    assert error is not None
    assert error.pointer == pointer
    assert error.excerpt == raw.decode("utf-8", "replace")[:80]


def test_nesting_up_to_the_limit_is_accepted(size: int) -> None:
    """64 levels pass by default; a lower max_depth refuses them."""
    raw = b'{"a":' + b"[" * 63 + b"]" * 63 + b"}\n"

    assert read(raw, size)[0].kind == "record"
    assert read(raw, size, max_depth=10)[0].error == LineError(
        "too_deep", "nesting is deeper than 10", "", raw.decode()[:80]
    )


VALUE_CASES: dict[str, tuple[bytes, Any]] = {
    "big-int": (
        b'{"a":123456789012345678901234567890}',
        123456789012345678901234567890,
    ),
    "negative-big-int": (b'{"a":-9223372036854775809}', -9223372036854775809),
    "u64": (b'{"a":18446744073709551615}', 18446744073709551615),
    "number-like-string": (b'{"a":"00123"}', "00123"),
    "long-digit-string": (b'{"a":"12345678901234567890.5"}', "12345678901234567890.5"),
    "price": (b'{"a":19.99}', 19.99),
    "shortest-double": (b'{"a":0.30000000000000004}', 0.30000000000000004),
    "seventeen-digits": (b'{"a":0.10000000000000001}', 0.1),
    "exact-binary-value": (
        b'{"a":0.1000000000000000055511151231257827021181583404541015625}',
        0.1,
    ),
    "exponent": (b'{"a":1.5E3}', 1500.0),
    "zero-with-exponent": (b'{"a":0e-999}', 0.0),
    "subnormal": (b'{"a":5e-324}', 5e-324),
    "largest-double": (b'{"a":1.7976931348623157e308}', 1.7976931348623157e308),
    "minus-zero-int": (b'{"a":-0}', 0),
}


@pytest.mark.parametrize("name", VALUE_CASES)
def test_numbers_and_number_like_strings_are_kept_exactly(name: str, size: int) -> None:
    """Big integers stay ints, strings stay strings, floats keep their value."""
    raw, expected = VALUE_CASES[name]

    lines = read(raw + b"\n", size)

    value = lines[0].record["a"] if lines[0].record else lines[0].error
    assert type(value) is type(expected)
    assert value == expected


def test_error_codes_form_a_closed_list() -> None:
    """Codes outside LINE_ERROR_CODES cannot be built; later stages have theirs."""
    assert {"schema_violation", "duplicate_record"} <= set(LINE_ERROR_CODES)
    assert len(set(LINE_ERROR_CODES)) == len(LINE_ERROR_CODES)

    with pytest.raises(ValueError):
        LineError("made_up", "m", "", "")


def test_the_excerpt_is_short_and_decoded_with_replacement() -> None:
    """An excerpt holds at most 80 characters and never raises on bad bytes."""
    raw = b'{"a":"' + "é".encode() * 200 + b'\xff"}'

    error = parse_record(raw)

    assert isinstance(error, LineError)
    assert error.code == "invalid_utf8"
    assert error.excerpt == '{"a":"' + "é" * 74


@pytest.mark.parametrize("odd", ["\f", "\u00a0", "\u0085", "\u2028", "\u2029"])
def test_the_excerpt_keeps_the_character_at_fault(odd: str) -> None:
    """Regression: the excerpt dropped trailing white space as Python sees
    it, which JSON does not skip: a line of one form feed showed as "",
    and "{}" then U+2028 as "{}", hiding why the line failed. Only JSON's
    own white space (and the line ending) is left out."""
    for raw in (odd, "{}" + odd, odd + " \r\n"):
        error = parse_record(raw.encode())

        assert isinstance(error, LineError)
        assert error.excerpt == raw.rstrip(" \r\n")


def test_reader_options_are_checked() -> None:
    """Impossible limits and half-given resume positions are refused."""
    for options in [
        {"max_line_bytes": 0},
        {"max_depth": 0},
        {"max_depth": 10_000},
        {"start_offset": 10},
        {"start_line": 3},
        {"start_offset": -1, "start_line": 1},
    ]:
        with pytest.raises(ValueError):
            NdjsonReader(**options)


# Properties ----------------------------------------------------------------

line_bodies = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8)).map(
        lambda record: json.dumps(record, ensure_ascii=False).encode()
    ),
    st.sampled_from(
        [
            b"",
            b"  ",
            b"\r",
            b"[1]",
            b'{"a":1,"a":2}',
            b"{",
            b'{"\xc3\xa9":"\xe2\x82\xac"}',
        ]
    ),
    st.binary(max_size=40),
)


@st.composite
def ndjson_files(draw: st.DrawFn) -> bytes:
    bodies = draw(st.lists(line_bodies, max_size=12))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in bodies]
    data = b"".join(body + ending for body, ending in zip(bodies, endings, strict=True))
    if data and draw(st.booleans()):
        data = data.rstrip(b"\n")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data

    return data


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]

    return [data[a:b] for a, b in itertools.pairwise(points)]


def outcome(reader: NdjsonReader, chunks: list[bytes]) -> Any:
    try:
        return list(reader.read(chunks))
    except UnsupportedEncoding as exc:
        return ("refused", exc.encoding)


@settings(max_examples=300, deadline=None)
@given(ndjson_files(), st.lists(st.integers(min_value=0), max_size=30), st.data())
def test_framing_does_not_depend_on_where_reads_split(
    data: bytes, cuts: list[int], more: st.DataObject
) -> None:
    """Any split of the same bytes yields the same lines."""
    limit = more.draw(st.sampled_from([1, 8, 24, 1 << 20]))

    whole = outcome(NdjsonReader(max_line_bytes=limit), [data])
    pieces = outcome(NdjsonReader(max_line_bytes=limit), split(data, cuts))

    assert pieces == whole


@settings(max_examples=200, deadline=None)
@given(ndjson_files(), st.lists(st.integers(min_value=0), max_size=10), st.data())
def test_resuming_at_any_line_boundary_equals_the_uninterrupted_read(
    data: bytes, cuts: list[int], more: st.DataObject
) -> None:
    """Restarting after any line yields exactly the lines that followed it."""
    whole = outcome(NdjsonReader(max_line_bytes=24), [data])
    if not isinstance(whole, list) or not whole:
        return
    index = more.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    resume = whole[index]
    rest = data[resume.end_offset :]

    reader = NdjsonReader(
        max_line_bytes=24, start_offset=resume.end_offset, start_line=resume.number
    )
    resumed = list(reader.read(split(rest, cuts)))

    assert resumed == whole[index + 1 :]


# Differential: the fast path against the reference parser ------------------

spaces = st.sampled_from(["", "", "", " ", "\t", "\r"])
key_texts = st.one_of(
    st.sampled_from(['"sku"', '"price"', '"qty"', '"at"', '"id"', '"tags"', '"n"']),
    st.sampled_from(
        ['"a"', '"\\u0061"', '"a/b"', '"~"', '"é"', '"\\ud800"', '"x\\":"', '"\\\\"']
    ),
)
number_texts = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.17g}"),
    st.from_regex(
        r"-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,19})?([eE][-+]?[0-9]{1,3})?", fullmatch=True
    ),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e-400",
            "0e-999",
            "5e-324",
            "4e-324",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775809",
            "0.10000000000000001",
            "1E2",
            "-0",
            "-0.0",
            "9007199254740993.0",
            "19.99",
            "0.0",
            "111111111111111111111111111111.5",
        ]
    ),
)
string_texts = st.one_of(
    st.text(max_size=6).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=6).map(json.dumps),
    st.sampled_from(
        [
            '"\\ud800"',
            '"\\udc00"',
            '"\\ud83d\\ude00"',
            '"12345678901234567:5"',
            '"10:00:00"',
            '"x\\":1"',
            '"550e8400-e29b-41d4"',
            '"a e-5"',
            '"[{"',
        ]
    ),
)
scalar_texts = st.one_of(
    number_texts, string_texts, st.sampled_from(["true", "false", "null"])
)


def render_object(members: list[tuple[str, str, str, str]]) -> str:
    return "{" + ",".join(f"{k}{s1}:{s2}{v}" for k, s1, s2, v in members) + "}"


json_texts = st.recursive(
    scalar_texts,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(key_texts, spaces, spaces, inner), max_size=3).map(
            render_object
        ),
    ),
    max_leaves=5,
)


@st.composite
def candidate_lines(draw: st.DrawFn) -> bytes:
    """Mostly objects, valid or nearly so; sometimes anything, or mangled."""
    members = st.tuples(key_texts, spaces, spaces, json_texts)
    text = render_object(draw(st.lists(members, max_size=5)))
    if draw(st.integers(0, 9)) == 0:
        text = draw(json_texts)
    text = draw(spaces) + text + draw(spaces)
    if draw(st.integers(0, 19)) == 0:
        text += draw(st.sampled_from(["x", "}", " {}", ",", "]"]))
    raw = text.encode("utf-8", "surrogatepass")
    if raw and draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=2)) + raw[at + 1 :]

    return raw


def typed(value: Any) -> Any:
    """A form where 1, 1.0, True and -0.0 stay distinguishable."""
    if isinstance(value, LineError):
        return value
    if isinstance(value, dict):
        return ("object", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("array", [typed(item) for item in value])
    if isinstance(value, float):
        return ("float", repr(value))

    return (type(value).__name__, value)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(candidate_lines(), st.sampled_from([2, 3, 64, 64, 64]))
def test_the_fast_path_agrees_with_the_reference_parser(
    raw: bytes, max_depth: int
) -> None:
    """Every line gets the same record or the same error from both parsers."""
    fast = parse_record(raw, max_depth=max_depth)

    reference = parse_record_reference(raw, max_depth=max_depth)

    assert typed(fast) == typed(reference)


def test_the_fast_path_sees_duplicates_hidden_by_spacing() -> None:
    """A duplicate key written with a space before its colon is still refused."""
    raw = b'{"a" :1,"a":2,"t":"10:00"}'

    assert parse_record(raw) == parse_record_reference(raw)


def test_the_fast_path_sees_duplicates_hidden_by_a_newline() -> None:
    """Regression (found by the property above): a request body may hold a
    newline before a colon; a duplicate key written so was accepted."""
    raw = b'{"a"\n:[],"a":[]}'

    found = parse_record(raw)

    assert isinstance(found, LineError) and found.code == "duplicate_key"
    assert found == parse_record_reference(raw)
    assert isinstance(parse_record(raw), LineError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), json_values, max_size=8),
    st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]),
    st.booleans(),
)
def test_records_written_by_a_serialiser_parse_the_same_both_ways(
    record: dict[str, Any], separators: tuple[str, str], ascii_only: bool
) -> None:
    """Serialised records, any spacing, round-trip identically through both paths."""
    raw = json.dumps(record, separators=separators, ensure_ascii=ascii_only).encode()

    fast = parse_record(raw)

    assert typed(fast) == typed(parse_record_reference(raw))
    assert typed(fast) == typed(record)


def test_ordinary_records_take_the_fast_path() -> None:
    """A typical event line never needs the slow parser (a performance guard)."""
    from ipm.domain.ndjson import _parse_fast

    raw = (
        b'{"id":"550e8400-e29b-41d4-a716-446655440000","type":"order.created",'
        b'"at":"2024-05-01T10:00:00Z","order":{"total":1999.99,"lines":'
        b'[{"sku":"00123","qty":2,"price":9.5,"discount":0.0}]},"n":1.5E3}'
    )

    assert _parse_fast(raw, 64) is not None


@st.composite
def compact_lines(draw: st.DrawFn) -> bytes:
    """Objects without spacing, where the reprint proof applies most often."""
    members = st.tuples(key_texts, st.just(""), st.just(""), json_texts)
    text = render_object(draw(st.lists(members, max_size=5)))

    return text.encode("utf-8", "surrogatepass")


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(compact_lines(), st.sampled_from([2, 3, 64]))
def test_a_line_orjson_reprints_exactly_is_what_the_reference_reads(
    raw: bytes, max_depth: int
) -> None:
    """When orjson writes a parsed line back byte for byte, the reference agrees."""
    from ipm.domain.ndjson import _reprinted

    try:
        tree = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if type(tree) is not dict or not _reprinted(tree, raw, max_depth):
        return

    assert typed(parse_record_reference(raw, max_depth=max_depth)) == typed(tree)


def test_compact_serialiser_output_is_proven_by_its_reprint() -> None:
    """A line orjson wrote, with floats, escapes and non-ASCII, needs no walk."""
    from ipm.domain.ndjson import _reprinted

    record = {"a": [1.5, -0.0, 5e-324, 1e16], "b": 'x"\\\n\u00e9', "c": {"d": None}}
    raw = orjson.dumps(record)

    assert _reprinted(orjson.loads(raw), raw, 64)
    assert not _reprinted(orjson.loads(raw), raw, 2)
    assert typed(parse_record(raw)) == typed(record)
