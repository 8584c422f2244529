"""UTC timestamps on the wire: strict RFC 3339 in, ``YYYY-MM-DDTHH:MM:SSZ`` out.

Naive timestamps are refused rather than guessed at: a time without an
offset means different instants on different machines. The parser is a
strict regular expression rather than ``datetime.fromisoformat``, which
also accepts forms RFC 3339 does not (compact dates, week dates, missing
seconds).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from ipm.domain.errors import InvalidRequest, Problem


def to_utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t!r}: ipm needs an aware datetime")

    try:
        return t.astimezone(UTC)
    except OverflowError as error:
        raise ValueError(f"{t!r} is outside the range of datetime in UTC") from error


_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_EXAMPLE = "2026-01-01T00:00:00Z"


_CANONICAL = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
)
"""What :func:`format_utc` writes for a whole second: most timestamps sent."""


def parse_utc(text: str, pointer: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    ``Z`` and numeric offsets are accepted and normalised to UTC. A timestamp
    without a zone, a leap second, an impossible date and anything that is not
    RFC 3339 raise :class:`InvalidRequest` with one :class:`Problem` at
    ``pointer``. Fractions beyond microseconds are truncated.
    """
    if type(text) is str and len(text) == 20 and _CANONICAL.fullmatch(text):
        # The canonical form, read in C; an impossible date (February 30)
        # falls through to the full parser, which says what is wrong.
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass

    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise refused(pointer, f"must be an RFC 3339 timestamp such as {_EXAMPLE}")
    if match["zone"] is None:
        raise refused(pointer, f"needs a time zone, Z or an offset, such as {_EXAMPLE}")
    if match["second"] == "60":
        raise refused(pointer, "is a leap second, which ipm cannot represent")

    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            int((match["fraction"] or "0")[:6].ljust(6, "0")),
            tzinfo=_zone(match["zone"]),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        problem = "is not a real instant (check date, time and offset)"
        raise refused(pointer, problem) from None


def parse_utc_bound(text: str, pointer: str, *, end: bool = False) -> datetime:
    """:func:`parse_utc` for a window's bound, rounded up to the microsecond.

    Stored times hold microseconds, so a bound with finer digits that are
    not all zero lies strictly between two of them: rounding it up keeps
    ``[from, to)`` exact (``10:00:00.0000001Z`` excludes ``10:00:00Z``,
    and as an ``end`` includes it). Past the last instant there is, an
    end is that instant; a start is refused.
    """
    moment = parse_utc(text, pointer)
    match = _RFC3339.fullmatch(text)
    fraction = (match["fraction"] or "") if match is not None else ""
    if fraction[6:].strip("0"):
        try:
            moment += timedelta(microseconds=1)
        except OverflowError:
            if not end:
                raise refused(
                    pointer, "is past the last instant ipm can hold"
                ) from None
            # 9999-12-31T23:59:59.9999999Z, a common "no end": the last
            # instant there is (a time stored exactly then, the one left
            # out of such an end, is no time any clock of ipm's gives).
            return moment

    return moment


def format_utc(dt: datetime) -> str:
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC.

    Microseconds appear, as six digits, only when they are not zero.
    """
    # isoformat (in C) pads the year to four digits and shows microseconds
    # only when there are some: exactly this format, with "+00:00" for "Z".
    # The datetimes ipm builds itself are already UTC: no conversion then.
    utc = dt if dt.tzinfo is UTC else to_utc(dt)

    return utc.isoformat()[:-6] + "Z"


def _zone(text: str) -> timezone:
    if text in ("Z", "z"):
        return UTC

    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {text} out of range")
    offset = timedelta(hours=hours, minutes=minutes)

    return timezone(-offset if text[0] == "-" else offset)


def check_bound(value: object, pointer: str, *, end: bool = False) -> datetime:
    """:func:`check_instant` for a window's bound: text is read by
    :func:`parse_utc_bound`, so ``[from, to)`` stays exact."""
    if isinstance(value, str):
        return parse_utc_bound(value, pointer, end=end)

    return check_instant(value, pointer)


def check_instant(value: object, pointer: str) -> datetime:
    """Return ``value`` in UTC if it is an aware datetime or RFC 3339 text.

    The one check of an instant a host passes in, so every typed method
    takes what the wire takes as well as a datetime: naive, neither, or
    beyond the range of UTC (year 1 at +05:00) is an InvalidRequest at
    ``pointer``.
    """
    if isinstance(value, str):
        return parse_utc(value, pointer)
    if not isinstance(value, datetime):
        raise refused(pointer, "must be an aware datetime or RFC 3339 text")
    if value.utcoffset() is None:
        raise refused(pointer, "needs a time zone")
    try:
        return to_utc(value)
    except ValueError:
        raise refused(pointer, "is outside the range of datetime in UTC") from None


def refused(pointer: str, problem: str) -> InvalidRequest:
    message = f"{field_name(pointer)} {problem}"

    return InvalidRequest(message, [Problem(pointer, message)])


def field_name(pointer: str) -> str:
    return pointer.rsplit("/", 1)[-1] or "value"
