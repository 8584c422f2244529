"""The WSGI adapter: a thin, framework-free shell around ``handle()``.

Uploads and downloads can be far larger than memory. A ``PUT`` body is
therefore not read here: ``handle()`` receives a :class:`StreamedBody`,
an empty ``bytes`` that carries an iterator over the request's chunks,
and the upload handler streams it to the blob store. A handler may answer
with a :class:`StreamedBody` as well, and its chunks are sent as they come.
Callers of ``handle()`` that pass or receive plain bytes see no
difference; :func:`iter_body` reads either kind.

Mounted under a prefix, ipm sees only ``PATH_INFO`` (the path below the
mount) as its route; ``SCRIPT_NAME`` and ``wsgi.url_scheme`` go to
``handle()`` so the links it hands out lead back through the mount.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from ipm.domain.errors import (
    InvalidRequest,
    IpmError,
    LengthRequired,
    PayloadTooLarge,
    Problem,
    type_name,
)

if TYPE_CHECKING:
    from ipm.app import Application

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
READ_SIZE = 1 << 16
_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
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


def request_target(path: str, query: str) -> str:
    """What ``handle()`` reads, from a server's decoded path and raw query.

    Servers hand the path over with ``%3F`` and ``%23`` decoded: such a
    ``?`` or ``#`` is part of the path, and left bare it would be read as
    the start of a query or fragment ("/webhook/list%3Fx" served as
    /webhook/list). Escaped again, the path matches no route.
    """
    path = path.replace("?", "%3F").replace("#", "%23")

    return f"{path}?{query}" if query else path


def routed_path(decoded: str, sent: str | None, prefix: str = "") -> str:
    """The path ``handle()`` routes on: the server's decoded path, or the
    path as sent when decoding changed its segments.

    A server decodes the path before ipm sees it, so ``/kpi%2Fquery``
    would be served as ``/kpi/query``, and the standard library's server
    turns a leading ``//`` into ``/``. A proxy in front that allows or
    blocks by path saw the path as sent; ipm must not serve it as another.
    Such a path (an encoded ``/``, an empty segment) is routed as sent and
    reaches no route (404). ``sent`` is what the server passes on of the
    request target (``RAW_URI``, ``REQUEST_URI``, ASGI's ``raw_path``),
    None when it passes nothing; ``prefix`` is where the app is mounted,
    left out of a path routed as sent as it is of a decoded one.
    """
    if not sent:
        return _origin_form(decoded)
    path = _origin_form(sent.partition("?")[0])
    if "//" in path or "%2f" in path.lower():
        mount = prefix.rstrip("/")
        if mount and path.startswith(f"{mount}/"):
            return path[len(mount) :]
        return path

    return _origin_form(decoded)


def _origin_form(path: str) -> str:
    """The path of an absolute-form target (RFC 9112, 3.2.2), which servers
    must accept; some (uvicorn) pass it on whole, decoded path included.

    The scheme and authority are cut off as text: a decoded ``?`` or ``#``
    belongs to the path (URL parsing would start a query or a fragment
    there and serve another route than the one a proxy saw). A target
    whose authority is not a plain host (user info, no URL at all) is left
    as it is and routes nowhere.
    """
    authority = absolute_authority(path)
    if authority is None:
        return path
    after = path.split("://", 1)[1][len(authority) :]

    return after if after.startswith("/") else f"/{after}"


def absolute_authority(target: str) -> str | None:
    """The authority of an absolute-form target (``host[:port]``, to stand
    for the Host header, as RFC 9112, 3.2.2 asks), or None when ``target``
    is not one or its authority is not a plain host."""
    if not target[:8].lower().startswith(("http://", "https://")):
        return None
    rest = target.split("://", 1)[1]
    authority = rest[: next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))]
    if not authority or "@" in authority or "%" in authority:
        return None
    try:
        urlsplit(f"http://{authority}/").port  # noqa: B018  (raises when malformed)
    except ValueError:
        return None

    return authority


class WsgiApp:
    def __init__(self, app: Application) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        sent = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        path = routed_path(
            environ.get("PATH_INFO", "/") or "/", sent, _script_name(environ)
        )
        query = environ.get("QUERY_STRING", "")
        headers = _headers(environ)

        try:
            body = _read_body(environ, self.app.max_body_bytes)
        except IpmError as error:
            # An unknown route or method says so first, as handle() would.
            error = self.app.api.route_error(method, request_target(path, "")) or error
            response = self.app.api.refusal(method, path, error)
        else:
            response = self.app.handle(
                method,
                request_target(path, query),
                headers,
                body,
                scheme=str(environ.get("wsgi.url_scheme", "http")),
                prefix=_script_name(environ),
                stream=True,
            )

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


def _script_name(environ: dict[str, Any]) -> str:
    """The mount prefix as text: WSGI hands it over as Latin-1 bytes."""
    name = str(environ.get("SCRIPT_NAME", ""))
    try:
        raw = name.encode("latin-1")
    except UnicodeEncodeError:
        # Not the bytes-as-Latin-1 PEP 3333 asks for: already text.
        return name

    return raw.decode("utf-8", "surrogateescape")


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, read exactly as its framing says.

    Uploads (``PUT``) are streamed to their own handler, which bounds them,
    so only ordinary requests are bounded here. A body that cannot be read
    whole is refused, never read as empty: a malformed Content-Length or a
    shorter body is a 400, a body-carrying method without a length (or with
    chunked framing this server leaves to us) a 411, a larger one a 413.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    length = _content_length(environ)
    stream = environ.get("wsgi.input")
    if method == "PUT" and stream is not None:
        if length is None and not environ.get("wsgi.input_terminated"):
            raise length_required()
        chunks = _chunks(stream, length, environ)
        protocol = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        te = environ.get("HTTP_TRANSFER_ENCODING", "")
        if length is None and not framed_otherwise(protocol, te):
            chunks = not_empty(chunks)
        return StreamedBody(chunks, length)
    if stream is None:
        # No input at all (PEP 3333 requires one): a declared body, by its
        # length or by chunked framing, is not read as empty.
        if length:
            raise cut_short(length, length)
        if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
            raise InvalidRequest(
                "the request body could not be read (the server gave none)",
                [Problem("/headers/transfer-encoding", "a body no input holds")],
            )
        return b""
    if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        if not environ.get("wsgi.input_terminated"):
            raise length_required()
        return _read_bounded(_chunks(stream, None, environ), limit)
    if length is None:
        if method in _BODY_METHODS:
            raise length_required()
        return b""
    if length > limit:
        raise body_too_large(limit)

    return b"".join(_chunks(stream, length, environ))


def framed_otherwise(protocol: str, transfer_encoding: str) -> bool:
    """Whether a body without Content-Length is framed some other way:
    chunked over HTTP/1.x, or a protocol with frames of its own (HTTP/2).

    ``protocol`` as WSGI writes it (``HTTP/1.1``); the same rule for both
    adapters.
    """
    if "chunked" in transfer_encoding.lower():
        return True

    return not protocol.startswith("HTTP/1")


def not_empty(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """An upload with no framing at all, refused if it turns out empty.

    Over HTTP/1.x a request with neither Content-Length nor chunked framing
    has no body, so a server hands ipm none, whatever the client sent after
    its headers; stored, that empty upload would use the job up. A body
    that does arrive (a server or a test that frames it its own way) is
    taken as it is.
    """
    empty = True
    for chunk in chunks:
        empty = empty and not chunk
        yield chunk
    if empty:
        raise length_required()


def _read_bounded(chunks: Iterator[bytes], limit: int) -> bytes:
    """A body of unknown length, refused as soon as it passes ``limit``."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            # Not read on: a client may send gigabytes before any key check.
            raise body_too_large(limit)

    return bytes(data)


def body_too_large(limit: int) -> IpmError:
    return PayloadTooLarge(f"request body is larger than {limit} bytes")


def cut_short(length: int, missing: int) -> IpmError:
    return InvalidRequest(
        f"the request body ended after {length - missing} of {length} bytes",
        [Problem("/headers/content-length", "more than the body sent")],
    )


_BODY_METHODS = frozenset({"POST", "PATCH"})


LENGTH_DIGITS = 18
BEYOND_ANY_LIMIT: int = 10**LENGTH_DIGITS
"""A Content-Length of more digits is read as this: past every limit, and
``int()`` would refuse one of more than 4,300 digits."""


def declared_length(value: str | None) -> int | None:
    """A Content-Length as a number; None when absent or not plain digits."""
    text = (value or "").strip(" \t")
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"  # leading zeros are legal, and no size

    return int(digits) if len(digits) <= LENGTH_DIGITS else BEYOND_ANY_LIMIT


def _content_length(environ: dict[str, Any]) -> int | None:
    return content_length(str(environ.get("CONTENT_LENGTH", "")))


def content_length(value: str | None) -> int | None:
    """A request's Content-Length: None when absent, a 400 when malformed
    (the same rule for both adapters)."""
    text = (value or "").strip(" \t")
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise InvalidRequest(
            "Content-Length must be one non-negative integer",
            [Problem("/headers/content-length", "malformed")],
        )

    return declared_length(text)


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
        try:
            chunk = stream.read(size)
        except SlowClient as slow:
            raise slow.refusal from None
        except (OSError, ValueError):
            # The client went away mid-body: servers raise their own OSError
            # kinds, and a stream closed under the read a ValueError. Its
            # request, not ipm, ended it.
            raise InvalidRequest(
                "the client went away before the body ended",
                [Problem("", "the request body is incomplete")],
            ) from None
        except Exception as error:
            # The server's or a framework's own stream failed (its own
            # "client disconnected" or "too large" exception, or a fault):
            # the body cannot be had, which is no fault of ipm's, but what
            # it was is told in the log, not guessed at in the answer.
            log.warning(
                "the request body could not be read: the input stream raised %s",
                type_name(error),
                exc_info=True,
            )
            raise InvalidRequest(
                "the request body could not be read",
                [Problem("", "the server's input stream failed")],
            ) from None
        if not chunk:
            if length is not None and remaining is not None:
                raise cut_short(length, remaining)
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield bytes(chunk)


def length_required() -> IpmError:
    return LengthRequired(
        "send the body with a Content-Length header (a POST with nothing to "
        "say sends {})",
        [Problem("/headers/content-length", "required")],
    )


UPLOAD_STALL_SECONDS = 60.0
UPLOAD_MIN_RATE = 16 * 1024


@attrs.frozen
class Pace:
    """How slowly a client may send a body before it is refused.

    ``stall_seconds`` of grace, then ``min_rate`` bytes a second on average;
    only the time spent waiting for the client counts.
    """

    stall_seconds: float
    min_rate: int

    def allowance(self, received: int, waited: float) -> float:
        """Seconds the next chunk may take, ``received`` bytes in ``waited`` s."""
        credit = self.stall_seconds + received / self.min_rate - waited

        return min(self.stall_seconds, credit)

    def refusal(self, received: int, waited: float, allowed: float) -> InvalidRequest:
        """Why the upload ends after waiting ``allowed`` s more in vain."""
        if allowed >= self.stall_seconds or received == 0:
            # Nothing at all: no rate could have been kept, whatever the
            # credit left (a body's first wait starts a moment after it).
            return incomplete_body(
                f"the client sent nothing for {self.stall_seconds:g} s"
            )

        took = waited + max(allowed, 0.0)

        return incomplete_body(
            f"the client sent {received} bytes in {took:.1f} s, under the"
            f" {self.min_rate} bytes a second an upload must average"
        )


def incomplete_body(why: str) -> InvalidRequest:
    # Never a stored upload cut short: the job keeps waiting for a whole one.
    return InvalidRequest(why, [Problem("", "the request body is incomplete")])


class SlowClient(TimeoutError):
    """A read given up on because the client sent too slowly.

    A server that paces its reads (``ipm serve`` does) raises it from the
    body stream; ``refusal`` is the 400 that says how slow it was.
    """

    def __init__(self, refusal: InvalidRequest) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
