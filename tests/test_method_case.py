"""Methods are case-sensitive, and early refusals answer HEAD and odd paths
as handle() does.

Regressions found by probing the front doors: ``put`` (lower case) reached
an ASGI upload link through the ordinary-request branch, which keeps only
the first MiB, and handle() upper-cased it and stored the cut file with a
200; ``post`` created jobs although a proxy's rule on ``POST`` never saw it;
``head`` was answered as HEAD (a length and no body) while the server and
any proxy waited for that body. Early refusals (a body the adapter cannot
frame) sent a body to HEAD and repeated the raw path in their message.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

import ipm
from tests.conftest import ORG, Caller, raw_answer, raw_exchange
from tests.test_asgi import _asgi as asgi


def test_a_lower_case_put_stores_nothing_under_asgi(
    app: ipm.Application, call: Caller
) -> None:
    """Regression: 2.6 MB sent as ``put`` was stored as its first MiB, 200."""
    _, created = call("/bulk/import/create", {})
    line = b'{"event_id": "e", "service": "pos", "action": "a.b", "payload": {}}\n'

    body = line * 40_000
    chunks = [body[n : n + 65536] for n in range(0, len(body), 65536)]
    chunked = {"host": "ipm.test", "transfer-encoding": "chunked"}

    # As an h11 server passes it on: the method as sent, no Content-Length.
    url = created["data"]["upload_url"]
    status, _ = asgi(app, "put", url, headers=chunked, chunks=chunks)

    job = app.bulk.get(ORG, created["data"]["job"]["job_id"])
    assert status in (404, 405, 413)
    assert (job.status, job.upload) == ("awaiting_upload", None)


@pytest.mark.parametrize("method", ["post", "Post", "pOST"])
def test_a_method_not_in_upper_case_is_not_allowed(
    app: ipm.Application, key: str, method: str
) -> None:
    """``post`` is another method than POST (RFC 9110, 9.1): 405, no job."""
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

    response = app.handle(method, "/bulk/import/create", headers, b"{}")

    answer = json.loads(response.body)
    assert response.status == 405
    assert answer["error"]["code"] == "method_not_allowed"
    assert answer["stats"]["call"] == f"{method} /bulk/import/create"
    assert response.header("allow") == "POST"
    assert app.bulk.find(ORG) == []


def test_a_method_with_a_line_break_is_named_invalid(app: ipm.Application) -> None:
    """A method word is matched whole: "GET\\n" is no method, and its line
    break never reaches stats.call (or a log line)."""
    response = app.handle("GET\n", "/stat", {}, b"")

    assert response.status == 405
    assert response.json()["stats"]["call"] == "INVALID /stat"


def test_a_lower_case_head_is_not_head(app: ipm.Application) -> None:
    """``head`` gets its 405 in full: a server sends the body it announces."""
    response = app.handle("head", "/stat", {}, b"")

    assert response.status == 405
    assert len(response.body) == int(response.header("content-length") or -1)


def test_ipm_serve_refuses_a_lower_case_method(
    server: tuple[ipm.Application, int],
) -> None:
    """Over real HTTP: the request line's ``post`` is a 405, not a POST."""
    app, port = server
    key = app.create_api_key("clerk", [ORG])
    request = (
        f"post /bulk/import/create HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\nx-orgcode: {ORG}\r\n"
        f"Content-Length: 2\r\n\r\n{{}}"
    ).encode()

    status, answer = raw_exchange(port, request)

    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
    assert app.bulk.find(ORG) == []


def test_ipm_serve_answers_a_lower_case_head_with_its_body(
    server: tuple[ipm.Application, int],
) -> None:
    """The answer's length and its bytes agree: no client waits for more."""
    _, port = server

    answer = raw_answer(port, b"head /stat HTTP/1.1\r\nHost: x\r\n\r\n")

    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert b" 405 " in head.split(b"\r\n")[0]
    assert len(body) == length


def _wsgi(app: ipm.Application, environ: dict[str, Any]) -> tuple[str, dict, bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app.wsgi_app(environ, start_response))

    return got["status"], got["headers"], body


def _environ(method: str, path: str, **extra: Any) -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "ipm.test",
    }
    environ.update(extra)

    return environ


def test_a_wsgi_head_refused_early_has_no_body(app: ipm.Application) -> None:
    """Regression: HEAD with a malformed Content-Length got its 400's body."""
    status, headers, body = _wsgi(app, _environ("HEAD", "/stat", CONTENT_LENGTH="abc"))

    got = _wsgi(app, _environ("GET", "/stat", CONTENT_LENGTH="abc"))

    assert status.startswith("400")
    assert body == b""
    # The length GET gets (regression: one byte more, the body naming the
    # call "HEAD /stat" where GET's says "GET /stat", as handle() names it).
    assert headers["content-length"] == str(len(got[2]))
    assert json.loads(got[2])["stats"]["call"] == "GET /stat"


def test_an_asgi_head_refused_early_has_no_body(app: ipm.Application) -> None:
    """The same under ASGI: a Content-Length of two values, refused early."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "HEAD",
        "path": "/stat",
        "query_string": b"",
        "headers": [(b"content-length", b"1"), (b"content-length", b"2")],
    }
    asyncio.run(app.asgi_app(scope, receive, send))

    assert sent[0]["status"] == 400
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b""


@pytest.mark.parametrize(
    "path", ["/x\n\x1b[2J\r\nInjected: yes", "/" + "A" * 20_000, "/caf\u00e9"]
)
def test_an_early_refusal_does_not_repeat_an_unprintable_path(
    app: ipm.Application, path: str
) -> None:
    """Regression: a refusal before handle() (here a malformed length) put
    the raw path, controls and all, into its message and ``stats.call``."""
    status, _, body = _wsgi(app, _environ("POST", path, CONTENT_LENGTH="abc"))

    answer = json.loads(body)
    assert status.startswith("404")
    assert answer["error"]["message"] == "no route /invalid-path"
    assert answer["stats"]["call"] == "POST /invalid-path"


def test_ipm_serve_does_not_repeat_a_long_path_in_an_early_refusal(
    server: tuple[ipm.Application, int],
) -> None:
    """Regression: ipm serve cut the path to 256 characters and put those
    in stats.call, where handle() names a path over 239 /invalid-path."""
    _, port = server
    target = "/" + "a" * 3000

    status, answer = raw_exchange(
        port, f"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: \x0b\r\n\r\n".encode()
    )

    assert status == 400
    assert answer["stats"]["call"] == "GET /invalid-path"


@pytest.mark.parametrize(
    "line",
    [
        b"HEAD /" + b"a" * 70_000 + b" HTTP/1.1",  # 414
        b"HEAD /stat?q=\xc3\xa9 HTTP/1.1",  # raw UTF-8: 400
    ],
)
def test_ipm_serve_answers_a_head_refused_at_its_request_line_without_a_body(
    server: tuple[ipm.Application, int], line: bytes
) -> None:
    """Regression: a HEAD refused before its method was read got the
    refusal's body, which a client that sent HEAD never reads."""
    _, port = server

    answer = raw_answer(port, line + b"\r\nHost: x\r\n\r\n")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"400", b"414")
    assert body == b""


@pytest.mark.parametrize("length", [238, 239, 240, 300, 2048])
def test_an_unknown_path_of_any_length_answers_a_valid_envelope(
    app: ipm.Application, length: int
) -> None:
    """Regression: a path of 250 to 2048 characters was repeated in
    stats.call, which the Envelope schema caps at 256 characters."""
    path = "/" + "a" * (length - 1)

    answer = app.handle("OPTIONS", path, {}, b"").json()

    assert ipm.schemas.validate("Envelope", answer) == []
    named = path if length <= 239 else "/invalid-path"
    assert answer["stats"]["call"] == f"OPTIONS {named}"
    assert answer["error"]["message"] == f"no route {named}"
