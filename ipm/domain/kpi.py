"""KPI buckets, wire timestamps, alert rules and rollups: pure rules, no I/O.

Theory of operation
-------------------
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

Timestamps cross the wire as RFC 3339 text. :func:`parse_utc` is the way in
(``Z`` or a numeric offset, normalised to UTC; anything else is an
:class:`InvalidRequest` at a JSON pointer) and :func:`format_utc` the way out.

Alerts compare a value with a threshold exactly: int, float and Decimal mix
without rounding, and a missing or NaN value never fires. :func:`alert_key`
names one rule firing for one bucket, so storing the same alert twice can be
a no-op. :func:`rollup` folds a series into a coarser grid.

docs/kpi.md states every rule here for integrators.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from functools import reduce
from typing import Literal, NamedTuple, TypeAlias

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.timeutil import field_name as _field
from ipm.domain.timeutil import format_utc
from ipm.domain.timeutil import refused as _refused
from ipm.domain.timeutil import to_utc as _utc

Bucket: TypeAlias = Literal["hourly", "daily", "weekly", "monthly"]
Comparator: TypeAlias = Literal["gt", "gte", "lt", "lte", "eq", "ne"]
Rollup: TypeAlias = Literal["sum", "min", "max", "avg", "last"]
Number: TypeAlias = int | float | Decimal

#: The bucket kinds, finest first.
BUCKETS: tuple[Bucket, ...] = ("hourly", "daily", "weekly", "monthly")
COMPARATORS: tuple[Comparator, ...] = ("gt", "gte", "lt", "lte", "eq", "ne")
ROLLUPS: tuple[Rollup, ...] = ("sum", "min", "max", "avg", "last")

GRID_MIN = datetime(1, 1, 1, tzinfo=UTC)
GRID_MAX = datetime(9999, 12, 1, tzinfo=UTC)

#: An upper-case ASCII letter, then up to 63 upper-case letters, digits or
#: underscores. Written for both Python and JSON Schema (ECMA-262) regexes.
KPI_CODE_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"

_KPI_CODE = re.compile(KPI_CODE_PATTERN)
_STEP = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
}


# -- the bucket grid ---------------------------------------------------------


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


# -- request checks ----------------------------------------------------------


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


def check_bucket(value: str, pointer: str = "/kpi/bucket") -> Bucket:
    """Return ``value`` as a :data:`Bucket`, or refuse it at ``pointer``."""
    for bucket in BUCKETS:
        if value == bucket:
            return bucket

    raise _refused(pointer, f"must be one of {', '.join(BUCKETS)}")


def check_kpi_code(code: str, pointer: str = "/kpi/kpi_code") -> str:
    """Return ``code`` if it matches :data:`KPI_CODE_PATTERN`, or refuse it."""
    if isinstance(code, str) and _KPI_CODE.fullmatch(code):
        return code

    raise _refused(
        pointer,
        "must be 1-64 upper-case letters, digits or underscores, "
        "starting with a letter (e.g. NET_SALES)",
    )


def check_comparator(
    value: str, pointer: str = "/alert/threshold/comparator"
) -> Comparator:
    """Return ``value`` as a :data:`Comparator`, or refuse it at ``pointer``."""
    for comparator in COMPARATORS:
        if value == comparator:
            return comparator

    raise _refused(pointer, f"must be one of {', '.join(COMPARATORS)}")


def _problem(pointer: str, rule: str, aligned: datetime) -> Problem:
    return Problem(pointer, f"{_field(pointer)} {rule}: {format_utc(aligned)}")


# -- alerts ------------------------------------------------------------------

_COMPARE: dict[str, Callable[[Number, Number], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}


def fires(value: Number | None, comparator: Comparator, threshold: Number) -> bool:
    """Tell whether ``value <comparator> threshold`` holds, compared exactly.

    A missing (None) or NaN value never fires, nor does a NaN threshold:
    "unknown" must not page anyone, not even through ``ne``.
    """
    compare = _COMPARE.get(comparator)
    if compare is None:
        raise ValueError(f"unknown comparator {comparator!r}")
    left, right = _number(value), _number(threshold)
    if left is None or right is None or _is_nan(left) or _is_nan(right):
        return False

    return compare(left, right)


def alert_key(
    orgcode: str,
    kpi_code: str,
    scope: str,
    bucket: Bucket,
    bucket_start: datetime,
    comparator: Comparator,
    threshold_value: Number,
) -> str:
    """Return the idempotency key of one alert rule firing for one bucket.

    The key is the SHA-256 (lower-case hex) of a canonical JSON array, so it
    is stable across processes and versions of Python. Thresholds that are
    numerically equal give the same key (1, 1.0 and Decimal("1.00")); a float
    stands for its shortest round-tripping decimal, so 0.1 and Decimal("0.1")
    agree. ``bucket_start`` must be aligned to ``bucket``.
    """
    start = _utc(bucket_start)
    if _floor(bucket, start) != start:
        raise ValueError(f"{bucket_start!r} is not aligned to the {bucket} grid")

    canonical = [
        "ipm.kpi.alert/1",
        orgcode,
        kpi_code,
        scope,
        bucket,
        format_utc(start),
        comparator,
        canonical_number(threshold_value),
    ]
    text = json.dumps(canonical, ensure_ascii=True, separators=(",", ":"))

    return hashlib.sha256(text.encode("ascii")).hexdigest()


def canonical_number(x: Number) -> str:
    """Spell a number so that numerically equal values read the same.

    Finite values become ``[-]DIGITSeEXP`` with no trailing zero in DIGITS
    (``0`` for zero, ``15e-1`` for 1.5); otherwise ``NaN``, ``Infinity`` or
    ``-Infinity``. A float is first read as its shortest decimal (``repr``).
    """
    n = _number(x)
    if n is None:
        raise TypeError("a threshold cannot be None")
    d = _as_decimal(n)
    if d.is_nan():
        return "NaN"
    if d.is_infinite():
        return "-Infinity" if d < 0 else "Infinity"
    if d.is_zero():
        return "0"

    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite, so never "n", "N" or "F"
    text = "".join(map(str, digits))
    kept = text.rstrip("0")

    return f"{'-' if sign else ''}{kept}e{exponent + len(text) - len(kept)}"


_floor = bucket_start  # alert_key's parameter shadows the function's name


def _number(x: Number | None) -> Number | None:
    # bool is an int to Python, but true is no number on the wire.
    if isinstance(x, bool) or not isinstance(x, int | float | Decimal | None):
        raise TypeError(f"expected int, float or Decimal, got {type(x).__name__}")

    return x


def _is_nan(x: Number) -> bool:
    if isinstance(x, Decimal):
        return x.is_nan()

    return isinstance(x, float) and math.isnan(x)


def _as_decimal(x: Number) -> Decimal:
    # repr gives the shortest text that reads back as the same float.
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


# -- rollups -----------------------------------------------------------------


class RollupRow(NamedTuple):
    """One window of the coarser grid: its bounds, the folded value and the
    number of source points folded into it."""

    start: datetime
    end: datetime
    value: Number
    source_count: int


def check_rollup(source: Bucket, target: Bucket, pointer: str = "/bucket") -> None:
    """Refuse rolling ``source`` up into a ``target`` it does not nest in."""
    if BUCKETS.index(target) <= BUCKETS.index(source):
        raise _refused(pointer, f"{target} is not coarser than {source}")
    if (source, target) == ("weekly", "monthly"):
        raise _refused(pointer, "weeks do not nest in months; roll up daily")


def rollup(
    points: Iterable[tuple[datetime, Number | None]],
    source_bucket: Bucket,
    target_bucket: Bucket,
    fn: Rollup,
) -> list[RollupRow]:
    """Fold ``(source bucket_start, value)`` points into ``target_bucket``.

    Points may come in any order; each must start a distinct source bucket.
    None and NaN values are skipped and not counted; a window with no value
    left yields no row. Rows come out ordered by start. ``last`` is the value
    of the latest source bucket in the window.
    """
    check_rollup(source_bucket, target_bucket)
    fold = _FOLDS.get(fn)
    if fold is None:
        raise _refused("/rollup", f"must be one of {', '.join(ROLLUPS)}")

    windows: dict[datetime, list[tuple[datetime, Number]]] = {}
    for start, value in _checked(points, source_bucket):
        if value is None or _is_nan(value):
            continue
        window = bucket_start(target_bucket, start)
        windows.setdefault(window, []).append((start, value))

    return [
        _row(target_bucket, window, windows[window], fold) for window in sorted(windows)
    ]


def _checked(
    points: Iterable[tuple[datetime, Number | None]], source: Bucket
) -> Iterator[tuple[datetime, Number | None]]:
    # Storage guarantees one snapshot per bucket; a breach is a bug upstream.
    seen: set[datetime] = set()
    for start, value in points:
        u = _utc(start)
        if bucket_start(source, u) != u or u in seen:
            raise ValueError(f"{u.isoformat()} is misaligned or repeated")
        seen.add(u)
        yield u, _number(value)


def _row(
    bucket: Bucket,
    window: datetime,
    points: list[tuple[datetime, Number]],
    fold: Callable[[Sequence[Number]], Number],
) -> RollupRow:
    values = [value for _, value in sorted(points, key=lambda point: point[0])]

    return RollupRow(window, bucket_end(bucket, window), fold(values), len(values))


# Private contexts keep answers independent of the caller's thread context.
# No traps: like floats, Infinity - Infinity gives NaN instead of raising.
# 100 digits keep any realistic sum exact; a mean is rounded to 34 (decimal128).
_SUM = Context(prec=100, traps=[])
_AVERAGE = Context(prec=34, traps=[])


def _sum(values: Sequence[Number]) -> Number:
    if any(isinstance(v, Decimal) for v in values):
        return reduce(_SUM.add, map(_as_decimal, values), Decimal(0))
    if not any(isinstance(v, float) for v in values):
        return sum(values)

    try:
        return math.fsum(values)
    except OverflowError:
        # The true sum is beyond float (or an int is): let it round to ±inf.
        return float(reduce(_SUM.add, map(Decimal, values), Decimal(0)))


def _avg(values: Sequence[Number]) -> Number:
    total = _sum(values)
    if isinstance(total, Decimal):
        return _AVERAGE.divide(total, len(values))

    try:
        return total / len(values)
    except OverflowError:  # a mean of huge ints, beyond float range
        return math.inf if total > 0 else -math.inf


_FOLDS: dict[str, Callable[[Sequence[Number]], Number]] = {
    "sum": _sum,
    "min": min,
    "max": max,
    "avg": _avg,
    "last": operator.itemgetter(-1),
}
