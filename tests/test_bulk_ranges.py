"""Resuming a download: byte ranges of an export's file (RFC 9110, 14)."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ipm
from ipm.api.ranges import requested_range
from ipm.domain.errors import RangeNotSatisfiable
from tests.conftest import free_port, wait_until_serving

ORG = "ACME01"
TAG = '"abc"'


def _line(n: int) -> dict[str, Any]:
    return {
        "event_id": f"sale-{n}",
        "service": "pos",
        "action": "sale.created",
        "payload": {"sale_id": n, "note": "x" * 100},
    }


# -- the Range header, read -------------------------------------------------


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=90-1000", (90, 99)),
        ("BYTES=5-5", (5, 5)),
        (" bytes=1-2 ", (1, 2)),
        ("bytes= 1-2 ,", (1, 2)),
        ("bytes=0000000000000000000000001-2", (1, 2)),
        ("bytes=0-" + "9" * 5000, (0, 99)),
    ],
)
def test_one_range_is_read_and_held_to_the_file(
    header: str, wanted: tuple[int, int]
) -> None:
    assert requested_range(header, None, TAG, 100) == wanted


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",  # several parts: answered whole
        "items=0-1",
        "bytes 0-1",
        "bytes=-",
        "bytes=5-1",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=\u0661-\u0662",
        "",
    ],
)
def test_what_is_not_one_byte_range_is_answered_whole(header: str) -> None:
    assert requested_range(header, None, TAG, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-0", 0),
    ],
)
def test_a_range_past_the_end_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as refused:
        requested_range(header, None, TAG, size)

    assert refused.value.size == size
    assert refused.value.status == 416


def test_the_last_bytes_of_an_empty_file_are_the_empty_file() -> None:
    """A suffix range is satisfiable whatever the size (RFC 9110, 14.1.3):
    of an empty file it is the whole, empty, file."""
    assert requested_range("bytes=-5", None, TAG, 0) is None


def test_if_range_lets_a_range_count_only_for_the_same_file() -> None:
    """A strong match only: another tag, a weak one or a date sends it whole."""
    assert requested_range("bytes=5-", TAG, TAG, 100) == (5, 99)
    for other in ['"abd"', f"W/{TAG}", "Sat, 05 Dec 2026 10:00:00 GMT"]:
        assert requested_range("bytes=5-", other, TAG, 100) is None


@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))
def test_a_range_is_always_a_slice_of_the_file(
    first: int, last: int, size: int
) -> None:
    """Whatever is asked, the answer is a non-empty slice inside the file, the
    one Python's slicing gives, or a refusal, or the whole file."""
    data = bytes(range(256)) * 2
    data = data[:size]
    for header in (f"bytes={first}-{last}", f"bytes={first}-", f"bytes=-{last}"):
        try:
            wanted = requested_range(header, None, TAG, size)
        except RangeNotSatisfiable:
            assert first >= size or header == "bytes=-0"
            continue
        if wanted is None:
            assert (header == f"bytes={first}-{last}" and last < first) or (
                size == 0 and header.startswith("bytes=-")
            )
            continue
        start, end = wanted
        assert 0 <= start <= end < size
        if header.startswith("bytes=-"):
            assert data[start : end + 1] == data[-last:]
        else:
            stop = last + 1 if header.endswith(f"-{last}") else None
            assert data[start : end + 1] == data[first:stop]


# -- through handle() ----------------------------------------------------------


@pytest.fixture
def export() -> Iterator[tuple[ipm.Application, str, bytes, str]]:
    """An app, a download link's path, the file and its ETag."""
    with ipm.open_memory() as app:
        app.publish_many(ORG, [_line(n) for n in range(40)])
        job = app.bulk.run(ORG, app.bulk.create_export(ORG).job_id)
        link = app.bulk.link("download", job, "http://ipm.example")
        parts = urlsplit(link.url)
        path = f"{parts.path}?{parts.query}"
        whole = app.handle("GET", path, {}, b"")
        assert whole.status == 200 and job.result is not None
        yield app, path, whole.body, f'"{job.result.sha256}"'


def test_a_download_says_it_takes_ranges(
    export: tuple[ipm.Application, str, bytes, str],
) -> None:
    app, path, data, etag = export

    whole = app.handle("GET", path, {}, b"")

    assert whole.header("accept-ranges") == "bytes"
    assert whole.header("etag") == etag == f'"{hashlib.sha256(data).hexdigest()}"'


@pytest.mark.parametrize("stream", [False, True])
def test_the_rest_of_a_broken_download_is_its_missing_bytes(
    export: tuple[ipm.Application, str, bytes, str], stream: bool
) -> None:
    """206 with the bytes asked for and where they lie; the two parts make
    the file, whose SHA-256 the ETag is."""
    app, path, data, etag = export
    headers = {"range": "bytes=1000-", "if-range": etag}

    rest = app.handle("GET", path, headers, b"", stream=stream)
    body = rest.body if not stream else b"".join(rest.body.chunks)  # type: ignore[attr-defined]

    assert rest.status == 206
    assert body == data[1000:]
    assert rest.header("content-length") == str(len(data) - 1000)
    assert rest.header("content-range") == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert rest.header("etag") == etag


def test_a_middle_part_and_a_suffix_are_sent_as_asked(
    export: tuple[ipm.Application, str, bytes, str],
) -> None:
    app, path, data, _ = export

    middle = app.handle("GET", path, {"range": "bytes=10-19"}, b"")
    tail = app.handle("GET", path, {"range": "bytes=-7"}, b"")

    assert (middle.status, middle.body) == (206, data[10:20])
    assert (tail.status, tail.body) == (206, data[-7:])


def test_a_range_past_the_end_is_a_416_saying_the_size(
    export: tuple[ipm.Application, str, bytes, str],
) -> None:
    app, path, data, _ = export

    refused = app.handle("GET", path, {"range": f"bytes={len(data)}-"}, b"")

    assert refused.status == 416
    assert refused.header("content-range") == f"bytes */{len(data)}"
    error = refused.json()["error"]
    assert error["code"] == "range_not_satisfiable"
    assert [d["pointer"] for d in error["details"]] == ["/headers/range"]


def test_an_if_range_of_another_file_gets_the_whole_file(
    export: tuple[ipm.Application, str, bytes, str],
) -> None:
    app, path, data, _ = export

    answer = app.handle("GET", path, {"range": "bytes=10-", "if-range": '"0000"'}, b"")

    assert (answer.status, answer.body) == (200, data)


def test_head_ignores_a_range(export: tuple[ipm.Application, str, bytes, str]) -> None:
    """Ranges are for GET (RFC 9110, 14.2): HEAD says what the whole GET would."""
    app, path, data, _ = export

    head = app.handle("HEAD", path, {"range": "bytes=10-19"}, b"")

    assert head.status == 200
    assert head.header("content-length") == str(len(data))
    assert head.header("content-range") is None


def test_a_discarded_file_is_404_whatever_the_range(
    export: tuple[ipm.Application, str, bytes, str],
) -> None:
    app, path, data, _ = export
    job_id = path.split("/")[3].partition("?")[0]
    app.bulk.discard_file(ORG, job_id)

    for ranged in ("bytes=0-9", f"bytes={len(data) + 10}-"):
        assert app.handle("GET", path, {"range": ranged}, b"").status == 404


# -- over real HTTP ------------------------------------------------------------


@pytest.mark.slow
def test_a_download_broken_off_is_resumed_over_http(tmp_path: Path) -> None:
    """ipm serve: a client reads part of an export, loses the connection, and
    asks for the rest with Range and If-Range; the parts make the file."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db) as app:
        app.publish_many(ORG, [_line(n) for n in range(3000)])
        job = app.bulk.run(ORG, app.bulk.create_export(ORG).job_id)
        link = app.bulk.link("download", job, "http://127.0.0.1:1")
    assert job.result is not None
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ipm", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        target = link.url.removeprefix("http://127.0.0.1:1")

        first = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        first.request("GET", target)
        answer = first.getresponse()
        etag = answer.getheader("etag")
        got = answer.read(50_000)
        first.close()  # the connection breaks off mid-file

        second = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        second.request(
            "GET", target, headers={"Range": f"bytes={len(got)}-", "If-Range": etag}
        )
        rest = second.getresponse()
        tail = rest.read()
        second.close()
    finally:
        server.terminate()
        server.wait(timeout=10)

    data = got + tail
    assert answer.status == 200 and answer.getheader("accept-ranges") == "bytes"
    assert rest.status == 206
    assert rest.getheader("content-range") == (
        f"bytes {len(got)}-{job.result.size - 1}/{job.result.size}"
    )
    assert len(data) == job.result.size
    assert hashlib.sha256(data).hexdigest() == job.result.sha256
    assert json.loads(data.splitlines()[-1])["event_id"] == "sale-2999"
