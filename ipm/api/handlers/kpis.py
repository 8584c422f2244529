"""Handlers of ``/kpi/record``, ``/kpi/query`` and ``/kpi/alert``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ipm.api.call import Call
from ipm.domain.alerts import alert_from_wire
from ipm.domain.kpi import DEFAULT_SCOPE, snapshot_from_wire
from ipm.domain.kpi_series import query_from_wire
from ipm.domain.timeutil import format_utc, parse_utc

if TYPE_CHECKING:
    from ipm.api.core import Api

_QUERY_FILTERS = ("kpi_code", "bucket", "from_utc", "to_utc", "scope", "rollup")

ROLLUP_SOURCES_PER_PAGE = 32_768
"""Source snapshots a page of a rollup reads, about, at most: past it the
page ends after its next row, with a token (three years of hourly
snapshots still give their monthly rows in one page, in about 0.4 s). A
page of 256 monthly rows from hourly ones read 190,000 snapshots
(2-3 s, past the route's ceiling)."""


def kpi_record(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    snapshot = snapshot_from_wire(body["kpi"])
    kpi = call.app.kpis.record(
        call.orgcode,
        snapshot,
        expected_revision=body.get("expected_revision"),
        audit=call.audit,
    )

    return {"kpi": kpi.to_wire()}


def kpi_query(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    query = query_from_wire(body)
    filters = {name: body.get(name) for name in _QUERY_FILTERS}
    # Bound to the instants, not their spelling: a client that writes the
    # same time as "+00:00" on the next page asks the same query. The
    # default scope is bound as absent, as tokens issued before were.
    filters.update(
        from_utc=format_utc(query.from_utc),
        to_utc=format_utc(query.to_utc),
        scope=None if query.scope == DEFAULT_SCOPE else query.scope,
    )

    stopped: list[datetime] = []

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[dict[str, Any]]:
        start = None if after is None else parse_utc(after[0], "/next_token")
        return call.app.kpis.series_wire(
            call.orgcode,
            query,
            after=start,
            limit=n,
            stopped=stopped,
            sources=ROLLUP_SOURCES_PER_PAGE,
        )

    series, token = call.page(
        body,
        filters,
        fetch,
        lambda row: [row["bucket_start"]],
        stopped_at=lambda: [format_utc(stopped[-1])] if stopped else None,
    )

    return {"series": series, "next_token": token}


def kpi_alert(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    ask = alert_from_wire(body["alert"], notify=bool(body.get("notify", False)))
    alert = call.app.kpis.emit_alert(call.orgcode, ask, audit=call.audit)

    return {"alert": alert.to_wire()}


def attach(api: Api) -> None:
    api.attach("POST /kpi/record", kpi_record)
    api.attach("POST /kpi/query", kpi_query)
    api.attach("POST /kpi/alert", kpi_alert)
