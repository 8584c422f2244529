"""Handler of ``POST /cdc/list``: the org's events in sequence order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipm.api.call import Call
from ipm.domain.events import Event, EventFilter

if TYPE_CHECKING:
    from ipm.api.core import Api

_FILTERS = ("service", "logical_guid", "channel_code", "action_prefix", "after_sequence")


def cdc_list(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    filters = {name: body.get(name) for name in _FILTERS}

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[Event]:
        start = max(int(after[0]) if after else 0, body.get("after_sequence") or 0)
        where = EventFilter(
            service=body.get("service"),
            logical_guid=body.get("logical_guid"),
            channel_code=body.get("channel_code"),
            action_prefix=body.get("action_prefix"),
            after_sequence=start,
        )
        return call.app.cdc.list(call.orgcode, where, n)

    page, token = call.page(body, filters, fetch, lambda e: [e.sequence])

    return {
        "items": [event.to_wire() for event in page],
        "next_token": token,
        "has_more": token is not None,
    }


def attach(api: Api) -> None:
    api.attach("POST /cdc/list", cdc_list)
