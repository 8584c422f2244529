"""The shared objects of the wire: envelope, error and the stored records."""

from __future__ import annotations

from ipm.schemas._fragments import (
    COMPARATORS,
    JOB_MODES,
    JOB_TARGETS,
    JOB_TYPES,
    NOTIFICATION_STATUSES,
    OPS,
    ORDERING_KEYS,
    SIGNING_ALGORITHMS,
    Schema,
    action_name,
    array,
    boolean,
    bucket,
    closed,
    const,
    count,
    described,
    enum,
    identifier,
    job_status,
    kpi_code,
    kpi_value,
    nullable,
    obj,
    orgcode,
    ref,
    revision,
    scope,
    service_name,
    sha256,
    source_refs,
    string,
    timestamp,
    url,
    webhook_status,
)

# -- envelope ----------------------------------------------------------------


def error() -> Schema:
    problem = closed({"pointer": string(), "message": string()})

    return closed(
        {
            "code": string(1, 64, pattern="^[a-z][a-z0-9_]*$"),
            "message": string(),
            "details": described(
                array(problem), "One item per problem, located by a JSON pointer."
            ),
        }
    )


def envelope() -> Schema:
    schema = obj(
        {
            "success": boolean(),
            "data": {"type": "object"},
            "error": ref("Error"),
            "build": closed({"build_id": string(1, 128)}),
            "stats": closed(
                {
                    "call": string(1, 256, examples=["POST /kpi/record"]),
                    "service": const("ipm"),
                    "timestamp_utc": timestamp(),
                }
            ),
        },
        ["success", "build", "stats"],
    )
    # success decides which of data and error is present; the other is refused.
    schema["if"] = obj({"success": const(True)}, ["success"], extra=True)
    schema["then"] = {"required": ["data"], "properties": {"error": False}}
    schema["else"] = {"required": ["error"], "properties": {"data": False}}

    return schema


def page_token() -> Schema:
    return {
        "type": "object",
        "description": "Opaque keyset page token; send it back unchanged.",
    }


# -- CDC ---------------------------------------------------------------------


def audit() -> Schema:
    return closed(
        {
            "actor": nullable(string(1, 128)),
            "context_source": nullable(string(1, 64)),
            "reason": nullable(string(max_length=1024)),
            "source_refs": source_refs(),
        }
    )


def event() -> Schema:
    return closed(
        {
            "sequence": described(
                count(),
                "Strictly increasing in commit order; no event appears later "
                "below a sequence a reader has seen. Numbers are shared by the "
                "deployment, so an org's feed skips other orgs' numbers.",
            ),
            "event_id": described(identifier(), "Idempotency key."),
            "orgcode": orgcode(),
            "service": service_name(),
            "action": action_name(),
            "op": enum(OPS),
            "logical_guid": nullable(string(1, 128)),
            "channel_code": nullable(string(1, 64)),
            "occurred_at": timestamp(),
            "recorded_at": timestamp(),
            "payload": {"type": "object"},
            "audit": audit(),
        }
    )


# -- webhooks ----------------------------------------------------------------


def event_filter() -> Schema:
    schema = obj(
        {
            "service": service_name(),
            "action": action_name(),
            # A subscription's prefix is held to the name rule itself: one
            # that no action could start with would silently match nothing.
            "action_prefix": action_name(),
        },
        ["service"],
        description="Matches events of a service, optionally one action or "
        "actions starting with a prefix (not both).",
    )
    # "type" keeps a value of another kind (a bare string) out of this
    # rule: "required" holds vacuously for it, so "not" would refuse it twice.
    schema["not"] = {"type": "object", "required": ["action", "action_prefix"]}

    return schema


def event_filters() -> Schema:
    return array(event_filter(), min_items=1, max_items=32)


def signing_algorithm() -> Schema:
    return enum(SIGNING_ALGORITHMS, default="hmac-sha256")


def ordering_key() -> Schema:
    return described(
        nullable(enum(ORDERING_KEYS)),
        "Event field whose equal values are delivered in order; null: unordered.",
    )


def webhook_properties() -> dict[str, Schema]:
    return {
        "webhook_id": identifier(),
        "orgcode": orgcode(),
        "endpoint_url": url(),
        "status": webhook_status(),
        "event_filters": event_filters(),
        "signing_algorithm": signing_algorithm(),
        "secret_last4": string(max_length=4),
        "ordering_key": ordering_key(),
        "description": nullable(string(max_length=256)),
        "disabled_reason": nullable(string(max_length=1024)),
        "created_at": timestamp(),
        "updated_at": timestamp(),
        "revision": revision(),
    }


def webhook() -> Schema:
    return closed(webhook_properties())


# -- bulk jobs ---------------------------------------------------------------


def job_counters() -> Schema:
    names = (
        "lines_read",
        "ok",
        "failed",
        "blank",
        "created",
        "updated",
        "unchanged",
        "duplicate",
        "records_written",
    )

    return closed({name: count() for name in names})


def job() -> Schema:
    upload = closed(
        {"size": count(), "sha256": sha256(), "bom": boolean(), "gzip": boolean()}
    )
    result = closed({"size": count(), "sha256": sha256(), "records": count()})
    failure = closed({"code": string(1, 64), "message": string()})

    # Jobs may grow fields; clients must ignore the ones they do not know.
    # validation came later: responses always send it, but a job recorded
    # in an earlier bulk.job.created event lacks it, so it is not required.
    always = {
        "job_id": identifier(),
        "orgcode": orgcode(),
        "job_type": enum(JOB_TYPES),
        "target": enum(JOB_TARGETS),
        "format": const("ndjson"),
        "mode": nullable(enum(JOB_MODES)),
        "status": job_status(),
        "created_at": timestamp(),
        "updated_at": timestamp(),
        "revision": revision(),
        "counters": job_counters(),
        "upload": nullable(upload),
        "result": nullable(result),
        "error": nullable(failure),
        "filters": {"type": ["object", "null"]},
        "high_water_mark": nullable(count()),
        "cursor": closed({"position": count(), "lines": count()}),
        "max_failed_lines": nullable(count()),
        "filename": nullable(string(max_length=256)),
    }
    validation = nullable(job_counters())
    validation["description"] = (
        "The counters of the validate-only run a promoted job came from; "
        "null on any other job."
    )

    return obj({**always, "validation": validation}, always.keys(), extra=True)


# -- KPIs --------------------------------------------------------------------


def kpi_bucket_properties() -> dict[str, Schema]:
    return {
        "bucket": bucket(),
        "bucket_start": timestamp(),
        "bucket_end": timestamp(),
    }


def kpi() -> Schema:
    return closed(
        {
            "kpi_id": identifier(),
            "kpi_code": kpi_code(),
            "scope": scope(),
            **kpi_bucket_properties(),
            "value": kpi_value(),
            "revision": revision(),
            "created_at": timestamp(),
            "updated_at": timestamp(),
        }
    )


def threshold() -> Schema:
    return closed({"comparator": enum(COMPARATORS), "value": {"type": "number"}})


def alert() -> Schema:
    notification = closed({"status": enum(NOTIFICATION_STATUSES), "attempts": count()})

    return closed(
        {
            "alert_id": identifier(),
            "kpi_code": kpi_code(),
            "value": kpi_value(),
            "threshold": threshold(),
            "scope": scope(),
            **kpi_bucket_properties(),
            "fired": boolean(),
            "notification": nullable(notification),
            "created_at": timestamp(),
        }
    )


# -- metadata ----------------------------------------------------------------


def lifecycle() -> Schema:
    state = closed(
        {
            "name": string(1, 64),
            "terminal": boolean(),
            "transitions": array(string(1, 64)),
        }
    )

    return closed(
        {
            "name": string(1, 128),
            "service": service_name(),
            "version": string(1, 128),
            "initial": string(1, 64),
            "states": array(state, min_items=1),
        }
    )


def shared() -> dict[str, Schema]:
    """Every shared object by schema name."""
    return {
        "Envelope": envelope(),
        "Error": error(),
        "PageToken": page_token(),
        "Event": event(),
        "Webhook": webhook(),
        "Job": job(),
        "Kpi": kpi(),
        "Alert": alert(),
        "Lifecycle": lifecycle(),
    }
