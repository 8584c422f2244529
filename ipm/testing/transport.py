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
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

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


class _RawServer:
    """One listening socket on 127.0.0.1 that answers each connection with
    fixed bytes, read or not, then closes it."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(1.0)
                try:
                    connection.recv(65536)
                    connection.sendall(self._answer)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


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
    def raw_server_for(self) -> Iterator[Callable[[bytes], _RawServer]]:
        servers: list[_RawServer] = []

        def start(answer: bytes) -> _RawServer:
            server = _RawServer(answer)
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

    # --- failures are results --------------------------------------------------

    def test_a_refused_connection_is_a_result(self, transport: Transport) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        result = transport.send(_request(f"http://127.0.0.1:{port}/hook"))

        _assert_failed(result)

    def test_a_slow_receiver_times_out_within_the_timeout(
        self, transport: Transport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """The timeout bounds the whole send: leases are sized from it."""
        release = threading.Event()

        def stall(received: Received) -> Reply:
            release.wait(10)
            return 204

        receiver = receiver_for(stall)
        started = time.monotonic()
        try:
            result = transport.send(_request(receiver.url(), timeout=0.5))
        finally:
            release.set()

        assert time.monotonic() - started < 2.0
        _assert_failed(result)

    @pytest.mark.parametrize(
        "answer",
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"not http at all\r\n\r\n",
            b"",
        ],
        ids=["body-cut", "head-cut", "garbage", "closed"],
    )
    def test_a_broken_answer_is_a_failed_result(
        self,
        transport: Transport,
        raw_server_for: Callable[[bytes], _RawServer],
        answer: bytes,
    ) -> None:
        """Not a success: the receiver may not have taken the delivery."""
        server = raw_server_for(answer)

        result = transport.send(_request(server.url()))

        _assert_failed(result)

    # --- the network policy ----------------------------------------------------

    def test_an_address_outside_the_policy_is_never_dialled(
        self, transport_for: MakeTransport, receiver_for: Callable[..., LocalReceiver]
    ) -> None:
        """The policy is checked again on the address dialled: a name may
        resolve elsewhere by the time a delivery is sent."""
        receiver = receiver_for()
        transport = transport_for(NOTHING_ALLOWED)
        try:
            result = transport.send(_request(receiver.url()))
        finally:
            close = getattr(transport, "close", None)
            if callable(close):
                close()

        _assert_failed(result)
        time.sleep(0.1)
        assert receiver.received == []


def _assert_failed(result: Any) -> None:
    assert isinstance(result, TransportResult)
    assert result.status is None
    assert isinstance(result.error, str) and result.error
