"""``ipm serve``: the WSGI application on the standard library's server.

The server gives each connection a thread, at most ``max_threads`` at
once, drops clients that stay silent, and refuses a request whose body
framing is ambiguous before reading it (request smuggling behind a proxy).
"""

from __future__ import annotations

import argparse
import errno
import io
import ipaddress
import logging
import os
import re
import signal
import socket
import threading
import time
from email.message import Message
from pathlib import Path
from socketserver import TCPServer, ThreadingMixIn
from typing import IO, Any, cast
from urllib.parse import urlsplit
from wsgiref.simple_server import (
    ServerHandler,
    WSGIRequestHandler,
    WSGIServer,
    make_server,
)

import ipm
from ipm.adapters.blobs import FileBlobStore
from ipm.adapters.sqlite.core import anchored
from ipm.api.core import SINGLE_HEADERS, repeated_header
from ipm.api.wsgi import UPLOAD_MIN_RATE, UPLOAD_STALL_SECONDS, Pace, SlowClient
from ipm.cli._common import (
    CannotRun,
    os_error_text,
    read_event_types,
    register_event_types,
    shown,
)
from ipm.domain.errors import InvalidRequest, IpmError, PayloadTooLarge, Problem
from ipm.usecases.bulk_options import BulkOptions

log = logging.getLogger(__name__)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, but never more than ``max_threads`` at once.

    When every thread is busy the server stops accepting until one is free,
    so a flood of slow clients queues in the kernel instead of growing the
    process without bound.
    """

    daemon_threads = True
    allow_reuse_address = True
    max_threads = 64
    # The standard library's backlog of 5 resets clients in a burst.
    request_queue_size = 256
    # The application whose error envelope refuses a request early.
    ipm_app: ipm.Application

    def server_bind(self) -> None:
        # As the standard library binds, less its reverse lookup of the
        # address (socket.getfqdn): a DNS query off the machine, and a
        # wait, at every start on ::1 or 0.0.0.0. ipm never uses the name
        # (links come from Host or the public base URL).
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self._stopping = threading.Event()
        self._answering = 0
        self._answered = threading.Condition()
        self._hurried = False
        self._short_of_files_told = 0.0

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # The connection stays queued and the socket stays readable:
                # retrying at once would spin a core until a descriptor is
                # free. Wait a little, and say why now and then.
                now = time.monotonic()
                if now - self._short_of_files_told >= 60:
                    self._short_of_files_told = now
                    log.warning(
                        "no file descriptor left to accept a connection "
                        "(raise the open files limit, ulimit -n)"
                    )
                time.sleep(SHORT_OF_FILES_PAUSE)
            raise

    def begin_answer(self) -> None:
        with self._answered:
            self._answering += 1

    def end_answer(self) -> None:
        with self._answered:
            self._answering -= 1
            self._answered.notify_all()

    def drain(self, seconds: float) -> int:
        """Wait up to ``seconds`` for the requests under way to be answered,
        or until :meth:`hurry`; return how many were not."""
        deadline = time.monotonic() + seconds
        with self._answered:
            while self._answering and not self._hurried:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._answered.wait(left)
            return self._answering

    def hurry(self) -> None:
        """Stop waiting for the requests under way (a second signal)."""
        with self._answered:
            self._hurried = True
            self._answered.notify_all()

    def shutdown(self) -> None:
        # The serve loop may be waiting for a free slot: let it see this.
        self._stopping.set()
        super().shutdown()

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self._slots.acquire(timeout=0.2):
            if self._stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


DRAIN_SECONDS = 5.0
"""How long a stopping server waits for the requests under way to be
answered: well within a supervisor's grace period (commonly 10 to 30 s)."""

SHORT_OF_FILES_PAUSE = 0.1
"""Seconds the accept loop waits when no file descriptor is left."""

LINGER_SECONDS = 2.0
LINGER_BYTES = 16 << 20
"""How long, and how much of what a client still sends, a closing
connection reads and drops after its answer."""


HEAD_SECONDS = 20.0
"""The request line and headers must arrive whole within this: a client
trickling header lines would otherwise hold a thread for as long as it
likes, and 64 such clients the whole server."""

BODY_PACE = Pace(UPLOAD_STALL_SECONDS, UPLOAD_MIN_RATE)
"""The pace a request body keeps, as under the ASGI adapter."""


class _PacedReader(io.RawIOBase):
    """A connection's incoming bytes, each read given only the time the
    client has left: the head within :data:`HEAD_SECONDS` in all, then the
    body at :data:`BODY_PACE`. A read past that raises :class:`SlowClient`.

    A timeout per read alone let a client that sends a byte now and then
    keep its thread without end.
    """

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self._sock = sock
        self._write_timeout = write_timeout
        self._head_ends = time.monotonic() + HEAD_SECONDS
        self._body = False
        self._received = 0
        self._waited = 0.0
        self._continue = False

    def readable(self) -> bool:
        return True

    def start_body(self, expect_continue: bool = False) -> None:
        """The head is read: what follows is the body, at its own pace.

        With ``expect_continue`` the client waits for a ``100 Continue``
        before it sends the body: that goes out when the body is first
        read, so a request refused unread (a declared size over the limit,
        a bad link) never has its body sent at all.
        """
        self._body = True
        self._continue = expect_continue

    def readinto(self, buffer: Any) -> int:
        if self._continue:
            self._continue = False
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._body:
            allowed = BODY_PACE.allowance(self._received, self._waited)
        else:
            allowed = self._head_ends - time.monotonic()
        if allowed <= 0:
            raise self._too_slow(allowed)
        self._sock.settimeout(allowed)
        began = time.monotonic()
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            raise self._too_slow(allowed) from None
        finally:
            # Writing the answer keeps the handler's own timeout.
            self._sock.settimeout(self._write_timeout)
        if self._body:
            self._waited += time.monotonic() - began
            self._received += count

        return count

    def _too_slow(self, allowed: float) -> SlowClient:
        if self._body:
            refusal = BODY_PACE.refusal(self._received, self._waited, allowed)
        else:
            refusal = InvalidRequest(
                f"the request line and headers took over {HEAD_SECONDS:g} s",
                [Problem("", "the request head is incomplete")],
            )

        return SlowClient(refusal)


class _AnswerErrors(io.StringIO):
    """What went wrong while answering one request, logged when flushed:
    one warning line with the error, the traceback at debug level."""

    def __init__(self, client: str) -> None:
        super().__init__()
        self._client = client

    def flush(self) -> None:
        text = self.getvalue().strip()
        self.seek(0)
        self.truncate()
        if text:
            last = text.splitlines()[-1]
            log.warning("%s - the answer was not sent whole: %s", self._client, last)
            log.debug("%s - %s", self._client, text)


class _RequestOnly(ServerHandler):
    """wsgiref's handler without the process's environment.

    wsgiref starts every request's environ from a copy of ``os.environ``:
    a variable of the server's own (``HTTP_AUTHORIZATION``, ``HTTP_PROXY``,
    ``CONTENT_LENGTH``) would reach ipm as if the client had sent it, and
    every secret in the environment would sit in each request.
    """

    os_environ: dict[str, str] = {}  # noqa: RUF012 (read, never changed)

    def send_headers(self) -> None:
        """The status line and every header in one write (wsgiref writes
        each line apart): a server killed between two writes left a client
        a status line alone, which it could read as a whole answer with no
        body (a 200 of nothing); now it has Content-Length to go by."""
        held: list[bytes] = []
        self._write = held.append  # type: ignore[method-assign, assignment]
        try:
            super().send_headers()
        finally:
            del self._write
        self._write(b"".join(held))


class _QuietHandler(WSGIRequestHandler):
    # Writing to a client that reads nothing for this long gives up.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self._paced = _PacedReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._paced)

    def get_stderr(self) -> io.StringIO:
        # Where wsgiref writes a failure while answering (a client that
        # stopped reading): into ipm's log, not a raw traceback on stderr.
        return _AnswerErrors(self.address_string())

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry a query string (a signed link's sig):
        # log it without, the protocol kept, its control characters escaped
        # (no forged log lines); with the status and size when answered.
        words = self.requestline.split(" ")
        if len(words) > 1:
            words[1] = _loggable_target(words[1])
        line = " ".join(words).translate(_ESCAPED)
        if format == '"%s" %s %s' and len(args) == 3:  # log_request's own
            line += f" {args[1]} {args[2]}".translate(_ESCAPED)
        log.debug("%s - %s", self.address_string(), line)

    def handle(self) -> None:
        self._answering = False
        try:
            self._handle_one()  # one request: this server closes every connection
        except SlowClient as slow:
            # The head did not arrive in time: nothing to answer, no thread
            # to hold any longer.
            log.debug("%s - %s", self.address_string(), slow)
            return
        except ConnectionError as gone:
            # The client reset or left while its request was read or its
            # refusal written: nobody to answer, and not ipm's fault (the
            # standard library would print a traceback per connection).
            log.debug("%s - the client left: %s", self.address_string(), gone)
            return
        finally:
            if self._answering:
                server = cast(_ThreadingServer, self.server)
                server.end_answer()
        self._linger()

    def _handle_one(self) -> None:
        """Read one request and run the application on it, as wsgiref's own
        handle() does, with an environ made of the request alone."""
        self.raw_requestline = self.rfile.readline(65537)
        if self.raw_requestline in (b"\r\n", b"\n"):
            # One empty line before the request line is ignored, as RFC
            # 9112, 2.2 asks (a client's CRLF after its previous request).
            self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            return  # the client closed without a request: nothing to answer
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return  # refused, and answered
        handler = _RequestOnly(
            cast(IO[bytes], self.rfile),
            cast(IO[bytes], self.wfile),
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def _linger(self) -> None:
        """Close gently: drain what the client still sends, briefly.

        An answer given before the body was read (a 413, a refused upload)
        reaches a client that is still sending only if the connection is
        not reset under it, which closing with unread data does. So the
        sending side is shut first (the client sees the answer end), and
        what still arrives is read and dropped until the client closes, a
        bounded amount or a short time is up (a "lingering close").
        """
        sock = self.connection
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        try:
            sock.shutdown(socket.SHUT_WR)
            while drained < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return
                drained += len(chunk)
        except OSError:
            return  # reset or timed out: nothing more to wait for

    def parse_request(self) -> bool:
        """Refuse a request whose headers are ambiguous, before reading it.

        The standard library's server takes the first Content-Length and
        ignores Transfer-Encoding; a proxy in front may frame the body
        differently, and the rest of the bytes would be read as the next
        request (request smuggling). It joins a repeated header with
        commas, where a proxy may have read only one of them. And it reads
        ``x_orgcode`` as ``x-orgcode``: a name with an underscore is
        dropped (as common proxies do), so no header can pass a proxy's
        rules under a name that ipm reads as another.
        """
        raw: bytes = getattr(self, "raw_requestline", b"")
        if _SIMPLE_REQUEST_LINE.fullmatch(raw):
            # HTTP/0.9's bare "GET /path": refused at once, not after
            # waiting for headers such a client never sends.
            self.requestline = raw.decode("latin-1").rstrip("\r\n")
            self.close_connection = True
            self.send_error(505)
            return False
        if not _REQUEST_LINE.fullmatch(raw):
            self.requestline = ""
            self.close_connection = True
            self.send_error(400)
            return False
        head = _HeadLines(self.rfile)
        self.rfile = cast(io.BufferedIOBase, head)
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = head.rfile
        if not parsed:
            return False
        if not _HTTP_1X.fullmatch(self.request_version):
            # The standard library also takes HTTP/0.8, HTTP/01.1 and
            # HTTP/1.01; RFC 9112 writes a version as one digit, dot, digit.
            self.send_error(505)
            return False
        expect = self.headers.get("expect", "").strip().lower()
        # An HTTP/1.0 client's expectation is ignored (RFC 9110, 10.1.1).
        self._paced.start_body(
            expect == "100-continue" and self.request_version == "HTTP/1.1"
        )

        for name in {name for name in self.headers if "_" in name}:
            del self.headers[name]
        error = (
            _hidden_lines(head.lines)
            or _ambiguous_framing(self.headers)
            or _repeated(self.headers)
            or _hostless(self.request_version, self.headers)
        )
        if error is None:
            error = self._take_target()
        if error is None:
            # A whole head has arrived: a stopping server answers this
            # request before it closes (a client that sent a request line
            # and nothing more does not hold the stop).
            cast(_ThreadingServer, self.server).begin_answer()
            self._answering = True
            return True

        self._refuse(error)
        return False

    def _take_target(self) -> IpmError | None:
        """Keep the target as sent, for routing (``RAW_URI``): the standard
        library turns a leading ``//`` into ``/``, and ipm routes such a
        path as sent (:func:`ipm.api.wsgi.routed_path`).

        An absolute-form target (``POST http://host/cdc/list``, RFC 9112,
        3.2.2) is served as its path and query, under its own authority in
        place of the Host header.
        """
        words = self.requestline.split()
        sent = words[1] if len(words) == 3 else self.path
        self._sent = sent
        if not sent.lower().startswith(("http://", "https://")):
            return None
        try:
            parts = urlsplit(sent)
        except ValueError:
            return InvalidRequest(
                "the request target is not a URL",
                [Problem("/target", "an absolute-form target that cannot be read")],
            )
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._sent = self.path
        if parts.netloc:
            del self.headers["host"]
            self.headers["Host"] = parts.netloc

        return None

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["RAW_URI"] = getattr(self, "_sent", None) or self.path
        # wsgiref trims header values with str.strip(), which also drops
        # NBSP, NEL and separator controls that HTTP does not call
        # whitespace: "\xa0ACME01" would reach ipm as ACME01, unlike under
        # any other server. The values are taken again, trimmed of HTTP's
        # own whitespace only, joined as wsgiref joins repeated ones.
        for name in [name for name in environ if name.startswith("HTTP_")]:
            del environ[name]
        for key, value in self.headers.items():
            name = key.replace("-", "_").upper()
            if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                continue
            value = value.strip(" \t\r\n")
            if "HTTP_" + name in environ:
                environ["HTTP_" + name] += "," + value
            else:
                environ["HTTP_" + name] = value

        return environ

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None
    ) -> None:
        """The standard library's own refusals, in the envelope.

        It answers a request line or headers it cannot take (too long, too
        many, malformed) before ipm sees the request; ``close_connection``
        is already set.
        """
        # The standard library's message may quote the request line; the
        # answer never repeats what the client sent.
        if code in (414, 431):
            error: IpmError = PayloadTooLarge(_TOO_LARGE.get(code, "too large"))
        else:
            what = _REFUSED.get(code, "the request is malformed")
            error = InvalidRequest(what, [Problem("", "the request cannot be read")])
        error.status = code
        if not getattr(self, "command", None):
            # The request line itself was refused; a HEAD is still told
            # without a body (its headers say the length GET would get).
            raw = getattr(self, "raw_requestline", b"")
            self.command = "HEAD" if raw.startswith(b"HEAD ") else ""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # Unread or unusable version: the answer still gets a status line.
            self.request_version = "HTTP/1.0"
        self._refuse(error)

    def _refuse(self, error: IpmError) -> None:
        app = cast(_ThreadingServer, self.server).ipm_app
        # A path too long or unprintable to repeat is named /invalid-path.
        path = getattr(self, "path", "") or "/"
        response = app.api.refusal(self.command or "INVALID", path, error)
        # The body was not read: the connection cannot carry another request.
        self.close_connection = True
        try:
            self.send_response(response.status)
            for name, value in response.headers:  # Content-Length among them
                self.send_header(name, value)
            self.send_header("connection", "close")
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has no content (RFC 9110)
                self.wfile.write(response.body)
        except OSError as error:
            # The client left before its refusal (it sent a part request and
            # closed): one line, as for any answer not sent whole, not the
            # standard library's traceback.
            log.warning(
                "%s - the answer was not sent whole: %s",
                self.address_string(),
                type(error).__name__,
            )


def _loggable_target(target: str) -> str:
    """A request target as a log line may show it: without its query (a
    signed link's sig) and without anything before an ``@`` in it (the user
    and password an absolute or authority form may carry, however it is
    spelt: ``http://u:pw@h/``, ``//u:pw@h/``, ``u:pw@h:443``); no route of
    ipm's holds an ``@``."""
    # Everything before the last @ goes, whatever it holds (a / ? or # in a
    # password cut at the first of them would leave the rest of it); a
    # scheme in front of it stays.
    head, at, rest = target.rpartition("@")
    if at:
        scheme = _SCHEME.match(head)
        target = (scheme.group(0) if scheme else "") + rest

    return target.split("?", 1)[0].split("#", 1)[0]


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
"""Control characters, as a log line or a call name shows them."""

_TOO_LARGE = {
    414: "the request target is too long",
    431: "the request headers are too large or too many",
}
_REFUSED = {
    400: "the request line or headers cannot be read",
    505: "the HTTP version is not supported (use HTTP/1.x)",
}


class _HeadLines:
    """The request's reader while its headers are parsed, keeping each
    header line as it came."""

    def __init__(self, rfile: io.BufferedIOBase) -> None:
        self.rfile = rfile
        self.lines: list[bytes] = []

    def readline(self, limit: int = -1) -> bytes:
        line = self.rfile.readline(limit)
        self.lines.append(line)
        return line


def _hidden_lines(lines: list[bytes]) -> IpmError | None:
    """Header lines a proxy in front of ipm could read otherwise, refused.

    The header parser takes a lone CR as a line's end, so
    ``X-Trace: a<CR>Authorization: ...`` would reach ipm as two headers
    where a proxy passed one: a header hidden from the proxy's rules, a
    Content-Length hidden from its framing (RFC 9112, 2.2). A line starting
    with a space or a tab continues the one before (obs-fold), which the
    parser keeps with its CR LF inside the value; RFC 9112, 5.2 lets a
    server refuse it, as ipm does. A name that is no token
    (``Content-Length(``), a first line without a colon (the parser drops
    it as a mailbox's ``From`` line) and other controls in a value (VT,
    FF, DEL) are refused as well (RFC 9110, 5.1 and 5.5). Headers that
    end before their empty line were cut off by a closed connection: the
    request is not acted on with the part that came.
    """
    problem = _header_fault(lines)
    if problem is None:
        return None

    return InvalidRequest(
        f"the request headers cannot be read: {problem}",
        [Problem("/headers", problem)],
    )


def _header_fault(lines: list[bytes]) -> str | None:
    if not lines or lines[-1] not in (b"\r\n", b"\n"):
        return "headers cut off before the empty line that ends them"
    for line in lines[:-1]:
        text = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
        name, colon, value = text.partition(b":")
        if b"\r" in text or b"\0" in text:
            return "a CR or NUL inside a header line"
        if text[:1] in (b" ", b"\t"):
            return "a header line folded onto the one before"
        if not colon or not _FIELD_NAME.fullmatch(name):
            return "a line that is not name: value"
        if _FIELD_CONTROL.search(value):
            return "a control character inside a header value"

    return None


_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""A header name is a token; a value holds no control but the tab."""


_WORD = rb"[^\x00-\x20\x7f-\xff]+"
_REQUEST_LINE = re.compile(_WORD + b" " + _WORD + b" " + _WORD + rb"\r?\n")
_SIMPLE_REQUEST_LINE = re.compile(_WORD + b" (?!HTTP/)" + _WORD + rb"\r?\n")
"""Method, target and version, one single space apart (RFC 9112, 3).
The standard library splits the line on whatever Python calls
whitespace, so ``POST<VT>/stat`` or a NEL or NBSP between the words was
served as ``POST /stat``; a word holds none of those, no other control
character or DEL (``G<NUL>ET`` is no method), nor any byte outside ASCII
(a target is ASCII: other characters are percent-encoded, and raw UTF-8
holding 0x85 or 0xA0 was split, served as another target).
``GET HTTP/1.1`` lacks its target: not HTTP/0.9's bare request line, a
400."""


def _ambiguous_framing(headers: Message) -> IpmError | None:
    if headers.defects or headers.get_payload():
        # A line that is no header ("Transfer-Encoding : chunked", with a
        # space before the colon) ends the parse: the headers after it,
        # a framing one among them, would go unseen (RFC 9112 5.1).
        # Said as it is: the request may have no body at all.
        problem = "a line that is not name: value"
        return InvalidRequest(
            f"the request headers cannot be read: {problem}",
            [Problem("/headers", problem)],
        )
    lengths = {value.strip() for value in headers.get_all("content-length", [])}
    if len(lengths) > 1:
        problem = "Content-Length headers that differ"
    elif lengths and headers.get_all("transfer-encoding"):
        problem = "both Content-Length and Transfer-Encoding"
    else:
        return None

    return InvalidRequest(
        f"the request's body length is ambiguous: {problem}",
        [Problem("/headers/content-length", problem)],
    )


_HTTP_1X = re.compile(r"HTTP/1\.[0-9]")


def _hostless(version: str, headers: Message) -> IpmError | None:
    """HTTP/1.1 requires a Host header (RFC 9112, 3.2): without one, a 400.

    So does a later 1.x (HTTP/1.2 is read as 1.1); only HTTP/1.0 may omit it.
    """
    if version != "HTTP/1.0" and headers.get("host") is None:
        return InvalidRequest(
            "an HTTP/1.1 request needs a Host header",
            [Problem("/headers/host", "required")],
        )

    return None


def _repeated(headers: Message) -> IpmError | None:
    names = [name.lower() for name in headers]
    for name in sorted(SINGLE_HEADERS):
        if names.count(name) > 1:
            return repeated_header(name)

    return None


class _ThreadingServer6(_ThreadingServer):
    """The same, listening on an IPv6 address (``::1``, ``::``)."""

    address_family = socket.AF_INET6


def make_http_server(app: ipm.Application, host: str, port: int) -> WSGIServer:
    """The server ``ipm serve`` runs (``port`` 0: any free port); ``host``
    an IPv4 or IPv6 address (``::1``, also written ``[::1]``) or a name."""
    host = _unbracketed(host)
    server = make_server(
        host,
        port,
        app.wsgi_app,
        server_class=_ThreadingServer6 if ":" in host else _ThreadingServer,
        handler_class=_QuietHandler,
    )
    server.ipm_app = app

    return server


def _unbracketed(host: str) -> str:
    """``::1`` for ``[::1]`` (as URLs write an IPv6 address); else as given."""
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host

    return inner if ":" in inner else host


def _authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:8080``)."""
    host = _unbracketed(host)

    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _warn_if_everywhere(host: str) -> None:
    """Plain http on every interface sends keys and links across the
    network unencrypted: said once at start (a TLS proxy on the same
    machine would rather have ipm listen on 127.0.0.1)."""
    if ipaddress.ip_address(host.partition("%")[0]).is_unspecified:
        log.warning(
            "listening on every interface over plain http: put a TLS proxy in "
            "front, or give --host 127.0.0.1"
        )


def _listening(app: ipm.Application, host: str, port: int) -> WSGIServer:
    """The server, or why it cannot listen, naming the address and port."""
    try:
        return make_http_server(app, host, port)
    except OSError as error:
        address = _authority(host, port)
        if error.errno == errno.EADDRINUSE:
            raise CannotRun(f"{address} is already in use (give --port)") from None
        why = error.strerror or str(error)
        raise CannotRun(f"cannot listen on {address}: {why}") from None


def _link_key(path: str | None) -> bytes | None:
    """The --link-key-file key: the file's bytes, a final line end dropped
    (a key written by a shell or an editor ends with one)."""
    if path is None:
        return None

    try:
        key = Path(path).read_bytes()
    except OSError as error:
        raise CannotRun(f"--link-key-file: {os_error_text(error)}") from None
    key = key.removesuffix(b"\n").removesuffix(b"\r")
    if len(key) < 16:
        raise CannotRun(
            f"--link-key-file {shown(path)} holds {len(key)} bytes; a link key "
            "needs 16 or more (head -c 32 /dev/urandom > FILE makes one)"
        )

    return key


def serve(args: argparse.Namespace) -> int:
    types = read_event_types(args.event_types)
    link_key = _link_key(args.link_key_file)
    app = ipm.open_sqlite(
        args.db,
        allow_networks=args.allow_network or (),
        link_key=link_key,
        synchronous=args.synchronous,
        bulk=BulkOptions(
            idle_seconds=_seconds_of(args.idle_import_days),
            file_seconds=_seconds_of(args.export_file_days),
        ),
    )
    try:
        register_event_types(app, types, args.event_types)
        server = _listening(app, args.host, args.port)
    except BaseException:
        app.close()
        raise

    signals: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        signals.append(signum)
        if len(signals) > 1:
            # Asked again: do not wait for the requests under way.
            log.info("stopping now on signal %s", signum)
            cast(_ThreadingServer, server).hurry()
            return
        log.info("stopping on signal %s", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    _warn_if_read_only(args.db)
    host, port = server.server_address[:2]
    where = _authority(str(host), port)
    log.info("ipm listening on http://%s (database %s)", where, shown(args.db))
    _warn_if_everywhere(str(host))
    stopping = threading.Event()
    expirer = threading.Thread(
        target=_expire_idle_jobs,
        args=(app, stopping),
        name="ipm-expire-idle",
        daemon=True,
    )
    expirer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stopping.set()
        server.server_close()  # new connections are refused at once
        # Requests under way may have committed already: their clients get
        # the answer (a webhook's secret is shown only in it) rather than a
        # dropped connection, within a bound a supervisor's grace allows.
        waited_from = time.monotonic()
        unanswered = cast(_ThreadingServer, server).drain(DRAIN_SECONDS)
        if unanswered:
            log.warning(
                "stopping with %d request(s) still under way after %.1f s",
                unanswered,
                time.monotonic() - waited_from,
            )
        expirer.join(timeout=5)  # its job in hand: see Bulk.expire_idle
        app.close()

    return 0


def _seconds_of(days: float | None) -> float | None:
    return None if days is None else days * 86_400.0


def _warn_if_read_only(db: str) -> None:
    """Say at start when writes will fail (503 storage_unavailable): reads
    still work, so nothing else would tell before the first write."""
    db = anchored(db)  # "db/" is the file db, as SQLite opens it
    # The folder the system reaches (link/.. followed), as SQLite does.
    folder = os.path.dirname(os.path.realpath(db))
    if not os.access(db, os.W_OK) or not os.access(folder, os.W_OK):
        log.warning(
            "%s or its folder is read-only here: reads are served, every "
            "write is refused with 503 storage_unavailable",
            db,
        )


EXPIRE_EVERY = 3600.0
"""Seconds between two sweeps for idle jobs (see Bulk.expire_idle)."""


def _expire_idle_jobs(app: ipm.Application, stopping: threading.Event) -> None:
    """Sweep for idle jobs and export files past their time now,
    then hourly, until the server stops; from the second sweep on, for
    unfinished blob writes too (opening ipm swept them already)."""
    first = True
    while not stopping.is_set():
        try:
            app.bulk.expire_idle(stop=stopping)
            app.bulk.discard_old_files(stop=stopping)
            # A writer killed just before ipm opened may have been a zombie
            # then, or a file of a reused process id still too fresh.
            if not first and isinstance(app.bulk.blobs, FileBlobStore):
                app.bulk.blobs.sweep()
        except Exception as error:
            # A busy or closing database: the next sweep tries again.
            log.warning("could not sweep old bulk jobs: %s", error)
        first = False
        stopping.wait(EXPIRE_EVERY)
