"""The real clock and id source, used unless a host or a test passes others."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime


def system_clock() -> datetime:
    return datetime.now(UTC)


class SortableIds:
    """Ids that sort by creation time: 48-bit milliseconds + 80 random bits.

    Within one millisecond the random part is incremented instead of drawn
    again, so ids from one process are strictly increasing (stable keyset
    order for lists ordered by id).
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
                self._last_rand += 1
            else:
                self._last_rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms = now_ms
            value = (now_ms << 80) | (self._last_rand & ((1 << 80) - 1))

        return f"{prefix}_{_encode(value)}"


def _encode(value: int) -> str:
    """Fixed-width hex, so ids sort as text exactly as they sort as numbers."""
    return f"{value:032x}"
