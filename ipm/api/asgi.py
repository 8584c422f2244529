"""The ASGI adapter: the same ``handle()`` for asyncio servers.

``handle()`` is synchronous (SQLite is), so each request runs in a worker
thread and the event loop stays free. The threads are ipm's own, in two
bounded pools, never the loop's default pool that the host shares: one
answers ordinary requests and reads streamed answers, the other serves
uploads. An upload holds its thread for as long as its client sends, so
uploads can fill only their own pool (further ones wait for a thread)
while every other route keeps answering.

An upload (``PUT``) body crosses from the loop to its thread through a
pipe bounded in bytes (:class:`_Pipe`). Nothing is received before the handler reads the
first chunk: a refused upload (a bad link, a declared size over the
limit) is answered without a ``receive()``, so a server honouring
``Expect: 100-continue`` never asks for the body. The client must keep
pace: no gap longer than ``upload_stall_seconds``, and on average at
least ``upload_min_rate`` bytes a second, with ``upload_stall_seconds``
of grace. Only the time the handler waits for the client counts, not its
own work. A slower upload fails with a 400 and stores nothing. An
ordinary request's body (at most ``max_body_bytes``) keeps the same pace
and must be as long as its Content-Length says.

A streamed answer (a download, a report) is sent chunk by chunk while a
task waits for ``http.disconnect``: once the client has gone no further
chunk is read, and the chunk iterator is closed however the answer ends.

Mounted under a prefix, the route is the path below ``root_path``, and
``root_path`` and the scope's ``scheme`` go to ``handle()`` so the links
it hands out lead back through the mount.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ipm.api.wsgi import (
    UPLOAD_MIN_RATE,
    UPLOAD_STALL_SECONDS,
    Pace,
    StreamedBody,
    absolute_authority,
    body_too_large,
    content_length,
    cut_short,
    framed_otherwise,
    incomplete_body,
    not_empty,
    request_target,
    routed_path,
)
from ipm.domain.errors import InvalidRequest, IpmError, Problem, StorageClosed
from ipm.domain.settings import check_seconds, check_whole
from ipm.ports import close_chunks

if TYPE_CHECKING:
    from ipm.api.envelope import Response
    from ipm.app import Application

# As the ASGI spec and its servers' type stubs write them (asgiref,
# Starlette): a host's typed mount checks against these.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
P = ParamSpec("P")
T = TypeVar("T")


class _Aborted(bytes):
    """Taken from the pipe when the body will not end (the client went away)."""


_ABORTED = _Aborted()

REQUEST_THREADS = 16
UPLOAD_THREADS = 8


class AsgiApp:
    """ipm as an ASGI application; ``app.asgi_app`` makes one with the defaults.

    ``request_threads`` bounds the threads answering ordinary requests and
    ``upload_threads`` those receiving uploads; ``upload_stall_seconds``
    and ``upload_min_rate`` (bytes a second) are the pace an upload keeps.
    """

    def __init__(
        self,
        app: Application,
        *,
        request_threads: int = REQUEST_THREADS,
        upload_threads: int = UPLOAD_THREADS,
        upload_stall_seconds: float = UPLOAD_STALL_SECONDS,
        upload_min_rate: int = UPLOAD_MIN_RATE,
    ) -> None:
        check_whole("request_threads", request_threads, 1)
        check_whole("upload_threads", upload_threads, 1)
        stall = check_seconds("upload_stall_seconds", upload_stall_seconds)
        check_whole("upload_min_rate", upload_min_rate, 1)
        self.app = app
        self._pace = Pace(stall, upload_min_rate)
        # Threads start on first use, and idle ones end with this object.
        self._requests = ThreadPoolExecutor(
            request_threads, thread_name_prefix="ipm-asgi"
        )
        self._uploads = ThreadPoolExecutor(
            upload_threads, thread_name_prefix="ipm-asgi-upload"
        )
        self._closed = False
        self._active = 0  # requests under way: the last after close() ends threads
        self._lock = threading.Lock()

    def close(self) -> None:
        """End the adapter's threads once their work is done (``app.close()``).

        Requests after it are answered 503 without a thread; those under
        way finish (handle() answers them 503 too, the storage being
        closed), and the last of them ends the threads.
        """
        with self._lock:
            self._closed = True
            idle = self._active == 0
        if idle:
            self._end_threads()

    def _enter(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            last = self._closed and self._active == 0
        if last:
            self._end_threads()

    def _end_threads(self) -> None:
        self._requests.shutdown(wait=False)
        self._uploads.shutdown(wait=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            # Refused at the handshake: the server answers 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            # As the ASGI spec asks of a protocol an application lacks.
            raise ValueError(f"ipm serves no {scope['type']!r} connections")

        # Servers send bytes, as the spec says; text, or no headers at all,
        # is read as meant rather than failing the request.
        headers = [(_text(k), _text(v)) for k, v in scope.get("headers") or ()]
        root_path = scope.get("root_path") or ""
        raw_path = scope.get("raw_path")
        authority = absolute_authority(
            raw_path.decode("latin-1")
            if isinstance(raw_path, bytes)
            else str(scope.get("path", ""))
        )
        if authority is not None:
            # An absolute-form target's authority stands for the Host
            # header (RFC 9112, 3.2.2), as under ipm serve.
            headers = [(k, v) for k, v in headers if k.lower() != "host"]
            headers.append(("host", authority))
        path = routed_path(
            _below(scope.get("path", "/"), root_path),
            raw_path.decode("latin-1") if isinstance(raw_path, bytes) else None,
            root_path,
        )
        query = _text(scope.get("query_string") or b"")
        target = request_target(path, query)
        method = scope["method"]
        handle = functools.partial(
            self.app.handle,
            scheme=scope.get("scheme") or "http",
            prefix=root_path,
            stream=True,
        )

        entered = self._enter()
        try:
            length = _length(headers) if entered else None
            if not entered:
                # The application was closed: say so, as handle() would,
                # without a thread.
                closed = StorageClosed("the application was closed")
                response = self.app.api.refusal(method, path, closed)
            elif isinstance(length, IpmError):
                # An unknown route or method says so first, as handle() would.
                api = self.app.api
                error = api.route_error(method, request_target(path, "")) or length
                response = api.refusal(method, path, error)
            elif method == "PUT":
                upload = _Upload(receive, self._pace)
                chunks = upload.chunks()
                if length is None and _unframed(scope, headers):
                    chunks = not_empty(chunks)
                body = StreamedBody(chunks, length)
                try:
                    response = await _in_thread(
                        self._uploads, handle, method, target, headers, body
                    )
                finally:
                    upload.close()
                failure, upload.failure = upload.failure, None
                if failure is not None:
                    try:
                        raise failure
                    finally:
                        del failure  # no cycle through this frame
            elif (length or 0) > self.app.max_body_bytes:
                # Answered before receive(): a client that waits for 100
                # Continue is never invited to send what would be refused.
                api = self.app.api
                error = api.route_error(method, target) or body_too_large(
                    self.app.max_body_bytes
                )
                response = api.refusal(method, path, error)
            else:
                try:
                    whole = await _body(
                        receive, self.app.max_body_bytes + 1, length, self._pace
                    )
                except IpmError as error:
                    response = self.app.api.refusal(method, path, error)
                else:
                    if whole is None:
                        return  # the client left mid-body: no request to act on
                    response = await _in_thread(
                        self._requests, handle, method, target, headers, whole
                    )

            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(k.encode(), v.encode()) for k, v in response.headers],
                }
            )
            await self._send_body(response, receive, send)
        finally:
            if entered:
                self._leave()

    async def _send_body(
        self, response: Response, receive: Receive, send: Send
    ) -> None:
        body = response.body
        if not isinstance(body, StreamedBody):
            await send({"type": "http.response.body", "body": body})
            return

        reader = _Reader(body.chunks)
        gone = asyncio.Event()
        watch = asyncio.ensure_future(_watch_disconnect(receive, gone))
        try:
            while not gone.is_set():
                chunk = await _in_thread(self._requests, reader.read)
                if chunk is None:
                    await send({"type": "http.response.body", "body": b""})
                    return
                more = {"type": "http.response.body", "body": chunk, "more_body": True}
                await send(more)
        finally:
            watch.cancel()
            await _in_thread(self._requests, reader.close)


class _Reader:
    """A streamed answer's chunks, read and closed in pool threads.

    A task cancelled while its read runs leaves the read going on in its
    thread; the lock makes the close wait for it (a generator cannot be
    closed while it runs).
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._lock = threading.Lock()

    def read(self) -> bytes | None:
        with self._lock:
            return next(self._chunks, None)

    def close(self) -> None:
        with self._lock:
            close_chunks(self._chunks)


async def _in_thread(
    pool: Executor, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``func`` run in one of ``pool``'s threads, in this task's context."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    """Set ``gone`` when the client disconnects.

    The request body has been read (or its upload is over), so the next
    message is the disconnect; the rest of a body no handler read is
    skipped. A server that answers with anything else will never say, and
    is not watched further.
    """
    message = await receive()
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await receive()
    if message["type"] == "http.disconnect":
        gone.set()


def _below(path: str, root_path: str) -> str:
    """The path below the mount, which is what ipm routes on.

    The ASGI spec has ``path`` include ``root_path``; some servers pass it
    without, so the prefix is cut only when the path starts with it (at a
    segment boundary: ``/ipmx`` is not below ``/ipm``).
    """
    root = root_path.rstrip("/")
    if not root or not (path == root or path.startswith(root + "/")):
        return path

    return path[len(root) :] or "/"


class _Upload:
    """A ``PUT`` body on its way from the event loop to the handler's thread.

    The pump (a task on the loop) starts when the handler reads the first
    chunk and stops at :meth:`close`, once the handler has answered.
    """

    def __init__(self, receive: Receive, pace: Pace) -> None:
        self._receive = receive
        self._pace = pace
        self._loop = asyncio.get_running_loop()
        self._pipe = _Pipe(_PIPE_BYTES)
        self._pump: asyncio.Future[None] | None = None
        self._closed = False
        # What the server's receive() raised while the body was pumped.
        self.failure: BaseException | None = None

    def chunks(self) -> Iterator[bytes]:
        """The body's chunks, read in the handler's thread."""
        try:
            self._loop.call_soon_threadsafe(self._start)
        except RuntimeError:
            # The loop has closed: its server, and the client, are gone.
            raise incomplete_body(
                "the server stopped before the body was read"
            ) from None

        received, waited = 0, 0.0
        while True:
            allowed = self._pace.allowance(received, waited)
            began = time.monotonic()
            chunk = self._pipe.take(max(allowed, 0.0))
            if chunk is None:
                raise self._pace.refusal(received, waited, allowed)
            waited += time.monotonic() - began
            if chunk is _ABORTED:
                raise incomplete_body("the client went away before the body ended")
            if not chunk:
                return  # the body ended
            received += len(chunk)
            yield chunk

    def close(self) -> None:
        """Stop receiving; a handler still reading sees the body cut short."""
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()  # runs on this loop: it adds nothing more
        self._pipe.abort()

    def _start(self) -> None:
        if not self._closed:
            self._pump = self._loop.create_task(self._pumped())

    async def _pumped(self) -> None:
        try:
            await _pump(self._receive, self._pipe)
        except BaseException as error:
            if self._closed:
                raise  # cancelled by close(): the handler has answered
            # The server's receive() failed (a cancel of its own included):
            # the handler stops reading at once, not after waiting out the
            # pace for data that will not come, and the error is the
            # application's, as for a POST: raised by the request, not left
            # in this task (where nobody would retrieve it).
            self.failure = error
            self._pipe.abort()


class _Pipe:
    """A ``PUT`` body's bytes between the event loop, which adds each
    message's, and the handler's thread, which takes all there are.

    Bounded in bytes, not in messages: a body sent in tiny messages crosses
    in pieces as large as the handler lets build up, and no byte received
    waits unseen while the handler waits (that wait is the client's time,
    which the pace judges).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._ended = self._aborted = False
        self._ready = threading.Condition()

    def has_room(self) -> bool:
        return len(self._data) < self._limit

    def add(self, chunk: bytes) -> None:
        with self._ready:
            if not self._aborted:
                self._data += chunk
                self._ready.notify()

    def end(self) -> None:
        with self._ready:
            self._ended = True
            self._ready.notify()

    def abort(self) -> None:
        """The body will not end: the bytes left are of no use now."""
        with self._ready:
            self._aborted = True
            self._data.clear()
            self._ready.notify()

    def take(self, timeout: float) -> bytes | None:
        """Every byte added since the last take; ``b""`` once the body ended,
        ``_ABORTED`` if it will not; None when nothing came within
        ``timeout`` seconds."""
        with self._ready:
            arrived = self._ready.wait_for(
                lambda: self._data or self._ended or self._aborted, timeout
            )
            if not arrived:
                return None
            if self._aborted:
                return _ABORTED
            chunk = bytes(self._data)
            self._data.clear()

        return chunk


_PIPE_BYTES = 1 << 20
"""The most of a ``PUT`` body held between the loop and the handler."""


async def _pump(receive: Receive, pipe: _Pipe) -> None:
    """Move a request body from the loop to the handler's thread, bounded:
    while the handler is a whole ``_PIPE_BYTES`` behind, the client waits."""
    messages = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            # http.disconnect, or what no HTTP request carries (a
            # websocket.receive): either way no more of this body comes.
            pipe.abort()
            return
        chunk = message.get("body") or b""
        more = message.get("more_body", False)
        messages += 1
        if chunk:
            while not pipe.has_room():
                # Polling keeps the pump cancellable when the handler stops
                # reading (a refused upload).
                await asyncio.sleep(0.002)
            pipe.add(chunk)
        if not chunk or messages % _YIELD_EVERY == 0:
            # A server handing over messages at once (empty ones above all)
            # would otherwise keep the loop here: other requests, and the
            # handler's refusal when no data comes, wait for their turn.
            await asyncio.sleep(0)
    pipe.end()


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else bytes(value).decode("latin-1")


def _unframed(scope: Scope, headers: list[tuple[str, str]]) -> bool:
    """A request with neither Content-Length nor other framing (see
    :func:`ipm.api.wsgi.framed_otherwise`)."""
    names = [name.lower() for name, _ in headers]
    if "content-length" in names:
        return False
    protocol = f"HTTP/{scope.get('http_version', '1.1')}"
    te = ", ".join(v for name, v in headers if name.lower() == "transfer-encoding")

    return not framed_otherwise(protocol, te)


class _TooSlow(Exception):
    """A body refused by the pace check between two messages."""


_YIELD_EVERY = 64
"""Messages a body is read in before other tasks get the loop."""


def _length(headers: list[tuple[str, str]]) -> int | IpmError | None:
    """The declared Content-Length; the 400 to answer when it is malformed,
    or sent twice with two values (which one a proxy framed by cannot be
    known; ``ipm serve`` refuses the same)."""
    values = {v for k, v in headers if k.lower() == "content-length"}
    try:
        lengths = {content_length(value) for value in values}
    except IpmError as error:
        return error
    if len(lengths) > 1:
        return InvalidRequest(
            "Content-Length was sent twice with different values",
            [Problem("/headers/content-length", "must be sent once")],
        )

    return next(iter(lengths), None)


async def _body(
    receive: Receive, cap: int, length: int | None, pace: Pace
) -> bytes | None:
    """The body, or its first ``cap`` bytes (enough to see it is too big).

    Reading stops there: the rest is the server's to discard. None when the
    client went away before the body ended; a cut body is never handled
    as if it were whole. The client keeps an upload's pace (a body that
    stops mid-way would hold its connection and buffer for ever), and the
    body is the length it declared: otherwise a 400.
    """
    chunks: list[bytes] = []
    size = messages = 0
    more = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The time spent waiting for the client: all of it (ipm does nothing of
    # its own between messages). Not counting the turns given to other
    # tasks would let bodies of empty messages (HTTP/2 DATA frames of no
    # bytes) hold their connections for as long as the loop stays busy.
    waited = 0.0
    allowed = pace.stall_seconds
    # One timeout, moved on at each message (a wait_for task per message
    # made a body in tiny messages 26x dearer on the loop). It fires only
    # while receive() waits; a server that answers receive() at once,
    # again and again, is held to the pace by the check before each call.
    deadline = asyncio.timeout(None)
    try:
        async with deadline:
            while more and size < cap:
                waited = loop.time() - started
                allowed = pace.allowance(size, waited)
                if allowed <= 0 or deadline.expired():
                    raise _TooSlow
                deadline.reschedule(loop.time() + allowed)
                message = await receive()
                if message["type"] != "http.request":
                    return None  # as in _pump: the body ends unread
                chunk = message.get("body") or b""
                chunks.append(chunk[: cap - size])
                size += len(chunk)
                more = message.get("more_body", False)
                messages += 1
                if messages % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # other requests get their turn
    except (TimeoutError, _TooSlow) as error:
        if not (deadline.expired() or isinstance(error, _TooSlow)):
            raise  # receive() itself raised TimeoutError: not the pace
        raise pace.refusal(size, waited, allowed) from None
    if length is not None and size < length:
        raise cut_short(length, length - size)
    if length is not None and size > length and size < cap:
        raise InvalidRequest(
            f"the request body is longer than its Content-Length ({length})",
            [Problem("/headers/content-length", "less than the body sent")],
        )

    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
