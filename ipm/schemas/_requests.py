"""Request body schemas, one per route (``GET /stat`` has no body).

Every object in a request refuses unknown properties, so a misspelt field
is a 400 that names it instead of a silently ignored option.
"""

from __future__ import annotations

from ipm.domain.jobs import MAX_SLICE_LINES
from ipm.schemas._fragments import (
    JOB_MODES,
    JOB_STATUSES,
    JOB_TARGETS,
    JOB_TYPES,
    ROLLUPS,
    Schema,
    action_name,
    action_prefix,
    bucket,
    count,
    described,
    enum,
    id_field,
    integer,
    kpi_code,
    kpi_value,
    mutating,
    new_scope,
    nullable,
    obj,
    paged,
    revision,
    scope,
    service_name,
    string,
    timestamp,
    url,
    webhook_status,
)
from ipm.schemas._objects import (
    event_filters,
    kpi_bucket_properties,
    ordering_key,
    signing_algorithm,
    threshold,
)

# -- metadata ----------------------------------------------------------------


def lifecycle_list() -> Schema:
    return paged({"service": service_name(), "name": string(1, 128)})


def event_catalog_list() -> Schema:
    return paged(
        {
            "service": service_name(),
            "action": action_name(),
            "action_prefix": action_prefix(),
        }
    )


def export_contract_list() -> Schema:
    return paged({"service": service_name()})


def specimen_get() -> Schema:
    return obj({"name": string(1, 128)})


# -- CDC ---------------------------------------------------------------------


def cdc_list() -> Schema:
    return paged(
        {
            "service": service_name(),
            "logical_guid": string(1, 128),
            "channel_code": string(1, 64),
            "action_prefix": action_prefix(),
            "after_sequence": described(
                count(), "Return events with a greater sequence only."
            ),
        }
    )


# -- webhooks ----------------------------------------------------------------


def webhook_create() -> Schema:
    secret = string(
        max_length=128,
        pattern="^whsec_[A-Za-z0-9+/]+={0,2}$",
        description="Only with hmac-sha256; generated when absent.",
    )
    schema = mutating(
        {
            "endpoint_url": {
                **url(),
                "pattern": "^https?://",
                "examples": ["https://hooks.example.com/ipm"],
            },
            "event_filters": event_filters(),
            "signing_algorithm": signing_algorithm(),
            "secret": secret,
            "ordering_key": ordering_key(),
            # null as the Webhook shows it (no description), so what a
            # client read back can be sent again.
            "description": nullable(string(max_length=256)),
        },
        ["endpoint_url", "event_filters"],
    )
    # An Ed25519 subscription gets a generated key pair; a secret makes no sense.
    schema["if"] = {
        "properties": {"signing_algorithm": {"const": "ed25519"}},
        "required": ["signing_algorithm"],
    }
    schema["then"] = {
        "properties": {
            "secret": {
                "not": {},
                "description": "a secret is for hmac-sha256 only; an ed25519 "
                "webhook gets a key pair made by ipm",
            }
        }
    }

    return schema


def webhook_get() -> Schema:
    return obj(id_field("webhook_id"), ["webhook_id"])


def webhook_list() -> Schema:
    return paged({"status": webhook_status()})


def webhook_status_set() -> Schema:
    return mutating(
        {
            **id_field("webhook_id"),
            "status": webhook_status(),
            "expected_revision": expected_revision(),
        },
        ["webhook_id", "status"],
    )


def webhook_replay() -> Schema:
    return mutating(
        {
            **id_field("webhook_id"),
            "since": timestamp(),
            "until": timestamp(),
            "max_events": {**integer(1, 1000), "default": 100},
        },
        ["webhook_id"],
    )


# -- bulk jobs ---------------------------------------------------------------


def expected_revision() -> Schema:
    return described(
        revision(), "The revision last read; an update without it is a 428."
    )


def job_format() -> Schema:
    return enum(["ndjson"], default="ndjson")


def max_lines() -> Schema:
    return described(
        integer(1, MAX_SLICE_LINES), "Upper bound of lines for this chunk."
    )


def bulk_import_create() -> Schema:
    return mutating(
        {
            "target": enum(JOB_TARGETS, default="events"),
            "format": job_format(),
            "mode": enum(JOB_MODES, default="apply"),
            "max_failed_lines": count(),
            "filename": string(max_length=256),
        }
    )


def bulk_import_commit() -> Schema:
    return mutating(
        {
            **id_field("job_id"),
            "expected_revision": expected_revision(),
            "mode": described(
                enum(JOB_MODES), "apply promotes a validated job to a real run."
            ),
        },
        ["job_id"],
    )


def bulk_continue() -> Schema:
    return mutating({**id_field("job_id"), "max_lines": max_lines()}, ["job_id"])


_WINDOW = (
    "Only what lies {}: occurred_at for events, bucket_start for kpis. "
    "A filter of the other target is a 400."
)


def bulk_export_create() -> Schema:
    filters = obj(
        {
            "service": described(service_name(), "Target events only."),
            "action_prefix": described(action_prefix(), "Target events only."),
            "kpi_code": described(kpi_code(), "Target kpis only."),
            "bucket": described(bucket(), "Target kpis only."),
            "from_utc": described(timestamp(), _WINDOW.format("at or after")),
            "to_utc": described(timestamp(), _WINDOW.format("before")),
        }
    )

    return mutating(
        {
            "target": enum(JOB_TARGETS, default="events"),
            "format": job_format(),
            "filters": filters,
        }
    )


def bulk_job_get() -> Schema:
    return obj(id_field("job_id"), ["job_id"])


def bulk_job_list() -> Schema:
    return paged(
        {
            "status": described(
                enum([*JOB_STATUSES, "active"]),
                "A job status, or active for every job not yet finished.",
            ),
            "job_type": enum(JOB_TYPES),
        }
    )


# -- KPIs --------------------------------------------------------------------


def kpi_snapshot_input() -> Schema:
    return obj(
        {
            "kpi_code": kpi_code(),
            "scope": {**new_scope(), "default": "org"},
            **kpi_bucket_properties(),
            "value": kpi_value(),
        },
        ["kpi_code", "bucket", "bucket_start", "bucket_end", "value"],
    )


def kpi_record() -> Schema:
    return mutating(
        {"kpi": kpi_snapshot_input(), "expected_revision": expected_revision()},
        ["kpi"],
    )


def kpi_query() -> Schema:
    rollup = obj(
        {"function": enum(ROLLUPS), "from_bucket": bucket()},
        ["function", "from_bucket"],
    )

    return paged(
        {
            "kpi_code": kpi_code(),
            "bucket": bucket(),
            "from_utc": described(timestamp(), "Inclusive."),
            "to_utc": described(timestamp(), "Exclusive."),
            "scope": {**scope(), "default": "org"},
            "rollup": rollup,
        },
        ["kpi_code", "bucket", "from_utc", "to_utc"],
    )


def kpi_alert() -> Schema:
    alert = obj(
        {
            "kpi_code": kpi_code(),
            "scope": {**new_scope(), "default": "org"},
            "value": kpi_value(),
            "threshold": threshold(),
            **kpi_bucket_properties(),
        },
        ["kpi_code", "value", "threshold", "bucket", "bucket_start", "bucket_end"],
    )

    return mutating(
        {"alert": alert, "notify": {"type": "boolean", "default": False}},
        ["alert"],
    )


def requests() -> dict[str, Schema]:
    """Every request schema by name."""
    return {
        "PaginationGetRequest": obj({}),
        "LifecycleListRequest": lifecycle_list(),
        "EventCatalogListRequest": event_catalog_list(),
        "ExportContractListRequest": export_contract_list(),
        "SpecimenGetRequest": specimen_get(),
        "CdcListRequest": cdc_list(),
        "WebhookCreateRequest": webhook_create(),
        "WebhookGetRequest": webhook_get(),
        "WebhookListRequest": webhook_list(),
        "WebhookStatusSetRequest": webhook_status_set(),
        "WebhookReplayRequest": webhook_replay(),
        "BulkImportCreateRequest": bulk_import_create(),
        "BulkImportCommitRequest": bulk_import_commit(),
        "BulkImportContinueRequest": bulk_continue(),
        "BulkExportCreateRequest": bulk_export_create(),
        "BulkExportContinueRequest": bulk_continue(),
        "BulkJobGetRequest": bulk_job_get(),
        "BulkJobListRequest": bulk_job_list(),
        "KpiRecordRequest": kpi_record(),
        "KpiQueryRequest": kpi_query(),
        "KpiAlertRequest": kpi_alert(),
    }
