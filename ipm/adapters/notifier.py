"""Notifiers: where fired KPI alerts are announced (the ``Notifier`` port).

:class:`EventNotifier` is the default: it records each notification as an
event of the ``inbox`` service, ``kpi.alert.notified``, so it reaches
whoever follows the CDC feed or subscribed a webhook to that service.
:class:`MemoryNotifier` keeps them in a list and can be told to fail, for
tests. A host plugs its own inbox by
passing any object with a ``notify(notification)`` method.
"""

from __future__ import annotations

import threading

from ipm.domain.alerts import AlertNotification
from ipm.domain.events import Audit, NewEvent
from ipm.ports import Storage
from ipm.schemas._events import INBOX_NOTIFIED
from ipm.usecases.catalog import INBOX_SERVICE
from ipm.usecases.cdc import Recorder

INBOX = INBOX_SERVICE
NOTIFIED = "kpi.alert.notified"


class NotifierDown(RuntimeError):
    """What :class:`MemoryNotifier` raises while it is told to fail."""


class MemoryNotifier:
    """Keeps every notification it is given; fails on demand. Thread-safe."""

    def __init__(self, *, failures: int = 0) -> None:
        self.sent: list[AlertNotification] = []
        self.attempts = 0
        self._failures = failures
        self._lock = threading.Lock()

    def fail(self, times: int = 1_000_000) -> None:
        """Make the next ``times`` calls raise :class:`NotifierDown`."""
        with self._lock:
            self._failures = times

    def notify(self, notification: AlertNotification) -> None:
        with self._lock:
            self.attempts += 1
            if self._failures > 0:
                self._failures -= 1
                raise NotifierDown("the inbox is unavailable")
            self.sent.append(notification)


class EventNotifier:
    """Records each notification as an ``inbox/kpi.alert.notified`` event.

    The event id is derived from the notification id and the content from
    the alert alone, so sending the same notification again (after a
    sender died) finds the stored event instead of adding a second one.
    Building the notifier registers the event type in the recorder's
    catalog, so its payloads are checked and the type is listed.
    """

    def __init__(self, storage: Storage, recorder: Recorder) -> None:
        self._storage = storage
        self._recorder = recorder
        if recorder.catalog.entry(INBOX, NOTIFIED) is None:
            # Its schema is one of ipm's own (ipm.schemas); listing the type
            # is what the notifier adds, since a host's own notifier would
            # never record it.
            recorder.catalog.list_builtin(INBOX, NOTIFIED, INBOX_NOTIFIED, op="c")

    def notify(self, notification: AlertNotification) -> None:
        alert = notification.alert
        new = NewEvent(
            event_id=notification.notification_id,
            service=INBOX,
            action=NOTIFIED,
            op="c",
            payload=notification.to_wire(),
            occurred_at=alert.updated_at,
            logical_guid=alert.alert_id,
            audit=Audit(actor="ipm", context_source="kpi.alert"),
        )
        with self._storage.unit_of_work() as uow:
            self._recorder.record(uow, notification.orgcode, new)
            uow.commit()
