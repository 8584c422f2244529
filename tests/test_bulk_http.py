"""Uploads and downloads through the WSGI adapter and over real HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.usecases.bulk import BulkOptions
from tests.conftest import free_port, wait_until_serving

ORG = "ACME01"


def event_line(n: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"sale-{n}",
            "service": "pos",
            "action": "sale.created",
            "occurred_at": "2026-03-01T10:00:00Z",
            "payload": {"sale_id": n, "note": "x" * 200},
        }
    ).encode()


class CountingInput(io.RawIOBase):
    """A request body that records how much each read asked for."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.asked: list[int] = []
        self.line = event_line(0) + b"\n"

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        if size < 0:
            size = self.left
        size = min(size, self.left)
        self.left -= size

        return (self.line * (size // len(self.line) + 1))[:size]


def wsgi(app: ipm.Application, method: str, url: str, body: Any, length: int) -> Any:
    path, _, query = url.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(length),
        "HTTP_HOST": "ipm.example",
        "wsgi.input": body,
    }
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])

    chunks = app.wsgi_app(environ, start_response)

    return answer["status"], chunks


def test_a_put_is_streamed_in_bounded_reads() -> None:
    """A 20 MB upload reaches the blob store in reads of 64 KiB at most."""
    size = 20 * 1024 * 1024
    with ipm.open_memory() as app:
        job = app.bulk.create_import(ORG)
        link = app.bulk.link("upload", job, "http://ipm.example")
        body = CountingInput(size)

        status, chunks = wsgi(app, "PUT", link.url.split("ipm.example")[1], body, size)
        answer = json.loads(b"".join(chunks))

    assert status == 200
    assert answer["data"]["job"]["upload"]["size"] == size
    assert max(body.asked) <= 1 << 16
    assert len(body.asked) >= size // (1 << 16)


def test_an_oversized_put_is_413_before_it_is_read() -> None:
    """A declared length over the limit is refused without reading the body."""
    with ipm.open_memory(bulk=BulkOptions(max_upload_bytes=1000)) as app:
        job = app.bulk.create_import(ORG)
        link = app.bulk.link("upload", job, "http://ipm.example")
        body = CountingInput(10**9)

        status, _ = wsgi(app, "PUT", link.url.split("ipm.example")[1], body, 10**9)

    assert status == 413
    assert body.asked == []


def test_a_download_is_streamed_as_it_is_read() -> None:
    """The WSGI adapter hands the server the file's chunks, not one buffer."""
    with ipm.open_memory() as app:
        app.publish_many(ORG, [json.loads(event_line(n)) for n in range(3000)])
        job = app.bulk.create_export(ORG)
        job = app.bulk.run(ORG, job.job_id)
        link = app.bulk.link("download", job, "http://ipm.example")

        status, chunks = wsgi(app, "GET", link.url.split("ipm.example")[1], b"", 0)
        parts = list(chunks)

    assert status == 200
    assert len(parts) > 1
    assert job.result is not None
    assert len(b"".join(parts)) == job.result.size


# -- over real HTTP ---------------------------------------------------------------


@contextlib.contextmanager
def _serving(db: Path, *options: str) -> Iterator[tuple[str, str]]:
    """``ipm serve`` on ``db`` (with ``options``) and an API key for ORG:
    the base URL and the key, the server stopped afterwards."""
    command = ["keys", "create", "--db", str(db), "--org", ORG, "--actor", "ops"]
    key = subprocess.run(
        [sys.executable, "-m", "ipm", *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    serve = ["serve", "--db", str(db), "--port", str(port), *options]
    process = subprocess.Popen(
        [sys.executable, "-m", "ipm", *serve],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process)
        yield base, key
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with _serving(tmp_path / "ipm.sqlite") as serving:
        yield serving


def _call(
    url: str, method: str = "GET", body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _head_length(url: str) -> int:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == b""
        return int(response.headers["content-length"])


@pytest.mark.slow
def test_serve_signs_links_with_the_key_of_its_link_key_file(tmp_path: Path) -> None:
    """ipm serve --link-key-file signs links with that file's key, kept out
    of the database; a link it signed is refused once opened without it."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "link.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    with _serving(db, "--link-key-file", str(key_file)) as (base, key):
        headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
        status, raw = _call(base + "/bulk/import/create", "POST", b"{}", **headers)
        link = json.loads(raw)["data"]["upload_url"]
        uploaded = _call(link, "PUT", event_line(1) + b"\n")[0]
    with ipm.open_sqlite(db) as app:
        with app.storage.unit_of_work(write=False) as uow:
            stored = uow.settings.get("bulk_link_key")
        signed_elsewhere = app.handle("PUT", link.split(base, 1)[1], {}, b"{}\n")

    assert status == 200 and uploaded == 200
    assert signed_elsewhere.status == 403
    assert stored is None


@pytest.mark.slow
def test_import_and_export_over_http(server: tuple[str, str]) -> None:
    """create, PUT a 5 MB file, commit, continue, report; export and download."""
    base, key = server
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = _call(base + path, "POST", json.dumps(body).encode(), **headers)
        assert status == 200, raw
        data: dict[str, Any] = json.loads(raw)["data"]
        return data

    data = b"".join(event_line(n) + b"\n" for n in range(20_000)) + b"{x}\n"
    created = post("/bulk/import/create", {})
    status, raw = _call(created["upload_url"], "PUT", data)
    job = json.loads(raw)["data"]["job"]
    job = post(
        "/bulk/import/commit",
        {"job_id": job["job_id"], "expected_revision": job["revision"]},
    )["job"]
    while job["status"] == "processing":
        job = post("/bulk/import/continue", {"job_id": job["job_id"]})["job"]
    report_url = post("/bulk/job/get", {"job_id": job["job_id"]})["report_url"]
    report_bytes = _call(report_url)[1]
    report = report_bytes.splitlines()
    export = post("/bulk/export/create", {"filters": {"service": "pos"}})["job"]
    while export["status"] != "completed":
        export = post("/bulk/export/continue", {"job_id": export["job_id"]})["job"]
    download_url = post("/bulk/job/get", {"job_id": export["job_id"]})["download_url"]
    status_file, exported = _call(download_url)

    assert status == 200
    assert created["upload_url"].startswith(base)
    assert job["status"] == "completed_with_errors"
    assert job["counters"]["created"] == 20_000
    assert [json.loads(line)["line"] for line in report] == [20_001]
    assert status_file == 200
    assert exported.count(b"\n") == 20_000
    assert _call(download_url.replace("sig=", "sig=x"))[0] == 403
    # HEAD says the length GET sends, streamed files included (regression:
    # a report's HEAD said 0, as if it were empty).
    assert _head_length(report_url) == len(report_bytes) > 0
    assert _head_length(download_url) == len(exported)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/cdc/lists", 404),
        ("PUT", "/nothing", 404),
        ("POST", "/stat", 405),
        ("POST", "/cdc/list", 411),
    ],
)
def test_a_body_without_length_to_no_route_is_answered_as_routing(
    method: str, path: str, status: int
) -> None:
    """An unknown route or method is a 404/405 even when the body has no length."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "HTTP_HOST": "ipm.example",
        "wsgi.input": io.BytesIO(b""),
    }
    answer: dict[str, Any] = {}

    def start_response(line: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(line.split()[0])

    with ipm.open_memory() as app:
        body = b"".join(app.wsgi_app(environ, start_response))

    assert answer["status"] == status
    assert json.loads(body)["success"] is False
