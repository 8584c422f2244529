"""The ASGI adapter streams uploads and downloads through the same handle()."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

import ipm
from tests.conftest import ORG, run_asgi


def _asgi(
    app: ipm.Application,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, bytes]:
    """Drive the ASGI app once; the body arrives in ``chunks`` messages."""
    parts = urlsplit(url)
    pending = list(chunks or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": parts.path,
        "query_string": parts.query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(app.asgi_app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])

    return sent[0]["status"], body


def test_upload_and_download_stream_through_asgi(
    app: ipm.Application, key: str
) -> None:
    """A chunked PUT upload imports, and a streamed download arrives whole."""
    auth = {"authorization": f"Bearer {key}", "x-orgcode": ORG, "host": "ipm.test"}
    lines = [
        json.dumps(
            {
                "event_id": f"e{n}",
                "service": "pos",
                "action": "sale.created",
                "occurred_at": "2026-01-01T00:00:00Z",
                "payload": {"n": n},
            }
        ).encode()
        + b"\n"
        for n in range(50)
    ]
    status, raw = _asgi(
        app, "POST", "/bulk/import/create", headers=auth, chunks=[b"{}"]
    )
    assert status == 200, raw
    upload_url = json.loads(raw)["data"]["upload_url"]

    status, raw = _asgi(app, "PUT", upload_url, chunks=lines)
    assert status == 200, raw

    job = json.loads(raw)["data"]["job"]
    app.bulk.commit(ORG, job["job_id"], job["revision"])
    app.bulk.run(ORG, job["job_id"])
    assert len(app.events(ORG, service="pos")) == 50

    export = app.bulk.create_export(ORG)
    app.bulk.run(ORG, export.job_id)
    status, raw = _asgi(
        app,
        "POST",
        "/bulk/job/get",
        headers=auth,
        chunks=[json.dumps({"job_id": export.job_id}).encode()],
    )
    download_url = json.loads(raw)["data"]["download_url"]

    status, exported = _asgi(app, "GET", download_url)

    assert status == 200
    exported_ids = {json.loads(line)["event_id"] for line in exported.splitlines()}
    assert {f"e{n}" for n in range(50)} <= exported_ids


def test_an_upload_the_client_abandons_is_not_stored(
    app: ipm.Application, key: str
) -> None:
    """A client that goes away mid-upload leaves the job waiting, nothing stored."""
    auth = {"authorization": f"Bearer {key}", "x-orgcode": ORG, "host": "ipm.test"}
    _, raw = _asgi(app, "POST", "/bulk/import/create", headers=auth, chunks=[b"{}"])
    created = json.loads(raw)["data"]
    parts = urlsplit(created["upload_url"])
    messages = [
        {"type": "http.request", "body": b'{"event_id": "e1"}\n', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": parts.path,
        "query_string": parts.query.encode(),
        "headers": [],
    }
    asyncio.run(app.asgi_app(scope, receive, send))

    assert sent[0]["status"] == 400
    assert b"went away" in b"".join(m.get("body", b"") for m in sent[1:])
    job = app.bulk.get(ORG, created["job"]["job_id"])
    assert job.status == "awaiting_upload"


def test_a_websocket_is_refused_at_its_handshake() -> None:
    """Regression: a websocket scope got no answer at all, and the server
    was left holding the handshake."""
    received = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return received.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/cdc/list", "headers": []}
    with ipm.open_memory() as app:
        asyncio.run(app.asgi_app(scope, receive, send))

    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_a_scope_of_another_protocol_is_an_error() -> None:
    """The ASGI spec asks an application to raise for a protocol it lacks."""

    async def never() -> dict[str, Any]:
        raise AssertionError("nothing to receive")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing to send: {message}")

    with ipm.open_memory() as app, pytest.raises(ValueError, match="webtransport"):
        asyncio.run(app.asgi_app({"type": "webtransport"}, never, send))


def test_a_raw_path_with_an_empty_segment_reaches_no_route() -> None:
    """A path whose segments decoding changed (//stat, /kpi%2Fquery) is
    routed as sent (raw_path), as a proxy in front read it; a plain
    escape (%61 for a) is only decoded."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/stat",
        "raw_path": b"//stat",
        "query_string": b"",
        "headers": [],
    }
    plain = {**scope, "raw_path": b"/st%61t"}
    with ipm.open_memory() as app:
        sent = run_asgi(app, scope) + run_asgi(app, plain)

    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [404, 200]


def test_a_scope_with_text_or_no_headers_is_served() -> None:
    """Regression: a scope without "headers", or with text where the spec
    says bytes (some test clients send it), raised out of the application
    (a 500 from the server) instead of being answered."""
    bare = {"type": "http", "method": "GET", "path": "/stat"}
    text = {
        "type": "http",
        "method": "POST",
        "path": "/cdc/list",
        "query_string": "",
        "headers": [("x-orgcode", ORG)],
    }
    with ipm.open_memory() as app:
        sent = run_asgi(app, bare) + run_asgi(app, text, body=b"{}")

    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    # The POST has an org but no key: the envelope's 401, not a crash.
    assert statuses == [200, 401]


def test_a_message_whose_body_is_none_reads_as_empty() -> None:
    """A server that writes "body": None for no bytes is read as sending none."""
    scope = {"type": "http", "method": "POST", "path": "/cdc/list", "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": None, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with ipm.open_memory() as app:
        asyncio.run(app.asgi_app(scope, receive, send))

    assert sent[0]["status"] == 401
