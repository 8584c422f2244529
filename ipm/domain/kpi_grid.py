"""The KPI bucket grid: where a bucket starts and ends, and windows on it.

Every KPI snapshot lives in one bucket of a fixed UTC grid. A bucket is
half-open, ``[start, end)``, and its ``end`` is the ``start`` of the next
bucket, so the buckets of one kind tile time with no gap and no overlap.
Hours and days are cut on the UTC clock, weeks start on Monday 00:00 UTC and
months on the 1st at 00:00 UTC. The grid is pure calendar arithmetic on UTC
datetimes: the machine's local time zone is never consulted, and a naive
datetime is refused rather than guessed at.

The grid runs from :data:`GRID_MIN` (0001-01-01, a Monday) up to, but
excluding, :data:`GRID_MAX` (9999-12-01), so that every bucket starting on
it has an end that ``datetime`` can represent.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.timeutil import check_instant, format_utc
from ipm.domain.timeutil import field_name as _field
from ipm.domain.timeutil import refused as _refused
from ipm.domain.timeutil import to_utc as _utc

Bucket: TypeAlias = Literal["hourly", "daily", "weekly", "monthly"]

#: The bucket kinds, finest first.
BUCKETS: tuple[Bucket, ...] = ("hourly", "daily", "weekly", "monthly")

GRID_MIN = datetime(1, 1, 1, tzinfo=UTC)
GRID_MAX = datetime(9999, 12, 1, tzinfo=UTC)

_STEP = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
}


# -- the grid ---------------------------------------------------------------


def bucket_start(bucket: Bucket, t: datetime) -> datetime:
    """Return the start (UTC) of the ``bucket`` that contains the instant ``t``."""
    u = _on_grid(t)
    hour = datetime(u.year, u.month, u.day, u.hour, tzinfo=UTC)
    day = hour.replace(hour=0)

    if bucket == "hourly":
        return hour
    if bucket == "daily":
        return day
    if bucket == "weekly":
        return day - timedelta(days=day.weekday())
    if bucket == "monthly":
        return day.replace(day=1)

    raise ValueError(f"unknown bucket {bucket!r}; known: {', '.join(BUCKETS)}")


def bucket_end(bucket: Bucket, start: datetime) -> datetime:
    """Return the exclusive end of the bucket containing ``start``.

    That is the start of the next bucket, so ``bucket_end`` and
    :func:`next_bucket` give the same instant; use whichever name reads better.
    """
    first = bucket_start(bucket, start)
    if bucket != "monthly":
        return first + _STEP[bucket]

    carry, month = divmod(first.month, 12)

    return first.replace(year=first.year + carry, month=month + 1)


def next_bucket(bucket: Bucket, start: datetime) -> datetime:
    """Return the start of the bucket after the one containing ``start``."""
    return bucket_end(bucket, start)


def bucket_range(
    bucket: Bucket, from_utc: datetime, to_utc: datetime
) -> Iterator[datetime]:
    """Yield, in order, every bucket start ``s`` with ``from_utc <= s < to_utc``.

    Arguments are checked at once; starts are produced lazily, so a wide
    window costs nothing until it is consumed. The range stops at
    :data:`GRID_MAX`.
    """
    stop = min(_utc(to_utc), GRID_MAX)
    if _utc(from_utc) >= stop:
        return iter(())

    first = bucket_start(bucket, from_utc)
    if first < from_utc:
        first = bucket_end(bucket, first)

    return _starts(bucket, first, stop)


def _starts(bucket: Bucket, first: datetime, stop: datetime) -> Iterator[datetime]:
    start = first
    while start < stop:
        yield start
        start = bucket_end(bucket, start)


def _on_grid(t: datetime) -> datetime:
    u = _utc(t)
    if not GRID_MIN <= u < GRID_MAX:
        raise ValueError(f"{u.isoformat()} is outside the bucket grid")

    return u


# -- windows of a request ---------------------------------------------------


def check_window(
    bucket: Bucket, start: datetime, end: datetime, pointer_prefix: str = "/kpi"
) -> None:
    """Refuse a ``[start, end)`` that is not exactly one bucket of the grid.

    The :class:`InvalidRequest` carries one Problem per wrong field, at
    ``{pointer_prefix}/bucket_start`` and ``{pointer_prefix}/bucket_end``, and
    each names the aligned value the caller should have sent.
    """
    # Normalise first: Python's == between zones is False for an instant in a
    # repeated local hour (PEP 495), which would call an aligned start wrong.
    start, end = _utc(start), _utc(end)
    start_pointer = f"{pointer_prefix}/bucket_start"
    if not GRID_MIN <= start < GRID_MAX:
        raise _refused(start_pointer, f"must be before {format_utc(GRID_MAX)}")

    aligned = bucket_start(bucket, start)
    expected_end = bucket_end(bucket, aligned)
    problems = []
    if start != aligned:
        problems.append(
            _problem(start_pointer, f"must be aligned to the {bucket} grid", aligned)
        )
    if end != expected_end:
        problems.append(
            _problem(
                f"{pointer_prefix}/bucket_end",
                f"must be the start of the next {bucket} bucket",
                expected_end,
            )
        )

    if problems:
        raise InvalidRequest("; ".join(p.message for p in problems), problems)


def check_bucket(value: object, pointer: str = "/kpi/bucket") -> Bucket:
    """Return ``value`` as a :data:`Bucket`, or refuse it at ``pointer``."""
    for bucket in BUCKETS:
        if value == bucket:
            return bucket

    raise _refused(pointer, f"must be one of {', '.join(BUCKETS)}")


def _problem(pointer: str, rule: str, aligned: datetime) -> Problem:
    return Problem(pointer, f"{_field(pointer)} {rule}: {format_utc(aligned)}")


def aligned_end(bucket: Bucket, start: datetime) -> datetime:
    # bucket_end for a start known to be aligned (a stored snapshot's).
    if bucket != "monthly":
        return start + _STEP[bucket]

    carry, month = divmod(start.month, 12)

    return start.replace(year=start.year + carry, month=month + 1)


def check_start(bucket: Bucket, start: object, pointer: str) -> datetime:
    """Return ``start`` in UTC if it is an aware datetime starting a ``bucket``."""
    if isinstance(start, str):
        start = check_instant(start, pointer)
    if not isinstance(start, datetime):
        raise _refused(pointer, "must be an aware datetime or RFC 3339 text")
    if start.utcoffset() is None:
        raise _refused(pointer, "needs a time zone")
    try:
        u = _on_grid(start)
    except ValueError:
        # Said as the wire says it for text.
        raise _refused(pointer, f"must be before {format_utc(GRID_MAX)}") from None

    aligned = bucket_start(bucket, u)
    if u != aligned:
        problem = _problem(pointer, f"must be aligned to the {bucket} grid", aligned)
        raise InvalidRequest(problem.message, [problem])

    return u


def ceil_bucket(bucket: Bucket, t: datetime) -> datetime:
    """The first ``bucket`` start at or after ``t`` (at most :data:`GRID_MAX`)."""
    u = _utc(t)
    if u >= GRID_MAX:
        return GRID_MAX

    start = bucket_start(bucket, u)

    return start if start == u else bucket_end(bucket, start)
