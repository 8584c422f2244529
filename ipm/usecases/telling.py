"""Saying a recurring thing in the log without saying it every time."""

from __future__ import annotations

import threading
import time


class Sometimes:
    """Lets a message through once every ``every`` seconds at most, and
    counts the times it held back meanwhile. Thread-safe."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._told_at = -every
        self._held = 0

    def due(self) -> int | None:
        """None while the message was told less than ``every`` seconds ago;
        else how many times it was held back since then (it is told now)."""
        now = time.monotonic()
        with self._lock:
            if now - self._told_at < self._every:
                self._held += 1
                return None
            held, self._held, self._told_at = self._held, 0, now

        return held


def held_back(count: int) -> str:
    """`` (3 more since the last time)``, or nothing when none was held."""
    return f" ({count} more since the last time)" if count else ""
