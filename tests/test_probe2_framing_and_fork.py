"""Defects found by a second probe: body framing in the WSGI adapter, and fork.

Each test does what a client (or a host that forks) can do and expects the
documented answer: a 400 envelope instead of a bare 500, a short upload
refused like a short POST, and a forked child whose writes are not stuck
behind a lock held by a thread that does not exist in it.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import ipm

ORG = "ACME01"


def _environ(method: str, path: str, length: str, body: bytes, **extra: Any) -> Any:
    parts = urlsplit(path)
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "CONTENT_LENGTH": length,
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
    }
    environ.update(extra)

    return environ


def _call(app: ipm.Application, environ: Any) -> tuple[int, dict[str, str], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: Iterable[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = {name.lower(): value for name, value in headers}

    chunks = app.wsgi_app(environ, start_response)
    body = b"".join(chunks)

    return answer["status"], answer["headers"], body


@pytest.fixture
def app(tmp_path: Path) -> Any:
    application = ipm.open_sqlite(tmp_path / "ipm.sqlite", busy_timeout=2.0)
    yield application
    application.close()


def test_a_content_length_too_long_to_convert_is_a_400_envelope(app: Any) -> None:
    """A Content-Length of 5,000 digits is refused with an envelope, not a raw 500."""
    key = app.create_api_key("ops@acme.example", [ORG])
    environ = _environ(
        "POST",
        "/cdc/list",
        "9" * 5000,
        b"{}",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_X_ORGCODE=ORG,
    )

    status, headers, body = _call(app, environ)

    assert status in (400, 413)
    assert "x-request-id" in headers
    assert json.loads(body)["success"] is False


def test_an_upload_shorter_than_its_content_length_is_refused(app: Any) -> None:
    """A PUT whose body ends before its Content-Length is a 400; the job waits on."""
    job = app.bulk.create_import(ORG, target="kpis", mode="validate")
    link = app.bulk.link("upload", job, "http://localhost").url
    data = b'{"a": 1}\n' * 100
    environ = _environ(
        "PUT",
        urlsplit(link).path + "?" + urlsplit(link).query,
        str(len(data)),
        data[:300],
    )

    status, _, body = _call(app, environ)

    assert status == 400, body[:300]
    assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_after_a_parent_writer_finished(app: Any) -> None:
    """A child forked while a parent thread held the writer lock (as the WAL
    checkpointer does for a moment) can still write.

    SQLite itself cannot be used by a child forked in the middle of one of
    the parent's write transactions; docs/foundation.md says so.
    """
    storage = app.storage
    holding, release = threading.Event(), threading.Event()

    def parent_writer() -> None:
        with storage._writers:
            holding.set()
            release.wait(5)

    writer = threading.Thread(target=parent_writer)
    writer.start()
    holding.wait(5)
    outcome = _child_writes(storage, after_fork=release.set)
    writer.join(5)

    assert outcome == b"ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_for_the_checkpointer_to_leave_sqlite(app: Any) -> None:
    """A child is never forked while the checkpoint thread is inside SQLite
    (it would inherit SQLite's mutexes held and hang on its first write)."""
    storage = app.storage
    inside, leave = threading.Event(), threading.Event()

    def checkpointing() -> None:
        with storage._checkpointer._in_sqlite:
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=checkpointing)
    thread.start()
    inside.wait(5)
    threading.Timer(0.3, leave.set).start()

    outcome = _child_writes(storage)
    waited = leave.is_set()
    thread.join(5)

    assert waited
    assert outcome == b"ok"


def _child_writes(storage: Any, after_fork: Any = None) -> bytes:
    """Fork; the child commits one unit of work and reports how it went.

    The parent waits at most 30 s: a hung child fails the test, never the
    whole run.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcome = b"ok"
        try:
            os.close(read_end)
            with storage.unit_of_work() as uow:
                uow.commit()
        except BaseException as error:  # reported to the parent
            outcome = type(error).__name__.encode()
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    if after_fork is not None:
        after_fork()
    ready, _, _ = select.select([read_end], [], [], 30)
    outcome = os.read(read_end, 100) if ready else b"hung"
    os.close(read_end)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

    return outcome


class _Endless(io.RawIOBase):
    """A request body of 64 MiB (endless, for a 1 MiB limit), counting reads."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else size
        size = min(size, (64 << 20) - self.read_bytes)
        self.read_bytes += size
        return b" " * size


def test_a_chunked_body_past_the_limit_is_refused_before_it_is_all_read(
    app: Any,
) -> None:
    """A server that ends the input itself (gunicorn) gets its 413 at the limit,
    not after reading an endless body into memory."""
    stream = _Endless()
    environ = _environ(
        "POST",
        "/cdc/list",
        "",
        b"",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": stream, "wsgi.input_terminated": True},
    )

    status, _, body = _call(app, environ)

    error = json.loads(body)["error"]
    assert status == 413
    assert error["code"] == "payload_too_large"
    assert error["details"] == [{"pointer": "", "message": "too large"}]
    assert stream.read_bytes <= app.max_body_bytes + (1 << 16)


class _Gone(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise ConnectionResetError("client went away")


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_client_gone_mid_body_is_a_400_not_a_500(
    app: Any, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's OSError while reading the body is the client's doing."""
    key = app.create_api_key("ops@acme.example", [ORG])
    path = "/cdc/list"
    if method == "PUT":
        job = app.bulk.create_import(ORG)
        path = app.bulk.link("upload", job, "http://localhost").url
        path = path.removeprefix("http://localhost")
    environ = _environ(
        method,
        path,
        "100",
        b"",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_X_ORGCODE=ORG,
        **{"wsgi.input": _Gone()},
    )

    status, _, body = _call(app, environ)

    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
