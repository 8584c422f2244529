"""SQLite adapters (through sqlite-utils for the schema, raw on hot paths)."""

from __future__ import annotations

from pathlib import Path

from ipm.adapters.sqlite.core import (
    Migration,
    SchemaTooNew,
    SQLiteHostUnitOfWork,
    SQLiteStorage,
    SQLiteUnitOfWork,
    migrate,
)
from ipm.adapters.sqlite.events import create_events_table, sparse_event_indexes
from ipm.adapters.sqlite.jobs import create_jobs_tables
from ipm.adapters.sqlite.kpis import cluster_kpis, create_kpi_tables
from ipm.adapters.sqlite.small import create_core_tables
from ipm.adapters.sqlite.webhooks import (
    add_webhook_holds,
    count_webhook_changes,
    create_webhook_tables,
    index_deliveries_by_webhook,
)
from ipm.domain.errors import StorageBusy

MIGRATIONS: tuple[Migration, ...] = (
    ("0001_core", create_core_tables),
    ("0002_events", create_events_table),
    ("0003_webhooks", create_webhook_tables),
    ("0004_jobs", create_jobs_tables),
    ("0005_kpis", create_kpi_tables),
    ("0006_sparse_event_indexes", sparse_event_indexes),
    ("0007_webhook_holds", add_webhook_holds),
    ("0008_kpis_clustered", cluster_kpis),
    ("0009_deliveries_by_webhook", index_deliveries_by_webhook),
    ("0010_webhook_generation", count_webhook_changes),
)


def open_storage(
    path: str | Path, *, busy_timeout: float = 30.0, synchronous: str = "normal"
) -> SQLiteStorage:
    return SQLiteStorage(
        path,
        migrations=MIGRATIONS,
        busy_timeout=busy_timeout,
        synchronous=synchronous,
    )


__all__ = [
    "MIGRATIONS",
    "Migration",
    "SQLiteHostUnitOfWork",
    "SQLiteStorage",
    "SQLiteUnitOfWork",
    "SchemaTooNew",
    "StorageBusy",
    "migrate",
    "open_storage",
]
