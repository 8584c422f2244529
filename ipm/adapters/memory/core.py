"""The in-memory storage: real transactions with a lock and an undo log.

Every unit of work holds the storage's lock from ``__enter__`` to
``__exit__``, so writers are serialised exactly like SQLite's
``BEGIN IMMEDIATE`` and readers never see a half-done transaction.
Repositories change their structures in place and push an undo step for
each change; a unit of work that ends without ``commit()`` replays the
undo steps backwards. That keeps reads inside a transaction cheap (no
overlay to consult) and makes a failing batch leave nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self

from ipm.adapters.memory.events import MemoryEventStore
from ipm.adapters.memory.jobs import MemoryJobRepository
from ipm.adapters.memory.kpis import MemoryKpiRepository
from ipm.adapters.memory.small import MemoryKeyStore, MemorySettings
from ipm.adapters.memory.webhooks import MemoryDeliveryStore, MemoryWebhookStore
from ipm.domain.errors import StorageClosed

Undo = Callable[[], None]


class UndoLog:
    def __init__(self) -> None:
        self._steps: list[Undo] = []
        self.active = False

    def push(self, step: Undo) -> None:
        if self.active:
            self._steps.append(step)

    def rollback(self) -> None:
        while self._steps:
            self._steps.pop()()

    def forget(self) -> None:
        self._steps.clear()


class MemoryState:
    """Everything the memory storage holds, shared by its units of work."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.undo = UndoLog()
        self.events = MemoryEventStore(self.undo)
        self.keys = MemoryKeyStore(self.undo)
        self.settings = MemorySettings(self.undo)
        self.jobs = MemoryJobRepository(self.undo)
        self.webhooks = MemoryWebhookStore(self.undo)
        self.deliveries = MemoryDeliveryStore(self.undo, self.webhooks)
        self.kpis = MemoryKpiRepository(self.undo)


class MemoryUnitOfWork:
    def __init__(self, state: MemoryState, *, write: bool) -> None:
        self._state = state
        self._write = write
        self.events = state.events
        self.keys = state.keys
        self.settings = state.settings
        self.jobs = state.jobs
        self.webhooks = state.webhooks
        self.deliveries = state.deliveries
        self.kpis = state.kpis

    def __enter__(self) -> Self:
        self._state.lock.acquire()
        self._state.undo.active = self._write

        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._state.undo.rollback()
        finally:
            self._state.undo.active = False
            self._state.lock.release()

    def commit(self) -> None:
        self._state.undo.forget()


class MemoryStorage:
    """In-memory :class:`~ipm.ports.Storage`; nothing survives ``close()``."""

    def __init__(self) -> None:
        self._state = MemoryState()
        self._closed = False

    def unit_of_work(self, *, write: bool = True) -> MemoryUnitOfWork:
        if self._closed:
            # As SQLite's storage does: a closed application keeps nothing.
            raise StorageClosed("the storage is closed")

        return MemoryUnitOfWork(self._state, write=write)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
