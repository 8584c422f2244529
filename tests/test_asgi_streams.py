"""The ASGI adapter's threads, upload pace, 100-continue and client disconnects.

Each test drives the ASGI app in-process with a scripted ``receive`` and a
``send`` that keeps what it was given, as a server would call them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import pytest

import ipm
from ipm.api.asgi import AsgiApp
from tests.conftest import ORG

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


class Exchange:
    """One request's side of the server: what ipm sent back, and when."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def answer(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def scope(method: str, url: str, headers: dict[str, str] | None = None) -> Message:
    parts = urlsplit(url)

    return {
        "type": "http",
        "method": method,
        "path": parts.path,
        "query_string": parts.query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }


def whole(body: bytes = b"") -> Receive:
    """A client that sends ``body`` at once, then waits to be answered."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


@pytest.fixture
def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "x-orgcode": ORG, "host": "ipm.test"}


def upload_link(app: ipm.Application, auth: dict[str, str]) -> tuple[str, str]:
    """A new import job's id and its upload link."""
    created = app.handle("POST", "/bulk/import/create", auth, b"{}").json()["data"]

    return created["job"]["job_id"], created["upload_url"]


# -- F2: uploads have their own threads and must keep a pace -------------------


def test_stalled_uploads_leave_ordinary_requests_answered(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression (F2): uploads stalled past every thread pool size hang no request.

    Forty is more than the loop's default pool ever holds (32), and more
    than ipm's upload threads: the stalled ones take only their own pool.
    """
    links = [upload_link(app, auth) for _ in range(40)]
    asgi = app.asgi_app
    release = asyncio.Event()

    async def stalled() -> Message:
        await release.wait()
        return {"type": "http.disconnect"}

    async def scenario() -> tuple[Exchange, Exchange, list[Exchange]]:
        uploads = [Exchange() for _ in links]
        running = [
            asyncio.ensure_future(asgi(scope("PUT", url), stalled, upload.send))
            for (_, url), upload in zip(links, uploads, strict=True)
        ]
        try:
            await asyncio.sleep(0.2)
            stat, listed = Exchange(), Exchange()
            await asyncio.wait_for(
                asgi(scope("GET", "/stat"), whole(), stat.send), timeout=10
            )
            await asyncio.wait_for(
                asgi(scope("POST", "/cdc/list", auth), whole(b"{}"), listed.send),
                timeout=10,
            )
        finally:
            release.set()
            await asyncio.gather(*running)

        return stat, listed, uploads

    stat, listed, uploads = asyncio.run(scenario())

    assert (stat.status, listed.status) == (200, 200)
    assert {upload.status for upload in uploads} == {400}
    assert {app.bulk.get(ORG, job_id).status for job_id, _ in links} == {
        "awaiting_upload"
    }


def test_an_upload_slower_than_the_minimum_rate_is_refused(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A client trickling a byte at a time, never stalling, is cut off once too slow."""
    job_id, url = upload_link(app, auth)
    asgi = AsgiApp(app, upload_stall_seconds=0.3, upload_min_rate=100)
    sent = 0

    async def trickle() -> Message:
        nonlocal sent
        await asyncio.sleep(0.05)
        sent += 1
        return {"type": "http.request", "body": b"\n", "more_body": sent < 200}

    upload = Exchange()
    started = time.monotonic()

    asyncio.run(asgi(scope("PUT", url), trickle, upload.send))

    assert upload.status == 400
    assert "bytes a second" in upload.answer["error"]["message"]
    assert time.monotonic() - started < 3
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


def test_an_upload_that_stalls_is_refused(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A client that sends nothing for ``upload_stall_seconds`` fails its upload."""
    job_id, url = upload_link(app, auth)
    asgi = AsgiApp(app, upload_stall_seconds=0.2)
    upload = Exchange()

    async def silent() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    asyncio.run(asgi(scope("PUT", url), silent, upload.send))

    assert upload.status == 400
    assert "sent nothing for 0.2 s" in upload.answer["error"]["message"]
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


@pytest.mark.parametrize(
    "option",
    [
        {"request_threads": 0},
        {"upload_threads": 1.5},
        {"upload_stall_seconds": 0},
        {"upload_min_rate": -1},
    ],
)
def test_thread_and_pace_options_are_checked(
    app: ipm.Application, option: dict[str, Any]
) -> None:
    """A thread count or pace that is not positive is refused when the app is built."""
    with pytest.raises((TypeError, ValueError)):
        AsgiApp(app, **option)


# -- F8: a refused upload never receives its body ------------------------------


def _forged(url: str) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    params["sig"] = "A" * len(params["sig"])

    return f"{parts.path}?{urlencode(params)}"


@pytest.mark.parametrize(
    ("forge", "headers", "status"),
    [
        (True, {"content-length": "10"}, 403),
        (False, {"content-length": str(5 << 30)}, 413),
    ],
)
def test_a_refused_upload_never_calls_receive(
    app: ipm.Application,
    auth: dict[str, str],
    forge: bool,
    headers: dict[str, str],
    status: int,
) -> None:
    """Regression (F8): a bad link or too big a size answers before any receive().

    A server sends ``100 Continue`` on the first receive(); a refusal must
    come without one, or the client sends the body it was about to withhold.
    """
    _, url = upload_link(app, auth)
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    upload = Exchange()

    asyncio.run(
        app.asgi_app(
            scope("PUT", _forged(url) if forge else url, headers),
            receive,
            upload.send,
        )
    )

    assert upload.status == status
    assert calls == 0


# -- F5: a download stops when its client goes -------------------------------


class EndlessFile:
    """An export file far longer than any test reads: counts reads, knows if closed."""

    def __init__(self, cap: int = 2000) -> None:
        self.reads = 0
        self.closed = False
        self.cap = cap

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.closed or self.reads >= self.cap:
            raise StopIteration
        self.reads += 1

        return b"x" * 1024

    def close(self) -> None:
        self.closed = True


def serve_instead(
    app: ipm.Application,
    monkeypatch: pytest.MonkeyPatch,
    file: Iterator[bytes],
    size: int = 2000 * 1024,
) -> None:
    """Downloads read ``file``, declared ``size`` bytes long, instead of the
    export's own file (ipm sends no more than the size it declares)."""
    open_link = app.bulk.open_link

    def declared(*args: Any, **kwargs: Any) -> Any:
        job = open_link(*args, **kwargs)
        return attrs.evolve(job, result=attrs.evolve(job.result, size=size))

    monkeypatch.setattr(app.bulk, "open_link", declared)
    monkeypatch.setattr(app.bulk, "download", lambda orgcode, job_id, offset=0: file)


def download_link(app: ipm.Application, auth: dict[str, str]) -> str:
    export = app.bulk.create_export(ORG)
    app.bulk.run(ORG, export.job_id)
    job = {"job_id": export.job_id}
    got = app.handle("POST", "/bulk/job/get", auth, json.dumps(job).encode())

    return str(got.json()["data"]["download_url"])


def test_a_download_stops_reading_once_the_client_has_gone(
    app: ipm.Application, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (F5): no chunk is read after http.disconnect; the file is closed."""
    url = download_link(app, auth)
    file = EndlessFile()
    serve_instead(app, monkeypatch, file)
    first_chunk_sent = asyncio.Event()
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await first_chunk_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message.get("body"):
            first_chunk_sent.set()

    asyncio.run(app.asgi_app(scope("GET", url), receive, send))

    assert file.reads <= 3
    assert file.closed


def test_a_download_whose_send_fails_closes_its_file(
    app: ipm.Application, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server raising on send (its client gone) gets the error; the file is closed."""
    url = download_link(app, auth)
    file = EndlessFile()
    serve_instead(app, monkeypatch, file)

    async def send(message: Message) -> None:
        if message.get("body"):
            raise ConnectionResetError("the client has gone")

    with pytest.raises(ConnectionResetError):
        asyncio.run(app.asgi_app(scope("GET", url), whole(), send))

    assert file.reads == 1
    assert file.closed


def test_a_download_cancelled_mid_read_closes_its_file_after_the_read(
    app: ipm.Application, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer cancelled while a chunk is read raises nothing; the file closes.

    A generator cannot be closed while it runs: the close waits for the read.
    """
    url = download_link(app, auth)
    closed = threading.Event()

    def slow_file() -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.2)
                yield b"x"
        finally:
            closed.set()

    serve_instead(app, monkeypatch, slow_file())

    async def scenario() -> None:
        answer = app.asgi_app(scope("GET", url), whole(), Exchange().send)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answer, timeout=0.05)

    asyncio.run(scenario())

    assert closed.wait(timeout=2)


def test_a_download_read_to_its_end_is_sent_whole(
    app: ipm.Application, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stays gets every chunk, then the end of the body."""
    url = download_link(app, auth)
    file = EndlessFile(cap=50)
    serve_instead(app, monkeypatch, file, size=1024 * 50)
    download = Exchange()

    asyncio.run(app.asgi_app(scope("GET", url), whole(), download.send))

    bodies = [m for m in download.sent if m["type"] == "http.response.body"]
    assert download.status == 200
    assert b"".join(m["body"] for m in bodies) == b"x" * 1024 * 50
    assert bodies[-1].get("more_body", False) is False


def test_the_application_hands_out_one_adapter_of_each_kind() -> None:
    """asgi_app is built once, so its thread pools bound every request."""
    with ipm.open_memory() as app:
        assert app.asgi_app is app.asgi_app
        assert app.wsgi_app is app.wsgi_app


def test_a_body_cut_by_a_disconnect_is_never_handled(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A client that leaves mid-body gets no answer, and its request does nothing."""
    body = json.dumps({"event_id": "e1", "service": "pos", "action": "a"}).encode()
    messages: list[Message] = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    exchange = Exchange()
    before = len(app.events(ORG))

    asyncio.run(app.asgi_app(scope("POST", "/cdc/list", auth), receive, exchange.send))

    assert exchange.sent == []
    assert len(app.events(ORG)) == before


def test_a_message_no_http_request_carries_is_never_read_as_its_body(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: a websocket.receive with a body, handed over on an HTTP
    connection, was read as the request body and answered 200."""
    messages: list[Message] = [
        {"type": "websocket.receive", "bytes": b"{}", "body": b"{}"}
    ]

    async def receive() -> Message:
        return messages.pop(0)

    exchange = Exchange()

    asyncio.run(app.asgi_app(scope("POST", "/cdc/list", auth), receive, exchange.send))

    assert exchange.sent == []


def test_an_endless_body_is_refused_once_past_the_limit(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """The adapter stops receiving at the limit and answers 413."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        received += 1
        # 64 MiB in all: endless, measured against a 1 MiB limit.
        return {
            "type": "http.request",
            "body": b" " * 65536,
            "more_body": received < 1024,
        }

    exchange = Exchange()

    asyncio.run(app.asgi_app(scope("POST", "/cdc/list", auth), receive, exchange.send))

    assert exchange.status == 413
    assert received <= app.max_body_bytes // 65536 + 1


def test_a_post_declared_too_large_is_refused_before_any_receive(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A Content-Length past the limit is a 413 without a receive(), so a client
    waiting for 100 Continue never sends the body."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    exchange = Exchange()
    headers = {**auth, "content-length": "5000000000", "expect": "100-continue"}

    asyncio.run(
        app.asgi_app(scope("POST", "/cdc/list", headers), receive, exchange.send)
    )

    assert exchange.status == 413
    assert calls == 0


def test_an_upload_closed_with_its_queue_full_ends_its_reader_at_once() -> None:
    """Closing an upload whose chunks fill the queue still tells the reading
    thread the body is cut short; it does not wait out the stall limit."""
    from ipm.api.asgi import _Upload
    from ipm.api.wsgi import Pace

    async def scenario() -> float:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

        upload = _Upload(receive, Pace(30.0, 1))
        chunks = upload.chunks()
        ended: list[float] = []

        def reader() -> None:
            next(chunks)  # starts the pump
            time.sleep(0.3)  # a slow disk: the queue fills meanwhile
            with contextlib.suppress(Exception):
                for _ in chunks:
                    pass
            ended.append(time.monotonic())

        thread = threading.Thread(target=reader)
        thread.start()
        await asyncio.sleep(0.2)
        closed = time.monotonic()
        upload.close()  # the request task was cancelled
        while thread.is_alive():
            await asyncio.sleep(0.01)

        return ended[0] - closed

    assert asyncio.run(scenario()) < 5


def test_closing_the_application_ends_the_adapter_s_threads(
    tmp_path: Any,
) -> None:
    """After app.close() the ASGI threads end and a request answers 503."""

    def adapter_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("ipm-asgi")}

    earlier = adapter_threads()  # other tests' adapters, if any are alive
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    exchange = Exchange()
    asyncio.run(app.asgi_app(scope("GET", "/stat"), whole(), exchange.send))
    assert exchange.status == 200
    assert adapter_threads() - earlier

    app.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and adapter_threads() - earlier:
        time.sleep(0.02)
    after = Exchange()
    asyncio.run(app.asgi_app(scope("GET", "/stat"), whole(), after.send))

    assert not adapter_threads() - earlier
    assert after.status == 503
    assert after.answer["error"]["code"] == "storage_closed"


def test_requests_under_way_when_the_application_closes_are_answered(
    tmp_path: Any,
) -> None:
    """Each one gets an answer, 200 or 503 in the envelope: none is cancelled
    out of the adapter (a server would turn that into a bare 500)."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    key = app.create_api_key("ops@acme.example", [ORG])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
    exchanges = [Exchange() for _ in range(40)]

    async def scenario() -> list[Any]:
        calls = [
            app.asgi_app(scope("POST", "/cdc/list", headers), whole(b"{}"), ex.send)
            for ex in exchanges
        ]
        running = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.01)
        app.close()
        return list(await running)

    outcomes = asyncio.run(scenario())

    assert [o for o in outcomes if o is not None] == []
    assert {ex.status for ex in exchanges} <= {200, 503}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, b"", 411),  # HTTP/1.x, no framing: the server hands over no body
        ({}, b'{"n": 1}\n', 200),  # a body that arrived anyway is taken
        ({"content-length": "0"}, b"", 200),  # an empty upload, said so
        ({"transfer-encoding": "chunked"}, b'{"n": 1}\n', 200),
        ({"transfer-encoding": "identity"}, b"", 411),  # frames nothing
    ],
)
def test_an_upload_with_no_framing_is_not_stored_empty(
    app: ipm.Application,
    auth: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """Regression: a PUT without Content-Length under uvicorn was stored as
    an empty upload, and the job was used up (the real upload then got 409)."""
    job_id, url = upload_link(app, auth)
    put = Exchange()

    asyncio.run(app.asgi_app(scope("PUT", url, headers), whole(body), put.send))

    assert put.status == status
    job = app.bulk.get(ORG, job_id)
    assert job.status == ("awaiting_upload" if status == 411 else "uploaded")
    if status == 411:
        assert put.answer["error"]["code"] == "length_required"


def test_a_wsgi_upload_with_no_framing_is_not_stored_empty(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """gunicorn and waitress set wsgi.input_terminated and read no body when
    there is neither Content-Length nor chunked framing."""
    job_id, url = upload_link(app, auth)
    parts = urlsplit(url)
    environ = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "ipm.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "ipm.test",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.input_terminated": True,
    }
    answered: list[str] = []

    body = b"".join(app.wsgi_app(environ, lambda s, h, e=None: answered.append(s)))

    assert answered[0].startswith("411")
    assert json.loads(body)["error"]["code"] == "length_required"
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


# -- bodies as WSGI reads them: paced, and as long as they say ---------------


def test_a_post_body_that_stops_midway_is_refused_at_the_upload_pace(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: a POST whose body stopped mid-way (no disconnect) was
    waited for for ever, holding its connection and buffer; it now keeps
    an upload's pace, as under ipm serve."""
    asgi = AsgiApp(app, upload_stall_seconds=0.2)
    messages = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def stalls() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    exchange = Exchange()
    headers = {**auth, "content-length": "2"}
    started = time.monotonic()

    asyncio.run(asgi(scope("POST", "/cdc/list", headers), stalls, exchange.send))

    assert time.monotonic() - started < 3
    assert exchange.status == 400
    # Which of the two limits speaks first depends on when the pace is
    # checked (a loaded machine checks later): either refusal is the pace.
    said = exchange.answer["error"]["message"]
    assert "sent nothing for 0.2 s" in said or "bytes a second an upload" in said


@pytest.mark.parametrize("length", ["abc", "-1", "0x10", "1, 1"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_malformed_length_is_a_400_as_under_wsgi(
    app: ipm.Application, auth: dict[str, str], length: str, method: str
) -> None:
    """Regression: ASGI read a malformed Content-Length as none, so an
    upload was stored empty (using the job up) where WSGI answered 400."""
    job_id, url = upload_link(app, auth)
    target = url if method == "PUT" else "/cdc/list"
    exchange = Exchange()
    headers = {**auth, "content-length": length}

    asyncio.run(app.asgi_app(scope(method, target, headers), whole(b""), exchange.send))

    assert exchange.status == 400
    assert exchange.answer["error"]["details"][0]["pointer"] == (
        "/headers/content-length"
    )
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


@pytest.mark.parametrize(
    ("length", "what"), [("100", "ended after 2"), ("1", "longer")]
)
def test_a_post_body_of_another_length_than_declared_is_a_400(
    app: ipm.Application, auth: dict[str, str], length: str, what: str
) -> None:
    """A body that ends short of its Content-Length (or runs past it) is
    never handled as the request: WSGI refuses the same."""
    exchange = Exchange()
    headers = {**auth, "content-length": length}

    asyncio.run(
        app.asgi_app(scope("POST", "/cdc/list", headers), whole(b"{}"), exchange.send)
    )

    assert exchange.status == 400
    assert what in exchange.answer["error"]["message"]


class _Unreadable(io.RawIOBase):
    """A server's input stream that fails the way frameworks' streams do."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


class _FrameworkError(Exception):
    """A framework's own exception from its input stream."""


def _failing_input(
    method: str, url: str, auth: dict[str, str], error: Exception
) -> dict[str, Any]:
    """A WSGI request of 10 bytes whose input stream raises ``error``."""
    parts = urlsplit(url)

    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "ipm.test",
        "HTTP_AUTHORIZATION": auth["authorization"],
        "HTTP_X_ORGCODE": ORG,
        "CONTENT_LENGTH": "10",
        "wsgi.url_scheme": "http",
        "wsgi.input": _Unreadable(error),
    }


def test_a_wsgi_input_error_named_with_a_newline_forges_no_log_line(
    app: ipm.Application, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the warning named the stream's exception class as it
    was, so a newline in the name started a line of its own."""
    forging = type("Gone\nCRITICAL ipm: forged", (Exception,), {})
    environ = _failing_input("POST", "/cdc/list", auth, forging("down"))

    with caplog.at_level(logging.WARNING, logger="ipm"):
        b"".join(app.wsgi_app(environ, lambda s, h, e=None: None))

    said = [r.getMessage() for r in caplog.records if "input stream" in r.getMessage()]
    assert said and all("\n" not in line for line in said)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (ValueError("I/O operation on closed file"), "went away"),
        (_FrameworkError("client disconnected"), "could not be read"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_wsgi_input_failing_otherwise_than_oserror_is_a_400(
    app: ipm.Application,
    auth: dict[str, str],
    method: str,
    error: Exception,
    said: str,
) -> None:
    """Regression: a stream raising ValueError (or a framework's own
    exception) gave a 500 on an upload and escaped the adapter on a POST.
    A closed stream is the client gone, as with OSError; another failure
    of the server's stream is named as that, and logged."""
    job_id, url = upload_link(app, auth)
    environ = _failing_input(
        method, url if method == "PUT" else "/cdc/list", auth, error
    )
    answered: list[str] = []

    body = b"".join(app.wsgi_app(environ, lambda s, h, e=None: answered.append(s)))

    assert answered[0].startswith("400"), body
    assert said in json.loads(body)["error"]["message"]
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


@pytest.mark.parametrize("lengths", [("2", "999"), ("999", "2")])
def test_two_differing_lengths_are_a_400_whichever_comes_first(
    app: ipm.Application, auth: dict[str, str], lengths: tuple[str, str]
) -> None:
    """Regression: ASGI took the first Content-Length of two, so the order
    decided between 200 and 400; ipm serve refuses any differing pair."""
    headers = [(k.encode(), v.encode()) for k, v in auth.items()]
    headers += [(b"content-length", n.encode()) for n in lengths]
    request = {**scope("POST", "/cdc/list"), "headers": headers}
    exchange = Exchange()

    asyncio.run(app.asgi_app(request, whole(b"{}"), exchange.send))

    assert exchange.status == 400
    assert exchange.answer["error"]["details"][0]["pointer"] == (
        "/headers/content-length"
    )


def test_a_server_that_answers_receive_at_once_is_held_to_the_pace(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: empty messages handed over without ever suspending kept
    the reader (and the whole event loop) busy for ever; the pace is
    checked before each receive, and other tasks get turns."""
    asgi = AsgiApp(app, upload_stall_seconds=0.2, upload_min_rate=100)
    ticks = 0

    async def endless() -> Message:
        return {"type": "http.request", "body": b"", "more_body": True}

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> None:
        beat = asyncio.ensure_future(ticker())
        await asyncio.wait_for(
            asgi(scope("POST", "/cdc/list", auth), endless, exchange.send), 5
        )
        beat.cancel()

    exchange = Exchange()

    asyncio.run(main())

    assert exchange.status == 400
    assert "sent nothing for 0.2 s" in exchange.answer["error"]["message"]
    assert ticks > 0


def test_a_receive_that_swallows_the_cancel_is_refused_not_a_500(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: a receive() that caught the pace's cancellation and
    returned a message anyway made the next step raise RuntimeError."""
    asgi = AsgiApp(app, upload_stall_seconds=0.1)
    calls = 0

    async def stubborn() -> Message:
        nonlocal calls
        calls += 1
        if calls > 1:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
        return {"type": "http.request", "body": b" ", "more_body": True}

    exchange = Exchange()

    asyncio.run(asgi(scope("POST", "/cdc/list", auth), stubborn, exchange.send))

    assert exchange.status == 400
    assert exchange.answer["error"]["message"].startswith("the client sent")


def test_many_bodies_of_empty_messages_are_all_refused_in_time(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: with the turns given to other tasks not counted, 40
    bodies of empty messages (HTTP/2 DATA frames of no bytes) were held
    for up to 40 times the stall; a body's pace is measured in wall time."""
    asgi = AsgiApp(app, upload_stall_seconds=0.2)

    async def empty() -> Message:
        return {"type": "http.request", "body": b"", "more_body": True}

    exchanges = [Exchange() for _ in range(40)]

    async def main() -> None:
        requests = [
            asgi(scope("POST", "/cdc/list", auth), empty, exchange.send)
            for exchange in exchanges
        ]
        await asyncio.wait_for(asyncio.gather(*requests), 10)

    started = time.monotonic()
    asyncio.run(main())

    assert time.monotonic() - started < 3
    assert {exchange.status for exchange in exchanges} == {400}


def test_an_upload_of_empty_messages_is_refused_and_the_loop_stays_free(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: an upload whose server answered receive() at once with
    empty messages kept the event loop in the pump for ever, so the pace's
    refusal could never be sent."""
    job_id, url = upload_link(app, auth)
    asgi = AsgiApp(app, upload_stall_seconds=0.2, upload_min_rate=100)

    async def empty() -> Message:
        return {"type": "http.request", "body": b"", "more_body": True}

    exchange = Exchange()

    async def main() -> None:
        await asyncio.wait_for(asgi(scope("PUT", url), empty, exchange.send), 10)

    asyncio.run(main())

    assert exchange.status == 400
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


def test_a_body_that_never_starts_is_said_to_have_sent_nothing() -> None:
    """The first wait starts a moment after the body: with nothing
    received, the refusal says so, not that a rate was missed."""
    from ipm.api.wsgi import Pace

    pace = Pace(1.0, 16384)
    allowed = pace.allowance(0, 0.00001)

    refusal = pace.refusal(0, 0.00001, allowed)

    assert refusal.message == "the client sent nothing for 1 s"


def test_an_upload_in_tiny_messages_is_taken_at_the_client_s_pace(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Regression: the pump put each message in the handler's queue on its
    own and slept while it was full, so a body of one-byte messages moved
    at about 3,400 messages a second whatever the client did, and the
    waits were counted as the client's: a fast client refused as slow."""
    job_id, url = upload_link(app, auth)
    # Four times the default floor: the pump joined what it held on every
    # message while the queue was full, so such a body moved at 25-30 KB/s.
    asgi = AsgiApp(app, upload_stall_seconds=2, upload_min_rate=65536)
    size = 200_000
    left = size

    async def tiny() -> Message:
        nonlocal left
        left -= 1
        return {"type": "http.request", "body": b"\n", "more_body": left > 0}

    upload = Exchange()

    asyncio.run(asgi(scope("PUT", url), tiny, upload.send))

    assert upload.status == 200, upload.answer
    assert app.bulk.get(ORG, job_id).upload.size == size


class _ServerGaveUp(BaseException):
    """What a server's receive() may raise that is no Exception."""


@pytest.mark.parametrize(
    "failure",
    [
        OSError("the connection broke"),
        asyncio.CancelledError("the connection broke"),
        _ServerGaveUp("the connection broke"),
    ],
    ids=["OSError", "CancelledError", "BaseException"],
)
def test_a_receive_that_fails_mid_upload_is_raised_at_once(
    app: ipm.Application, auth: dict[str, str], failure: BaseException
) -> None:
    """Regression: an error of the server's receive() during a PUT died in
    the pump, and the handler waited out the pace (60 s by default) to
    answer that the client had sent nothing. It is raised out of the
    application at once, as for a POST (a cancel, or any BaseException,
    too)."""
    job_id, url = upload_link(app, auth)
    asgi = AsgiApp(app, upload_stall_seconds=30)
    calls = 0

    async def broken() -> Message:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise failure
        return {"type": "http.request", "body": b"\n" * 100, "more_body": True}

    upload = Exchange()
    started = time.monotonic()

    with pytest.raises(type(failure), match="the connection broke"):
        asyncio.run(
            asgi(scope("PUT", url, {"content-length": "1000"}), broken, upload.send)
        )

    assert time.monotonic() - started < 10
    assert upload.sent == []
    assert app.bulk.get(ORG, job_id).status == "awaiting_upload"


def test_the_upload_pipe_hands_over_every_byte_received() -> None:
    """What the loop adds, the handler takes at once, however it came in
    (messages joined while the handler was busy used to wait, unseen, for
    the next message: a client pausing then looked slower than it was)."""
    from ipm.api.asgi import _ABORTED, _Pipe

    pipe = _Pipe(limit=4)
    for piece in (b"a", b"bc", b"def"):
        pipe.add(piece)

    taken = pipe.take(timeout=0)
    nothing = pipe.take(timeout=0.01)
    room = pipe.has_room()
    pipe.add(b"gh")
    pipe.end()
    last, ended = pipe.take(timeout=0), pipe.take(timeout=0)

    assert (taken, nothing, room) == (b"abcdef", None, True)
    assert (last, ended) == (b"gh", b"")

    gone = _Pipe(limit=4)
    gone.add(b"abc")
    gone.abort()
    gone.add(b"late")
    assert gone.take(timeout=0) is _ABORTED
