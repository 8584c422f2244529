"""UTC timestamps on the wire: RFC 3339 in, ``YYYY-MM-DDTHH:MM:SSZ`` out.

Naive timestamps are refused rather than guessed at: a time without an
offset means different instants on different machines.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ipm.domain.errors import InvalidRequest, Problem


def parse_utc(text: str, pointer: str) -> datetime:
    """Parse an RFC 3339 timestamp with an offset and normalise it to UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise _bad(pointer, "is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None or "T" not in text.upper():
        raise _bad(pointer, "needs a UTC offset or Z, e.g. 2026-01-01T00:00:00Z")

    return parsed.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """Second precision unless there is a fraction, always with ``Z``."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bad(pointer: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{pointer or 'timestamp'} {message}", [Problem(pointer, message)])
