"""The stdlib HTTP transport, against servers the tests start on 127.0.0.1.

No test reaches beyond loopback: names are resolved by fake resolvers, and
a guard fixture fails any test in which the transport would look a name up
or connect by name on its own.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import errno
import http.server
import math
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.adapters import transport as transport_module
from ipm.adapters.transport import (
    HttpTransport,
    OutboundRequest,
    TransportResult,
    parse_retry_after,
)
from ipm.domain.netguard import NetworkPolicy
from ipm.ports import Transport
from ipm.testing import LocalReceiver, TransportContract
from ipm.testing.transport import issue_certificate, write_pem

Handler = http.server.BaseHTTPRequestHandler
Respond = Callable[[Handler], None]

LOCAL = NetworkPolicy.from_strings(["127.0.0.1/32"], require_https=False)
NOTHING_ALLOWED = NetworkPolicy(require_https=False)
TEST_NAME = "hooks.example.test"


# --- local servers --------------------------------------------------------


@attrs.define
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


class _CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    accepts = 0

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse lookup of the bound address.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        request = super().get_request()
        self.accepts += 1
        return request

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up early is what several tests are about


class LocalServer:
    """An HTTP/1.1 server in a thread that records what reaches it."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[Hit] = []
        self.release = threading.Event()
        recorder = self

        class RecordingHandler(Handler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer waits ~40 ms

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.hits.append(Hit(self.path, headers, body))
                respond(self)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _CountingServer(("127.0.0.1", 0), RecordingHandler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def accepts(self) -> int:
        return self.httpd.accepts

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if isinstance(self.httpd.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    servers: list[LocalServer] = []

    def start(respond: Respond, tls: ssl.SSLContext | None = None) -> LocalServer:
        server = LocalServer(respond, tls)
        servers.append(server)
        return server

    yield start

    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_lookups_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test in which anything resolves or dials a name by itself."""
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", b"127.0.0.1"):
            raise AssertionError(f"unexpected name lookup: {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


def reply(
    status: int = 200, body: bytes = b"ok", headers: tuple[tuple[str, str], ...] = ()
) -> Respond:
    def respond(handler: Handler) -> None:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def resolver_for(answers: dict[str, str]) -> Callable[..., list[Any]]:
    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        sockaddr = (answers[host], port)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", sockaddr)]

    return resolve


def post(
    transport: HttpTransport,
    url: str,
    body: bytes = b'{"type":"ping"}',
    timeout: float = 2.0,
    headers: dict[str, str] | None = None,
) -> TransportResult:
    request = OutboundRequest(
        url=url,
        headers=headers or {"Content-Type": "application/json"},
        body=body,
        timeout=timeout,
    )
    return transport.send(request)


@pytest.fixture
def transport() -> Iterator[HttpTransport]:
    with HttpTransport(policy=LOCAL, resolver=resolver_for({})) as transport:
        yield transport


class TestHttpTransport(TransportContract):
    """The generic contract; the tests below pin what is HttpTransport's own."""

    @pytest.fixture
    def transport_for(self) -> Callable[[NetworkPolicy], Transport]:
        return lambda policy: HttpTransport(policy=policy, resolver=resolver_for({}))


# --- answers --------------------------------------------------------------


def test_a_2xx_answer_is_returned_with_a_truncated_excerpt(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A 200 comes back with lower-case headers and the body's first KiB."""
    server = serve(reply(200, b"x" * 3000, (("X-Receiver", "test"),)))

    result = post(transport, server.url(), body=b"\x00exact bytes\xff")

    assert result.status == 200
    assert result.error is None
    assert result.headers["x-receiver"] == "test"
    assert result.body_excerpt == b"x" * 1024
    assert result.duration_ms > 0
    assert server.hits[0].body == b"\x00exact bytes\xff"
    assert server.hits[0].path == "/hook"


# --- failures become results ----------------------------------------------


def test_a_closed_port_is_an_error_not_an_exception(transport: HttpTransport) -> None:
    """Connecting to a closed local port gives an error result."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = post(transport, f"http://127.0.0.1:{port}/hook")

    assert result.status is None
    assert result.error == "connection refused while connecting"


def test_a_slow_server_times_out_within_the_timeout(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A server that sleeps past the timeout gives a timeout error in time."""
    server: LocalServer

    def sleep(handler: Handler) -> None:
        server.release.wait(5)

    server = serve(sleep)
    started = time.monotonic()

    result = post(transport, server.url(), timeout=0.3)

    elapsed = time.monotonic() - started
    assert result.status is None
    assert result.error == "timeout after 0.3 s while waiting for the response"
    assert 250 <= result.duration_ms < 600
    assert elapsed < 0.6


def test_a_dripping_server_cannot_stretch_the_total_timeout(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Headers trickling in faster than any socket timeout still stop at 0.4 s."""
    server: LocalServer

    def drip(handler: Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(90):
            if server.release.wait(0.03):
                return
            handler.wfile.write(b"X-Drip: 1\r\n")

    server = serve(drip)
    started = time.monotonic()

    result = post(transport, server.url(), timeout=0.4)

    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("timeout after 0.4 s")
    assert time.monotonic() - started < 0.8


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ipm-send-watch"]


def test_one_watch_thread_keeps_every_send_s_deadline(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Many sends, concurrent ones too, share one watch thread, which a
    stalled send still trips; after close the thread ends.

    A timer thread per send once cost more than the rest of a send to a
    local receiver (about a third of the dispatcher's time).
    """
    before = set(_watch_threads())
    fast = serve(reply(200))
    server: LocalServer

    def sleep(handler: Handler) -> None:
        server.release.wait(5)

    server = serve(sleep)
    slow: list[TransportResult] = []
    stalled = threading.Thread(
        target=lambda: slow.append(post(transport, server.url(), timeout=0.5))
    )
    stalled.start()
    statuses = [post(transport, fast.url()).status for _ in range(20)]
    during = set(_watch_threads()) - before
    stalled.join()
    transport.close()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in during) and time.monotonic() < deadline:
        time.sleep(0.01)

    assert statuses == [200] * 20
    assert len(during) == 1
    assert slow[0].error == "timeout after 0.5 s while waiting for the response"
    assert not any(t.is_alive() for t in during)


@pytest.mark.parametrize(
    ("sent", "delivered"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", True),
    ],
)
def test_an_answer_cut_before_its_end_is_an_error(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    sent: bytes,
    delivered: bool,
) -> None:
    """A body shorter than its length (or an unfinished chunk) is no 200."""

    def cut(handler: Handler) -> None:
        handler.wfile.write(sent)
        handler.close_connection = True

    server = serve(cut)

    result = post(transport, server.url())

    assert (result.status == 200) is delivered
    if not delivered:
        assert result.error is not None
        assert result.error.startswith("malformed response (IncompleteRead)")


def write_raw(sent: bytes, *, close: bool) -> Respond:
    """Answer with exactly these bytes, then close the connection or keep it."""

    def respond(handler: Handler) -> None:
        handler.wfile.write(sent)
        handler.close_connection = close

    return respond


@pytest.mark.parametrize(
    "sent",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
        b"HTTP/1.1 500 Internal\r\nX-A: b",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>",
    ],
)
def test_an_answer_cut_in_its_header_block_is_an_error(
    serve: Callable[..., LocalServer], transport: HttpTransport, sent: bytes
) -> None:
    """Regression: a head cut by the end of the stream once counted as its status."""
    server = serve(write_raw(sent, close=True))

    result = post(transport, server.url())

    assert result.status is None
    assert result.error == (
        "malformed response (cut off in its header block)"
        " while waiting for the response"
    )


def test_a_header_block_ended_by_its_empty_line_is_an_answer(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """The empty line ends the head; a body with no length then ends at the close."""
    server = serve(write_raw(b"HTTP/1.1 200 OK\r\n\r\n", close=True))

    result = post(transport, server.url())

    assert (result.status, result.body_excerpt) == (200, b"")


@pytest.mark.parametrize("host", ["localhost", "hooks.localhost"])
def test_a_localhost_name_goes_to_the_allowed_loopback_unresolved(
    serve: Callable[..., LocalServer], host: str
) -> None:
    """localhost means the loopback address the policy allows; no lookup is made."""

    def resolver(*args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("a localhost name must not be resolved")

    server = serve(reply(204, b""))
    with HttpTransport(policy=LOCAL, resolver=resolver) as transport:
        result = post(transport, server.url(host=host))

    assert (result.status, result.error) == (204, None)
    assert len(server.hits) == 1


def test_a_bad_header_value_is_an_error_not_an_exception(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A header value with a line break is refused as an error result."""
    server = serve(reply(200))

    result = post(transport, server.url(), headers={"X-Bad": "a\r\nX-Injected: 1"})

    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("invalid request")
    assert "Injected" not in result.error
    assert server.hits == []


def test_a_machine_out_of_descriptors_is_a_local_failure(
    transport: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket could not even be made: the result says the request never
    left (the dispatcher then spends no attempt); a refusal by the endpoint
    is not local."""

    def no_descriptors(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = post(transport, f"http://127.0.0.1:{closed_port}/hook")
    monkeypatch.setattr("ipm.adapters.transport._connect_tcp", no_descriptors)

    result = post(transport, f"http://127.0.0.1:{closed_port}/hook")

    assert result.local and result.status is None
    assert result.error == "network error (Too many open files) while connecting"
    assert not refused.local


def test_a_lookup_this_machine_cannot_make_is_a_local_failure() -> None:
    """No descriptor for the resolver's socket: not "does not resolve", which
    blamed the endpoint and spent its attempts."""

    def no_descriptors(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    with HttpTransport(policy=LOCAL, resolver=no_descriptors) as transport:
        result = post(transport, f"http://{TEST_NAME}:8080/hook")

    assert result.local
    assert (
        result.error == "network error (Too many open files) while resolving the host"
    )


def test_a_shortage_on_one_address_of_several_is_still_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a name with two addresses (localhost: 127.0.0.1 and ::1)
    whose first could not even be tried (EMFILE) and whose second refused
    was blamed on the endpoint, the last error alone being told."""
    both = NetworkPolicy.from_strings(["127.0.0.1/32", "::1/128"], require_https=False)

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        ]

    def connect(address: Any, port: int, timeout: float) -> socket.socket:
        if address.version == 4:
            raise OSError(errno.EMFILE, "Too many open files")
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr("ipm.adapters.transport._connect_tcp", connect)
    with HttpTransport(policy=both, resolver=resolve) as transport:
        result = post(transport, f"http://{TEST_NAME}:8080/hook")

    assert result.local
    assert result.error == "network error (Too many open files) while connecting"


def test_a_local_failure_gives_back_the_idle_connections(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept-alive connections hold descriptors: while they are short, the
    endpoints that happen to hold them would starve all the others."""
    server = serve(reply(204, b""))
    assert post(transport, server.url()).status == 204
    assert transport._idle  # one kept alive

    def no_descriptors(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("ipm.adapters.transport._connect_tcp", no_descriptors)
    other = serve(reply(204, b""))
    result = post(transport, other.url())

    assert result.local
    assert transport._idle == {}


def test_no_route_to_an_address_family_is_the_endpoint_s_failure(
    transport: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EADDRNOTAVAIL is also an IPv6 endpoint seen from a host without IPv6:
    lasting, so a failed attempt, not a send released to try forever."""

    def no_route(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr("ipm.adapters.transport._connect_tcp", no_route)

    result = post(transport, "http://127.0.0.1:9/hook")

    assert result.error is not None and not result.local


def test_an_unknown_name_is_a_dns_error(transport: HttpTransport) -> None:
    """A name the resolver does not know gives a dns error."""
    result = post(transport, "http://nowhere.example.test:9/hook")

    assert result.error == "dns: nowhere.example.test does not resolve"


def test_a_stalled_resolver_cannot_hold_a_send_past_its_timeout() -> None:
    """A host name lookup that hangs ends the send at its total timeout."""
    release = threading.Event()

    def stalled(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure")

    with HttpTransport(policy=LOCAL, resolver=stalled) as transport:
        started = time.monotonic()
        result = post(transport, "http://slow.example.test:9/hook", timeout=0.3)
        elapsed = time.monotonic() - started
    release.set()

    assert result.error == "timeout after 0.3 s while resolving the host"
    assert elapsed < 2


def test_a_result_has_a_status_or_an_error_never_both() -> None:
    """TransportResult refuses both or neither of status and error."""
    with pytest.raises(ValueError):
        TransportResult(200, {}, b"", 1.0, "boom")
    with pytest.raises(ValueError):
        TransportResult(None, {}, b"", 1.0, None)


# --- the guard at send time -----------------------------------------------


def test_the_guard_refuses_loopback_unless_allowed(
    serve: Callable[..., LocalServer],
) -> None:
    """Without an allow entry, 127.0.0.1 is refused and never contacted."""
    server = serve(reply(200))

    with HttpTransport(policy=NOTHING_ALLOWED) as transport:
        result = post(transport, server.url())

    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("refused: 127.0.0.1 is refused (loopback address)")
    assert "--allow-network" in result.error
    assert server.accepts == 0


def test_a_name_rebound_to_loopback_is_refused_at_send_time(
    serve: Callable[..., LocalServer],
) -> None:
    """A name that now resolves to 127.0.0.1 is refused when sending."""
    server = serve(reply(200))
    resolver = resolver_for({TEST_NAME: "127.0.0.1"})

    with HttpTransport(policy=NOTHING_ALLOWED, resolver=resolver) as transport:
        result = post(transport, server.url(host=TEST_NAME))

    assert (
        result.error == f"refused: {TEST_NAME} resolves to a refused address (loopback)"
    )
    assert server.accepts == 0


def test_an_allowed_name_connects_to_the_checked_address_with_its_host_header(
    serve: Callable[..., LocalServer],
) -> None:
    """An allowed name reaches the resolved address and keeps its Host header."""
    server = serve(reply(204, b""))
    resolver = resolver_for({TEST_NAME: "127.0.0.1"})

    with HttpTransport(policy=LOCAL, resolver=resolver) as transport:
        result = post(
            transport,
            server.url(host=TEST_NAME),
            headers={"Host": "evil.example", "Content-Length": "1", "X-Id": "msg_1"},
        )

    assert result.status == 204
    hit = server.hits[0]
    assert hit.headers["host"] == f"{TEST_NAME}:{server.port}"
    assert hit.headers["content-length"] == str(len(hit.body))
    assert hit.headers["x-id"] == "msg_1"
    assert hit.headers["user-agent"].startswith("ipm-webhooks/")


# --- connections ----------------------------------------------------------


def test_keep_alive_reuses_one_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Several sends to one endpoint share one TCP connection."""
    server = serve(reply(200))

    statuses = [post(transport, server.url()).status for _ in range(5)]

    assert statuses == [200] * 5
    assert server.accepts == 1


def test_a_chunked_answer_keeps_the_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A short chunked body is read to its end and the connection reused."""

    def chunked(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    server = serve(chunked)

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert (first.body_excerpt, second.body_excerpt) == (b"abcde", b"abcde")
    assert server.accepts == 1


def test_a_long_answer_costs_the_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A body over max_response_bytes is cut short and its connection dropped."""
    server = serve(reply(200, b"y" * 100_000))

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert first.body_excerpt == b"y" * 1024
    assert second.status == 200
    assert server.accepts == 2


def test_a_connection_the_server_closed_is_not_reused(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A kept-alive connection the server has since closed is replaced."""

    def reply_then_hang_up(handler: Handler) -> None:
        reply(200)(handler)
        handler.close_connection = True

    server = serve(reply_then_hang_up)

    first = post(transport, server.url())
    time.sleep(0.05)
    second = post(transport, server.url())

    assert (first.status, second.status) == (200, 200)
    assert server.accepts == 2


def test_concurrent_sends_each_get_a_whole_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Threads sharing a transport all succeed, with at most one socket each."""
    server = serve(reply(200))
    results: list[TransportResult] = []

    def worker(n: int) -> None:
        for i in range(5):
            body = f"{n}-{i}".encode()
            results.append(post(transport, server.url(), body=body))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.status for r in results] == [200] * 30
    assert sorted(hit.body for hit in server.hits) == sorted(
        f"{n}-{i}".encode() for n in range(6) for i in range(5)
    )
    assert server.accepts <= 6


def test_a_kept_alive_connection_closed_after_the_request_is_a_failure(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Regression: a receiver that read the request and closed without an
    answer got it twice in one send (resent on a fresh connection) with one
    attempt recorded. The receiver may have acted on it: the send fails,
    and the dispatcher's retry is a recorded attempt."""

    def once_per_connection(handler: Handler) -> None:
        answered = getattr(handler, "answered", False)
        if answered:
            handler.close_connection = True  # read the request, say nothing
        else:
            reply(200)(handler)
            handler.answered = True  # type: ignore[attr-defined]

    server = serve(once_per_connection)

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert first.status == 200
    assert second.status is None
    assert (second.error or "").startswith("connection closed without a response")
    assert (len(server.hits), server.accepts) == (2, 1)


def test_a_kept_alive_connection_reset_as_it_is_written_goes_again_once(
    transport: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that closed the idle connection refuses the request as it is
    written (a reset: it read none of it); that one is sent again on a fresh
    connection, and reaches the receiver once."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b'"ping"}'):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def run() -> None:
        first, _ = listener.accept()
        requests.append(read_request(first))
        first.sendall(answer)
        # Then closed at once with a reset, as a server dropping an idle
        # connection under load may.
        time.sleep(0.05)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        second, _ = listener.accept()
        requests.append(read_request(second))
        second.sendall(answer)
        second.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/hook"
    try:
        assert post(transport, url).status == 200
        time.sleep(0.2)  # the reset has arrived
        # As if the reset came just after the idle check.
        monkeypatch.setattr(
            transport_module._PinnedConnection, "looks_alive", lambda self: True
        )
        again = post(transport, url)
    finally:
        thread.join(timeout=5)
        listener.close()

    assert again.status == 200, again.error
    assert len(requests) == 2


def test_connections_are_pooled_per_endpoint_url(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Regression (cross-tenant): the pool was per host, so an endpoint that
    wrote a late, unrequested 410 after its 200 had that 410 read as the
    answer to another webhook's delivery on the same host, which was then
    disabled. Each endpoint URL now has its own connections."""

    def late_gone(handler: Handler) -> None:
        if handler.path == "/late":
            reply(200)(handler)
            handler.wfile.flush()
            time.sleep(0.1)
            handler.wfile.write(b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n")
        else:
            reply(200)(handler)

    server = serve(late_gone)

    late = post(transport, server.url("/late"))
    other = post(transport, server.url("/ok"))
    again = post(transport, server.url("/ok"))

    assert (late.status, other.status, again.status) == (200, 200, 200)
    assert server.accepts == 2


def test_a_connection_idle_too_long_is_not_reused(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Servers close idle connections after a few seconds; one idle longer
    than MAX_IDLE_SECONDS is replaced rather than raced."""
    server = serve(reply(200))
    monkeypatch.setattr(transport_module, "MAX_IDLE_SECONDS", 0.05)

    first = post(transport, server.url())
    time.sleep(0.1)
    second = post(transport, server.url())

    assert (first.status, second.status) == (200, 200)
    assert server.accepts == 2


def test_the_pool_keeps_a_bounded_number_of_idle_connections(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pooled per URL, many endpoints could hold a descriptor each for ever:
    the pool keeps MAX_IDLE_TOTAL at most, and frees those idle too long."""
    server = serve(reply(200))
    monkeypatch.setattr(transport_module, "MAX_IDLE_TOTAL", 3)

    for n in range(6):
        assert post(transport, server.url(f"/hook{n}")).status == 200

    assert sum(len(idle) for idle in transport._idle.values()) == 3
    monkeypatch.setattr(transport_module, "MAX_IDLE_SECONDS", 0.0)
    time.sleep(0.01)
    assert post(transport, server.url("/later")).status == 200
    assert sum(len(idle) for idle in transport._idle.values()) == 1


def test_close_drops_idle_connections(
    serve: Callable[..., LocalServer],
) -> None:
    """After close(), no connection is reused or kept; sending still works."""
    server = serve(reply(200))
    transport = HttpTransport(policy=LOCAL)
    post(transport, server.url())

    transport.close()
    statuses = [post(transport, server.url()).status for _ in range(2)]

    assert statuses == [200, 200]
    assert server.accepts == 3


# --- interim answers -----------------------------------------------------

FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 199 Whatever\r\n\r\n" * 8,
    ],
)
def test_interim_answers_are_skipped_for_the_final_one(
    serve: Callable[..., LocalServer], transport: HttpTransport, interim: bytes
) -> None:
    """Regression: a 102 or 103 was taken as the final status (RFC 9110, 15.2)."""
    server = serve(write_raw(interim + FINAL, close=False))

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert (first.status, first.body_excerpt) == (200, b"ok")
    assert first.headers["x-final"] == "yes"
    assert "link" not in first.headers
    # Nothing of the first answer was left for the second send to misread.
    assert (second.status, second.body_excerpt) == (200, b"ok")
    assert server.accepts == 1


def test_more_interim_answers_than_the_bound_are_an_error(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A ninth interim answer is refused rather than read on."""
    server = serve(write_raw(b"HTTP/1.1 103 Early\r\n\r\n" * 9 + FINAL, close=False))

    result = post(transport, server.url())

    assert result.status is None
    assert result.error == (
        "malformed response (more than 8 interim answers)"
        " while waiting for the response"
    )


@pytest.mark.parametrize("status", [100, 103])
def test_endless_interim_answers_end_the_send_early(
    serve: Callable[..., LocalServer], transport: HttpTransport, status: int
) -> None:
    """A receiver that only ever sends 1xx answers cannot hold the send."""
    server: LocalServer

    def flood(handler: Handler) -> None:
        while not server.release.wait(0.005):
            handler.wfile.write(b"HTTP/1.1 %d Wait\r\n\r\n" % status)

    server = serve(flood)
    started = time.monotonic()

    result = post(transport, server.url(), timeout=2.0)

    assert result.error == (
        "malformed response (more than 8 interim answers)"
        " while waiting for the response"
    )
    assert time.monotonic() - started < 1.0


def test_a_connection_closed_after_an_interim_answer_is_an_error(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """The request was read; the close is an error, and it is not sent again."""
    answers = iter([reply(200), write_raw(b"HTTP/1.1 103 E\r\n\r\n", close=True)])
    server = serve(lambda handler: next(answers)(handler))

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert first.status == 200
    assert second.error == (
        "malformed response (closed before its final answer)"
        " while waiting for the response"
    )
    assert len(server.hits) == 2


def test_an_unasked_switch_of_protocols_is_a_status_and_costs_the_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """A 101 is returned as the status it is; its connection is never reused."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    answers = iter([write_raw(switch, close=False), reply(200)])
    server = serve(lambda handler: next(answers)(handler))

    first = post(transport, server.url())
    second = post(transport, server.url())

    assert (first.status, second.status) == (101, 200)
    assert server.accepts == 2


@pytest.mark.parametrize(
    ("status", "declared"),
    [
        (b"204 No Content", b"Content-Length: 4"),
        (b"304 Not Modified", b"Content-Length: 4"),
        (b"204 No Content", b"Transfer-Encoding: chunked"),
    ],
)
def test_a_bodiless_answer_that_declares_a_body_costs_the_connection(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    status: bytes,
    declared: bytes,
) -> None:
    """Regression: a 304 declaring Content-Length: 4 and sending those bytes
    late left them on the pooled connection, where the next send (another
    org's webhook on the same host) read them as its answer and failed; a
    chunked 204 was read for chunks until the send timed out."""

    def stray_body(handler: Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 " + status + b"\r\n" + declared + b"\r\n\r\n")
        handler.wfile.flush()
        time.sleep(0.2)
        handler.wfile.write(b"abcd")
        handler.close_connection = False

    answers = iter([stray_body, reply(200)])
    server = serve(lambda handler: next(answers)(handler))

    first = post(transport, server.url())
    second = post(transport, server.url("/other"))

    assert (first.status, second.status) == (int(status[:3]), 200)
    assert first.error is second.error is None
    assert server.accepts == 2


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(b"200 OK", None), (b"204 No Content", 204)],
)
def test_an_answer_with_two_lengths_costs_the_connection(
    serve: Callable[..., LocalServer],
    transport: HttpTransport,
    status: bytes,
    outcome: int | None,
) -> None:
    """Regression: of two Content-Length values the first was taken, so the
    bytes the second counted (here a forged 410) became the next answer on
    the pooled connection, another webhook's. A 200 so framed is a
    malformed answer; a 204, which has no body whatever it says, is a 204."""
    forged = b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n"
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n"
    head += b"Content-Length: " + str(len(forged)).encode() + b"\r\n\r\n"
    answers = iter([write_raw(head + forged, close=False), reply(200)])
    server = serve(lambda handler: next(answers)(handler))

    first = post(transport, server.url())
    second = post(transport, server.url("/other"))

    assert first.status == outcome
    if outcome is None:
        assert first.error is not None
        assert "more than one Content-Length" in first.error
    assert (second.status, second.error) == (200, None)
    assert server.accepts == 2


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2, 2",
        b"Content-Length: 2, , 2,",
        b"Content-Length: 2\r\nContent-Length: 02",
        b"Transfer-Encoding: chunked ",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked;x=1",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2",
        b"Transfer-Encoding: chunked\r\nContent-Length: abc",
        b"Transfer-Encoding: identity",  # read to the close
        b'Transfer-Encoding: foo;p="a,chunked;"',  # a quoted comma: foo, to the close
    ],
)
def test_framing_http_client_reads_laxly_is_read_as_the_rfc_says(
    serve: Callable[..., LocalServer], transport: HttpTransport, framing: bytes
) -> None:
    """Regression: a 200 framed "Content-Length: 2, 2", or chunked with a
    space or after another coding, was read as unframed: the send waited
    for the server to close until it timed out, and a delivered 2xx was
    counted as unanswered and sent again. None of these is an error."""
    to_the_close = b"identity" in framing or b"foo" in framing
    chunked = b"chunked" in framing and not to_the_close
    body = b"2\r\nok\r\n0\r\n\r\n" if chunked else b"ok"
    sent = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + body
    server = serve(write_raw(sent, close=to_the_close))

    started = time.monotonic()
    answer = post(transport, server.url(), timeout=2.0)

    assert (answer.status, answer.error, answer.body_excerpt) == (200, None, b"ok")
    assert time.monotonic() - started < 1.5


def test_an_http_1_0_answer_with_a_transfer_coding_costs_the_connection(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """RFC 9112 (6.1): such framing is faulty, and the connection is closed
    after the answer, whatever its Connection header says."""
    sent = (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    answers = iter([write_raw(sent, close=False), reply(200)])
    server = serve(lambda handler: next(answers)(handler))

    first = post(transport, server.url())
    second = post(transport, server.url("/other"))

    assert (first.status, first.body_excerpt, second.status) == (200, b"ok", 200)
    assert server.accepts == 2


# --- TLS ------------------------------------------------------------------


@attrs.frozen
class Certificates:
    server: ssl.SSLContext
    client: ssl.SSLContext
    names_seen: list[str | None]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a server certificate for the test name."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = issue_certificate(TEST_NAME + " test CA", None, is_ca=True)
    key, cert = issue_certificate(TEST_NAME, (ca_key, ca_cert), is_ca=False)

    chain = folder / "server.pem"
    write_pem(chain, key, cert)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    names_seen: list[str | None] = []
    server.sni_callback = lambda _sock, name, _ctx: names_seen.append(name)

    client = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return Certificates(server, client, names_seen)


def test_https_uses_sni_and_verifies_the_name_on_the_checked_address(
    serve: Callable[..., LocalServer], certificates: Certificates
) -> None:
    """TLS to a pinned 127.0.0.1 still sends SNI and checks the host name."""
    server = serve(reply(200, b"secure"), tls=certificates.server)
    resolver = resolver_for({TEST_NAME: "127.0.0.1"})
    policy = NetworkPolicy.from_strings(["127.0.0.1"])

    with HttpTransport(
        policy=policy, resolver=resolver, ssl_context=certificates.client
    ) as transport:
        first = post(transport, f"https://{TEST_NAME}:{server.port}/hook")
        second = post(transport, f"https://{TEST_NAME}:{server.port}/hook")

    assert (first.status, first.body_excerpt) == (200, b"secure")
    assert second.status == 200
    assert server.accepts == 1
    assert TEST_NAME in certificates.names_seen
    assert server.hits[0].headers["host"] == f"{TEST_NAME}:{server.port}"


def test_https_refuses_a_certificate_for_another_name(
    serve: Callable[..., LocalServer], certificates: Certificates
) -> None:
    """A certificate that does not name the host is a tls error."""
    server = serve(reply(200), tls=certificates.server)
    resolver = resolver_for({"other.example.test": "127.0.0.1"})
    policy = NetworkPolicy.from_strings(["127.0.0.1"])

    with HttpTransport(
        policy=policy, resolver=resolver, ssl_context=certificates.client
    ) as transport:
        result = post(transport, f"https://other.example.test:{server.port}/hook")

    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("tls: certificate refused")
    assert server.hits == []


# --- Retry-After ----------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 2026 12:01:30 GMT", 90.0),
        ("Thursday, 01-Jan-26 12:01:30 GMT", 90.0),
        # RFC 850's two-digit year is this century's unless over 50 years
        # ahead (RFC 9110): "-70" is 2070 (a long wait), "-80" 1980 (past).
        # Regression: the mail parser read 69-76 as 1969-1976.
        ("Sunday, 01-Jan-70 12:00:00 GMT", 1388534400.0),
        ("Tuesday, 01-Jan-80 12:00:00 GMT", 0.0),
        ("Thu Jan  1 12:01:30 2026", 90.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("\u0661\u0662", None),
        # Longer than any wait worth counting: the dispatcher's bound
        # applies (it was None, so the schedule's 5 s came instead).
        ("9" * 100, math.inf),
        # Only HTTP's three date forms: another zone, or no day name, is
        # no HTTP-date (a mail-date parser read them).
        ("Thu, 01 Jan 2026 12:01:30 +0100", None),
        ("01 Jan 2026 12:01:30 GMT", None),
        ("Thu, 1 Jan 2026 12:01:30 GMT", None),
        ("Thu Jan  1 12:01:30 2026", 90.0),
        ("7, 7", 7.0),
        ("7,7 , 7", 7.0),
        ("Thu, 01 Jan 2026 12:01:30 GMT, Thu, 01 Jan 2026 12:01:30 GMT", 90.0),
        ("Thursday, 01-Jan-26 12:01:30 GMT, Thursday, 01-Jan-26 12:01:30 GMT", 90.0),
        ("7, 8", None),
        ("7, 07", None),
        ("7, ", None),
        ("Thu, 01 Jan 2026 12:01:30 GMT, Fri, 02 Jan 2026 12:01:30 GMT", None),
        ("Thu, 01 Jan 2026 12:01:30 GMT, 5", None),
        (", ".join(["7"] * 100), None),
    ],
)
def test_retry_after_reads_seconds_and_dates(
    value: str | None, expected: float | None
) -> None:
    """Retry-After gives seconds from digits or an HTTP-date, None for garbage."""
    assert parse_retry_after(value, NOW) == expected


@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**9).map(str),
        st.datetimes(
            min_value=dt.datetime(1990, 1, 1),
            max_value=dt.datetime(2100, 1, 1),
            timezones=st.just(UTC),
        ).map(lambda when: email.utils.format_datetime(when, usegmt=True)),
    ),
    st.integers(min_value=2, max_value=4),
)
def test_a_retry_after_sent_repeatedly_reads_as_sent_once(
    value: str, times: int
) -> None:
    """A header given several times with one value arrives joined; it still reads."""
    assert parse_retry_after(", ".join([value] * times), NOW) == parse_retry_after(
        value, NOW
    )


def test_a_retry_after_header_sent_twice_is_used(
    serve: Callable[..., LocalServer], transport: HttpTransport
) -> None:
    """Regression: Retry-After: 7 given twice arrived as "7, 7" and was ignored."""
    server = serve(reply(503, b"", (("Retry-After", "7"), ("Retry-After", "7"))))

    result = post(transport, server.url())

    assert result.headers["retry-after"] == "7, 7"
    assert parse_retry_after(result.headers["retry-after"], NOW) == 7


def test_retry_after_needs_an_aware_now() -> None:
    """A naive 'now' is a programming error, not a guess."""
    with pytest.raises(ValueError, match="aware"):
        parse_retry_after("5", datetime(2026, 1, 1))


@given(st.integers(min_value=0, max_value=10**12))
def test_retry_after_seconds_round_trip(seconds: int) -> None:
    """Any delay-seconds value reads back as itself."""
    assert parse_retry_after(str(seconds), NOW) == seconds


@given(
    st.datetimes(
        min_value=dt.datetime(1990, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_retry_after_dates_round_trip(when: datetime) -> None:
    """An HTTP-date reads back as the seconds from now to it, never below 0."""
    when = when.replace(microsecond=0)

    value = email.utils.format_datetime(when, usegmt=True)

    assert parse_retry_after(value, NOW) == max(0.0, (when - NOW).total_seconds())


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_retry_after_is_total(value: str) -> None:
    """Any header text gives None or a non-negative number, never an exception."""
    seconds = parse_retry_after(value, NOW)

    assert seconds is None or seconds >= 0


def test_plain_http_never_leaves_the_allowed_networks() -> None:
    """Regression: http to a *.localhost name once followed DNS to a public address."""
    asked: list[str] = []

    def public(host: str, port: int, *args: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    policy = NetworkPolicy.from_strings(["127.0.0.1/32"], require_https=False)
    transport = HttpTransport(policy=policy, resolver=public)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    request = OutboundRequest(
        url=f"http://evil.localhost:{closed}/h", headers={}, body=b"{}", timeout=2
    )

    result = transport.send(request)

    assert asked == []  # a localhost name is loopback, never looked up
    assert result.error == "connection refused while connecting"


class _FollowsRedirects:
    """A transport that follows a redirect once: what the contract forbids."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self._inner = HttpTransport(policy=policy, resolver=resolver_for({}))

    def send(self, request: OutboundRequest) -> TransportResult:
        result = self._inner.send(request)
        if result.status is not None and 300 <= result.status < 400:
            return self._inner.send(
                attrs.evolve(request, url=result.headers["location"])
            )
        return result


class _RaisesOnFailure:
    """A transport that lets a connection error out as an exception."""

    def send(self, request: OutboundRequest) -> TransportResult:
        raise ConnectionRefusedError("refused")


def test_the_contract_catches_a_transport_that_follows_redirects() -> None:
    receivers: list[LocalReceiver] = []

    def start(reply: Any = None) -> LocalReceiver:
        receivers.append(LocalReceiver(reply))
        return receivers[-1]

    try:
        with pytest.raises(AssertionError):
            TransportContract().test_a_redirect_is_the_answer_and_is_not_followed(
                _FollowsRedirects(LOCAL), start, 302
            )
    finally:
        for receiver in receivers:
            receiver.close()


def test_the_contract_catches_a_transport_that_raises() -> None:
    with pytest.raises(ConnectionRefusedError):
        TransportContract().test_a_refused_connection_is_a_result(_RaisesOnFailure())
