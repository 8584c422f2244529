"""A clock for tests that moves only when told to (no pytest needed)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FixedClock:
    """A clock that moves only when told to; thread-safe."""

    def __init__(self, start: datetime = T0) -> None:
        if not isinstance(start, datetime):
            raise TypeError("FixedClock starts at a datetime")
        if start.utcoffset() is None:
            # advance() would read it as the machine's local time.
            raise ValueError("FixedClock needs an aware start (tzinfo=UTC, say)")
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move on by ``seconds`` of elapsed time: added in UTC, so a start
        in a zone with daylight saving moves by them across its change."""
        with self._lock:
            now = self._now
            moved = now.astimezone(UTC) + timedelta(seconds=seconds)
            self._now = moved.astimezone(now.tzinfo)
