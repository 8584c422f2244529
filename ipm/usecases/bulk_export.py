"""Export slices: the next run of events or KPIs below the high-water mark.

Theory of operation. ``create`` fixed a high-water mark, the last event
sequence at that moment: sequences are assigned in commit order, so every
event at or below the mark was already committed and every later one lies
above it. A slice reads, in one read transaction, the org's events after
the cursor and up to the mark that pass the filters, as the same wire JSON
``/cdc/list`` serves. Events never change once stored, so the same cursor
always gives the same bytes: a slice re-run after a crash writes its part
again, identical. Each slice is one part blob; the last slice joins the
parts into the finished file, whose size and SHA-256 go on the job.

KPI snapshots change in place, so a KPI export is read from their history
instead: every change of a snapshot is a ``kpi.recorded`` event carrying
its new value and revision. The snapshot *as of the mark* is the one its
last change at or below the mark describes. A slice therefore walks the
org's ``kpi.recorded`` events up to the mark, in sequence order (the
cursor is still a sequence), and writes a line for an event only when no
later change of the same snapshot lies at or below the mark (one indexed
look-up by ``logical_guid``, the ``kpi_id``). The line is built from the
event and from the snapshot's ``created_at``, which never changes, so a
re-run writes the same bytes here too, however the snapshots moved since.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.events import NAME_PATTERN, Event, EventFilter
from ipm.domain.jobs import Cursor, Job, filters_from_wire
from ipm.domain.jsoncodec import dumps, loads
from ipm.domain.kpi import check_kpi_code
from ipm.domain.kpi_grid import bucket_end, check_bucket
from ipm.domain.timeutil import format_utc, parse_utc, parse_utc_bound
from ipm.ports import UnitOfWork
from ipm.usecases.catalog import OWN_SERVICE

_PAGE = 1000
"""Events fetched per read while a slice fills up."""

_EXAMINED = 8192
"""Events a read looks at, at most, when an action prefix sifts them."""

RECORDED = "kpi.recorded"
"""The action of ipm's own event that records each change of a snapshot."""

FILTERS: dict[str, tuple[str, ...]] = {
    "events": ("service", "action_prefix", "from_utc", "to_utc"),
    "kpis": ("kpi_code", "bucket", "from_utc", "to_utc"),
}
"""The filters each export target understands; any other one is a 400."""


@attrs.frozen
class ExportSlice:
    lines: list[bytes]
    end: Cursor
    exhausted: bool

    def data(self) -> bytes:
        return b"".join(self.lines)


def part_prefix(job_id: str) -> str:
    """What every part key of an export starts with."""
    return f"jobs/{job_id}/part-"


def part_key(job_id: str, number: int) -> str:
    return f"{part_prefix(job_id)}{number:06d}"


def file_key(job_id: str) -> str:
    return f"jobs/{job_id}/export.ndjson"


def check_filters(target: str, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The filters of a new export of ``target``, checked.

    A filter that belongs to the other target is refused rather than
    ignored: an export that silently ignored ``service`` would hand back
    more than was asked for.
    """
    given = {k: v for k, v in (raw or {}).items() if v is not None}
    allowed = FILTERS.get(target, ())
    wrong = [
        Problem(f"/filters/{name}", f"does not apply to an export of {target}")
        for name in given
        if name not in allowed
    ]
    if wrong:
        raise InvalidRequest(
            f"filters that an export of {target} does not take: "
            + ", ".join(p.pointer.removeprefix("/filters/") for p in wrong),
            wrong,
        )

    if "kpi_code" in given:
        check_kpi_code(given["kpi_code"], "/filters/kpi_code")
    if "bucket" in given:
        check_bucket(given["bucket"], "/filters/bucket")

    return filters_from_wire(given)


def read_export_slice(
    uow: UnitOfWork, job: Job, max_lines: int, seconds: float, max_bytes: int
) -> ExportSlice:
    """The next lines of an export, from its cursor, within the budgets
    (lines, seconds and bytes, at least one line)."""
    if job.target == "kpis":
        return _read_kpi_slice(uow, job, max_lines, seconds, max_bytes)

    filters = job.filters or {}
    prefix = filters.get("action_prefix")
    if prefix is not None and not NAME_PATTERN.fullmatch(prefix):
        # Stored before prefixes were checked: it can start no action name,
        # so the export would complete empty instead of saying why.
        raise InvalidRequest(
            "the export's action_prefix can start no action name",
            [Problem("/filters/action_prefix", f"must match {NAME_PATTERN.pattern}")],
        )
    where = EventFilter(
        service=filters.get("service"),
        action_prefix=prefix,
        after_sequence=job.cursor.position,
        until_sequence=job.high_water_mark,
    )
    window = _window(filters)
    deadline = time.monotonic() + seconds
    lines: list[bytes] = []
    size = 0
    position = job.cursor.position

    while True:
        # Bounded reads, so a prefix few events have cannot hold one read
        # (and the slice's time budget) for the whole org.
        scan = uow.events.feed_scan(job.orgcode, where, _PAGE, _EXAMINED)
        for sequence, raw in scan.rows:
            position = sequence
            if window is None or _within(raw, window):
                lines.append(raw + b"\n")
                size += len(raw) + 1
            if len(lines) >= max_lines or size >= max_bytes:
                return _slice(job, lines, position, exhausted=False)
            if time.monotonic() >= deadline:
                return _slice(job, lines, position, exhausted=False)
        if scan.reached is not None:
            position = scan.reached
            if time.monotonic() >= deadline:
                return _slice(job, lines, position, exhausted=False)
        elif len(scan.rows) < _PAGE:
            return _slice(job, lines, position, exhausted=True)
        where = attrs.evolve(where, after_sequence=position)


def _read_kpi_slice(
    uow: UnitOfWork, job: Job, max_lines: int, seconds: float, max_bytes: int
) -> ExportSlice:
    """The next snapshots as of the mark, in the order of their last change."""
    filters = job.filters or {}
    where = EventFilter(
        service=OWN_SERVICE,
        action_prefix=RECORDED,
        after_sequence=job.cursor.position,
        until_sequence=job.high_water_mark,
    )
    window = _window(filters)
    deadline = time.monotonic() + seconds
    lines: list[bytes] = []
    size = 0
    position = job.cursor.position

    while True:
        page = uow.events.list(job.orgcode, where, _PAGE)
        for event in page:
            position = event.sequence
            line = _kpi_line(uow, job, event, filters, window)
            if line is not None:
                lines.append(line)
                size += len(line)
            if len(lines) >= max_lines or size >= max_bytes:
                return _slice(job, lines, position, exhausted=False)
            if time.monotonic() >= deadline:
                return _slice(job, lines, position, exhausted=False)
        if len(page) < _PAGE:
            return _slice(job, lines, position, exhausted=True)
        where = attrs.evolve(where, after_sequence=position)


def _kpi_line(
    uow: UnitOfWork,
    job: Job,
    event: Event,
    filters: Mapping[str, Any],
    window: Window | None,
) -> bytes | None:
    """The snapshot this change left, if it is the last one up to the mark."""
    payload = event.new.payload
    if event.new.action != RECORDED or not _kpi_matches(payload, filters, window):
        return None
    # Hosts may publish (or import) events under ipm's service name, so an
    # event counts only if it is the history of a stored snapshot: ipm's
    # own carry the snapshot's kpi_id as logical_guid, and that snapshot
    # exists. Neither fact ever changes, so the choice is the same on re-runs.
    # Hosts cannot publish under the service ipm; this second check keeps
    # events of another database (a restored file) out as well.
    if event.new.logical_guid != payload["kpi_id"]:
        return None
    start = parse_utc(payload["bucket_start"], "/payload/bucket_start")
    current = uow.kpis.get(
        job.orgcode, payload["kpi_code"], payload["scope"], payload["bucket"], start
    )
    if current is None or current.kpi_id != payload["kpi_id"]:
        return None
    if _changed_again(uow, job, event):
        return None

    line = {
        "kpi_id": payload["kpi_id"],
        "kpi_code": payload["kpi_code"],
        "scope": payload["scope"],
        "bucket": payload["bucket"],
        "bucket_start": format_utc(start),
        "bucket_end": format_utc(bucket_end(payload["bucket"], start)),
        "value": payload["new_value"],
        "revision": payload["revision"],
        "created_at": format_utc(current.created_at),
        "updated_at": format_utc(event.new.occurred_at),
    }

    return dumps(line) + b"\n"


def _kpi_matches(
    payload: Mapping[str, Any], filters: Mapping[str, Any], window: Window | None
) -> bool:
    for name in ("kpi_code", "bucket"):
        wanted = filters.get(name)
        if wanted is not None and payload[name] != wanted:
            return False
    if window is None:
        return True

    start = parse_utc(payload["bucket_start"], "/payload/bucket_start")
    return _inside(start, window)


def _changed_again(uow: UnitOfWork, job: Job, event: Event) -> bool:
    """Whether the snapshot changed again after ``event``, up to the mark.

    Only ipm's own ``kpi.recorded`` events count: a host event that happens
    to name the snapshot's id (service ``analytics``, action
    ``kpi.recorded_late``) once hid the snapshot from every later export.
    """
    later = EventFilter(
        service=OWN_SERVICE,
        logical_guid=event.new.logical_guid,
        action_prefix=RECORDED,
        after_sequence=event.sequence,
        until_sequence=job.high_water_mark,
    )
    while page := uow.events.list(job.orgcode, later, 64):
        if any(e.new.action == RECORDED for e in page):
            return True
        later = attrs.evolve(later, after_sequence=page[-1].sequence)

    return False


def _slice(
    job: Job, lines: list[bytes], position: int, *, exhausted: bool
) -> ExportSlice:
    cursor = job.cursor
    if exhausted and job.high_water_mark is not None:
        # Nothing up to the mark is left to read: say so in the cursor, so
        # no later call reads (and commits) another, empty, slice.
        position = max(position, job.high_water_mark)
    end = Cursor(position, cursor.lines + len(lines), cursor.slices + 1)

    return ExportSlice(lines, end, exhausted)


Window = tuple[datetime | None, datetime | None]


def _window(filters: Mapping[str, Any]) -> Window | None:
    start, end = filters.get("from_utc"), filters.get("to_utc")
    if start is None and end is None:
        return None

    return (
        None if start is None else parse_utc_bound(start, "/filters/from_utc"),
        None if end is None else parse_utc_bound(end, "/filters/to_utc", end=True),
    )


def _within(raw: bytes, window: Window) -> bool:
    """Whether the event occurred in ``[from_utc, to_utc)``."""
    occurred = parse_utc(loads(raw)["occurred_at"], "/occurred_at")

    return _inside(occurred, window)


def _inside(t: datetime, window: Window) -> bool:
    start, end = window

    return (start is None or t >= start) and (end is None or t < end)
