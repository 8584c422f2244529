"""KPI alerts through handle(): comparisons, idempotency and notifications."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm import schemas
from ipm.adapters.notifier import MemoryNotifier
from ipm.domain.alerts import AlertNotification, alert_from_wire
from ipm.testing import FixedClock
from ipm.testing.jobs import import_bytes
from tests.conftest import ORG, OTHER, Caller


class Crash(BaseException):
    """Stands for the process dying in the middle of a notification."""


class CrashingNotifier(MemoryNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.crash = True

    def notify(self, notification: AlertNotification) -> None:
        if self.crash:
            raise Crash()
        super().notify(notification)


@pytest.fixture
def notifier() -> MemoryNotifier:
    return CrashingNotifier() if False else MemoryNotifier()


@pytest.fixture(params=["memory", "sqlite"])
def app(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    notifier: MemoryNotifier,
    clock: FixedClock,
) -> Iterator[ipm.Application]:
    options: dict[str, Any] = {"notifier": notifier, "clock": clock}
    if request.param == "memory":
        application = ipm.open_memory(**options)
    else:
        application = ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)
    yield application
    application.close()


def ask(
    value: Any = 150, comparator: str = "gt", threshold: Any = 100, **overrides: Any
) -> dict[str, Any]:
    alert = {
        "kpi_code": "NET_SALES",
        "value": value,
        "threshold": {"comparator": comparator, "value": threshold},
        "bucket": "daily",
        "bucket_start": "2026-03-02T00:00:00Z",
        "bucket_end": "2026-03-03T00:00:00Z",
    }
    alert.update(overrides)

    return alert


def emit(call: Caller, alert: dict[str, Any], **extra: Any) -> tuple[int, Any]:
    status, body = call("/kpi/alert", {"alert": alert, **extra})
    if status != 200:
        return status, body["error"]

    assert schemas.validate("KpiAlertResponse", body["data"]) == []
    return status, body["data"]["alert"]


def alert_events(
    call: Caller, action: str = "kpi.alert.emitted"
) -> list[dict[str, Any]]:
    _, body = call(
        "/cdc/list", {"service": "ipm", "action_prefix": "kpi.alert", "limit": 256}
    )
    return [e for e in body["data"]["items"] if e["action"] == action]


def inbox_events(call: Caller) -> list[dict[str, Any]]:
    _, body = call("/cdc/list", {"service": "inbox", "limit": 256})
    return list(body["data"]["items"])


# -- comparisons -------------------------------------------------------------


@pytest.mark.parametrize(
    ("comparator", "value", "fired"),
    [
        ("gt", 101, True),
        ("gt", 100, False),
        ("gte", 100, True),
        ("gte", 99.5, False),
        ("lt", 99, True),
        ("lt", 100, False),
        ("lte", 100.0, True),
        ("lte", 101, False),
        ("eq", 100.0, True),
        ("eq", 100.5, False),
        ("ne", 100.5, True),
        ("ne", 100, False),
    ],
)
def test_each_comparator_fires_as_documented(
    call: Caller, comparator: str, value: float, fired: bool
) -> None:
    """value <comparator> 100 decides whether the alert fired."""
    status, alert = emit(call, ask(value, comparator))

    assert status == 200
    assert alert["fired"] is fired


@pytest.mark.parametrize("comparator", ["gt", "gte", "lt", "lte", "eq", "ne"])
def test_a_missing_value_never_fires(call: Caller, comparator: str) -> None:
    """A null value fires under no comparator, not even ne."""
    _, alert = emit(call, ask(None, comparator), notify=True)

    assert alert["fired"] is False
    assert alert["notification"] is None
    assert alert["value"] is None


def test_notification_field_says_what_was_asked(call: Caller) -> None:
    """A fired alert without notify is not_requested; an unfired one has none."""
    _, fired = emit(call, ask(150))
    _, quiet = emit(
        call,
        ask(50, bucket_start="2026-03-03T00:00:00Z", bucket_end="2026-03-04T00:00:00Z"),
    )

    assert fired["notification"] == {"status": "not_requested", "attempts": 0}
    assert quiet["notification"] is None


def test_a_misaligned_alert_window_is_400(call: Caller) -> None:
    """Alerts use the same grid rules as snapshots, at /alert pointers."""
    status, error = emit(call, ask(bucket_start="2026-03-02T06:00:00Z"))

    assert status == 400
    assert [d["pointer"] for d in error["details"]] == ["/alert/bucket_start"]


# -- idempotency -------------------------------------------------------------


def test_a_retried_alert_is_the_same_alert_and_notifies_once(
    call: Caller, notifier: MemoryNotifier
) -> None:
    """The same rule for the same bucket is stored, recorded and sent once."""
    _, first = emit(call, ask(), notify=True)

    _, second = emit(call, ask(), notify=True)

    assert second == first
    assert first["notification"] == {"status": "sent", "attempts": 1}
    assert len(alert_events(call)) == 1
    assert len(notifier.sent) == 1


def test_equal_thresholds_spelled_differently_are_one_alert(call: Caller) -> None:
    """100 and 100.0 are the same threshold; the value is not part of the key."""
    _, first = emit(call, ask(150, threshold=100))

    _, second = emit(call, ask(170, threshold=100.0))

    assert second["alert_id"] == first["alert_id"]
    assert second["value"] == 150


def test_a_threshold_keyed_alike_is_weighed_as_the_stored_one(
    call: Caller, notifier: MemoryNotifier
) -> None:
    """Regression: the float 1e23 (99999999999999991611392) and the integer
    10**23 key alike; a value between them, alerted first against the
    integer and then against the float, stored a fired alert saying
    "99999999999999991611393 gt 100000000000000000000000" and notified."""
    between = 99999999999999991611393
    _, first = emit(call, ask(between, threshold=10**23), notify=True)

    _, second = emit(call, ask(between, threshold=1e23), notify=True)

    assert second["alert_id"] == first["alert_id"]
    assert (first["fired"], second["fired"]) == (False, False)
    assert second["threshold"]["value"] == 10**23
    assert [e["op"] for e in alert_events(call)] == ["c"]
    assert notifier.sent == []


@pytest.mark.parametrize(
    "change",
    [
        {"comparator": "gte"},
        {"threshold": 101},
        {"scope": "store:S014"},
        {"kpi_code": "UNITS"},
        {
            "bucket": "hourly",
            "bucket_start": "2026-03-02T00:00:00Z",
            "bucket_end": "2026-03-02T01:00:00Z",
        },
        {"bucket_start": "2026-03-03T00:00:00Z", "bucket_end": "2026-03-04T00:00:00Z"},
    ],
)
def test_any_other_key_part_is_another_alert(
    call: Caller, change: dict[str, Any]
) -> None:
    """Comparator, threshold, scope, code, bucket and start each make a new alert."""
    _, first = emit(call, ask())

    _, second = emit(call, ask(**change))

    assert second["alert_id"] != first["alert_id"]


def test_orgs_do_not_share_alerts(
    app: ipm.Application, call: Caller, other_key: str
) -> None:
    """The same rule in another org is another alert."""
    _, ours = emit(call, ask())

    _, theirs = emit(Caller(app, other_key, OTHER), ask())

    assert theirs["alert_id"] != ours["alert_id"]


def test_an_alert_that_fires_later_in_the_bucket_is_updated_once(
    call: Caller, notifier: MemoryNotifier
) -> None:
    """A rule that had not fired fires on a later call, keeping its id."""
    _, quiet = emit(call, ask(50), notify=True)

    _, fired = emit(call, ask(150), notify=True)
    _, again = emit(call, ask(40), notify=True)

    assert (quiet["fired"], fired["fired"], again["fired"]) == (False, True, True)
    assert fired["alert_id"] == quiet["alert_id"] == again["alert_id"]
    assert again["value"] == 150
    assert [e["op"] for e in alert_events(call)] == ["c", "u"]
    assert len(notifier.sent) == 1


def test_concurrent_identical_alerts_make_one(
    app: ipm.Application, key: str, notifier: MemoryNotifier
) -> None:
    """Eight threads asking for the same alert get one alert and one notification."""
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def caller() -> None:
        barrier.wait()
        _, alert = emit(Caller(app, key, ORG), ask(), notify=True)
        ids.append(alert["alert_id"])

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert len(notifier.sent) == 1


def test_the_emitted_event_describes_the_alert(call: Caller) -> None:
    """kpi.alert.emitted carries the alert, valid against its schema, with audit."""
    _, alert = emit(call, ask(), notify=True, reason="floor check")

    (event,) = alert_events(call)

    assert event["op"] == "c"
    assert event["logical_guid"] == alert["alert_id"]
    assert event["payload"]["fired"] is True
    assert event["payload"]["notify"] is True
    assert event["audit"]["reason"] == "floor check"
    assert schemas.validate("event.ipm.kpi.alert.emitted", event["payload"]) == []


# -- notifications -----------------------------------------------------------


def test_the_notifier_receives_the_fired_alert(
    call: Caller, notifier: MemoryNotifier
) -> None:
    """A notification names the org, the alert and a readable subject."""
    _, alert = emit(call, ask(), notify=True)

    (sent,) = notifier.sent

    assert sent.orgcode == ORG
    assert sent.alert.alert_id == alert["alert_id"]
    assert sent.attempt == 1
    assert sent.notification_id == f"ntf_{alert['alert_id']}"
    assert "NET_SALES" in sent.subject and "gt 100" in sent.subject


def test_a_flaky_notifier_is_retried_within_the_call(
    call: Caller, notifier: MemoryNotifier
) -> None:
    """Two failures then a success: sent after three attempts."""
    notifier.fail(2)

    _, alert = emit(call, ask(), notify=True)

    assert alert["notification"] == {"status": "sent", "attempts": 3}
    assert len(notifier.sent) == 1


def test_a_failing_notifier_never_loses_the_alert(
    app: ipm.Application, call: Caller, notifier: MemoryNotifier
) -> None:
    """After every attempt fails the alert is stored, marked failed, and says so."""
    notifier.fail()

    status, alert = emit(call, ask(), notify=True)
    _, again = emit(call, ask(), notify=True)

    assert status == 200
    assert alert["notification"] == {"status": "failed", "attempts": 3}
    assert again == alert
    assert notifier.attempts == 3
    (failed,) = alert_events(call, "kpi.alert.notification_failed")
    assert failed["payload"]["attempts"] == 3
    assert "NotifierDown" in failed["payload"]["error"]
    stored = app.kpis.get_alert(ORG, alert["alert_id"])
    assert stored is not None and stored.fired


class _Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class _Nameless(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        return 42  # type: ignore[return-value]  # no text: f-strings took it


class _NoName(Exception, metaclass=_Nameless):
    pass


_Forging = type("Evil\nWARNING forged line", (Exception,), {})


class _Slippery(str):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class _SlipperyMessage(Exception):
    def __str__(self) -> str:
        return _Slippery("slippery")


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (ValueError("bad \ud800 inbox"), "ValueError: bad \\ud800 inbox"),
        (_Unreadable(), "_Unreadable: (its message could not be read)"),
        (ValueError("x" * 100_000), "ValueError: " + "x" * (1024 - 12)),
        (ValueError("\udfff" * 5000), ("ValueError: " + "\\udfff" * 171)[:1024]),
        (_NoName("a"), "Exception: a"),
        (_SlipperyMessage(), "_SlipperyMessage: slippery"),
        (_Forging("a"), "'Evil\\nWARNING forged line': a"),
    ],
    ids=[
        "lone-surrogate",
        "unreadable",
        "long",
        "surrogates",
        "nameless",
        "str-sub",
        "newline-name",
    ],
)
def test_a_notifier_failing_with_any_message_is_marked_failed(
    app: ipm.Application, call: Caller, failure: Exception, said: str
) -> None:
    """Regression: a message with a lone surrogate (or one whose __str__
    raised) made the alert call raise, left the notification pending for
    ever and jammed resend_pending() for every other alert; a long one was
    stored whole. The error kept is valid Unicode, at most 1,024 characters."""

    class Failing(MemoryNotifier):
        def notify(self, notification: AlertNotification) -> None:
            raise failure

    app.kpis.notifier = Failing()

    status, alert = emit(call, ask(), notify=True)

    assert status == 200, alert
    assert alert["notification"]["status"] == "failed"
    stored = app.kpis.get_alert(ORG, alert["alert_id"])
    assert stored is not None and stored.notification is not None
    assert stored.notification.error == said
    (failed,) = alert_events(call, "kpi.alert.notification_failed")
    assert failed["payload"]["error"] == said


def test_a_notifier_class_name_cannot_forge_a_log_line(
    app: ipm.Application, call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the class name of a notifier's exception went into the
    warning as it was, so a newline in it started a line of its own."""

    class Failing(MemoryNotifier):
        def notify(self, notification: AlertNotification) -> None:
            raise _Forging("down")

    app.kpis.notifier = Failing()

    with caplog.at_level(logging.WARNING, logger="ipm"):
        emit(call, ask(), notify=True)

    said = [
        r.getMessage() for r in caplog.records if "notifying alert" in r.getMessage()
    ]
    assert said and all("\n" not in line for line in said)
    assert "'Evil\\nWARNING forged line'" in said[0]


def test_a_notification_left_pending_is_sent_once_its_claim_runs_out(
    app: ipm.Application, call: Caller, clock: FixedClock
) -> None:
    """A sender that dies mid-notification leaves it pending, claimed for a while;
    then a retried call sends it."""
    crashing = CrashingNotifier()
    app.kpis.notifier = crashing
    with pytest.raises(Crash):
        emit(call, ask(), notify=True)
    crashing.crash = False

    _, during = emit(call, ask(), notify=True)
    clock.advance(61)
    _, after = emit(call, ask(), notify=True)

    assert during["notification"] == {"status": "pending", "attempts": 0}
    assert after["notification"] == {"status": "sent", "attempts": 1}
    assert len(crashing.sent) == 1


def test_resend_pending_sends_what_a_dead_sender_left(
    app: ipm.Application, call: Caller, clock: FixedClock
) -> None:
    """resend_pending delivers expired claims, and only those."""
    crashing = CrashingNotifier()
    app.kpis.notifier = crashing
    with pytest.raises(Crash):
        emit(call, ask(), notify=True)
    crashing.crash = False

    early = app.kpis.resend_pending()
    clock.advance(61)
    late = app.kpis.resend_pending()
    _, alert = emit(call, ask(), notify=True)

    assert (early, late) == (0, 1)
    assert alert["notification"] == {"status": "sent", "attempts": 1}
    assert len(crashing.sent) == 1


def test_the_default_notifier_records_notifications_as_events(
    tmp_path: Path, key: str
) -> None:
    """Without a notifier option, each notification is a kpi.alert.notified event."""
    with ipm.open_sqlite(tmp_path / "default.sqlite") as app:
        caller = Caller(app, app.create_api_key("ops@acme.example", [ORG]), ORG)

        _, alert = emit(caller, ask(), notify=True)
        _, quiet = emit(caller, ask(threshold=500), notify=True)

        (notified,) = inbox_events(caller)
        assert alert["notification"] == {"status": "sent", "attempts": 1}
        assert quiet["notification"] is None
        assert notified["event_id"] == f"ntf_{alert['alert_id']}"
        assert notified["payload"]["alert_id"] == alert["alert_id"]
        assert notified["payload"]["subject"]
        entry = app.catalog.entry("inbox", "kpi.alert.notified")
        assert entry is not None


def test_a_key_holder_cannot_forge_or_block_a_notification(
    tmp_path: Path,
) -> None:
    """Regression: any key of the org could import an inbox event (a forged
    notification, signed and delivered to the inbox's subscribers) or take
    ntf_<alert_id> before the alert fired (its real notification then failed
    as an id conflict, for good)."""
    with ipm.open_sqlite(tmp_path / "default.sqlite") as app:
        caller = Caller(app, app.create_api_key("ops@acme.example", [ORG]), ORG)
        _, waiting = emit(caller, ask(value=50), notify=True)
        forged = {
            "service": "inbox",
            "action": "kpi.alert.notified",
            "occurred_at": "2026-03-02T00:00:00Z",
            "logical_guid": waiting["alert_id"],
            "payload": {"subject": "all is fine"},
        }
        squatter = {**forged, "service": "pos", "action": "note.made"}
        squatter["event_id"] = f"ntf_{waiting['alert_id']}"
        lines = b"".join(json.dumps(e).encode() + b"\n" for e in (forged, squatter))

        job = import_bytes(app, ORG, lines)
        _, fired = emit(caller, ask(value=150), notify=True)

        assert (job.counters.failed, job.counters.created) == (2, 0)
        assert fired["notification"] == {"status": "sent", "attempts": 1}
        (notified,) = inbox_events(caller)
        assert notified["event_id"] == f"ntf_{waiting['alert_id']}"
        assert notified["audit"]["actor"] == "ipm"


def test_the_event_notifier_records_a_resent_notification_once(tmp_path: Path) -> None:
    """Sending the same notification twice leaves one event (a dead sender's retry)."""
    with ipm.open_memory() as app:
        stored = app.kpis.emit_alert(ORG, alert_from_wire(ask()))
        notification = AlertNotification(ORG, stored, 1)

        app.kpis.notifier.notify(notification)
        app.kpis.notifier.notify(AlertNotification(ORG, stored, 2))

        events = app.events(ORG, service="inbox")
        assert [e.new.action for e in events].count("kpi.alert.notified") == 1


def test_an_alert_s_events_carry_the_instant_it_fired() -> None:
    """Regression: kpi.alert.emitted took a later reading of the clock than
    the alert's updated_at, which its inbox event carries: the notification
    seemed to happen before the alert it announces."""
    from datetime import UTC, datetime, timedelta

    ticks = iter(range(1_000_000))

    def ticking() -> datetime:
        return datetime(2026, 3, 2, 12, tzinfo=UTC) + timedelta(
            milliseconds=next(ticks)
        )

    with ipm.open_memory(clock=ticking) as app:
        key = app.create_api_key("ops", [ORG])
        call = Caller(app, key, ORG)
        emit(call, ask(50), notify=True)
        emit(call, ask(150), notify=True)
        created, fired = alert_events(call)
        (notified,) = inbox_events(call)

    assert created["occurred_at"] < fired["occurred_at"]
    assert notified["occurred_at"] == fired["occurred_at"]
