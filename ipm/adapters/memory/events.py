"""The in-memory event store: one list per org, ordered by sequence.

A stored event's payload is a copy of its own, and every read hands out
another (written and read back through the JSON codec, as SQLite does): a
host that edits a payload it published, or one it read, changes nothing
stored, whichever adapter it tests on.
"""

from __future__ import annotations

import bisect
import builtins
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from ipm.domain.events import Event, EventFilter, FeedScan, NewEvent
from ipm.domain.jsoncodec import dumps, loads

if TYPE_CHECKING:
    from ipm.adapters.memory.core import UndoLog


class MemoryEventStore:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._last = 0
        self._by_org: dict[str, list[Event]] = {}
        self._by_id: dict[tuple[str, str], Event] = {}

    def append(self, orgcode: str, new: NewEvent, recorded_at: datetime) -> Event:
        self._last += 1
        event = Event(
            sequence=self._last,
            orgcode=orgcode,
            recorded_at=recorded_at,
            content_hash=new.content_hash(),
            new=new,
        )
        kept = _own_copy(event)
        self._by_org.setdefault(orgcode, []).append(kept)
        self._by_id[(orgcode, new.event_id)] = kept
        self._undo.push(lambda: self._drop_last(orgcode, new.event_id))

        return event

    def append_many(
        self, orgcode: str, news: Sequence[NewEvent], recorded_at: datetime
    ) -> builtins.list[Event]:
        return [self.append(orgcode, new, recorded_at) for new in news]

    def get(self, orgcode: str, event_id: str) -> Event | None:
        event = self._by_id.get((orgcode, event_id))

        return None if event is None else _own_copy(event)

    def existing_ids(self, orgcode: str, event_ids: Collection[str]) -> dict[str, str]:
        found = (self._by_id.get((orgcode, event_id)) for event_id in event_ids)

        return {e.new.event_id: e.content_hash for e in found if e is not None}

    def list(self, orgcode: str, where: EventFilter, limit: int) -> list[Event]:
        return [_own_copy(event) for event in self._stored(orgcode, where, limit)]

    def _stored(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[Event]:
        return self._scan(orgcode, where, limit, None)[0]

    def feed(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[tuple[int, bytes]]:
        return _wire(self._stored(orgcode, where, limit))

    def feed_scan(
        self, orgcode: str, where: EventFilter, limit: int, examine: int
    ) -> FeedScan:
        found, reached = self._scan(orgcode, where, limit, examine)

        return FeedScan(_wire(found), reached)

    def _scan(
        self, orgcode: str, where: EventFilter, limit: int, examine: int | None
    ) -> tuple[builtins.list[Event], int | None]:
        """Up to ``limit`` matches among at most ``examine`` events the
        keyed filters find (all of them for None), and where the look
        stopped short (``FeedScan.reached``)."""
        events = self._by_org.get(orgcode, [])
        start = bisect.bisect_right(
            events, where.after_sequence, key=lambda e: e.sequence
        )
        found: builtins.list[Event] = []
        looked = 0
        until = where.until_sequence
        for event in events[start:]:
            if until is not None and event.sequence > until:
                break
            if not where.keyed(event):
                continue
            looked += 1
            if where.sifts(event):
                found.append(event)
                if len(found) >= limit:
                    break
            if examine is not None and looked >= examine:
                return found, event.sequence

        return found, None

    def last_sequence(self) -> int:
        return self._last

    def _drop_last(self, orgcode: str, event_id: str) -> None:
        self._by_org[orgcode].pop()
        del self._by_id[(orgcode, event_id)]
        self._last -= 1


def _wire(events: builtins.list[Event]) -> builtins.list[tuple[int, bytes]]:
    return [(e.sequence, dumps(e.to_wire())) for e in events]


def _own_copy(event: Event) -> Event:
    """``event`` with a payload nobody else holds."""
    payload = loads(dumps(dict(event.new.payload)))

    return attrs.evolve(event, new=attrs.evolve(event.new, payload=payload))
