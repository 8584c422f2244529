"""Schemas of the ``data`` object of every successful response."""

from __future__ import annotations

from ipm.schemas._fragments import (
    OPS,
    Schema,
    action_name,
    array,
    boolean,
    closed,
    const,
    count,
    described,
    enum,
    id_field,
    nullable,
    obj,
    page_of,
    ref,
    service_name,
    string,
    timestamp,
    url,
)
from ipm.schemas._objects import webhook_properties


def stat() -> Schema:
    return closed(
        {
            "service": const("ipm"),
            "status": const("active"),
            "version": string(1, 64),
            "build_id": string(1, 128),
            "time_utc": timestamp(),
        }
    )


# -- metadata ----------------------------------------------------------------


def pagination_get() -> Schema:
    token = obj(
        {
            "field": described(const("next_token"), "Where a page carries it."),
            "kind": const("keyset"),
            "opaque": const(True),
            "last_page": described(
                const("null"), "What next_token is on the last page."
            ),
            "bound_to": array(string()),
            "tamper": const("invalid_token"),
        },
        ["field", "kind", "opaque", "last_page", "bound_to", "tamper"],
        extra=True,
    )
    routes = array(string(pattern="^/"))

    return obj(
        {
            "default_limit": count(),
            "min_limit": count(),
            "max_limit": count(),
            "limit_out_of_range": const("clamped"),
            "token": token,
            "order": {"type": ["string", "object"]},
            "routes": described(routes, "Paths of the paginated routes."),
        },
        [
            "default_limit",
            "min_limit",
            "max_limit",
            "limit_out_of_range",
            "token",
            "order",
            "routes",
        ],
        extra=True,
    )


def lifecycle_list() -> Schema:
    return page_of(ref("Lifecycle"), version=string(1, 128))


def catalog_entry() -> Schema:
    return closed(
        {
            "service": service_name(),
            "action": action_name(),
            "op": nullable(enum(OPS)),
            "description": string(),
            "schema_url": nullable(url()),
            "version": string(1, 64),
        }
    )


def export_contract() -> Schema:
    partition = closed({"field": string(1, 64), "granularity": string(1, 32)})
    action = closed({"action": action_name(), "schema_url": nullable(url())})

    return closed(
        {
            "service": service_name(),
            "stream": const("events"),
            "format": const("ndjson"),
            "partitioning": array(partition),
            "actions": array(action),
        }
    )


def specimen_get() -> Schema:
    # The reference's shape: all three fields, whether a name was asked for
    # (then specimens holds that one) or not (then name and specimen are null).
    return obj(
        {
            "name": nullable(string(1, 128)),
            "specimen": {},
            "specimens": {"type": "object"},
        },
        ["name", "specimen", "specimens"],
    )


def cdc_list() -> Schema:
    return page_of(ref("Event"), has_more=boolean())


# -- webhooks ----------------------------------------------------------------


def webhook_create() -> Schema:
    secret = described(
        string(1),
        "The signing secret (whsec_...) or, for ed25519, the public key "
        "(whpk_...); shown only here.",
    )

    return closed({**webhook_properties(), "secret": secret})


def one_webhook() -> Schema:
    return closed({"webhook": ref("Webhook")})


def webhook_replay() -> Schema:
    return closed(
        {
            **id_field("webhook_id"),
            "considered": count(),
            "delivered": count(),
            "failed": count(),
        }
    )


# -- bulk jobs ---------------------------------------------------------------


def one_job() -> Schema:
    return closed({"job": ref("Job")})


def bulk_import_create() -> Schema:
    return closed(
        {
            "job": ref("Job"),
            "upload_url": described(url(), "PUT the raw NDJSON bytes here."),
            "expires_at": timestamp(),
        }
    )


def bulk_job_get() -> Schema:
    return obj(
        {
            "job": ref("Job"),
            "upload_url": described(
                nullable(url()),
                "While the job awaits its upload: a fresh link to PUT it to.",
            ),
            "download_url": nullable(url()),
            "report_url": nullable(url()),
            "results_url": described(
                nullable(url()),
                "NDJSON {line, action}: what happened to every line of an import.",
            ),
        },
        ["job"],
    )


def responses() -> dict[str, Schema]:
    """Every response ``data`` schema by name."""
    return {
        "StatResponse": stat(),
        "PaginationGetResponse": pagination_get(),
        "LifecycleListResponse": lifecycle_list(),
        "EventCatalogListResponse": page_of(catalog_entry()),
        "ExportContractListResponse": page_of(export_contract(), "contracts"),
        "SpecimenGetResponse": specimen_get(),
        "CdcListResponse": cdc_list(),
        "WebhookCreateResponse": webhook_create(),
        "WebhookGetResponse": one_webhook(),
        "WebhookListResponse": page_of(ref("Webhook")),
        "WebhookStatusSetResponse": one_webhook(),
        "WebhookReplayResponse": webhook_replay(),
        "BulkImportCreateResponse": bulk_import_create(),
        "BulkImportCommitResponse": one_job(),
        "BulkImportContinueResponse": one_job(),
        "BulkExportCreateResponse": one_job(),
        "BulkExportContinueResponse": one_job(),
        "BulkJobGetResponse": bulk_job_get(),
        "BulkJobListResponse": page_of(ref("Job")),
        "KpiRecordResponse": closed({"kpi": ref("Kpi")}),
        "KpiQueryResponse": page_of(ref("Kpi"), "series"),
        "KpiAlertResponse": closed({"alert": ref("Alert")}),
    }
