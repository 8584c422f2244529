"""KPI snapshots, values and alert rules: pure rules, no I/O.

Theory of operation
-------------------
A snapshot (:class:`Kpi`) is the latest value of one bucket of one KPI
code and scope; the bucket grid itself is :mod:`ipm.domain.kpi_grid`.
:func:`record` applies the revision rules to a checked :class:`RecordKpi`;
:func:`snapshot_from_wire` turns a wire object into one, reporting every
fault with its pointer at once. Series queries and rollups are
:mod:`ipm.domain.kpi_series`.

Timestamps cross the wire as RFC 3339 text. :func:`parse_utc` is the way in
(``Z`` or a numeric offset, normalised to UTC; anything else is an
:class:`InvalidRequest` at a JSON pointer) and :func:`format_utc` the way out.

Alerts compare a value with a threshold exactly: int, float and Decimal mix
without rounding, and a missing or NaN value never fires. :func:`alert_key`
names one rule firing for one bucket, so storing the same alert twice can be
a no-op (the stored alert itself is in :mod:`ipm.domain.alerts`).

docs/kpi.md states every rule here for integrators.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeAlias, TypeVar

import attrs

from ipm.domain.errors import (
    InvalidRequest,
    Problem,
    RevisionMismatch,
    check_revision,
)
from ipm.domain.jsoncodec import is_writable
from ipm.domain.kpi_grid import (
    Bucket,
    aligned_end,
    bucket_end,
    bucket_start,
    check_bucket,
    check_start,
    check_window,
)
from ipm.domain.revision import FIRST, next_revision
from ipm.domain.timeutil import check_instant, format_utc, parse_utc, parse_utc_bound
from ipm.domain.timeutil import refused as _refused
from ipm.domain.timeutil import to_utc as _utc

Comparator: TypeAlias = Literal["gt", "gte", "lt", "lte", "eq", "ne"]
Number: TypeAlias = int | float | Decimal
_T = TypeVar("_T")

COMPARATORS: tuple[Comparator, ...] = ("gt", "gte", "lt", "lte", "eq", "ne")

#: An upper-case ASCII letter, then up to 63 upper-case letters, digits or
#: underscores. Written for both Python and JSON Schema (ECMA-262) regexes.
KPI_CODE_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"

_KPI_CODE = re.compile(KPI_CODE_PATTERN)


# -- request checks ----------------------------------------------------------


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
    left, right = checked_number(value), checked_number(threshold)
    if left is None or right is None or is_nan(left) or is_nan(right):
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
    n = checked_number(x)
    if n is None:
        raise TypeError("a threshold cannot be None")
    d = as_decimal(n)
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


def checked_number(x: Number | None) -> Number | None:
    # bool is an int to Python, but true is no number on the wire.
    if isinstance(x, bool) or not isinstance(x, int | float | Decimal | None):
        raise TypeError(f"expected int, float or Decimal, got {type(x).__name__}")

    return x


def is_nan(x: Number) -> bool:
    if isinstance(x, Decimal):
        return x.is_nan()

    return isinstance(x, float) and math.isnan(x)


def as_decimal(x: Number) -> Decimal:
    # float's own repr gives the shortest text that reads back as the same
    # float (a subclass's repr may say more: "np.float64(5.5)").
    return Decimal(float.__repr__(x)) if isinstance(x, float) else Decimal(x)


def plain_number(value: Any) -> Any:
    """A converter: an int or float of a subclass (an IntEnum, a numpy
    scalar) as the plain int or float it stands for; anything else as it
    is, for the validator to judge. Stored, keyed and compared, a value is
    then what JSON would read back."""
    kind = type(value)
    if kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, int):
        return int.__int__(value)

    return value


def plain_text(value: Any) -> Any:
    """A converter: a str of a subclass (a StrEnum member) as the plain str
    it stands for; anything else as it is, for the validator to judge. A
    code or scope is then stored, keyed and returned as JSON reads it."""
    if type(value) is not str and isinstance(value, str):
        return str.__str__(value)

    return value


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
    if isinstance(value, int) and not is_writable(value):
        raise _refused(pointer, "integer has too many digits")

    return value


def check_scope(scope: object, pointer: str = "/kpi/scope", *, new: bool = True) -> str:
    """Return ``scope`` if it is a string of 1-64 characters, or refuse it.

    A scope names a slice of the org (``store:S014``) and is matched
    exactly, so what would make two spellings look alike is refused in a
    scope that is recorded (``new``): a control character, line break or
    invisible format character anywhere (a zero-width space, a
    right-to-left override: unseen in a dashboard, a forged line in a
    log; the zero-width joiner and non-joiner are kept where writing may
    need them, see :func:`_stray_joiner`), white space at either end, and text
    not in Unicode NFC (an accented letter written as two characters). A
    scope that is only read (a query's) may be one recorded before that
    rule. A lone surrogate is refused always: strict JSON cannot carry
    one, so only a direct call could send it, and no store could write it
    as UTF-8.
    """
    if not isinstance(scope, str) or not 0 < len(scope) <= SCOPE_MAX_LENGTH:
        raise _refused(pointer, f"must be a string of 1-{SCOPE_MAX_LENGTH} characters")
    if not scope.isascii() and not _encodes(scope):
        raise _refused(pointer, "must be valid Unicode text (no lone surrogate)")
    if not new:
        return scope
    # ASCII (the common case) is checked at C speed: its only unprintable
    # characters are the controls.
    if not scope.isprintable() if scope.isascii() else _unseen(scope):
        raise _refused(
            pointer, "must not hold control, format or line-break characters"
        )
    if not scope.isascii() and _stray_joiner(scope):
        raise _refused(
            pointer,
            "must not hold a zero-width joiner or non-joiner first or after "
            "ASCII or a space",
        )
    if scope.strip() != scope:
        raise _refused(pointer, "must not begin or end with white space")
    if not scope.isascii() and not unicodedata.is_normalized("NFC", scope):
        raise _refused(pointer, "must be in Unicode NFC form")

    return scope


_UNSEEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Unicode categories a scope may not hold: controls, format characters
(zero-width, direction marks), line and paragraph separators."""


_ZWNJ, _ZWJ = "\u200c", "\u200d"


def _unseen(text: str) -> bool:
    return any(
        unicodedata.category(char) in _UNSEEN and char not in (_ZWNJ, _ZWJ)
        for char in text
    )


def _stray_joiner(text: str) -> bool:
    """Whether a zero-width joiner or non-joiner stands where no writing
    puts one: first, or after ASCII, white space or another joiner. After
    any other character (a virama, an Arabic or Bengali letter, an emoji,
    a mark) it is let be: which of those a joiner changes on screen needs
    data Python does not have (joining types, emoji properties), and real
    text in Malayalam, Bengali, Sinhala, Persian and emoji needs it there.
    """
    for at, char in enumerate(text):
        if char in (_ZWNJ, _ZWJ):
            before = text[at - 1] if at else " "
            if before.isascii() or before.isspace() or before in (_ZWNJ, _ZWJ):
                return True

    return False


def check_flag(value: object, pointer: str) -> bool:
    """Return ``value`` if it is True or False, or refuse it.

    Python would read "no", 0 or None as a truth value; the wire only
    knows ``true`` and ``false``.
    """
    if isinstance(value, bool):
        return value

    raise _refused(pointer, "must be true or false")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False

    return True


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
    # A converter: aware datetimes and RFC 3339 text become UTC datetimes;
    # the validator refuses the rest, at its pointer (also an instant that
    # UTC cannot hold, such as year 1 at +05:00, and text that is no time).
    return _converted(value, parse_utc)


def as_utc_start(value: Any) -> Any:
    """:func:`as_utc` for a window's start: text is rounded up to the
    microsecond (:func:`~ipm.domain.timeutil.parse_utc_bound`)."""
    return _converted(value, parse_utc_bound)


def as_utc_end(value: Any) -> Any:
    """:func:`as_utc_start` for a window's end."""
    return _converted(value, _parse_end)


def _parse_end(text: str, pointer: str) -> datetime:
    return parse_utc_bound(text, pointer, end=True)


def _converted(value: Any, parse: Callable[[str, str], datetime]) -> Any:
    if isinstance(value, str):
        try:
            return parse(value, "")
        except InvalidRequest:
            return value
    if isinstance(value, datetime) and value.utcoffset() is not None:
        try:
            return _utc(value)
        except ValueError:
            return value

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


def instant_field(
    raw: Mapping[str, Any],
    name: str,
    pointer: str,
    *,
    bound: Literal["start", "end"] | None = None,
) -> datetime:
    """An instant of a wire object; a window's ``bound`` is rounded up to
    the microsecond, so ``[from, to)`` holds exactly the times it names."""
    value = raw.get(name)
    if isinstance(value, datetime):
        return check_instant(value, f"{pointer}/{name}")
    parse = {None: parse_utc, "start": parse_utc_bound, "end": _parse_end}[bound]

    return parse(text_field(raw, name), f"{pointer}/{name}")


def window_fields(
    problems: Problems, raw: Mapping[str, Any], pointer: str
) -> tuple[Bucket | None, datetime | None]:
    """Check ``bucket``, ``bucket_start`` and ``bucket_end`` of a wire object."""
    bucket = start = end = None
    if present(problems, raw, "bucket", pointer):
        bucket = problems.take(
            lambda: check_bucket(text_field(raw, "bucket"), f"{pointer}/bucket")
        )
    if present(problems, raw, "bucket_start", pointer):
        start = problems.take(lambda: instant_field(raw, "bucket_start", pointer))
    if present(problems, raw, "bucket_end", pointer):
        end = problems.take(lambda: instant_field(raw, "bucket_end", pointer))
    if bucket is not None and start is not None and end is not None:
        problems.take(lambda: check_window(bucket, start, end, pointer))

    return bucket, start


def code_and_scope(
    problems: Problems, raw: Mapping[str, Any], pointer: str, *, new: bool = True
) -> tuple[str | None, str | None]:
    code = None
    if present(problems, raw, "kpi_code", pointer):
        code = problems.take(
            lambda: check_kpi_code(text_field(raw, "kpi_code"), f"{pointer}/kpi_code")
        )
    scope = problems.take(
        lambda: check_scope(
            raw.get("scope", DEFAULT_SCOPE), f"{pointer}/scope", new=new
        )
    )

    return code, scope


def required_value(
    problems: Problems,
    raw: Mapping[str, Any],
    pointer: str,
    check: Callable[..., Value],
) -> Value:
    if not present(problems, raw, "value", pointer):
        return None

    return problems.take(lambda: check(raw["value"], f"{pointer}/value"))


def present(
    problems: Problems, raw: Mapping[str, Any], name: str, pointer: str
) -> bool:
    """Whether ``raw`` has the required field ``name``; if not, the problem
    says it is missing (not that "" has the wrong form)."""
    if name in raw:
        return True
    problems.found.append(Problem(f"{pointer}/{name}", f"{name} is required"))

    return False


# -- snapshots ---------------------------------------------------------------


@attrs.frozen
class RecordKpi:
    """One snapshot as a caller sends it, checked when it is built.

    ``bucket_start`` must start a bucket of the grid (its end follows);
    faults are :class:`InvalidRequest` at ``/kpi/...`` pointers.
    """

    kpi_code: str = attrs.field(
        converter=plain_text,
        validator=validate_field(check_kpi_code, "/kpi/kpi_code"),
    )
    bucket: Bucket = attrs.field(
        converter=plain_text, validator=validate_field(check_bucket, "/kpi/bucket")
    )
    bucket_start: datetime = attrs.field(
        converter=as_utc, validator=validate_start("/kpi")
    )
    value: Value = attrs.field(
        converter=plain_number, validator=validate_field(check_value, "/kpi/value")
    )
    scope: str = attrs.field(
        default=DEFAULT_SCOPE,
        converter=plain_text,
        validator=validate_field(check_scope, "/kpi/scope"),
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
        # Most snapshots are fine: build one directly (its validators check
        # code, bucket, grid alignment, value and scope), and only when that
        # fails go through every field to report each fault at its pointer.
        bucket = check_bucket(text_field(raw, "bucket"))
        start = instant_field(raw, "bucket_start", pointer)
        end = instant_field(raw, "bucket_end", pointer)
        scope = raw.get("scope", DEFAULT_SCOPE)
        snapshot = RecordKpi(
            text_field(raw, "kpi_code"), bucket, start, raw["value"], scope
        )
    except (InvalidRequest, KeyError):
        return _snapshot_reporting_all(raw, pointer)
    if end != aligned_end(bucket, snapshot.bucket_start):
        return _snapshot_reporting_all(raw, pointer)

    return snapshot


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
            "bucket_end": format_utc(aligned_end(self.bucket, self.bucket_start)),
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
