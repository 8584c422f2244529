"""The WSGI adapter: a thin, framework-free shell around ``handle()``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ipm.api.envelope import envelope, json_response

if TYPE_CHECKING:
    from ipm.app import Application

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    428: "Precondition Required",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


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
            response = _too_large(self.app, method, path)
        else:
            target = f"{path}?{query}" if query else path
            response = self.app.handle(method, target, headers, body)

        reason = _REASONS.get(response.status, "Unknown")
        start_response(f"{response.status} {reason}", list(response.headers))

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

    Uploads (``PUT``) are streamed by their own handler, so only ordinary
    requests are bounded here.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    if stream is None or length <= 0:
        return b""
    if length > limit and environ.get("REQUEST_METHOD") != "PUT":
        return None

    return bytes(stream.read(length))


def _too_large(app: Application, method: str, path: str) -> Any:
    from ipm.domain.errors import PayloadTooLarge

    error = PayloadTooLarge(f"request body is larger than {app.max_body_bytes} bytes")
    body = envelope(f"{method} {path}", app.build_id, app.clock(), error=error)

    return json_response(413, body)
