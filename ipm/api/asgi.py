"""The ASGI adapter: the same ``handle()`` for asyncio servers.

``handle()`` is synchronous (SQLite is), so each request runs in a worker
thread and the event loop stays free. Uploads (``PUT``) and streamed
answers (downloads, reports) cross between the loop and that thread
through a small bounded queue, so neither side ever holds a whole file.

Mounted under a prefix, the route is the path below ``root_path``, and
``root_path`` and the scope's ``scheme`` go to ``handle()`` so the links
it hands out lead back through the mount.
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ipm.api.wsgi import StreamedBody, request_target
from ipm.domain.errors import InvalidRequest, Problem

if TYPE_CHECKING:
    from ipm.app import Application

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_END = b""


class _Aborted(bytes):
    """Put in the queue when the client goes away before its body ended."""


_ABORTED = _Aborted()
_QUEUE_CHUNKS = 8
_STALL_SECONDS = 60


class AsgiApp:
    def __init__(self, app: Application) -> None:
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return

        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        root_path = scope.get("root_path") or ""
        path = _below(scope.get("path", "/"), root_path)
        query = scope.get("query_string", b"").decode("latin-1")
        target = request_target(path, query)
        method = scope["method"]

        pump = None
        if method == "PUT":
            chunks: queue.Queue[bytes] = queue.Queue(maxsize=_QUEUE_CHUNKS)
            pump = asyncio.ensure_future(_pump(receive, chunks))
            body: bytes = StreamedBody(_drain(chunks), _length(headers))
        else:
            body = await _body(receive, self.app.max_body_bytes + 1)

        response = await asyncio.to_thread(
            functools.partial(
                self.app.handle,
                scheme=scope.get("scheme") or "http",
                prefix=root_path,
            ),
            method,
            target,
            headers,
            body,
        )
        if pump is not None:
            pump.cancel()

        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers],
            }
        )
        await _send_body(response.body, send)


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


async def _send_body(body: bytes, send: Send) -> None:
    if not isinstance(body, StreamedBody):
        await send({"type": "http.response.body", "body": body})
        return

    while True:
        chunk = await asyncio.to_thread(next, body.chunks, None)
        if chunk is None:
            break
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _pump(receive: Receive, chunks: queue.Queue[bytes]) -> None:
    """Move request chunks from the loop to the worker thread, bounded."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            await _put(chunks, _ABORTED)
            return
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if chunk:
            await _put(chunks, chunk)
    await _put(chunks, _END)


async def _put(chunks: queue.Queue[bytes], chunk: bytes) -> None:
    # Polling keeps the pump cancellable when the handler stops reading
    # (a refused upload); a thread blocked in put() could not be.
    while True:
        try:
            chunks.put_nowait(chunk)
            return
        except queue.Full:
            await asyncio.sleep(0.002)


def _drain(chunks: queue.Queue[bytes]) -> Iterator[bytes]:
    """The upload's chunks in the worker thread; a stalled client ends it."""
    while True:
        try:
            chunk = chunks.get(timeout=_STALL_SECONDS)
        except queue.Empty:
            raise _cut_short("the client sent nothing for a minute") from None
        if chunk is _ABORTED:
            raise _cut_short("the client went away before the body ended")
        if chunk == _END:
            return
        yield chunk


def _cut_short(why: str) -> InvalidRequest:
    # Never a stored upload cut short: the job keeps waiting for a whole one.
    return InvalidRequest(why, [Problem("", "the request body is incomplete")])


def _length(headers: list[tuple[str, str]]) -> int | None:
    value = next((v for k, v in headers if k.lower() == "content-length"), None)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


async def _body(receive: Receive, cap: int) -> bytes:
    """Read the body, keeping at most ``cap`` bytes (enough to see it is too big)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        if size < cap:
            chunks.append(chunk[: cap - size])
        size += len(chunk)
        more = message.get("more_body", False)

    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
