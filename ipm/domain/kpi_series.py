"""KPI series: queries over a window, and rollups into a coarser bucket.

:func:`query_from_wire` turns a ``POST /kpi/query`` body into a checked
:class:`SeriesQuery`. :func:`rollup` folds ``(start, value)`` points into a
coarser grid; :func:`rollup_series` does the same lazily over stored
snapshots ordered by start, so a page can stop early. Sums and means of
decimals use private contexts, so no caller's decimal context changes an
answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Context, Decimal
from fractions import Fraction
from functools import reduce
from typing import Any, Literal, NamedTuple, TypeAlias

import attrs

from ipm.domain.errors import Problem
from ipm.domain.jsoncodec import is_writable
from ipm.domain.kpi import (
    DEFAULT_SCOPE,
    Kpi,
    Number,
    Problems,
    Value,
    as_decimal,
    as_utc_end,
    as_utc_start,
    check_kpi_code,
    check_scope,
    checked_number,
    code_and_scope,
    instant_field,
    is_nan,
    text_field,
)
from ipm.domain.kpi_grid import (
    BUCKETS,
    GRID_MAX,
    GRID_MIN,
    Bucket,
    aligned_end,
    bucket_end,
    bucket_start,
    ceil_bucket,
    check_bucket,
)
from ipm.domain.timeutil import check_bound, check_instant, format_utc
from ipm.domain.timeutil import refused as _refused
from ipm.domain.timeutil import to_utc as _utc

Rollup: TypeAlias = Literal["sum", "min", "max", "avg", "last"]

ROLLUPS: tuple[Rollup, ...] = ("sum", "min", "max", "avg", "last")

_INVERTED = "to_utc must not be before from_utc"
_FN_REQUIRED = "function is required when from_bucket is given"
_SOURCE_REQUIRED = "from_bucket is required when a rollup is given"


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
        raise _refused(
            pointer, f"{source} must be finer than the query's bucket, {target}"
        )
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
        if value is None or is_nan(value):
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
        yield u, checked_number(value)


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
        return reduce(_SUM.add, map(as_decimal, values), Decimal(0))
    if not any(isinstance(v, float) for v in values):
        return sum(values)

    try:
        return math.fsum(part for value in values for part in _float_parts(value))
    except OverflowError:
        # An int (or the sum) is beyond float: the exact sum, rounded once.
        return _nearest_float(sum(map(Fraction, values), Fraction(0)))


def _nearest_float(exact: Fraction) -> float:
    """The float nearest ``exact``; ±inf beyond float range."""
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


def _float_parts(value: Number) -> Iterator[float]:
    """Floats whose exact sum is ``value``.

    An integer past 2**53 takes more than one: ``float()`` alone would drop
    its low bits before ``fsum`` could round the whole sum correctly.
    Beyond float range it raises ``OverflowError``.
    """
    if not isinstance(value, int):
        yield float(value)
        return
    while True:
        part = float(value)
        yield part
        value -= int(part)
        if not value:
            return


def _avg(values: Sequence[Number]) -> Number:
    total = _sum(values)
    if isinstance(total, Decimal):
        return _AVERAGE.divide(total, len(values))
    if isinstance(total, float) and math.isinf(total):
        # The float sum overflowed, yet the mean may be finite: take it
        # exactly, rounded once.
        exact = sum(map(Fraction, values), Fraction(0))
        return _nearest_float(exact / len(values))

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


# -- series queries ----------------------------------------------------------


@attrs.frozen
class SeriesQuery:
    """A series of one KPI and scope: ``bucket_start`` in ``[from_utc, to_utc)``.

    With ``rollup`` the series is folded on the fly from the finer
    ``from_bucket`` into ``bucket``; each row covers its whole ``bucket``.
    Built from the wire or by a host, it is checked as ``POST /kpi/query``
    is: every fault is an :class:`InvalidRequest` at the field's pointer.
    """

    kpi_code: str
    bucket: Bucket
    from_utc: datetime = attrs.field(converter=as_utc_start)
    to_utc: datetime = attrs.field(converter=as_utc_end)
    scope: str = DEFAULT_SCOPE
    rollup: Rollup | None = None
    from_bucket: Bucket | None = None

    def __attrs_post_init__(self) -> None:
        problems = Problems()
        problems.take(lambda: check_kpi_code(self.kpi_code, "/kpi_code"))
        bucket = problems.take(lambda: check_bucket(self.bucket, "/bucket"))
        # Text the converters could not read is refused as the route refuses
        # it (a start past the last instant, say), with its rounding.
        lo = problems.take(lambda: check_bound(self.from_utc, "/from_utc"))
        hi = problems.take(lambda: check_bound(self.to_utc, "/to_utc", end=True))
        if lo is not None and hi is not None and lo > hi:
            problems.found.append(Problem("/to_utc", _INVERTED))
        problems.take(lambda: check_scope(self.scope, "/scope", new=False))
        _check_rollup_fields(problems, self.rollup, self.from_bucket, bucket)
        problems.raise_any()

    @property
    def source_bucket(self) -> Bucket:
        """The bucket of the stored snapshots that the query reads."""
        return self.from_bucket or self.bucket

    def source_window(self, after: datetime | None) -> tuple[datetime, datetime]:
        """The ``[lo, hi)`` of stored ``bucket_start`` values to read.

        ``after`` is the last row already returned (keyset pagination). A
        rollup reads whole windows of the coarser bucket.
        """
        lo, hi = self.from_utc, self.to_utc
        if self.rollup is not None:
            lo, hi = ceil_bucket(self.bucket, lo), ceil_bucket(self.bucket, hi)
        if after is not None:
            following = after + timedelta(microseconds=1)
            if self.rollup is not None:
                following = bucket_end(self.bucket, after)
            lo = max(lo, following)

        return lo, max(lo, hi)


def query_from_wire(raw: Mapping[str, Any]) -> SeriesQuery:
    """Build a :class:`SeriesQuery` from a ``POST /kpi/query`` body."""
    problems = Problems()
    code, scope = code_and_scope(problems, raw, "", new=False)
    bucket = problems.take(lambda: check_bucket(text_field(raw, "bucket"), "/bucket"))
    lo = problems.take(lambda: instant_field(raw, "from_utc", "", bound="start"))
    hi = problems.take(lambda: instant_field(raw, "to_utc", "", bound="end"))
    if lo is not None and hi is not None and lo > hi:
        problems.found.append(Problem("/to_utc", _INVERTED))
    fn, source = _rollup_spec(problems, raw.get("rollup"), bucket)
    problems.raise_any()

    assert code and scope and bucket and lo and hi

    return SeriesQuery(code, bucket, lo, hi, scope, fn, source)


def _rollup_spec(
    problems: Problems, raw: object, target: Bucket | None
) -> tuple[Rollup | None, Bucket | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        problems.found.append(Problem("/rollup", "rollup must be an object"))
        return None, None

    fn = problems.take(lambda: _check_fn(text_field(raw, "function")))
    pointer = "/rollup/from_bucket"
    source = problems.take(
        lambda: check_bucket(text_field(raw, "from_bucket"), pointer)
    )
    if source is not None and target is not None:
        problems.take(lambda: check_rollup(source, target, pointer))

    return fn, source


def _check_rollup_fields(
    problems: Problems, fn: object, source: object, target: Bucket | None
) -> None:
    # A host's query names both or neither, as the wire's rollup object does.
    if fn is None and source is None:
        return
    if fn is None:
        problems.found.append(Problem("/rollup/function", _FN_REQUIRED))
    else:
        problems.take(lambda: _check_fn(fn))
    if source is None:
        problems.found.append(Problem("/rollup/from_bucket", _SOURCE_REQUIRED))
        return

    pointer = "/rollup/from_bucket"
    checked = problems.take(lambda: check_bucket(source, pointer))
    if checked is not None and target is not None:
        problems.take(lambda: check_rollup(checked, target, pointer))


def check_after(after: object, pointer: str = "/after") -> datetime | None:
    """Return a keyset position in UTC (None for the first page), or refuse it.

    ``after`` is normally the ``bucket_start`` of the last row already read;
    any instant within the grid's range is a position (rows start after it).
    """
    if after is None:
        return None

    u = check_instant(after, pointer)
    if not GRID_MIN <= u < GRID_MAX:
        raise _refused(pointer, f"must be before {format_utc(GRID_MAX)}")

    return u


def _check_fn(value: object) -> Rollup:
    for fn in ROLLUPS:
        if value == fn:
            return fn

    raise _refused("/rollup/function", f"must be one of {', '.join(ROLLUPS)}")


def rollup_series(query: SeriesQuery, snapshots: Iterable[Kpi]) -> Iterator[Kpi]:
    """Fold snapshots, ordered by ``bucket_start``, into the query's bucket.

    Lazy: rows come out as soon as their window is complete, so a caller
    can stop after one page. Each window is folded as :func:`rollup` folds
    it (the tests hold the two equal). Each row is shaped like a snapshot:
    its id names the rollup, its revision changes when any source snapshot
    does, and its ``created_at``/``updated_at`` span the sources. A window
    whose values are all null yields no row.
    """
    if query.rollup is None or query.from_bucket is None:
        raise ValueError("the query has no rollup")
    check_rollup(query.from_bucket, query.bucket)

    group: list[Kpi] = []
    start = end = GRID_MIN
    for kpi in snapshots:
        # Ordered input: a new window starts only when one ends, so the grid
        # is consulted once per window, not once per snapshot.
        if kpi.bucket_start >= end:
            row = _rolled(query, start, group)
            if row is not None:
                yield row
            start = bucket_start(query.bucket, kpi.bucket_start)
            end, group = aligned_end(query.bucket, start), []
        group.append(kpi)

    row = _rolled(query, start, group)
    if row is not None:
        yield row


def _rolled(query: SeriesQuery, start: datetime, group: list[Kpi]) -> Kpi | None:
    assert query.rollup is not None
    values = [kpi.value for kpi in group if kpi.value is not None]
    if not values:
        return None

    value = _finite(_FOLDS[query.rollup](values))
    name = [query.kpi_code, query.scope, query.bucket, format_utc(start)]
    name += [query.rollup, query.source_bucket]
    sources = [[kpi.kpi_id, kpi.revision] for kpi in group]

    return Kpi(
        kpi_id="rollup_" + _digest(name)[:26],
        kpi_code=query.kpi_code,
        scope=query.scope,
        bucket=query.bucket,
        bucket_start=start,
        value=value,
        revision=_digest(sources)[:16],
        created_at=min(kpi.created_at for kpi in group),
        updated_at=max(kpi.updated_at for kpi in group),
    )


def _finite(value: Number) -> Value:
    # Snapshots hold no decimals; a float sum beyond range has no JSON form,
    # and neither has an integer sum of more digits than Python will write.
    as_float = float(value) if isinstance(value, Decimal) else value
    if isinstance(as_float, float) and not math.isfinite(as_float):
        return None
    if isinstance(as_float, int) and not is_writable(as_float):
        return None

    return as_float


def _digest(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))

    return hashlib.sha256(text.encode("ascii")).hexdigest()
