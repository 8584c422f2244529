"""KPI alerts: a value checked against a threshold, stored once per bucket.

Theory of operation
-------------------
An alert is one rule (KPI, scope, comparator, threshold) evaluated for one
bucket. :func:`~ipm.domain.kpi.alert_key` names it, so asking again is
idempotent: the stored alert comes back, nothing is recorded or sent twice.
The one change a later evaluation can make is to fire a rule that had not
fired yet in that bucket.

A fired alert may carry one notification. Its state lives on the alert:
``pending`` until sent, then ``sent`` or, after the allowed attempts,
``failed``. A sender claims a pending notification for a while before it
calls the notifier, so two senders never send it at once, and a sender
that dies lets the claim run out and another one take over. Delivery is
therefore at least once; ``notification_id`` lets an inbox drop repeats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypeAlias

import attrs

from ipm.domain.kpi import (
    DEFAULT_SCOPE,
    Comparator,
    Problems,
    Value,
    alert_key,
    as_utc,
    check_comparator,
    check_flag,
    check_kpi_code,
    check_scope,
    check_value,
    code_and_scope,
    fires,
    plain_number,
    plain_text,
    required_value,
    text_field,
    validate_field,
    validate_start,
    window_fields,
)
from ipm.domain.kpi_grid import Bucket, bucket_end, check_bucket
from ipm.domain.timeutil import format_utc
from ipm.domain.timeutil import refused as _refused

MAX_ERROR = 1024
NOTIFICATION_ID_PREFIX = "ntf_"
"""How the id of every alert notification begins (the alert's id follows):
reserved, so no event a host or an import writes can take it first."""
"""The most characters of a notifier's last error an alert keeps."""

NotificationStatus: TypeAlias = Literal["not_requested", "pending", "sent", "failed"]


def check_threshold_value(value: object, pointer: str) -> int | float:
    """A threshold is a finite number; null is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(pointer, "must be a number")

    checked = check_value(value, pointer)
    assert checked is not None

    return checked


def _alert_value(value: Any) -> Any:
    # NaN means "not known" to an alert: it never fires and is kept as null.
    if isinstance(value, float) and math.isnan(value):
        return None

    return plain_number(value)


@attrs.frozen
class Threshold:
    """The rule's side of an alert: fire when ``value <comparator> value``."""

    comparator: Comparator = attrs.field(
        validator=validate_field(check_comparator, "/alert/threshold/comparator")
    )
    value: int | float = attrs.field(
        converter=plain_number,
        validator=validate_field(check_threshold_value, "/alert/threshold/value"),
    )

    def to_wire(self) -> dict[str, Any]:
        return {"comparator": self.comparator, "value": self.value}


def _a_threshold(_instance: object, _attribute: object, value: Any) -> None:
    # The wrong Python type is the caller's bug (a TypeError, docs/kpi.md),
    # said in one line rather than in attrs' tuple of internals.
    if not isinstance(value, Threshold):
        raise TypeError(
            f"EmitAlert.threshold must be a Threshold, not {type(value).__name__} "
            "(alert_from_wire reads the wire's object)"
        )


@attrs.frozen
class EmitAlert:
    """An alert as a caller asks for it: a value checked against a threshold."""

    kpi_code: str = attrs.field(
        converter=plain_text,
        validator=validate_field(check_kpi_code, "/alert/kpi_code"),
    )
    bucket: Bucket = attrs.field(
        converter=plain_text, validator=validate_field(check_bucket, "/alert/bucket")
    )
    bucket_start: datetime = attrs.field(
        converter=as_utc, validator=validate_start("/alert")
    )
    value: Value = attrs.field(
        converter=_alert_value, validator=validate_field(check_value, "/alert/value")
    )
    threshold: Threshold = attrs.field(validator=_a_threshold)
    scope: str = attrs.field(
        default=DEFAULT_SCOPE,
        converter=plain_text,
        validator=validate_field(check_scope, "/alert/scope"),
    )
    notify: bool = attrs.field(
        default=False, validator=validate_field(check_flag, "/notify")
    )

    @property
    def fires(self) -> bool:
        return fires(self.value, self.threshold.comparator, self.threshold.value)

    def key(self, orgcode: str) -> str:
        """The idempotency key of this rule for this bucket (:func:`alert_key`)."""
        return alert_key(
            orgcode,
            self.kpi_code,
            self.scope,
            self.bucket,
            self.bucket_start,
            self.threshold.comparator,
            self.threshold.value,
        )


def alert_from_wire(
    raw: Mapping[str, Any], *, notify: bool = False, pointer: str = "/alert"
) -> EmitAlert:
    """Build an :class:`EmitAlert` from its wire form, reporting every fault."""
    problems = Problems()
    code, scope = code_and_scope(problems, raw, pointer)
    bucket, start = window_fields(problems, raw, pointer)
    value = required_value(problems, raw, pointer, _check_alert_value)
    threshold = problems.take(lambda: _threshold(raw.get("threshold"), pointer))
    problems.raise_any()

    assert code and scope and bucket and start and threshold

    return EmitAlert(code, bucket, start, value, threshold, scope, notify)


def _check_alert_value(value: object, pointer: str) -> Value:
    return check_value(_alert_value(value), pointer)


def _threshold(raw: object, pointer: str) -> Threshold:
    if not isinstance(raw, Mapping):
        raise _refused(f"{pointer}/threshold", "must be an object")

    problems = Problems()
    comparator = problems.take(
        lambda: check_comparator(
            text_field(raw, "comparator"), f"{pointer}/threshold/comparator"
        )
    )
    value = problems.take(
        lambda: check_threshold_value(raw.get("value"), f"{pointer}/threshold/value")
    )
    problems.raise_any()
    assert comparator is not None and value is not None

    return Threshold(comparator, value)


@attrs.frozen
class NotificationState:
    """Where the notification of an alert stands.

    ``pending`` is due to be sent; a sender first *claims* it until
    ``claimed_until``, so two callers never send it at once and a sender
    that died releases it when the claim runs out.
    """

    status: NotificationStatus
    attempts: int = 0
    error: str | None = None
    claimed_until: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"status": self.status, "attempts": self.attempts}


@attrs.frozen
class Alert:
    """A stored alert: one rule evaluated for one bucket, and its notification.

    ``notification`` is None when the alert did not fire (nothing to tell),
    ``not_requested`` when it fired but the caller asked for no
    notification, else the state of the one notification it gets.
    """

    alert_id: str
    alert_key: str
    kpi_code: str
    scope: str
    bucket: Bucket
    bucket_start: datetime
    value: Value
    threshold: Threshold
    fired: bool
    notification: NotificationState | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def emit(cls, alert_id: str, key: str, ask: EmitAlert, now: datetime) -> Alert:
        fired = ask.fires

        return cls(
            alert_id=alert_id,
            alert_key=key,
            kpi_code=ask.kpi_code,
            scope=ask.scope,
            bucket=ask.bucket,
            bucket_start=ask.bucket_start,
            value=ask.value,
            threshold=ask.threshold,
            fired=fired,
            notification=_first_notice(fired, ask.notify),
            created_at=now,
            updated_at=now,
        )

    @property
    def bucket_end(self) -> datetime:
        return bucket_end(self.bucket, self.bucket_start)

    def again(self, ask: EmitAlert, now: datetime) -> Alert | None:
        """The alert after the same rule is evaluated again; None if unchanged.

        Only one change is possible: a rule that had not fired in this
        bucket fires now. The value and the notification choice of the
        firing call are kept. A fired alert stays as it is, so retries
        neither store, record nor notify twice.

        The rule is the stored one: a threshold that keys the same but is
        another number (the float ``1e23`` against the integer ``10**23``,
        both written ``1e23``) is weighed as the stored threshold, so an
        alert never says it fired on a comparison that does not hold.
        """
        rule = self.threshold
        if self.fired or not fires(ask.value, rule.comparator, rule.value):
            return None

        return attrs.evolve(
            self,
            value=ask.value,
            fired=True,
            notification=_first_notice(True, ask.notify),
            updated_at=now,
        )

    def due(self, now: datetime) -> bool:
        """Whether the notification waits to be sent and nobody holds it."""
        notice = self.notification
        if notice is None or notice.status != "pending":
            return False

        return notice.claimed_until is None or notice.claimed_until <= now

    def claimed(self, until: datetime) -> Alert:
        assert self.notification is not None
        notice = attrs.evolve(self.notification, claimed_until=until)

        return attrs.evolve(self, notification=notice)

    def sent(self, attempts: int, now: datetime) -> Alert:
        return self._notified("sent", attempts, None, now)

    def undeliverable(self, attempts: int, error: str, now: datetime) -> Alert:
        """Failed for good, with the last error: at most MAX_ERROR characters
        of valid Unicode (a lone surrogate in a host's message is escaped),
        so the alert and its event can always be stored."""
        kept = error.encode("utf-8", "backslashreplace").decode()[:MAX_ERROR]

        return self._notified("failed", attempts, kept, now)

    def _notified(
        self,
        status: NotificationStatus,
        attempts: int,
        error: str | None,
        now: datetime,
    ) -> Alert:
        before = self.notification.attempts if self.notification else 0
        notice = NotificationState(status, before + attempts, error)

        return attrs.evolve(self, notification=notice, updated_at=now)

    def to_wire(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kpi_code": self.kpi_code,
            "value": self.value,
            "threshold": self.threshold.to_wire(),
            "scope": self.scope,
            "bucket": self.bucket,
            "bucket_start": format_utc(self.bucket_start),
            "bucket_end": format_utc(self.bucket_end),
            "fired": self.fired,
            "notification": self.notification and self.notification.to_wire(),
            "created_at": format_utc(self.created_at),
        }

    def emitted_payload(self) -> dict[str, Any]:
        """The payload of the ``kpi.alert.emitted`` event."""
        wire = self.to_wire()
        del wire["notification"], wire["created_at"]
        notice = self.notification

        return {
            **wire,
            "notify": notice is not None and notice.status != "not_requested",
        }

    def failed_payload(self) -> dict[str, Any]:
        """The payload of the ``kpi.alert.notification_failed`` event."""
        notice = self.notification
        assert notice is not None

        return {
            "alert_id": self.alert_id,
            "kpi_code": self.kpi_code,
            "attempts": notice.attempts,
            "error": (notice.error or "")[:1024],
        }


def _first_notice(fired: bool, notify: bool) -> NotificationState | None:
    if not fired:
        return None

    return NotificationState("pending" if notify else "not_requested")


@attrs.frozen
class AlertNotification:
    """What a :class:`~ipm.ports.Notifier` delivers: one alert that fired.

    ``notification_id`` is the same for every attempt at the same alert,
    so an inbox can drop a notification it already has.
    """

    orgcode: str
    alert: Alert
    attempt: int

    @property
    def notification_id(self) -> str:
        return f"{NOTIFICATION_ID_PREFIX}{self.alert.alert_id}"

    @property
    def subject(self) -> str:
        alert = self.alert
        rule = f"{alert.threshold.comparator} {alert.threshold.value}"
        where = f"{alert.scope}, {alert.bucket} from {format_utc(alert.bucket_start)}"

        return f"{alert.kpi_code} is {alert.value} ({rule}) for {where}"

    def to_wire(self) -> dict[str, Any]:
        wire = self.alert.to_wire()
        del wire["notification"]

        return {
            "notification_id": self.notification_id,
            "subject": self.subject,
            **wire,
        }
