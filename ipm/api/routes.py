"""The route table: the 22 routes of the API reference, as data.

Each route carries its schemas (checked before any use-case runs), its
latency tier from the reference, whether it needs an org and whether it
changes anything (which decides between 404 and 403 for a caller who is
not bound to the org). Handlers are attached by capability modules; a
route without one answers ``501 not_implemented``.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Route:
    method: str
    path: str
    summary: str
    tier: str
    request_schema: str | None
    response_schema: str
    tenant: bool = True
    mutating: bool = False

    @property
    def call(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def record(self) -> str:
        """What this route's 404 calls the record it did not find.

        The same word whether the record is absent or in an org the caller
        cannot see, so the two answers cannot be told apart.
        """
        for prefix, kind in _RECORDS:
            if self.path.startswith(prefix):
                return kind

        return "record"


_RECORDS = (("/bulk/", "job"), ("/webhook/", "webhook"))


def _post(
    path: str, summary: str, tier: str, name: str, *, mutating: bool = False
) -> Route:
    return Route(
        "POST",
        path,
        summary,
        tier,
        f"{name}Request",
        f"{name}Response",
        mutating=mutating,
    )


ROUTES: tuple[Route, ...] = (
    _post(
        "/bulk/export/continue",
        "Continue a bulk export job using the previous cursor",
        "D",
        "BulkExportContinue",
        mutating=True,
    ),
    _post(
        "/bulk/export/create",
        "Create a bulk export job",
        "D",
        "BulkExportCreate",
        mutating=True,
    ),
    _post(
        "/bulk/import/commit",
        "Commit a bulk import job after upload",
        "D",
        "BulkImportCommit",
        mutating=True,
    ),
    _post(
        "/bulk/import/continue",
        "Continue a bulk import job from the last processed line",
        "D",
        "BulkImportContinue",
        mutating=True,
    ),
    _post(
        "/bulk/import/create",
        "Create a bulk import job",
        "D",
        "BulkImportCreate",
        mutating=True,
    ),
    _post("/bulk/job/get", "Get bulk job status", "B", "BulkJobGet"),
    _post("/bulk/job/list", "List bulk jobs", "B", "BulkJobList"),
    _post("/cdc/list", "List CDC events", "C", "CdcList"),
    _post("/event/catalog/list", "List event catalog entries", "B", "EventCatalogList"),
    _post(
        "/export/contract/list",
        "List export contracts aligned to event streams",
        "B",
        "ExportContractList",
    ),
    _post(
        "/kpi/alert",
        "Emit KPI alert (optionally sends inbox notification)",
        "D",
        "KpiAlert",
        mutating=True,
    ),
    _post("/kpi/query", "Query KPI snapshots", "C", "KpiQuery"),
    _post("/kpi/record", "Record KPI snapshot", "D", "KpiRecord", mutating=True),
    _post(
        "/lifecycle/list", "List lifecycle/state-machine entries", "B", "LifecycleList"
    ),
    _post("/pagination/get", "Fetch pagination conventions", "B", "PaginationGet"),
    _post("/specimen/get", "Fetch specimen payloads", "B", "SpecimenGet"),
    Route("GET", "/stat", "Health check", "A", None, "StatResponse", tenant=False),
    _post(
        "/webhook/create",
        "Create a webhook subscription",
        "D",
        "WebhookCreate",
        mutating=True,
    ),
    _post("/webhook/get", "Get a webhook", "B", "WebhookGet"),
    _post("/webhook/list", "List webhooks", "B", "WebhookList"),
    _post(
        "/webhook/replay",
        "Replay webhook deliveries from the event store",
        "D",
        "WebhookReplay",
        mutating=True,
    ),
    _post(
        "/webhook/status/set",
        "Update webhook status",
        "D",
        "WebhookStatusSet",
        mutating=True,
    ),
)

TIER_P95_MS = {"A": 500, "B": 300, "C": 150, "D": 300}
"""The reference's p95 ceiling per tier (routes may state their own)."""
