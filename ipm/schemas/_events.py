"""Payload schemas of the CDC events ipm records about its own changes.

Each is named ``event.ipm.<action>``; the event's service is ``ipm``. A
creation carries the whole new record; an update carries what changed.
One more is ipm's too though its service is not: ``event.inbox.kpi.alert.
notified``, what the default notifier records for a fired alert.
"""

from __future__ import annotations

from ipm.schemas._fragments import (
    JOB_FINAL_STATUSES,
    JOB_TARGETS,
    JOB_TYPES,
    Schema,
    boolean,
    bucket,
    count,
    described,
    enum,
    id_field,
    job_status,
    kpi_code,
    kpi_value,
    nullable,
    obj,
    ref,
    revision,
    scope,
    string,
    timestamp,
    webhook_status,
)
from ipm.schemas._objects import job_counters, kpi_bucket_properties, threshold

EVENT_PREFIX = "event.ipm."


def transition(id_name: str, status: Schema, **more: Schema) -> Schema:
    """A record moved from one status to another."""
    return obj(
        {**id_field(id_name), "from": status, "to": status, **more},
        [id_name, "from", "to"],
    )


def webhook_status_changed() -> Schema:
    return transition(
        "webhook_id",
        webhook_status(),
        reason=nullable(string(max_length=1024)),
        revision=revision(),
    )


def webhook_disabled() -> Schema:
    why = string(
        1,
        64,
        pattern="^[a-z0-9_]+$",
        examples=["gone_410", "sustained_failure"],
    )

    return obj(
        {
            **id_field("webhook_id"),
            "reason": described(why, "Why, e.g. gone_410 or sustained_failure."),
            "from": webhook_status(),
            "detail": string(max_length=1024),
            "revision": revision(),
        },
        ["webhook_id", "reason"],
    )


def _replay(counts: tuple[str, ...]) -> Schema:
    return obj(
        {
            **id_field("replay_id"),
            **id_field("webhook_id"),
            "since": nullable(timestamp()),
            "until": nullable(timestamp()),
            "max_events": count(),
            **{name: count() for name in counts},
        },
        ["replay_id", "webhook_id", "since", "until", "max_events", *counts],
    )


def webhook_replay_started() -> Schema:
    return _replay(("considered",))


def webhook_replayed() -> Schema:
    return _replay(("considered", "delivered", "failed"))


def job_finished() -> Schema:
    return obj(
        {
            **id_field("job_id"),
            "status": described(
                enum([*JOB_FINAL_STATUSES, "validated"]),
                "validated ends a validate-only run, which may be promoted.",
            ),
            "counters": job_counters(),
            "job_type": enum(JOB_TYPES),
            "target": enum(JOB_TARGETS),
        },
        ["job_id", "status", "counters"],
    )


def kpi_recorded() -> Schema:
    return obj(
        {
            **id_field("kpi_id"),
            "kpi_code": kpi_code(),
            "scope": scope(),
            "bucket": bucket(),
            "bucket_start": timestamp(),
            "old_value": described(kpi_value(), "null when the snapshot is new."),
            "new_value": kpi_value(),
            "revision": revision(),
        },
        [
            "kpi_id",
            "kpi_code",
            "scope",
            "bucket",
            "bucket_start",
            "old_value",
            "new_value",
            "revision",
        ],
    )


def alert_emitted() -> Schema:
    fields = {
        **id_field("alert_id"),
        "kpi_code": kpi_code(),
        "fired": boolean(),
        "value": kpi_value(),
        "threshold": threshold(),
        "scope": scope(),
        **kpi_bucket_properties(),
    }

    return obj({**fields, "notify": boolean()}, fields.keys())


def alert_notification_failed() -> Schema:
    return obj(
        {
            **id_field("alert_id"),
            "kpi_code": kpi_code(),
            "attempts": count(),
            "error": string(max_length=1024),
        },
        ["alert_id", "attempts"],
    )


INBOX_NOTIFIED = "event.inbox.kpi.alert.notified"
"""The schema of the default notifier's events (service ``inbox``)."""


def events() -> dict[str, Schema]:
    """Every ipm event payload schema by name, its op and meaning described."""
    own = {
        EVENT_PREFIX + action: {**schema, "description": f"op {_ops(op)}: {text}"}
        for action, (op, text, schema) in _payloads().items()
    }
    announced = "op c: A fired KPI alert was announced (the inbox)."

    return {**own, INBOX_NOTIFIED: {**alert_notified(), "description": announced}}


def alert_notified() -> Schema:
    """The payload of ``inbox/kpi.alert.notified``: the notification sent."""
    text = {"type": "string", "minLength": 1}
    stamp = {"type": "string", "format": "date-time"}
    properties = {
        "notification_id": text,
        "subject": text,
        "alert_id": text,
        "kpi_code": text,
        "value": {"type": ["number", "null"]},
        "threshold": {
            "type": "object",
            "required": ["comparator", "value"],
            "properties": {
                "comparator": {"enum": ["gt", "gte", "lt", "lte", "eq", "ne"]},
                "value": {"type": "number"},
            },
        },
        "scope": text,
        "bucket": {"enum": ["hourly", "daily", "weekly", "monthly"]},
        "bucket_start": stamp,
        "bucket_end": stamp,
        "fired": {"type": "boolean"},
        "created_at": stamp,
    }

    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def event_ops() -> dict[str, str | None]:
    """The op of each of ipm's own event types by schema name.

    ``None`` where it varies: a KPI recorded for the first time is a ``c``,
    a replaced value a ``u``; an alert that fires later is emitted again
    with ``u``.
    """
    return {EVENT_PREFIX + action: op for action, (op, _, _) in _payloads().items()}


def _ops(op: str | None) -> str:
    return "c or u" if op is None else op


def _payloads() -> dict[str, tuple[str | None, str, Schema]]:
    return {
        "webhook.created": ("c", "A subscription was created.", ref("Webhook")),
        "webhook.status_changed": (
            "u",
            "A subscription changed status.",
            webhook_status_changed(),
        ),
        "webhook.disabled": (
            "u",
            "ipm disabled a subscription (410 Gone, sustained failure).",
            webhook_disabled(),
        ),
        "webhook.replay_started": (
            "c",
            "A replay of a subscription's stored events (/webhook/replay) is "
            "about to send them: by whom (the audit), which window, how many. "
            "Recorded before the first send.",
            webhook_replay_started(),
        ),
        "webhook.replayed": (
            "u",
            "A replay ended (its logical_guid is the replay_id of its "
            "webhook.replay_started): what came of it.",
            webhook_replayed(),
        ),
        "bulk.job.created": ("c", "A bulk job was created.", ref("Job")),
        "bulk.job.status_changed": (
            "u",
            "A bulk job changed status.",
            transition("job_id", job_status()),
        ),
        "bulk.job.finished": (
            "u",
            "A bulk job reached a final status.",
            job_finished(),
        ),
        "kpi.recorded": (
            None,
            "A KPI snapshot was recorded (c when new, u when it replaced a value).",
            kpi_recorded(),
        ),
        "kpi.alert.emitted": (
            None,
            "A KPI alert was evaluated (u when it fired on a later call).",
            alert_emitted(),
        ),
        "kpi.alert.notification_failed": (
            "u",
            "The notification of a KPI alert failed for good.",
            alert_notification_failed(),
        ),
    }
