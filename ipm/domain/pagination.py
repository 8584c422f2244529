"""Keyset page tokens that callers cannot forge or move between queries.

A token is a small JSON object ``{"v": 1, "k": [...], "s": "..."}``: ``k``
is the keyset position (the sort key of the last row returned) and ``s`` an
HMAC-SHA256 over the position *and* the org, the route and the filters the
token was issued for. Changing any of them — editing ``k``, replaying the
token in another org or with other filters — breaks the signature and the
caller gets ``invalid_token`` rather than a wrong page. The key is
per-deployment and comes in from outside (the database or the host), so
this module stays pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ipm.domain.errors import InvalidToken, Problem

DEFAULT_LIMIT = 8
MIN_LIMIT = 1
MAX_LIMIT = 256
TOKEN_VERSION = 1

Position = tuple[Any, ...]


def clamp_limit(limit: int | None) -> int:
    """The page size to use: the default when absent, else clamped to 1-256."""
    if limit is None:
        return DEFAULT_LIMIT

    # JSON Schema counts 2.0 as an integer; slicing does not.
    return max(MIN_LIMIT, min(MAX_LIMIT, int(limit)))


@attrs.frozen
class TokenScope:
    """What a token is bound to: the org, the route and the query's filters."""

    orgcode: str
    route: str
    filters: Mapping[str, Any] = attrs.field(factory=dict)

    def canonical(self) -> bytes:
        shape = [self.orgcode, self.route, _jsonable(dict(self.filters))]
        return json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()


@attrs.frozen
class PageTokens:
    """Issues and opens page tokens under one deployment key."""

    key: bytes = attrs.field(repr=False)

    def issue(self, scope: TokenScope, position: Sequence[Any]) -> dict[str, Any]:
        keyset = list(position)

        return {"v": TOKEN_VERSION, "k": keyset, "s": self._sign(scope, keyset)}

    def open(self, scope: TokenScope, token: Any) -> Position | None:
        """The position a token points after; ``None`` for the first page.

        No token, ``null`` and ``{}`` all mean the first page: the API
        reference's samples send an empty object there.
        """
        if token is None or token == {}:
            return None
        if not isinstance(token, dict) or set(token) != {"v", "k", "s"}:
            raise _invalid("next_token is not a token issued by ipm")
        version = token["v"]
        if type(version) is not int or version != TOKEN_VERSION:
            raise _invalid("next_token has an unknown version or shape")
        if not isinstance(token["k"], list):
            raise _invalid("next_token has an unknown version or shape")
        if not isinstance(token["s"], str):
            raise _invalid("next_token is not a token issued by ipm")

        expected = self._sign(scope, token["k"])
        if not hmac.compare_digest(expected.encode(), token["s"].encode()):
            raise _invalid(
                "next_token was altered, or was issued for another org, "
                "route or set of filters"
            )

        return tuple(token["k"])

    def _sign(self, scope: TokenScope, keyset: list[Any]) -> str:
        body = scope.canonical() + b"|" + _canonical(keyset)
        digest = hmac.new(self.key, body, hashlib.sha256).digest()

        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def page_of(
    rows: Sequence[Any],
    limit: int,
    position_of: Any,
    size_of: Callable[[Any], int] | None = None,
) -> tuple[list[Any], Position | None]:
    """Split a fetch of ``limit + 1`` rows into the page and the next position.

    The extra row only says whether more exist; the next position is the
    key of the last row *returned*, so no row is skipped or repeated. With
    ``size_of``, the page also ends before its rows pass
    :data:`MAX_PAGE_BYTES` (it always holds one), and the next page goes on
    from there.
    """
    page = list(rows[:limit])
    more = len(rows) > limit
    if size_of is not None and page:
        total = 0
        for count, row in enumerate(page):
            total += size_of(row)
            if total > MAX_PAGE_BYTES and count > 0:
                del page[count:]
                more = True
                break
    if not more or not page:
        return page, None

    return page, tuple(position_of(page[-1]))


MAX_PAGE_BYTES = 8 << 20
"""Bytes of rows a page of large items (the feed's events) holds at most,
whatever its limit: 256 events of a megabyte each made one answer of a
quarter gigabyte, and a server several times that in memory."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _jsonable(filters: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in filters.items() if value is not None}


def _invalid(message: str) -> InvalidToken:
    return InvalidToken(message, [Problem("/next_token", message)])
