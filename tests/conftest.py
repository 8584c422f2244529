"""Shared fixtures: applications on each storage, keys, and a caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.testing import FixedClock

ORG = "ACME01"
OTHER = "OTHER02"


def open_app(storage: str, tmp_path: Path, **options: Any) -> ipm.Application:
    """An application on ``storage`` ("memory" or "sqlite", in ``tmp_path``)."""
    if storage == "memory":
        return ipm.open_memory(**options)

    return ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)


DAY = 86_400.0


def timed_app(
    storage: str, tmp_path: Path, **bulk: Any
) -> Iterator[tuple[ipm.Application, FixedClock]]:
    """An application on ``storage`` whose clock moves only when told,
    with ``BulkOptions(**bulk)``: for the bulk jobs' time limits."""
    from ipm.testing.storage import T0
    from ipm.usecases.bulk import BulkOptions

    clock = FixedClock(T0)
    with open_app(storage, tmp_path, clock=clock, bulk=BulkOptions(**bulk)) as app:
        yield app, clock


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    with open_app(request.param, tmp_path, allow_networks=["127.0.0.0/8"]) as app:
        yield app


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def key(app: ipm.Application) -> str:
    return app.create_api_key("ops@acme.example", [ORG])


@pytest.fixture
def other_key(app: ipm.Application) -> str:
    return app.create_api_key("ops@other.example", [OTHER])


class Caller:
    """Sends JSON requests through ``handle()`` as one key and org."""

    def __init__(self, app: ipm.Application, key: str | None, org: str | None) -> None:
        self.app, self.key, self.org = app, key, org

    def __call__(
        self,
        path: str,
        body: Any = None,
        *,
        method: str = "POST",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        sent = dict(headers or {})
        if self.key:
            sent["authorization"] = f"Bearer {self.key}"
        if self.org:
            sent["x-orgcode"] = self.org
        payload = raw if raw is not None else json.dumps(body or {}).encode()
        response = self.app.handle(method, path, sent, payload)

        return response.status, json.loads(response.body)


@pytest.fixture
def call(app: ipm.Application, key: str) -> Caller:
    return Caller(app, key, ORG)


@contextlib.contextmanager
def serving(app: ipm.Application) -> Iterator[int]:
    """``ipm serve``'s HTTP server for ``app`` on a free port of 127.0.0.1;
    the app is closed with it."""
    from ipm import cli

    http = cli.make_http_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(http.server_address[1])
    finally:
        http.shutdown()
        http.server_close()
        app.close()


@pytest.fixture
def server() -> Iterator[tuple[ipm.Application, int]]:
    """``ipm serve``'s HTTP server on a free port of 127.0.0.1, in memory."""
    app = ipm.open_memory()
    with serving(app) as port:
        yield app, port


def event_lines(count: int, start: int = 0) -> bytes:
    """``count`` NDJSON events of the pos service, ids from ``e-<start>``."""
    return b"".join(
        json.dumps(
            {
                "event_id": f"e-{n}",
                "service": "pos",
                "action": "sale.created",
                "occurred_at": "2026-03-01T10:00:00Z",
                "payload": {"n": n},
            }
        ).encode()
        + b"\n"
        for n in range(start, start + count)
    )


HOURLY_KPI = {
    "kpi_code": "NET_SALES",
    "bucket": "hourly",
    "bucket_start": "2026-03-08T10:00:00Z",
    "bucket_end": "2026-03-08T11:00:00Z",
    "value": 10,
}
"""One KPI snapshot as /kpi/record takes it."""


def run_asgi(
    app: ipm.Application, scope: dict[str, Any], body: bytes = b"{}"
) -> list[dict[str, Any]]:
    """Drive the ASGI app once with a whole body; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app.asgi_app(scope, receive, send))

    return sent


def raw_answer(port: int, request: bytes) -> bytes:
    """Send raw request bytes; the whole answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    return answer


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw request bytes; the answer's status and JSON body."""
    answer = raw_answer(port, request)
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")

    return int(status_line.split()[1]), json.loads(body)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(
    base: str, process: subprocess.Popen[Any], timeout: float = 20
) -> None:
    """Wait until the ``ipm serve`` at ``base`` answers /stat; if it does not
    in time, stop it and fail with what it wrote to stderr (when piped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/stat", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)

    process.kill()
    said = process.stderr.read() if process.stderr is not None else ""
    pytest.fail(f"ipm serve did not start: {said!s}")
