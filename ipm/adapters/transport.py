"""The default webhook ``Transport``: HTTP/1.1 with the standard library.

The port and its message types (``Transport``, ``OutboundRequest``,
``TransportResult``) live in :mod:`ipm.ports`; they are re-exported here.

Theory of operation. :meth:`HttpTransport.send` POSTs one delivery and
always returns a :class:`TransportResult`; a network problem is a result
with ``error`` set, never an exception.

- The URL is checked again with the SSRF guard on every send (the policy
  may have changed since the subscription was stored).
- A new connection resolves the host, checks *every* address in the
  answer, and connects to a checked address itself; the name is never
  looked up again behind the guard's back. The request still carries the
  original ``Host`` header, and TLS still sends SNI and verifies the
  certificate against the host name.
- Idle connections are kept per endpoint URL and reused. A pooled
  connection is used by one thread at a time; the pool's lock only guards
  taking and returning. A connection that failed, was cut short, that
  the server said it would close, or that stayed idle longer than
  ``MAX_IDLE_SECONDS`` is dropped, never reused. Pooling per URL, not per
  host, keeps one endpoint's stray bytes (a late, unrequested answer) from
  being read as the answer to a webhook at another URL, perhaps another
  org's (webhooks at the very same URL share the receiver, and its faults).
- A request is sent once per call. Only when a reused connection refuses
  the request as it is written (reset: the server had closed it, so
  nothing was read) does it go once more on a fresh connection; a
  connection that closes after the request went out is a failure, since
  the receiver may have acted on it: the dispatcher's retry is recorded.
- ``request.timeout`` bounds the whole exchange: connect, TLS, send, and
  reading the answer. Socket timeouts alone cannot do that (a server that
  drips one byte a second never trips them), so the socket is shut down
  when the time is up. One watch thread per transport keeps every send's
  deadline (a timer thread per send cost more than the rest of a send to
  a local receiver).
- Redirects are never followed: a 3xx is returned as a status like any
  other. At most ``max_response_bytes`` of a body are read; a longer body
  costs the connection rather than the time to drain it.
- An answer counts only once its header block ended with its empty line:
  a connection that closes inside the status line or the headers gives an
  error, never the status it had begun to send. Interim answers (1xx but
  101) are read and skipped, at most ``_MAX_INTERIM`` of them; a 101 is
  returned as the status it is and costs the connection.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import importlib.metadata
import itertools
import logging
import re
import select
import socket
import ssl
import threading
import time
from types import TracebackType
from typing import Any, Self

import attrs

from ipm.domain.netguard import (
    SHORT_HERE,
    IPAddress,
    NetworkPolicy,
    ParsedUrl,
    Resolver,
    UnresolvedHost,
    UnsafeUrl,
    check_url,
    resolve_and_check,
)
from ipm.domain.retry import parse_retry_after
from ipm.ports import OutboundRequest, Transport, TransportResult

logger = logging.getLogger(__name__)

MAX_IDLE_PER_ENDPOINT = 8
"""Idle connections kept per endpoint by default: the dispatcher's default
number of workers, so a batch to one endpoint reuses every connection."""

MAX_IDLE_TOTAL = 256
"""Idle connections kept in all, whatever the number of endpoints: each
holds a file descriptor."""

MAX_IDLE_SECONDS = 1.5
"""How long a connection may wait idle and still be reused. Servers close
idle connections after a few seconds (2 s and 5 s are common defaults); a
request written just as one does is lost with no answer, a failed attempt.
Reusing only fresher ones leaves that race to the rare server that closes
sooner."""

_MAX_STALLED = 16

# Interim (1xx) answers skipped before the final one; a receiver that sends
# more is refused rather than read for ever.
_MAX_INTERIM = 8
_RESOLVERS = threading.BoundedSemaphore(_MAX_STALLED)

# Request headers the transport owns: framing and routing are not the
# caller's to set, or a delivery could smuggle a second request.
_OWNED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection"}
)


def _default_user_agent() -> str:
    try:
        version = importlib.metadata.version("ipm")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"

    return f"ipm-webhooks/{version}"


class HttpTransport:
    """The :class:`Transport` ipm uses unless the host plugs in its own.

    ``ssl_context`` defaults to the system's trust store with host name
    checks; tests pass a context that trusts their own certificate.
    """

    def __init__(
        self,
        *,
        policy: NetworkPolicy,
        resolver: Resolver = socket.getaddrinfo,
        connect_timeout: float = 5.0,
        max_response_bytes: int = 4096,
        excerpt_bytes: int = 1024,
        user_agent: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
    ) -> None:
        if type(max_idle_per_endpoint) is not int or max_idle_per_endpoint < 0:
            raise ValueError("max_idle_per_endpoint must be an integer >= 0")
        self._max_idle = max_idle_per_endpoint
        self._policy = policy
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._max_response_bytes = max_response_bytes
        self._excerpt_bytes = min(excerpt_bytes, max_response_bytes)
        self._user_agent = user_agent or _default_user_agent()
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._idle: dict[_Key, list[_PinnedConnection]] = {}
        self._idle_count = 0
        self._swept = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._watch = _Watch()

    def send(self, request: OutboundRequest) -> TransportResult:
        started = time.monotonic()
        progress = _Progress(started + request.timeout)

        try:
            result = self._send(request, progress)
        except (OSError, http.client.HTTPException, UnsafeUrl, ValueError) as exc:
            result = TransportResult.failed(
                _describe(exc, progress, request.timeout),
                _ms_since(started),
                local=_short_here(exc, progress),
            )
        else:
            result = attrs.evolve(result, duration_ms=_ms_since(started))
        if result.local:
            # Descriptors are short: the idle kept-alive connections hold
            # some, and keeping them would starve every other endpoint.
            self._drop_idle()

        logger.debug(
            "webhook POST to %s: %s in %.0f ms",
            progress.origin,
            result.status or result.error,
            result.duration_ms,
        )
        return result

    def close(self) -> None:
        """Close every idle connection; connections in use close when done."""
        with self._lock:
            self._closed = True
        self._watch.stop()
        self._drop_idle()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
            self._idle_count = 0
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, request: OutboundRequest, progress: _Progress) -> TransportResult:
        parsed = check_url(request.url, self._policy)
        progress.origin = parsed.origin
        key = (parsed.scheme, parsed.host, parsed.port, parsed.target)

        pooled = self._checkout(key)
        if pooled is not None:
            try:
                return self._attempt(pooled, key, parsed, request, progress)
            except _STALE as exc:
                # The server had closed the idle connection: it refused the
                # request as it was written, so it read none of it. Once the
                # request is out, a close may come after the receiver acted
                # on it: that is a failure, retried (and recorded) by the
                # dispatcher, never sent again unseen.
                if (
                    progress.timed_out
                    or progress.phase != "sending the request"
                    or isinstance(exc, http.client.RemoteDisconnected)
                ):
                    raise
                logger.debug("kept-alive connection to %s was stale", parsed.origin)

        progress.phase = "resolving the host"
        addresses = self._resolve_in_time(parsed, progress)
        if parsed.scheme == "http" and not all(map(self._policy.allows, addresses)):
            # Plain http may only stay inside networks the host trusts; a
            # name (even a *.localhost one) can resolve anywhere.
            raise UnsafeUrl("plain http is only sent to an allowed network")
        fresh = _PinnedConnection(parsed, addresses, self._tls_for(parsed))
        return self._attempt(fresh, key, parsed, request, progress)

    def _resolve_in_time(
        self, parsed: ParsedUrl, progress: _Progress
    ) -> list[IPAddress]:
        """resolve_and_check, given no longer than the send's deadline.

        getaddrinfo takes no timeout, so it runs on a daemon thread that is
        left behind if the resolver stalls; at most _MAX_STALLED such
        threads exist at once, after which sends fail fast instead of
        piling up threads.
        """
        if not _RESOLVERS.acquire(blocking=False):
            raise TimeoutError("too many host name lookups are stalled")

        answer: list[list[IPAddress] | BaseException] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                answer.append(
                    resolve_and_check(
                        parsed.host, parsed.port, self._policy, self._resolver
                    )
                )
            except BaseException as exc:  # handed to the sender below
                # Without its traceback, which would tie this frame and the
                # list holding it into a cycle.
                answer.append(exc.with_traceback(None))
            finally:
                _RESOLVERS.release()
                done.set()

        threading.Thread(target=look_up, name="ipm-resolve", daemon=True).start()
        if not done.wait(progress.remaining()):
            raise TimeoutError("the host name lookup did not answer in time")

        result = answer[0]
        if isinstance(result, BaseException):
            raise result

        return result

    def _tls_for(self, parsed: ParsedUrl) -> ssl.SSLContext | None:
        return self._ssl_context if parsed.scheme == "https" else None

    def _attempt(
        self,
        connection: _PinnedConnection,
        key: _Key,
        parsed: ParsedUrl,
        request: OutboundRequest,
        progress: _Progress,
    ) -> TransportResult:
        with _Watchdog(connection, progress, self._watch):
            try:
                if connection.sock is None:
                    progress.phase = "connecting"
                    connection.open(progress.deadline, self._connect_timeout)
                result, reusable = self._exchange(connection, parsed, request, progress)
            except BaseException:
                connection.close()
                raise

        if progress.timed_out:
            # The shutdown looks like an end of stream to http.client, so
            # what it parsed may be cut short: never trust it.
            connection.close()
            raise TimeoutError("the total timeout ran out")

        if reusable:
            self._checkin(key, connection)
        else:
            connection.close()

        return result

    def _exchange(
        self,
        connection: _PinnedConnection,
        parsed: ParsedUrl,
        request: OutboundRequest,
        progress: _Progress,
    ) -> tuple[TransportResult, bool]:
        progress.phase = "sending the request"
        connection.set_timeout(progress.remaining())
        connection.request(
            "POST", parsed.target, body=request.body, headers=self._headers(request)
        )

        progress.phase = "waiting for the response"
        response = connection.getresponse()

        progress.phase = "reading the response"
        body = _read_up_to(response, self._max_response_bytes + 1)
        whole = len(body) <= self._max_response_bytes
        if whole and response.length:
            # The connection ended before the Content-Length did: a cut
            # answer, whatever its status line said.
            raise http.client.IncompleteRead(body, response.length)
        complete = whole and response.isclosed()
        if not complete:
            response.close()

        result = TransportResult(
            status=response.status,
            headers=response.getheaders(),
            body_excerpt=body[: self._excerpt_bytes],
            duration_ms=0.0,
        )
        reusable = complete and not response.will_close and connection.sock is not None
        return result, reusable

    def _headers(self, request: OutboundRequest) -> dict[str, str]:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _OWNED_HEADERS
        }
        if not any(name.lower() == "user-agent" for name in headers):
            headers["User-Agent"] = self._user_agent

        return headers

    def _checkout(self, key: _Key) -> _PinnedConnection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                connection = idle.pop()
                self._idle_count -= 1
                if not idle:
                    del self._idle[key]

            fresh = time.monotonic() - connection.idle_since <= MAX_IDLE_SECONDS
            if fresh and connection.looks_alive():
                return connection
            connection.close()

    def _checkin(self, key: _Key, connection: _PinnedConnection) -> None:
        now = time.monotonic()
        with self._lock:
            stale = (
                self._take_stale(now) if now - self._swept > MAX_IDLE_SECONDS else []
            )
            idle = self._idle.setdefault(key, [])
            kept = (
                not self._closed
                and len(idle) < self._max_idle
                and self._idle_count < MAX_IDLE_TOTAL
            )
            if kept:
                connection.idle_since = now
                idle.append(connection)
                self._idle_count += 1
            elif not idle:
                del self._idle[key]

        for old in stale if kept else [*stale, connection]:
            old.close()

    def _take_stale(self, now: float) -> list[_PinnedConnection]:
        """Take out every connection idle too long to be reused (under the
        lock), so endpoints no longer sent to do not hold the pool's room."""
        self._swept = now
        stale: list[_PinnedConnection] = []
        for key, idle in list(self._idle.items()):
            fresh = [c for c in idle if now - c.idle_since <= MAX_IDLE_SECONDS]
            stale += [c for c in idle if now - c.idle_since > MAX_IDLE_SECONDS]
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        self._idle_count -= len(stale)

        return stale


_Key = tuple[str, str, int, str]
"""Where a pooled connection may be reused: scheme, host, port and target."""


class _MalformedAnswer(http.client.HTTPException):
    """An answer ipm will not read as one; ``reason`` goes into the error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Head:
    """Reads an answer's head for http.client, noting how each block ended.

    http.client takes the end of the stream for the end of a header block;
    here only an empty line ends one. Counting the blocks bounds the
    interim answers, the 100s that http.client skips on its own included.
    """

    __slots__ = ("_fp", "blocks", "ended", "read_any")

    def __init__(self, fp: Any) -> None:
        self._fp = fp
        self.blocks = 0
        self.ended = False
        self.read_any = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        if line:
            self.read_any = True
        self.ended = line == b"\r\n" or line == b"\n"
        if self.ended:
            self.blocks += 1
            if self.blocks > _MAX_INTERIM + 1:
                raise _MalformedAnswer(f"more than {_MAX_INTERIM} interim answers")
        return line

    def close(self) -> None:
        self._fp.close()


class _Response(http.client.HTTPResponse):
    """An HTTPResponse that skips interim answers and refuses a cut head."""

    def begin(self) -> None:
        if self.headers is not None:
            return

        raw = self.fp
        head = _Head(raw)
        self.fp = head
        try:
            while True:
                try:
                    super().begin()
                except http.client.RemoteDisconnected:
                    if head.read_any:
                        # Closed after (part of) an interim answer: the
                        # request was read, so this is no stale connection.
                        raise _MalformedAnswer(
                            "closed before its final answer"
                        ) from None
                    raise
                if not head.ended:
                    raise _MalformedAnswer("cut off in its header block")
                if self.status >= 200 or self.status == 101:
                    break
                # An interim answer (RFC 9110, 15.2): the final one follows.
                self.headers = self.msg = None
        finally:
            if self.fp is head:
                self.fp = raw

        if self.status == 101:
            # The server switched protocols, unasked: whatever follows is
            # not HTTP, so the connection ends with this answer.
            self.will_close = True
        elif self.status in (204, 304):
            # No body may follow such an answer (RFC 9110), so none is read,
            # chunked or not (http.client would wait for chunks); a server
            # that declares one may send it all the same, and its bytes
            # would be read as the next answer on this connection, which
            # may be a send for another org's webhook.
            self.chunked, self.length = False, 0
            if _declares_a_body(self.headers):
                self.will_close = True
        else:
            self._frame()

    def _frame(self) -> None:
        """Read the body's framing as RFC 9112 (6.3) does, where http.client
        is laxer: it took the first of two Content-Length values, read
        ``2, 2`` or a coding list ending in chunked as no length at all and
        waited for the server to close (a 2xx lost to the timeout, sent
        again)."""
        codings = [
            coding.split(";")[0].strip().lower()  # its parameters aside
            for value in self.headers.get_all("transfer-encoding", [])
            # A quoted parameter value may hold commas (RFC 9110, 5.6.6).
            for coding in _QUOTED.sub('""', value).split(",")
            if coding.strip()
        ]
        if codings:
            # Transfer-Encoding overrides Content-Length; framed both ways,
            # or in an HTTP/1.0 answer (RFC 9112, 6.1), nothing after this
            # answer on the connection is sure.
            if self.headers.get_all("content-length") or self.version == 10:
                self.will_close = True
            if codings[-1] == "chunked":
                self.chunked, self.chunk_left, self.length = True, None, None
            else:
                # Not chunked at the end: the body runs to the close.
                self.chunked, self.length, self.will_close = False, None, True
            return
        lengths = _lengths(self.headers)
        if len(lengths) > 1:
            # Which one frames the body cannot be told: the rest of the
            # connection could be read as anything.
            raise _MalformedAnswer("more than one Content-Length")
        if lengths:
            self.length = lengths.pop()


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
"""A quoted-string (RFC 9110, 5.6.4), escapes included."""


def _lengths(headers: http.client.HTTPMessage) -> set[int]:
    """The Content-Length values, each list element apart (``2, 2`` is 2;
    empty elements are ignored, RFC 9110, 5.6.1)."""
    found = set()
    for value in headers.get_all("content-length", []):
        for part in value.split(","):
            text = part.strip()
            if not text:
                continue
            if not (text.isascii() and text.isdigit()):
                raise _MalformedAnswer("a Content-Length that is not a number")
            found.add(int(text))

    return found


def _declares_a_body(headers: http.client.HTTPMessage) -> bool:
    lengths = headers.get_all("content-length", [])
    return any(value.strip() != "0" for value in lengths) or (
        headers.get("transfer-encoding") is not None
    )


# A reused connection that fails like this was most likely closed by the
# server while idle, before it read our request.
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class _Progress:
    """How far one send got: for the deadline and for the error message."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.phase = "checking the URL"
        self.origin = "(unchecked URL)"
        self.timed_out = False

    def remaining(self) -> float:
        return _remaining(self.deadline)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the total timeout ran out")

    return left


class _Watchdog:
    """Shuts a connection's socket down when the send's total timeout is up.

    Shutting the socket down wakes a thread blocked in connect, recv or a
    TLS handshake, which then fails; ``progress.timed_out`` tells why.
    """

    def __init__(
        self, connection: _PinnedConnection, progress: _Progress, watch: _Watch
    ) -> None:
        self._connection = connection
        self._progress = progress
        self._watch = watch
        self._lock = threading.Lock()
        self.finished = False

    def __enter__(self) -> Self:
        self._watch.add(self._progress.deadline, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.finished = True

    def fire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.finished = True
            self._progress.timed_out = True
            self._connection.shut_down()


class _Watch:
    """One thread that fires the watchdogs whose deadline has passed.

    Deadlines wait in a heap; a send that ends marks its watchdog finished
    and leaves the entry to drop out when it reaches the top. The thread
    starts with a send; after :meth:`stop` it ends once no send it watches
    is under way (a send still running is bounded to the last).
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, _Watchdog]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, deadline: float, watchdog: _Watchdog) -> None:
        with self._wake:
            heapq.heappush(self._due, (deadline, next(self._order), watchdog))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ipm-send-watch", daemon=True
                )
                self._thread.start()
            elif self._due[0][2] is watchdog:
                self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                late = self._late()
                if not late:
                    if self._stopped:
                        self._due = [e for e in self._due if not e[2].finished]
                        heapq.heapify(self._due)
                        if not self._due:
                            self._thread = None
                            return
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(wait)
                    continue
            for watchdog in late:
                watchdog.fire()

    def _late(self) -> list[_Watchdog]:
        """Pop the finished entries and the late ones; the late, to fire."""
        late = []
        now = time.monotonic()
        while self._due and (self._due[0][2].finished or self._due[0][0] <= now):
            _, _, watchdog = heapq.heappop(self._due)
            if not watchdog.finished:
                late.append(watchdog)

        return late


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to checked addresses, never to the name again.

    ``auto_open`` is off: http.client would otherwise reconnect on its own,
    by name, past the guard. :meth:`open` is the only way to connect.
    """

    auto_open = 0
    response_class = _Response

    def __init__(
        self,
        parsed: ParsedUrl,
        addresses: list[IPAddress],
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(parsed.host, parsed.port)
        # http.client leaves the port out of the Host header when it equals
        # default_port, so it must match the scheme.
        self.default_port = 443 if tls is not None else 80
        self._addresses = addresses
        self._tls = tls
        self._raw: socket.socket | None = None
        self.idle_since = 0.0

    def open(self, deadline: float, connect_timeout: float) -> None:
        last_error: OSError = ConnectionError("no address to connect to")
        short: OSError | None = None
        for address in self._addresses:
            try:
                timeout = min(connect_timeout, _remaining(deadline))
                self._raw = _connect_tcp(address, self.port, timeout)
                break
            except OSError as exc:
                last_error = exc
                if exc.errno in SHORT_HERE:
                    short = short or exc
        else:
            # An address this machine could not even try (no descriptor)
            # says more than another's refusal: the endpoint is not to blame.
            raise short or last_error

        self.sock = self._raw
        if self._tls is not None:
            self.sock = self._tls.wrap_socket(
                self._raw, server_hostname=self.host, do_handshake_on_connect=False
            )
            self._raw = self.sock
            self.sock.settimeout(_remaining(deadline))
            self.sock.do_handshake()

    def set_timeout(self, seconds: float) -> None:
        if self.sock is not None:
            self.sock.settimeout(seconds)

    def looks_alive(self) -> bool:
        """An idle connection has nothing to read; if it has, it was closed."""
        if self.sock is None:
            return False

        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False

        return not readable

    def shut_down(self) -> None:
        """Wake any thread blocked on this connection (from another thread)."""
        # The raw socket survives http.client dropping self.sock while a
        # response still reads from it.
        if self._raw is None:
            return

        # socket.socket's own shutdown: SSLSocket's would also tear down its
        # TLS state under the feet of the reading thread.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._raw, socket.SHUT_RDWR)

    def close(self) -> None:
        super().close()
        if self._raw is not None:
            self._raw.close()


def _connect_tcp(address: IPAddress, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((str(address), port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise

    return sock


def _read_up_to(response: http.client.HTTPResponse, most: int) -> bytes:
    """The body, up to ``most`` bytes: one read may return only what arrived."""
    body = b""
    while len(body) < most:
        chunk = response.read(most - len(body))
        if not chunk:
            break
        body += chunk

    return body


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _describe(exc: BaseException, progress: _Progress, timeout: float) -> str:
    """A short error for the delivery record: no URL, header or body in it."""
    if progress.timed_out or isinstance(exc, TimeoutError):
        return f"timeout after {timeout:g} s while {progress.phase}"
    if isinstance(exc, UnresolvedHost):
        return f"dns: {exc.reason}"
    if isinstance(exc, UnsafeUrl):
        return f"refused: {exc.reason}"

    return f"{_describe_failure(exc)} while {progress.phase}"


def _short_here(exc: BaseException, progress: _Progress) -> bool:
    """Whether the send failed for want of something on this machine before
    a byte of the request went out (so the endpoint is not to blame)."""
    return (
        isinstance(exc, OSError)
        and exc.errno in SHORT_HERE
        and progress.phase in ("checking the URL", "resolving the host", "connecting")
    )


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: certificate refused ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, _MalformedAnswer):
        return f"malformed response ({exc.reason})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return f"malformed response ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or type(exc).__name__})"

    # ValueError from http.client: a header name or value it will not send.
    # Its message quotes the value, which may be a signature.
    return f"invalid request ({type(exc).__name__})"


__all__ = [
    "HttpTransport",
    "OutboundRequest",
    "Transport",
    "TransportResult",
    "parse_retry_after",
]
