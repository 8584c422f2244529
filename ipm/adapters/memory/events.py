"""The in-memory event store: one list per org, ordered by sequence."""

from __future__ import annotations

import bisect
import builtins
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ipm.domain.events import Event, EventFilter, NewEvent
from ipm.domain.jsoncodec import dumps

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
        self._by_org.setdefault(orgcode, []).append(event)
        self._by_id[(orgcode, new.event_id)] = event
        self._undo.push(lambda: self._drop_last(orgcode, new.event_id))

        return event

    def append_many(
        self, orgcode: str, news: Sequence[NewEvent], recorded_at: datetime
    ) -> builtins.list[Event]:
        return [self.append(orgcode, new, recorded_at) for new in news]

    def get(self, orgcode: str, event_id: str) -> Event | None:
        return self._by_id.get((orgcode, event_id))

    def existing_ids(self, orgcode: str, event_ids: Collection[str]) -> dict[str, str]:
        found = (self._by_id.get((orgcode, event_id)) for event_id in event_ids)

        return {e.new.event_id: e.content_hash for e in found if e is not None}

    def list(self, orgcode: str, where: EventFilter, limit: int) -> list[Event]:
        events = self._by_org.get(orgcode, [])
        start = bisect.bisect_right(
            events, where.after_sequence, key=lambda e: e.sequence
        )
        found: list[Event] = []
        for event in events[start:]:
            if (
                where.until_sequence is not None
                and event.sequence > where.until_sequence
            ):
                break
            if where.matches(event):
                found.append(event)
                if len(found) >= limit:
                    break

        return found

    def feed(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[tuple[int, bytes]]:
        events = self.list(orgcode, where, limit)

        return [(e.sequence, dumps(e.to_wire())) for e in events]

    def last_sequence(self) -> int:
        return self._last

    def _drop_last(self, orgcode: str, event_id: str) -> None:
        self._by_org[orgcode].pop()
        del self._by_id[(orgcode, event_id)]
        self._last -= 1
