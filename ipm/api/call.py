"""What a route handler receives: the caller, the org and helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ipm.api.routes import Route
from ipm.domain.events import Audit
from ipm.domain.pagination import TokenScope, clamp_limit, page_of
from ipm.ports import Principal

if TYPE_CHECKING:
    from ipm.app import Application

T = TypeVar("T")


@attrs.frozen
class Call:
    app: Application
    route: Route
    request_id: str
    base_url: str
    principal: Principal | None
    orgcode: str
    audit: Audit

    def page(
        self,
        body: dict[str, Any],
        filters: dict[str, Any],
        fetch: Callable[[tuple[Any, ...] | None, int], Sequence[T]],
        position_of: Callable[[T], Sequence[Any]],
        size_of: Callable[[T], int] | None = None,
        stopped_at: Callable[[], Sequence[Any] | None] | None = None,
    ) -> tuple[list[T], dict[str, Any] | None]:
        """One keyset page and the token for the next (``None`` on the last).

        ``fetch(after, n)`` returns up to ``n`` rows after the position;
        one more row than the page is asked for, only to learn whether
        another page exists. ``size_of`` bounds the page in bytes too
        (see :func:`page_of`). ``stopped_at()``, asked after the fetch,
        is the position where a fetch that looks at a bounded number of
        rows stopped short (None when it did not): the page may then be
        short, even empty, and the token goes on from there (AIP-158).
        """
        limit = clamp_limit(body.get("limit"))
        scope = TokenScope(self.orgcode, self.route.path, filters)
        after = self.app.tokens.open(scope, body.get("next_token"))

        rows = fetch(after, limit + 1)
        page, position = page_of(rows, limit, position_of, size_of)
        if position is None and stopped_at is not None:
            stopped = stopped_at()
            position = None if stopped is None else tuple(stopped)
        token = None if position is None else self.app.tokens.issue(scope, position)

        return page, token

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


Handler = Callable[[Call, dict[str, Any]], dict[str, Any]]
