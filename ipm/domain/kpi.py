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
a no-op (the stored alert itself is in :mod:`ipm.domain.alerts`).
:func:`rollup` folds a series into a coarser grid.

A snapshot (:class:`Kpi`) is the latest value of one bucket. :func:`record`
applies the revision rules to a checked :class:`RecordKpi`;
:func:`snapshot_from_wire` and :func:`query_from_wire` turn wire objects into
checked commands, reporting every fault with its pointer at once.

docs/kpi.md states every rule here for integrators.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from functools import reduce
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

import attrs

from ipm.domain.errors import (
    InvalidRequest,
    Problem,
    RevisionMismatch,
    check_revision,
)
from ipm.domain.revision import FIRST, next_revision
from ipm.domain.timeutil import field_name as _field
from ipm.domain.timeutil import format_utc, parse_utc
from ipm.domain.timeutil import refused as _refused
from ipm.domain.timeutil import to_utc as _utc

Bucket: TypeAlias = Literal["hourly", "daily", "weekly", "monthly"]
Comparator: TypeAlias = Literal["gt", "gte", "lt", "lte", "eq", "ne"]
Rollup: TypeAlias = Literal["sum", "min", "max", "avg", "last"]
Number: TypeAlias = int | float | Decimal
_T = TypeVar("_T")

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


# -- fast paths for stored snapshots ----------------------------------------


def _after_aligned(bucket: Bucket, start: datetime) -> datetime:
    # bucket_end for a start known to be aligned (a stored snapshot's).
    if bucket != "monthly":
        return start + _STEP[bucket]

    carry, month = divmod(start.month, 12)

    return start.replace(year=start.year + carry, month=month + 1)


# -- values and wire checks --------------------------------------------------

Value: TypeAlias = int | float | None
"""A value as ipm stores it: a finite int or float, or None for "unknown"."""

Outcome: TypeAlias = Literal["created", "updated", "unchanged"]

DEFAULT_SCOPE = "org"
SCOPE_MAX_LENGTH = 64


def check_value(value: object, pointer: str = "/kpi/value") -> Value:
    """Return ``value`` if it is null or a finite int or float, or refuse it.

    JSON cannot carry NaN or the infinities back out, so nothing stored
    holds one; ``true`` is no number either.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(pointer, "must be a number or null")
    if isinstance(value, float) and not math.isfinite(value):
        raise _refused(pointer, "must be a finite number")

    return value


def check_scope(scope: object, pointer: str = "/kpi/scope") -> str:
    """Return ``scope`` if it is a string of 1-64 characters, or refuse it."""
    if isinstance(scope, str) and 0 < len(scope) <= SCOPE_MAX_LENGTH:
        return scope

    raise _refused(pointer, f"must be a string of 1-{SCOPE_MAX_LENGTH} characters")


def check_start(bucket: Bucket, start: object, pointer: str) -> datetime:
    """Return ``start`` in UTC if it is an aware datetime starting a ``bucket``."""
    if not isinstance(start, datetime):
        raise _refused(pointer, "must be an aware datetime")
    try:
        u = _on_grid(start)
    except ValueError:
        raise _refused(pointer, "must be aware and on the bucket grid") from None

    aligned = bucket_start(bucket, u)
    if u != aligned:
        problem = _problem(pointer, f"must be aligned to the {bucket} grid", aligned)
        raise InvalidRequest(problem.message, [problem])

    return u


def same_value(a: Value, b: Value) -> bool:
    """Whether two readings agree: both null, or numerically equal (1 == 1.0)."""
    if a is None or b is None:
        return a is None and b is None

    return a == b


def validate_field(
    check: Callable[[Any, str], object], pointer: str
) -> Callable[[Any, Any, Any], None]:
    """An attrs validator that runs a wire check at a fixed pointer."""

    def validate(_instance: Any, _attribute: Any, value: Any) -> None:
        check(value, pointer)

    return validate


def validate_start(prefix: str) -> Callable[[Any, Any, Any], None]:
    def validate(instance: Any, _attribute: Any, value: Any) -> None:
        check_start(instance.bucket, value, f"{prefix}/bucket_start")

    return validate


def as_utc(value: Any) -> Any:
    # A converter: aware datetimes become UTC; the validator refuses the rest.
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return _utc(value)

    return value


class Problems:
    """Runs several wire checks and reports every fault, not only the first."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    def take(self, check: Callable[[], _T]) -> _T | None:
        try:
            return check()
        except InvalidRequest as error:
            self.found.extend(error.details)
            return None

    def raise_any(self) -> None:
        if self.found:
            message = "; ".join(p.message for p in self.found)
            raise InvalidRequest(message, self.found)


def text_field(raw: Mapping[str, Any], name: str, default: str = "") -> str:
    # A missing or non-string field reads as "", which every check refuses.
    value = raw.get(name, default)

    return value if isinstance(value, str) else ""


def _instant(raw: Mapping[str, Any], name: str, pointer: str) -> datetime:
    value = raw.get(name)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise _refused(f"{pointer}/{name}", "needs a time zone")
        return _utc(value)

    return parse_utc(text_field(raw, name), f"{pointer}/{name}")


def window_fields(
    problems: Problems, raw: Mapping[str, Any], pointer: str
) -> tuple[Bucket | None, datetime | None]:
    """Check ``bucket``, ``bucket_start`` and ``bucket_end`` of a wire object."""
    bucket = problems.take(
        lambda: check_bucket(text_field(raw, "bucket"), f"{pointer}/bucket")
    )
    start = problems.take(lambda: _instant(raw, "bucket_start", pointer))
    end = problems.take(lambda: _instant(raw, "bucket_end", pointer))
    if bucket is not None and start is not None and end is not None:
        problems.take(lambda: check_window(bucket, start, end, pointer))

    return bucket, start


def code_and_scope(
    problems: Problems, raw: Mapping[str, Any], pointer: str
) -> tuple[str | None, str | None]:
    code = problems.take(
        lambda: check_kpi_code(text_field(raw, "kpi_code"), f"{pointer}/kpi_code")
    )
    scope = problems.take(
        lambda: check_scope(raw.get("scope", DEFAULT_SCOPE), f"{pointer}/scope")
    )

    return code, scope


def required_value(
    problems: Problems,
    raw: Mapping[str, Any],
    pointer: str,
    check: Callable[..., Value],
) -> Value:
    if "value" not in raw:
        problems.found.append(Problem(f"{pointer}/value", "value is required"))
        return None

    return problems.take(lambda: check(raw["value"], f"{pointer}/value"))


# -- snapshots ---------------------------------------------------------------


@attrs.frozen
class RecordKpi:
    """One snapshot as a caller sends it, checked when it is built.

    ``bucket_start`` must start a bucket of the grid (its end follows);
    faults are :class:`InvalidRequest` at ``/kpi/...`` pointers.
    """

    kpi_code: str = attrs.field(
        validator=validate_field(check_kpi_code, "/kpi/kpi_code")
    )
    bucket: Bucket = attrs.field(validator=validate_field(check_bucket, "/kpi/bucket"))
    bucket_start: datetime = attrs.field(
        converter=as_utc, validator=validate_start("/kpi")
    )
    value: Value = attrs.field(validator=validate_field(check_value, "/kpi/value"))
    scope: str = attrs.field(
        default=DEFAULT_SCOPE, validator=validate_field(check_scope, "/kpi/scope")
    )

    @property
    def bucket_end(self) -> datetime:
        return bucket_end(self.bucket, self.bucket_start)


def snapshot_from_wire(raw: Mapping[str, Any], pointer: str = "/kpi") -> RecordKpi:
    """Build a :class:`RecordKpi` from its wire form, reporting every fault.

    The parser of ``POST /kpi/record`` and of KPI import lines alike:
    timestamps may be RFC 3339 text or aware datetimes, ``scope`` defaults
    to ``"org"`` and ``bucket_end`` must start the next bucket.
    """
    try:
        # Most snapshots are fine: build one directly, and only when that
        # fails go through every field to report each fault at its pointer.
        bucket = check_bucket(text_field(raw, "bucket"))
        start = _instant(raw, "bucket_start", pointer)
        check_window(bucket, start, _instant(raw, "bucket_end", pointer), pointer)
        scope = raw.get("scope", DEFAULT_SCOPE)
        return RecordKpi(
            text_field(raw, "kpi_code"), bucket, start, raw["value"], scope
        )
    except (InvalidRequest, KeyError):
        return _snapshot_reporting_all(raw, pointer)


def _snapshot_reporting_all(raw: Mapping[str, Any], pointer: str) -> RecordKpi:
    problems = Problems()
    code, scope = code_and_scope(problems, raw, pointer)
    bucket, start = window_fields(problems, raw, pointer)
    value = required_value(problems, raw, pointer, check_value)
    problems.raise_any()

    assert code and scope and bucket and start  # raise_any saw to it

    return RecordKpi(code, bucket, start, value, scope)


@attrs.frozen
class Kpi:
    """A stored snapshot: the latest value of one bucket of one KPI and scope."""

    kpi_id: str
    kpi_code: str
    scope: str
    bucket: Bucket
    bucket_start: datetime
    value: Value
    revision: str
    created_at: datetime
    updated_at: datetime
    # The wire form, made once: a recorded snapshot is written to the
    # database, its event and the response, each from the same text.
    _wire: dict[str, Any] | None = attrs.field(
        default=None, init=False, eq=False, repr=False
    )

    @property
    def bucket_end(self) -> datetime:
        return bucket_end(self.bucket, self.bucket_start)

    def to_wire(self) -> dict[str, Any]:
        wire = self._wire
        if wire is None:
            wire = self._make_wire()
            object.__setattr__(self, "_wire", wire)

        return dict(wire)

    def _make_wire(self) -> dict[str, Any]:
        # A page holds hundreds of these: the fast paths below matter.
        created = format_utc(self.created_at)
        same = self.updated_at is self.created_at
        return {
            "kpi_id": self.kpi_id,
            "kpi_code": self.kpi_code,
            "scope": self.scope,
            "bucket": self.bucket,
            "bucket_start": format_utc(self.bucket_start),
            "bucket_end": format_utc(_after_aligned(self.bucket, self.bucket_start)),
            "value": self.value,
            "revision": self.revision,
            "created_at": created,
            "updated_at": created if same else format_utc(self.updated_at),
        }


def record(
    current: Kpi | None,
    snapshot: RecordKpi,
    *,
    new_id: Callable[[], str],
    now: datetime,
    expected_revision: str | None = None,
    upsert: bool = False,
) -> tuple[Kpi, Outcome]:
    """Apply the revision rules to one snapshot; return it and what happened.

    A new key is created and needs no revision (one given for it is stale:
    409). Recording an existing key needs ``expected_revision`` (428 when
    absent, 409 when stale) unless ``upsert`` (bulk loads) waives it; a
    given revision is checked even then. The same value again is
    ``"unchanged"``: no new revision, nothing to record.
    """
    if current is None:
        if expected_revision is not None:
            raise RevisionMismatch(
                "the KPI snapshot does not exist yet: send no expected_revision",
                [Problem("/expected_revision", "the snapshot does not exist yet")],
            )
        return _first(new_id(), snapshot, now), "created"

    if expected_revision is not None or not upsert:
        check_revision(current.revision, expected_revision, "KPI snapshot")
    if same_value(current.value, snapshot.value):
        return current, "unchanged"

    changed = attrs.evolve(
        current,
        value=snapshot.value,
        revision=next_revision(current.revision),
        updated_at=now,
    )

    return changed, "updated"


def _first(kpi_id: str, snapshot: RecordKpi, now: datetime) -> Kpi:
    return Kpi(
        kpi_id=kpi_id,
        kpi_code=snapshot.kpi_code,
        scope=snapshot.scope,
        bucket=snapshot.bucket,
        bucket_start=snapshot.bucket_start,
        value=snapshot.value,
        revision=FIRST,
        created_at=now,
        updated_at=now,
    )


def recorded_payload(kpi: Kpi, old_value: Value) -> dict[str, Any]:
    """The payload of the ``kpi.recorded`` event: what changed, old and new."""
    return {
        "kpi_id": kpi.kpi_id,
        "kpi_code": kpi.kpi_code,
        "scope": kpi.scope,
        "bucket": kpi.bucket,
        "bucket_start": kpi.to_wire()["bucket_start"],
        "old_value": old_value,
        "new_value": kpi.value,
        "revision": kpi.revision,
    }


# -- series queries ----------------------------------------------------------


@attrs.frozen
class SeriesQuery:
    """A series of one KPI and scope: ``bucket_start`` in ``[from_utc, to_utc)``.

    With ``rollup`` the series is folded on the fly from the finer
    ``from_bucket`` into ``bucket``; each row covers its whole ``bucket``.
    """

    kpi_code: str
    bucket: Bucket
    from_utc: datetime
    to_utc: datetime
    scope: str = DEFAULT_SCOPE
    rollup: Rollup | None = None
    from_bucket: Bucket | None = None

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
    code, scope = code_and_scope(problems, raw, "")
    bucket = problems.take(lambda: check_bucket(text_field(raw, "bucket"), "/bucket"))
    lo = problems.take(lambda: _instant(raw, "from_utc", ""))
    hi = problems.take(lambda: _instant(raw, "to_utc", ""))
    if lo is not None and hi is not None and lo > hi:
        problems.found.append(Problem("/to_utc", "to_utc must not be before from_utc"))
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


def _check_fn(value: str) -> Rollup:
    for fn in ROLLUPS:
        if value == fn:
            return fn

    raise _refused("/rollup/function", f"must be one of {', '.join(ROLLUPS)}")


def ceil_bucket(bucket: Bucket, t: datetime) -> datetime:
    """The first ``bucket`` start at or after ``t`` (at most :data:`GRID_MAX`)."""
    u = _utc(t)
    if u >= GRID_MAX:
        return GRID_MAX

    start = bucket_start(bucket, u)

    return start if start == u else bucket_end(bucket, start)


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
            end, group = _after_aligned(query.bucket, start), []
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
    # Snapshots hold no decimals; a float sum beyond range has no JSON form.
    as_float = float(value) if isinstance(value, Decimal) else value
    if isinstance(as_float, float) and not math.isfinite(as_float):
        return None

    return as_float


def _digest(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))

    return hashlib.sha256(text.encode("ascii")).hexdigest()
