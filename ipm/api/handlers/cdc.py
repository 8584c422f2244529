"""Handler of ``POST /cdc/list``: the org's events in sequence order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ipm.api.call import Call
from ipm.api.convert import structure, unstructure
from ipm.domain.events import EventFilter

if TYPE_CHECKING:
    from ipm.api.core import Api

_PAGING = ("limit", "next_token")


@attrs.frozen
class CdcListQuery:
    """The filters of ``/cdc/list``; a page token is bound to all of them."""

    service: str | None = None
    logical_guid: str | None = None
    channel_code: str | None = None
    action_prefix: str | None = None
    after_sequence: int = 0

    def where(self, after: int) -> EventFilter:
        return EventFilter(
            service=self.service,
            logical_guid=self.logical_guid,
            channel_code=self.channel_code,
            action_prefix=self.action_prefix,
            after_sequence=max(after, self.after_sequence),
        )


EXAMINED_PER_PAGE = 50_000
"""Events a page looks at, at most, when an action prefix sifts what the
other filters find: a prefix no action of a large org has would otherwise
read the whole org for one page (a quarter of a second or more for
500,000 events, past the route's ceiling). Past it the page is short,
even empty, with a next_token that goes on from the last event looked at.
Large enough that an org of that many events never sees such a page
(CDC's contract: matches among 10,000 events come page after page with
no early empty one), small enough that a page stays well under the
ceiling (about 35 ms)."""


def cdc_list(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    query = structure(body, CdcListQuery, drop=_PAGING)
    stopped: list[int] = []

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[tuple[int, bytes]]:
        where = query.where(int(after[0]) if after else 0)
        scan = call.app.cdc.feed_scan(call.orgcode, where, n, EXAMINED_PER_PAGE)
        if scan.reached is not None:
            stopped.append(scan.reached)
        return scan.rows

    page, token = call.page(
        body,
        unstructure(query),
        fetch,
        lambda row: [row[0]],
        lambda row: len(row[1]),
        lambda: stopped[-1:] or None,
    )

    return {
        # Events arrive as JSON already; Fragment embeds them unparsed.
        "items": [orjson.Fragment(wire) for _, wire in page],
        "next_token": token,
        "has_more": token is not None,
    }


def attach(api: Api) -> None:
    api.attach("POST /cdc/list", cdc_list)
