"""The WSGI adapter: a thin, framework-free shell around ``handle()``.

Uploads and downloads can be far larger than memory. A ``PUT`` body is
therefore not read here: ``handle()`` receives a :class:`StreamedBody`,
an empty ``bytes`` that carries an iterator over the request's chunks,
and the upload handler streams it to the blob store. A handler may answer
with a :class:`StreamedBody` as well, and its chunks are sent as they come.
Callers of ``handle()`` that pass or receive plain bytes see no
difference; :func:`iter_body` reads either kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from ipm.domain.errors import IpmError, LengthRequired, PayloadTooLarge

if TYPE_CHECKING:
    from ipm.app import Application

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
READ_SIZE = 1 << 16
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    428: "Precondition Required",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class StreamedBody(bytes):
    """A body too big to hold: empty as bytes, its content in ``chunks``.

    ``length`` is the declared size when one is known (Content-Length).
    """

    chunks: Iterator[bytes]
    length: int | None

    def __new__(
        cls, chunks: Iterable[bytes], length: int | None = None
    ) -> StreamedBody:
        body = super().__new__(cls, b"")
        body.chunks = iter(chunks)
        body.length = length

        return body


def iter_body(body: bytes) -> Iterator[bytes]:
    """The chunks of a body, streamed or not."""
    if isinstance(body, StreamedBody):
        return body.chunks

    return iter((body,) if body else ())


class WsgiApp:
    def __init__(self, app: Application) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        query = environ.get("QUERY_STRING", "")
        headers = _headers(environ)

        body = _read_body(environ, self.app.max_body_bytes)
        if body is None:
            response = _refuse(self.app, method, path, _too_large(self.app))
        elif body is _UNREADABLE:
            response = _refuse(self.app, method, path, _length_required())
        else:
            target = f"{path}?{query}" if query else path
            response = self.app.handle(method, target, headers, body)

        reason = _REASONS.get(response.status, "Unknown")
        start_response(f"{response.status} {reason}", list(response.headers))
        if isinstance(response.body, StreamedBody):
            return response.body.chunks

        return [response.body]


def _headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = [
        (key[5:].replace("_", "-").lower(), str(value))
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            pairs.append((key.replace("_", "-").lower(), str(environ[key])))

    return pairs


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit``.

    Uploads (``PUT``) are streamed to their own handler, which bounds them,
    so only ordinary requests are bounded here.
    """
    try:
        length: int | None = int(environ["CONTENT_LENGTH"])
    except (KeyError, ValueError):
        length = None
    stream = environ.get("wsgi.input")
    if environ.get("REQUEST_METHOD") == "PUT" and stream is not None:
        return StreamedBody(_chunks(stream, length, environ), length)
    if stream is None:
        return b""
    if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        if not environ.get("wsgi.input_terminated"):
            # This server hands us the raw chunked framing: we cannot read
            # it, and reading it as empty would silently drop the body.
            return _UNREADABLE
        data = b"".join(_chunks(stream, None, environ))
        return data if len(data) <= limit else None
    if not length or length <= 0:
        return b""
    if length > limit:
        return None

    return bytes(stream.read(length))


_UNREADABLE = StreamedBody(())


def _chunks(
    stream: IO[bytes], length: int | None, environ: dict[str, Any]
) -> Iterator[bytes]:
    """Read the request body in bounded pieces.

    Without a Content-Length only a server that says it ends the input
    (``wsgi.input_terminated``) can be read to its end.
    """
    if length is None and not environ.get("wsgi.input_terminated"):
        return
    remaining = length
    while remaining is None or remaining > 0:
        size = READ_SIZE if remaining is None else min(READ_SIZE, remaining)
        chunk = stream.read(size)
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield bytes(chunk)


def _too_large(app: Application) -> IpmError:
    return PayloadTooLarge(f"request body is larger than {app.max_body_bytes} bytes")


def _length_required() -> IpmError:
    return LengthRequired("send the body with a Content-Length header")


def _refuse(app: Application, method: str, path: str, error: IpmError) -> Any:
    return app.api.refusal(f"{method} {path}", error)
