"""The route table: the 22 routes of the API reference, as data.

Each route carries its schemas (checked before any use-case runs), its
latency class from the reference (tier, p95 and p99), whether it needs
an org and whether it changes anything (which decides between 404 and
403 for a caller who is not bound to the org). Handlers are attached by
capability modules; a route without one answers ``501 not_implemented``.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Latency:
    """A route's class in the reference: its tier and the ceilings it
    states for that route (a tier's routes do not all share them)."""

    tier: str
    p95_ms: int
    p99_ms: int | None = None

    def ceilings(self) -> dict[str, int]:
        """``p95_ms``, and ``p99_ms`` where the reference states one."""
        stated = {"p95_ms": self.p95_ms}
        if self.p99_ms is not None:
            stated["p99_ms"] = self.p99_ms
        return stated


@attrs.frozen
class Route:
    method: str
    path: str
    summary: str
    latency: Latency
    request_schema: str | None
    response_schema: str
    tenant: bool = True
    mutating: bool = False

    @property
    def call(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def tier(self) -> str:
        return self.latency.tier

    @property
    def ceilings(self) -> dict[str, int]:
        return self.latency.ceilings()

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


_HEALTH = Latency("A", 500)
_READ = Latency("B", 300)
_FEED = Latency("C", 150, 400)
_CHANGE = Latency("D", 300, 600)


def _post(
    path: str, summary: str, latency: Latency, name: str, *, mutating: bool = False
) -> Route:
    return Route(
        "POST",
        path,
        summary,
        latency,
        f"{name}Request",
        f"{name}Response",
        mutating=mutating,
    )


ROUTES: tuple[Route, ...] = (
    _post(
        "/bulk/export/continue",
        "Continue a bulk export job using the previous cursor",
        _CHANGE,
        "BulkExportContinue",
        mutating=True,
    ),
    _post(
        "/bulk/export/create",
        "Create a bulk export job",
        _CHANGE,
        "BulkExportCreate",
        mutating=True,
    ),
    _post(
        "/bulk/import/commit",
        "Commit a bulk import job after upload",
        _CHANGE,
        "BulkImportCommit",
        mutating=True,
    ),
    _post(
        "/bulk/import/continue",
        "Continue a bulk import job from the last processed line",
        _CHANGE,
        "BulkImportContinue",
        mutating=True,
    ),
    _post(
        "/bulk/import/create",
        "Create a bulk import job",
        _CHANGE,
        "BulkImportCreate",
        mutating=True,
    ),
    _post("/bulk/job/get", "Get bulk job status", _READ, "BulkJobGet"),
    _post("/bulk/job/list", "List bulk jobs", _READ, "BulkJobList"),
    _post("/cdc/list", "List CDC events", _FEED, "CdcList"),
    _post(
        "/event/catalog/list", "List event catalog entries", _READ, "EventCatalogList"
    ),
    _post(
        "/export/contract/list",
        "List export contracts aligned to event streams",
        _READ,
        "ExportContractList",
    ),
    _post(
        "/kpi/alert",
        "Emit KPI alert (optionally sends inbox notification)",
        Latency("D", 1500, 3000),
        "KpiAlert",
        mutating=True,
    ),
    _post("/kpi/query", "Query KPI snapshots", Latency("C", 1200, 2500), "KpiQuery"),
    _post(
        "/kpi/record",
        "Record KPI snapshot",
        Latency("D", 1500, 3000),
        "KpiRecord",
        mutating=True,
    ),
    _post(
        "/lifecycle/list",
        "List lifecycle/state-machine entries",
        _READ,
        "LifecycleList",
    ),
    _post("/pagination/get", "Fetch pagination conventions", _READ, "PaginationGet"),
    _post("/specimen/get", "Fetch specimen payloads", _READ, "SpecimenGet"),
    Route("GET", "/stat", "Health check", _HEALTH, None, "StatResponse", tenant=False),
    _post(
        "/webhook/create",
        "Create a webhook subscription",
        _CHANGE,
        "WebhookCreate",
        mutating=True,
    ),
    _post("/webhook/get", "Get a webhook", _READ, "WebhookGet"),
    _post("/webhook/list", "List webhooks", _READ, "WebhookList"),
    _post(
        "/webhook/replay",
        "Replay webhook deliveries from the event store",
        Latency("D", 500, 1000),
        "WebhookReplay",
        mutating=True,
    ),
    _post(
        "/webhook/status/set",
        "Update webhook status",
        _CHANGE,
        "WebhookStatusSet",
        mutating=True,
    ),
)
