"""The notifier contract: what a host's inbox must do for ipm.

A :class:`~ipm.ports.Notifier` is where a fired KPI alert is announced.
ipm counts a notification as sent once ``notify`` returns, and sends it
again (same ``notification_id``, higher ``attempt``) after an exception
or after a sender died mid-call. Subclass :class:`NotifierContract` and
provide two fixtures::

    class TestMailNotifier(NotifierContract):
        @pytest.fixture
        def notifier(self):
            return MailNotifier(outbox)

        @pytest.fixture
        def kept(self, notifier):
            return lambda: [mail.notification_id for mail in outbox.read()]

``kept`` returns the ids of the notifications the inbox holds, one entry
per notification kept (a repeat the inbox dropped appears once). An inbox
that knows its tenants sets ``ORGS`` to two org codes of its own. ipm
runs the suite against its memory and event notifiers.

What the suite cannot check, having no way to make an inbox fail: that
``notify`` raises whenever it did not keep the notification.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ipm.domain.alerts import Alert, AlertNotification, EmitAlert, Threshold
from ipm.ports import Notifier

__all__ = ["NotifierContract", "fired_notification"]

Kept = Callable[[], list[str]]

_START = datetime(2026, 3, 2, tzinfo=UTC)
_SECONDS = 30.0
"""How long the threaded test waits for every notify to return."""


def fired_notification(
    orgcode: str = "ACME", *, kpi_code: str = "NET_SALES", attempt: int = 1
) -> AlertNotification:
    """A notification of a freshly fired alert, with an id of its own."""
    ask = EmitAlert(
        kpi_code=kpi_code,
        bucket="daily",
        bucket_start=_START,
        value=150,
        threshold=Threshold("gt", 100),
        notify=True,
    )
    alert = Alert.emit(f"alr_{uuid.uuid4().hex}", ask.key(orgcode), ask, _START)

    return AlertNotification(orgcode, alert, attempt)


class NotifierContract:
    """Behaviour every notifier must show."""

    ORGS: tuple[str, str] = ("ACME", "OTHER")
    """The orgs the notifications are for: most tests use the first."""

    @pytest.fixture
    def notifier(self) -> Notifier:
        raise NotImplementedError("provide a notifier fixture")

    @pytest.fixture
    def kept(self, notifier: Notifier) -> Kept:
        raise NotImplementedError("provide a kept fixture: the ids the inbox holds")

    def test_a_notification_is_kept_once_notify_returns(
        self, notifier: Notifier, kept: Kept
    ) -> None:
        """Returning is the promise: ipm marks the alert sent and moves on."""
        notification = fired_notification(self.ORGS[0])

        _notify(notifier, notification)

        assert notification.notification_id in kept()

    def test_distinct_notifications_are_all_kept(
        self, notifier: Notifier, kept: Kept
    ) -> None:
        """Alerts of one KPI, one org, one bucket are still separate notices."""
        notifications = [fired_notification(self.ORGS[0]) for _ in range(5)]
        notifications.append(fired_notification(self.ORGS[1], kpi_code="FOOTFALL"))

        for notification in notifications:
            _notify(notifier, notification)

        assert {n.notification_id for n in notifications} <= set(kept())

    def test_a_repeated_notification_is_taken_as_done(
        self, notifier: Notifier, kept: Kept
    ) -> None:
        """ipm sends a notification again when it cannot know the first try
        arrived (the sender died, or the call raised after keeping it). The
        repeat must not fail, or the alert would end ``failed``."""
        first = fired_notification(self.ORGS[0])
        again = AlertNotification(first.orgcode, first.alert, first.attempt + 1)

        _notify(notifier, first)
        _notify(notifier, again)

        assert again.notification_id == first.notification_id
        assert first.notification_id in kept()

    def test_notifications_from_several_threads_are_all_kept(
        self, notifier: Notifier, kept: Kept
    ) -> None:
        """Senders in several threads (or processes) may notify at once."""
        notifications = [fired_notification(self.ORGS[0]) for _ in range(16)]
        failures: list[BaseException] = []
        start = threading.Barrier(len(notifications), timeout=_SECONDS)

        def send(notification: AlertNotification) -> None:
            try:
                start.wait()
                notifier.notify(notification)
            except BaseException as error:
                failures.append(error)

        # Daemon threads under one deadline: a notify that blocks fails the
        # test instead of holding the run, and the process, for ever.
        threads = [
            threading.Thread(target=send, args=(n,), daemon=True) for n in notifications
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + _SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

        stuck = sum(thread.is_alive() for thread in threads)
        assert not stuck, f"{stuck} notify calls did not return in {_SECONDS:g} s"
        assert not failures, failures[0]
        assert {n.notification_id for n in notifications} <= set(kept())


def _notify(notifier: Notifier, notification: AlertNotification) -> None:
    """``notify``, failing the test when it does not return in time (a
    blocked inbox would otherwise hold the whole run)."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            notifier.notify(notification)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(_SECONDS)
    assert not thread.is_alive(), f"notify did not return in {_SECONDS:g} s"
    if raised:
        raise raised[0]
