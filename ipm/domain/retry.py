"""When to try a webhook delivery again: the retry policy, kept as data.

A delivery gets ``max_attempts`` tries. Before try ``n + 1`` it waits
``schedule[n - 1]`` seconds (the last step repeats when ``max_attempts``
outruns the schedule), spread by ``jitter`` so that endpoints that failed
together do not all come back at the same second. A receiver that answers
429 or 503 with ``Retry-After`` is believed, within
``[min_retry_after, max_retry_after]``: a hint of three weeks must not park
a delivery for three weeks, nor may a hint of zero turn retries into a
busy loop. Randomness comes in as a number, so the policy stays pure.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC, datetime, timedelta

import attrs

# Standard Webhooks' recommended schedule: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 10 h — eight tries in about a day and a quarter.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)

# Longest Retry-After value read, and longest header text: a header sent
# more than once arrives as its values joined with ", ".
_MOST_CHARS = 64
_MOST_JOINED_CHARS = 4 * _MOST_CHARS

# An HTTP-date's own comma follows its day name (IMF-fixdate, RFC 850 date).
_DAY_NAMES = frozenset(
    {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
    | {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
)


MOST_SECONDS = 366 * 86_400.0
"""The longest wait a policy may name (a schedule step, a Retry-After
bound, ``disable_after``): a year; longer, or not finite, is a mistake
that would only surface when a delivery is recorded."""


def _seconds(value: object) -> bool:
    """Whether ``value`` is a number of seconds a policy may name."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MOST_SECONDS
    )


def _check_schedule(
    instance: RetryPolicy,
    attribute: attrs.Attribute[tuple[float, ...]],
    schedule: tuple[float, ...],
) -> None:
    if not schedule or not all(_seconds(step) for step in schedule):
        raise ValueError("a retry schedule needs one or more delays of 0 s to a year")


def _check_seconds(
    instance: RetryPolicy, attribute: attrs.Attribute[float], value: float
) -> None:
    if not _seconds(value):
        raise ValueError(f"{attribute.name} must be 0 s to a year")


@attrs.frozen
class RetryPolicy:
    """How many tries a delivery gets and how long it waits between them."""

    schedule: tuple[float, ...] = attrs.field(
        default=DEFAULT_SCHEDULE, converter=tuple, validator=_check_schedule
    )
    max_attempts: int = attrs.field(default=len(DEFAULT_SCHEDULE) + 1)
    jitter: float = attrs.field(default=0.2)
    min_retry_after: float = attrs.field(default=1.0, validator=_check_seconds)
    max_retry_after: float = attrs.field(default=3600.0, validator=_check_seconds)
    disable_after: timedelta = attrs.field(default=timedelta(days=5))
    """An endpoint with no success for this long (while failing) is disabled."""
    unanswered_hold: float = attrs.field(default=30.0)
    """After a request to an endpoint gets no answer (a timeout, a refused,
    reset or closed connection), the webhook is held, none of its deliveries
    sent, until that delivery's own retry and at most this many seconds."""

    @max_attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        if type(value) is not int or not 1 <= value <= 1000:
            raise ValueError("max_attempts must be an integer from 1 to 1000")

    @disable_after.validator
    def _check_disable(
        self, attribute: attrs.Attribute[timedelta], value: timedelta
    ) -> None:
        if not isinstance(value, timedelta) or not _seconds(value.total_seconds()):
            raise ValueError("disable_after must be a timedelta of 0 s to a year")

    def __attrs_post_init__(self) -> None:
        if self.min_retry_after > self.max_retry_after:
            raise ValueError("min_retry_after must not be above max_retry_after")

    @unanswered_hold.validator
    def _check_hold(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not (_seconds(value) and value <= 86_400):
            raise ValueError("unanswered_hold must be 0 to 86400 seconds")

    @jitter.validator
    def _check_jitter(self, attribute: attrs.Attribute[float], value: float) -> None:
        # An int or a float: a Decimal failed only when a delivery was
        # recorded, so the delivery went out again and again, unrecorded.
        if not (_seconds(value) and value < 1):
            raise ValueError("jitter must be a fraction in [0, 1)")

    def next_delay(
        self, attempts_made: int, retry_after: float | None, rand: float
    ) -> float | None:
        """Seconds until the next try, or ``None`` when the tries are used up.

        ``rand`` is a uniform number in ``[0, 1)``; it places the delay in
        ``[d·(1-jitter), d·(1+jitter)]``. A ``retry_after`` (bounded) may
        lengthen that delay, never shorten it: the receiver names the
        earliest time it wants to be tried again, and an endpoint answering
        ``Retry-After: 1`` to every try would otherwise use up all of them
        in seconds instead of over the schedule.
        """
        if attempts_made >= self.max_attempts:
            return None

        step = self.schedule[min(max(attempts_made, 1), len(self.schedule)) - 1]
        delay = step * (1 - self.jitter + 2 * self.jitter * rand)
        if retry_after is None:
            return delay

        asked = min(max(retry_after, self.min_retry_after), self.max_retry_after)
        return max(asked, delay)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if unusable.

    Accepts delay-seconds (ASCII digits) and an HTTP-date; a date in the
    past means 0. A header sent more than once arrives joined (``"7, 7"``):
    it is read when every element of that list is the same value, and is
    unusable when they differ. Bounding the wait is the caller's business.
    ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if value is None:
        return None

    text = value.strip()
    if "," in text:
        if len(text) > _MOST_JOINED_CHARS:
            return None
        text = _the_one_value(text)
    if text.isascii() and text.isdigit():
        # Longer than any wait worth counting: the caller's bound applies.
        return float(int(text)) if len(text) <= _MOST_CHARS else math.inf
    if not text or len(text) > _MOST_CHARS:
        return None

    when = _read_http_date(text, now)
    if when is None:
        return None

    return max(0.0, (when - now).total_seconds())


def _the_one_value(text: str) -> str:
    """The value a comma-separated list repeats, or "" when its elements differ.

    A comma right after a day name is the date's own, not the list's.
    """
    pieces = [piece.strip() for piece in text.split(",")]
    elements: list[str] = []
    at = 0
    while at < len(pieces):
        piece = pieces[at]
        at += 1
        if piece.lower() in _DAY_NAMES and at < len(pieces):
            piece = f"{piece}, {pieces[at]}"
            at += 1
        elements.append(piece)

    first = elements[0]
    return first if all(element == first for element in elements) else ""


_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"\d\d:\d\d:\d\d"
_HTTP_DATE = re.compile(
    # IMF-fixdate, the obsolete RFC 850 form, and asctime (RFC 9110, 5.6.7).
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d {_MONTH} \d{{4}} {_TIME} GMT"
    rf"|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d\d-{_MONTH}-\d\d {_TIME} GMT"
    rf"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} [ \d]\d {_TIME} \d{{4}}"
)


def _read_http_date(text: str, now: datetime) -> datetime | None:
    # Only the three forms HTTP defines: the mail-date parser below also
    # reads other zones, and dates without a day name or a zone.
    if not _HTTP_DATE.fullmatch(text):
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if "-" in text:
        # RFC 850's two-digit year: the mail parser puts 69-99 in the 1900s,
        # HTTP puts a year in this century unless that is over 50 years
        # ahead (RFC 9110, 5.6.7): in 2026, "-70" is 2070.
        year = now.year // 100 * 100 + when.year % 100
        if year - now.year > 50:
            year -= 100
        try:
            when = when.replace(year=year)
        except ValueError:
            return None

    # HTTP-dates are always GMT; the asctime form carries no zone at all.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
