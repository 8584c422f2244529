"""Export slices: the next run of events below the job's high-water mark.

Theory of operation. ``create`` fixed a high-water mark, the last event
sequence at that moment: sequences are assigned in commit order, so every
event at or below the mark was already committed and every later one lies
above it. A slice reads, in one read transaction, the org's events after
the cursor and up to the mark that pass the filters, as the same wire JSON
``/cdc/list`` serves. Events never change once stored, so the same cursor
always gives the same bytes: a slice re-run after a crash writes its part
again, identical. Each slice is one part blob; the last slice joins the
parts into the finished file, whose size and SHA-256 go on the job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ipm.domain.events import EventFilter
from ipm.domain.jobs import Cursor, Job
from ipm.domain.jsoncodec import loads
from ipm.domain.timeutil import parse_utc
from ipm.ports import UnitOfWork

_PAGE = 1000
"""Events fetched per read while a slice fills up."""


@attrs.frozen
class ExportSlice:
    lines: list[bytes]
    end: Cursor
    exhausted: bool

    def data(self) -> bytes:
        return b"".join(self.lines)


def part_key(job_id: str, number: int) -> str:
    return f"jobs/{job_id}/part-{number:06d}"


def file_key(job_id: str) -> str:
    return f"jobs/{job_id}/export.ndjson"


def read_export_slice(
    uow: UnitOfWork, job: Job, max_lines: int, seconds: float
) -> ExportSlice:
    """The next lines of an export, from its cursor, within the budgets."""
    filters = job.filters or {}
    where = EventFilter(
        service=filters.get("service"),
        action_prefix=filters.get("action_prefix"),
        after_sequence=job.cursor.position,
        until_sequence=job.high_water_mark,
    )
    window = _window(filters)
    deadline = time.monotonic() + seconds
    lines: list[bytes] = []
    position = job.cursor.position

    while True:
        page = uow.events.feed(job.orgcode, where, _PAGE)
        for sequence, raw in page:
            position = sequence
            if window is None or _within(raw, window):
                lines.append(raw + b"\n")
            if len(lines) >= max_lines or time.monotonic() >= deadline:
                return _slice(job, lines, position, exhausted=False)
        if len(page) < _PAGE:
            return _slice(job, lines, position, exhausted=True)
        where = attrs.evolve(where, after_sequence=position)


def _slice(
    job: Job, lines: list[bytes], position: int, *, exhausted: bool
) -> ExportSlice:
    cursor = job.cursor
    end = Cursor(position, cursor.lines + len(lines), cursor.slices + 1)

    return ExportSlice(lines, end, exhausted)


Window = tuple[datetime | None, datetime | None]


def _window(filters: Mapping[str, Any]) -> Window | None:
    start, end = filters.get("from_utc"), filters.get("to_utc")
    if start is None and end is None:
        return None

    return (
        None if start is None else parse_utc(start, "/filters/from_utc"),
        None if end is None else parse_utc(end, "/filters/to_utc"),
    )


def _within(raw: bytes, window: Window) -> bool:
    """Whether the event occurred in ``[from_utc, to_utc)``."""
    occurred = parse_utc(loads(raw)["occurred_at"], "/occurred_at")
    start, end = window

    return (start is None or occurred >= start) and (end is None or occurred < end)
