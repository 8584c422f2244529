"""Stand-ins for the network in tests: a scripted transport, a real receiver.

:class:`ScriptedTransport` records every request and answers from a
script, so a host can test its webhook set-up without a receiver;
:class:`LocalReceiver` is a real HTTP endpoint on 127.0.0.1. Neither needs
pytest, so an example or a script can use them as they stand.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import attrs

from ipm.ports import OutboundRequest, TransportResult

Answer = TransportResult | Callable[[OutboundRequest], TransportResult]


def answer(
    status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> TransportResult:
    """A receiver's answer, for :class:`ScriptedTransport`."""
    return TransportResult(status, dict(headers or {}), body, 1.0)


def network_error(
    message: str = "connection refused while connecting",
) -> TransportResult:
    return TransportResult.failed(message, 1.0)


class ScriptedTransport:
    """A fake :class:`~ipm.adapters.transport.Transport` with a script.

    ``script`` maps an endpoint URL to the answers it gives, in order (the
    last one repeats); a URL not in it answers ``default``. Every request
    is kept in :attr:`sent`. Thread-safe, like the real transport.
    """

    def __init__(
        self,
        script: Mapping[str, Iterable[Answer]] | None = None,
        default: Answer | None = None,
    ) -> None:
        self._script = {url: list(answers) for url, answers in (script or {}).items()}
        self._default = default or answer(200)
        self._lock = threading.Lock()
        self.sent: list[OutboundRequest] = []

    def send(self, request: OutboundRequest) -> TransportResult:
        with self._lock:
            self.sent.append(request)
            answers = self._script.get(request.url)
            if answers:
                reply = answers.pop(0) if len(answers) > 1 else answers[0]
            else:
                reply = self._default

        return reply(request) if callable(reply) else reply

    def ids(self) -> list[str]:
        """The ``webhook-id`` of every request, in sending order."""
        return [request.headers["webhook-id"] for request in self.sent]


@attrs.frozen
class Received:
    """One request a :class:`LocalReceiver` got: header names lower-case."""

    path: str
    headers: dict[str, str]
    body: bytes = attrs.field(repr=False)


Reply = int | tuple[int, Mapping[str, str], bytes]


class _Server(http.server.ThreadingHTTPServer):
    # Several dispatchers with 8 workers each connect at once; the default
    # backlog of 5 refused connections on a busy machine (failed sends that
    # a test then counted as lost).
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout under test) is expected; anything
        # else is reported as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalReceiver:
    """A webhook endpoint on 127.0.0.1 for tests (HTTP/1.1, keep-alive).

    ``reply`` decides each answer from the request (a status, or status,
    headers and body); by default every request gets 204. Every request is
    kept in :attr:`received`, whatever the answer; :attr:`connections`
    counts the connections the requests came on (keep-alive at work).
    """

    def __init__(self, reply: Callable[[Received], Reply] | None = None) -> None:
        self._reply = reply or (lambda received: 204)
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.connections = 0
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)

        raise TimeoutError(f"{len(self.received)} of {count} requests arrived")

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.02)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _answer(self, received: Received) -> tuple[int, Mapping[str, str], bytes]:
        with self._lock:
            self.received.append(received)
        reply = self._reply(received)

        return (reply, {}, b"") if isinstance(reply, int) else reply

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, extra, content = receiver._answer(
                    Received(self.path, headers, body)
                )

                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
