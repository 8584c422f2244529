"""The response envelope and the bytes that carry it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ipm.domain.errors import IpmError, Problem
from ipm.domain.jsoncodec import dumps
from ipm.domain.timeutil import format_utc

JSON = "application/json"


@attrs.frozen
class Response:
    """What :func:`handle` returns: status, headers and body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def envelope(
    call: str,
    build_id: str,
    now: datetime,
    *,
    data: Any = None,
    error: IpmError | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"success": error is None}
    if error is None:
        body["data"] = data
    else:
        body["error"] = {
            "code": error.code,
            "message": error.message,
            "details": [_shown(problem) for problem in error.details],
        }
    body["build"] = {"build_id": build_id}
    body["stats"] = {"call": call, "service": "ipm", "timestamp_utc": format_utc(now)}

    return body


POINTER_CHARS = 256
"""The longest pointer an answer repeats: a pointer names the client's own
keys, and a key of a megabyte would come back whole, once per fault."""


def _shown(problem: Problem) -> dict[str, str]:
    wire = problem.to_wire()
    if len(problem.pointer) > POINTER_CHARS:
        wire["pointer"] = problem.pointer[: POINTER_CHARS - 1] + "\u2026"

    return wire


def json_response(
    status: int, body: Mapping[str, Any], headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    data = dumps(dict(body))
    # A length lets servers send the answer as it is instead of chunked.
    framing = (("content-type", JSON), ("content-length", str(len(data))))

    return Response(status, (*framing, *headers), data)
