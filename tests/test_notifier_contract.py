"""The notifier contract, run against the notifiers ipm ships."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ipm
from ipm.adapters.notifier import INBOX, EventNotifier, MemoryNotifier
from ipm.app import Application
from ipm.domain.alerts import AlertNotification
from ipm.ports import Notifier
from ipm.testing import NotifierContract
from ipm.testing.notifier import Kept, fired_notification


class TestMemoryNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self) -> Notifier:
        return MemoryNotifier()

    @pytest.fixture
    def kept(self, notifier: MemoryNotifier) -> Kept:
        return lambda: [n.notification_id for n in notifier.sent]


class _EventNotifierOn:
    """The default notifier: each notification an event in the inbox feed."""

    @pytest.fixture
    def app(self) -> Iterator[Application]:
        raise NotImplementedError

    @pytest.fixture
    def notifier(self, app: Application) -> Notifier:
        return EventNotifier(app.storage, app.recorder)

    @pytest.fixture
    def kept(self, app: Application) -> Kept:
        def ids() -> list[str]:
            return [
                event.new.event_id
                for org in ("ACME", "OTHER")
                for event in app.events(org, service=INBOX)
            ]

        return ids


class TestEventNotifierInMemory(_EventNotifierOn, NotifierContract):
    @pytest.fixture
    def app(self) -> Iterator[Application]:
        with ipm.open_memory() as app:
            yield app


class TestEventNotifierOnSQLite(_EventNotifierOn, NotifierContract):
    @pytest.fixture
    def app(self, tmp_path: Path) -> Iterator[Application]:
        with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
            yield app


class _Forgetful:
    """Returns as if it kept the notification, and keeps nothing."""

    def notify(self, notification: AlertNotification) -> None:
        del notification


class _Strict:
    """Refuses a notification it has seen: the alert would end failed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def notify(self, notification: AlertNotification) -> None:
        if notification.notification_id in self.seen:
            raise ValueError("already notified")
        self.seen.append(notification.notification_id)


def test_the_contract_catches_a_notifier_that_keeps_nothing() -> None:
    with pytest.raises(AssertionError):
        NotifierContract().test_a_notification_is_kept_once_notify_returns(
            _Forgetful(), lambda: []
        )


def test_the_contract_catches_a_notifier_that_refuses_repeats() -> None:
    strict = _Strict()
    with pytest.raises(ValueError, match="already notified"):
        NotifierContract().test_a_repeated_notification_is_taken_as_done(
            strict, lambda: strict.seen
        )


def test_a_fired_notification_names_what_fired() -> None:
    notification = fired_notification("ACME")

    assert notification.subject.startswith("NET_SALES is 150 (gt 100)")
    assert notification.notification_id == f"ntf_{notification.alert.alert_id}"


class _Blocking:
    """Never returns (an inbox waiting on something that never comes)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def notify(self, notification: AlertNotification) -> None:
        self.release.wait()


def test_a_notifier_that_blocks_fails_the_suite_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: its threads were joined 30 s each and kept the process
    alive after the failure."""
    from ipm.testing import notifier as contract

    monkeypatch.setattr(contract, "_SECONDS", 0.3)
    blocking = _Blocking()
    suite = NotifierContract()
    began = time.monotonic()
    try:
        for test in (
            suite.test_notifications_from_several_threads_are_all_kept,
            suite.test_a_notification_is_kept_once_notify_returns,
            suite.test_distinct_notifications_are_all_kept,
            suite.test_a_repeated_notification_is_taken_as_done,
        ):
            with pytest.raises(AssertionError, match="did not return"):
                test(blocking, lambda: [])
    finally:
        blocking.release.set()

    assert time.monotonic() - began < 10


class _Tenants:
    """An inbox that knows its tenants and refuses any other."""

    def __init__(self) -> None:
        self.kept: list[str] = []

    def notify(self, notification: AlertNotification) -> None:
        if notification.orgcode not in ("SHOP1", "SHOP2"):
            raise ValueError(f"unknown tenant {notification.orgcode}")
        self.kept.append(notification.notification_id)


class TestAnInboxOfKnownTenants(NotifierContract):
    ORGS = ("SHOP1", "SHOP2")

    @pytest.fixture
    def notifier(self) -> Notifier:
        return _Tenants()

    @pytest.fixture
    def kept(self, notifier: _Tenants) -> Kept:
        return lambda: list(notifier.kept)
