"""The real clock and id source, used unless a host or a test passes others."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def system_clock() -> datetime:
    return datetime.now(UTC)


class UtcClock:
    """A host's clock, told in UTC whatever zone it answers in.

    Times ipm keeps and hands back (``recorded_at``, ``updated_at``) are
    then the same instants in the same zone under every adapter: SQLite
    keeps text in UTC, the memory adapters keep the datetime they get.
    """

    __slots__ = ("_clock",)

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def __call__(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.utcoffset() is None:
            # Read as the machine's local time it would be off by hours,
            # silently (a zone without an offset counts as none): the host's
            # clock has a bug to fix.
            raise TypeError("clock must return an aware datetime")

        return now.astimezone(UTC)

    def __getattr__(self, name: str) -> Any:
        # app.clock is still the host's clock for what else it offers
        # (FixedClock.advance, say).
        return getattr(self._clock, name)


class SortableIds:
    """Ids that sort by creation time: 48-bit milliseconds + 80 random bits.

    Within one millisecond the random part steps forward instead of being
    drawn again, so ids from one process are strictly increasing (stable
    keyset order for lists ordered by id). The step is random too: with a
    step of one, the gap between two ids a caller sees would count the ids
    made for everyone else in between (another tenant's traffic).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self, prefix: str) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= self._last_ms:
                now_ms = self._last_ms
                self._last_rand += 1 + secrets.randbits(_step_bits())
            if now_ms > self._last_ms or self._last_rand >> _RANDOM_BITS:
                # A new millisecond (or, after some 2**47 ids in one, the next
                # one): half the range is left for its steps.
                now_ms = max(now_ms, self._last_ms + 1)
                self._last_rand = secrets.randbits(_RANDOM_BITS - 1)
            self._last_ms = now_ms
            value = (now_ms << _RANDOM_BITS) | self._last_rand

        return f"{prefix}_{_encode(value)}"


_RANDOM_BITS = 80
_STEP_BITS = (16, 64)


def _step_bits() -> int:
    """The size of one step, itself random.

    Steps of one size add up to about (count x mean): the gap between two
    ids would still tell how many were made in between. Steps whose size
    spans 48 powers of two add up to roughly their largest, which says
    little about how many there were.
    """
    least, most = _STEP_BITS

    return least + secrets.randbelow(most - least + 1)


def _encode(value: int) -> str:
    """Fixed-width hex, so ids sort as text exactly as they sort as numbers."""
    return f"{value:032x}"
