"""The transport contract: what a host's webhook sender must do for ipm.

A :class:`~ipm.ports.Transport` sends one signed webhook request and says
what came back. The dispatcher's guarantees rest on it: the receiver gets
the frozen body byte for byte, every answer (a redirect included) is a
status and never a hop elsewhere, a network problem is a result and never
an exception, the request's timeout bounds the whole send, and the
network policy is applied to the address actually dialled.

Subclass :class:`TransportContract` and provide a ``transport_for``
fixture: a callable that builds your transport under a
:class:`~ipm.domain.netguard.NetworkPolicy`::

    class TestProxyTransport(TransportContract):
        @pytest.fixture
        def transport_for(self):
            return lambda policy: ProxyTransport(policy=policy, ...)

Every request goes to servers the suite starts on 127.0.0.1; ipm runs it
against its own :class:`~ipm.adapters.transport.HttpTransport`.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ipm.domain.netguard import NetworkPolicy
from ipm.ports import OutboundRequest, Transport, TransportResult
from ipm.testing.network import LocalReceiver, Received, Reply

__all__ = ["TransportContract"]

LOOPBACK = NetworkPolicy.from_strings(["127.0.0.1/32"], require_https=False)
NOTHING_ALLOWED = NetworkPolicy(require_https=False)

MakeTransport = Callable[[NetworkPolicy], Transport]
MAX_EXCERPT = 64 * 1024


def _request(
    url: str, body: bytes = b'{"type":"ping"}', timeout: float = 5.0
) -> OutboundRequest:
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_contract",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,c2lnbmF0dXJl",
    }
    return OutboundRequest(url=url, headers=headers, body=body, timeout=timeout)


Step = bytes | float
"""What a raw server does in turn: send bytes, or wait that many seconds."""


class _RawServer:
    """One listening socket on 127.0.0.1 that reads each request whole (its
    head and a Content-Length body), then plays ``script`` and closes."""

    def __init__(
        self, script: Sequence[Step], tls: ssl.SSLContext | None = None
    ) -> None:
        self._script = list(script)
        self._tls = tls
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self._socket.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(5.0)
                try:
                    if self._tls is not None:
                        connection = self._tls.wrap_socket(connection, server_side=True)
                    if _read_request(connection):
                        self.requests += 1
                    for step in self._script:
                        if isinstance(step, bytes):
                            connection.sendall(step)
                        elif self._stop.wait(step):
                            return
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


def _read_request(connection: socket.socket) -> bool:
    """Read one request's head and Content-Length body; whether one came."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        body += chunk

    return True


class TransportContract:
    """Behaviour every transport must show."""

    @pytest.fixture
    def transport_for(self) -> MakeTransport:
        raise NotImplementedError("provide a transport_for fixture")

    @pytest.fixture
    def transport(self, transport_for: MakeTransport) -> Iterator[Transport]:
        transport = transport_for(LOOPBACK)
        yield transport
        close = getattr(transport, "close", None)
        if callable(close):
            close()

    @pytest.fixture
    def receiver_for(self) -> Iterator[Callable[..., LocalReceiver]]:
        receivers: list[LocalReceiver] = []

        def start(reply: Callable[[Received], Reply] | None = None) -> LocalReceiver:
            receiver = LocalReceiver(reply)
            receivers.append(receiver)
            return receiver

        yield start
        for receiver in receivers:
            receiver.close()

    @pytest.fixture
    def raw_server_for(self) -> Iterator[Callable[..., _RawServer]]:
        servers: list[_RawServer] = []

        def start(
            script: Sequence[Step], tls: ssl.SSLContext | None = None
        ) -> _RawServer:
            server = _RawServer(script, tls)
            servers.append(server)
            return server

        yield start
        for server in servers:
            server.close()

    # --- what reaches the receiver -----------------------------------------

    def test_the_body_and_headers_arrive_exactly(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """The body is the frozen delivery: any change breaks its signature."""
        receiver = receiver_for()
        body = b'{"a":"\xc3\xa9"}\x00 \r\n\xff trailing'

        result = transport.send(_request(receiver.url("/hook?tenant=a"), body))

        assert (result.status, result.error) == (204, None)
        (received,) = receiver.received
        assert received.body == body
        assert received.path == "/hook?tenant=a"
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            assert received.headers[name] == _request("x").headers[name]
        assert received.headers["content-type"] == "application/json"
        assert int(received.headers["content-length"]) == len(body)

    def test_concurrent_sends_each_arrive_whole(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """The dispatcher sends from several threads through one transport."""
        receiver = receiver_for()
        results: list[TransportResult] = []
        lock = threading.Lock()

        def send_some(worker: int) -> None:
            for n in range(5):
                body = f'{{"worker":{worker},"n":{n}}}'.encode() * 50
                result = transport.send(_request(receiver.url(), body))
                with lock:
                    results.append(result)

        threads = [threading.Thread(target=send_some, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert [r.status for r in results] == [204] * 30
        expected = sorted(
            f'{{"worker":{w},"n":{n}}}'.encode() * 50
            for w in range(6)
            for n in range(5)
        )
        assert sorted(r.body for r in receiver.received) == expected

    # --- answers -------------------------------------------------------------

    @pytest.mark.parametrize("status", [200, 201, 299, 400, 404, 410, 429, 500, 503])
    def test_every_status_is_an_answer(
        self,
        transport: Transport,
        receiver_for: Callable[..., LocalReceiver],
        status: int,
    ) -> None:
        headers = {"Retry-After": "120", "X-Receiver": "contract"}
        receiver = receiver_for(lambda received: (status, headers, b"why"))

        result = transport.send(_request(receiver.url()))

        assert (result.status, result.error) == (status, None)
        assert result.headers["retry-after"] == "120"
        assert result.headers["x-receiver"] == "contract"
        assert result.body_excerpt == b"why"

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    def test_a_redirect_is_the_answer_and_is_not_followed(
        self,
        transport: Transport,
        receiver_for: Callable[..., LocalReceiver],
        status: int,
    ) -> None:
        """Following it would send a signed body where nobody subscribed (and
        past the network policy)."""
        target = receiver_for()
        redirecting = receiver_for(
            lambda received: (status, {"Location": target.url()}, b"")
        )

        result = transport.send(_request(redirecting.url()))

        assert (result.status, result.error) == (status, None)
        assert result.headers["location"] == target.url()
        time.sleep(0.1)
        assert target.received == []

    def test_the_excerpt_is_the_start_of_the_body_and_bounded(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """Attempts keep the excerpt: a receiver must not fill the database."""
        answer = bytes(range(256)) * 1024  # 256 KiB
        receiver = receiver_for(lambda received: (500, {}, answer))

        result = transport.send(_request(receiver.url()))

        assert result.status == 500
        assert 0 < len(result.body_excerpt) <= MAX_EXCERPT
        assert answer.startswith(result.body_excerpt)

    def test_a_long_2xx_answer_is_a_success_without_its_whole_body(
        self,
        transport: Transport,
        raw_server_for: Callable[..., _RawServer],
    ) -> None:
        """The head and the excerpt decide: a transport that waits for a huge
        or endless body times out, and the delivery the receiver took goes
        out again."""
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n"
        server = raw_server_for([head, b"y" * (2 * MAX_EXCERPT), 10.0])

        started = time.monotonic()
        result = transport.send(_request(server.url(), timeout=2.0))

        assert time.monotonic() - started < 3.0
        assert (result.status, result.error) == (200, None)
        assert result.body_excerpt == b"y" * len(result.body_excerpt)

    # --- failures are results --------------------------------------------------

    def test_a_refused_connection_is_a_result(self, transport: Transport) -> None:
        result = transport.send(_request(_closed_port_url()))

        _assert_failed(result)

    def test_an_error_never_holds_the_query(self, transport: Transport) -> None:
        """Errors are kept in attempts; a query string may carry a token."""
        result = transport.send(_request(_closed_port_url("?token=s3cr3t-t0ken")))

        _assert_failed(result)
        assert "s3cr3t" not in (result.error or "")

    def test_a_slow_receiver_times_out_within_the_timeout(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """The timeout bounds the whole send (leases are sized from it), and
        a send that timed out is not sent again by the transport."""
        release = threading.Event()

        def stall(received: Received) -> Reply:
            release.wait(10)
            return 204

        receiver = receiver_for(stall)
        started = time.monotonic()
        try:
            result = transport.send(_request(receiver.url(), timeout=0.5))
            took = time.monotonic() - started
        finally:
            release.set()

        assert took < 0.5 + SLACK
        _assert_failed(result)
        time.sleep(0.5)
        assert len(receiver.received) == 1

    @pytest.mark.parametrize(
        "script",
        [
            [b"HTTP/1.1 200 OK\r\n"] + [0.1, b"X-Drip: 1\r\n"] * 60,
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 10.0],
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok", 10.0],
        ],
        ids=["dripped-head", "stalled-body", "stalled-chunks"],
    )
    def test_an_answer_that_trickles_is_cut_at_the_timeout(
        self,
        transport: Transport,
        raw_server_for: Callable[..., _RawServer],
        script: list[Step],
    ) -> None:
        """Socket timeouts alone never trip on a server sending a little now
        and then: the send must still end by its timeout."""
        server = raw_server_for(script)

        started = time.monotonic()
        result = transport.send(_request(server.url(), timeout=0.5))

        assert time.monotonic() - started < 0.5 + SLACK
        _assert_failed(result)

    def test_an_error_status_is_not_sent_again_by_the_transport(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """Retries are the dispatcher's, on its schedule, each recorded."""
        receiver = receiver_for(lambda received: 500)

        result = transport.send(_request(receiver.url()))
        time.sleep(0.3)

        assert result.status == 500
        assert len(receiver.received) == 1

    @pytest.mark.parametrize(
        "script",
        [
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short"],
            [b"HTTP/1.1 200 OK\r\nContent-Le"],
            [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"],
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
            [b"not http at all\r\n\r\n"],
            [],
        ],
        ids=[
            "body-cut",
            "head-cut",
            "head-cut-after-a-line",
            "chunk-cut",
            "garbage",
            "closed",
        ],
    )
    def test_a_broken_answer_is_a_failed_result(
        self,
        transport: Transport,
        raw_server_for: Callable[..., _RawServer],
        script: list[Step],
    ) -> None:
        """Not a success: the receiver may not have taken the delivery.
        (Python's http.client ends a head where the connection closes; a
        transport built on it must check the head was ended by its blank
        line.)"""
        server = raw_server_for(script)

        result = transport.send(_request(server.url()))

        _assert_failed(result)
        assert server.requests == 1

    def test_an_https_url_is_never_sent_in_clear(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """A plain-HTTP server on an https URL: the handshake fails, and the
        signed body never crosses the network unencrypted."""
        receiver = receiver_for()

        result = transport.send(_request(receiver.url().replace("http:", "https:")))

        _assert_failed(result)
        time.sleep(0.1)
        assert receiver.received == []

    def test_a_certificate_nobody_vouches_for_is_refused(
        self, transport: Transport, raw_server_for: Callable[..., _RawServer]
    ) -> None:
        """Anyone on the path could present one: the signed body, and the
        endpoint's answer, must not be trusted to it."""
        key, cert = issue_certificate("localhost", None, is_ca=False)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as folder:
            pem = Path(folder) / "server.pem"
            write_pem(pem, key, cert)
            tls.load_cert_chain(pem)
        server = raw_server_for([b"HTTP/1.1 204 No Content\r\n\r\n"], tls)

        result = transport.send(_request(server.url(scheme="https")))

        _assert_failed(result)
        assert server.requests == 0

    # --- the network policy ----------------------------------------------------

    @pytest.mark.parametrize(
        "host",
        [
            "127.0.0.1",
            "localhost",
            "127.1",
            "2130706433",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
        ],
    )
    def test_an_address_outside_the_policy_is_never_sent_to(
        self,
        transport_for: MakeTransport,
        receiver_for: Callable[..., LocalReceiver],
        host: str,
    ) -> None:
        """The policy is checked again on the address dialled, in whatever
        notation the URL names it (a name may also resolve elsewhere by the
        time a delivery is sent: resolve, then check every address)."""
        receiver = receiver_for()
        url = receiver.url().replace("127.0.0.1", host)
        transport = transport_for(NOTHING_ALLOWED)
        try:
            result = transport.send(_request(url))
        finally:
            close = getattr(transport, "close", None)
            if callable(close):
                close()

        _assert_failed(result)
        time.sleep(0.1)
        assert receiver.received == []


def issue_certificate(
    name: str, issuer: tuple[Any, x509.Certificate] | None, *, is_ca: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate for ``name`` (a DNS name), valid for a day:
    a CA's when ``is_ca``, signed by ``issuer`` or by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = key, subject
    if issuer is not None:
        signer_key, signer_name = issuer[0], issuer[1].subject
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            True,
        )
    else:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    signer_key.public_key()
                ),
                False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False
            )
        )
    return key, builder.sign(signer_key, hashes.SHA256())


def write_pem(
    path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    """The key and certificate in one PEM file, as SSLContext loads them."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )


SLACK = 1.0
"""Seconds a send may take past its timeout (threads, a loaded machine)."""


def _closed_port_url(query: str = "") -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    return f"http://127.0.0.1:{port}/hook{query}"


def _assert_failed(result: Any) -> None:
    assert isinstance(result, TransportResult)
    assert result.status is None
    assert isinstance(result.error, str) and result.error
