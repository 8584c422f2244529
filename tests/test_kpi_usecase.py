"""The KPI use-case as a host or the bulk importer calls it, without the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import ipm
from ipm.domain.errors import RevisionMismatch, RevisionRequired
from ipm.domain.kpi import RecordKpi
from ipm.domain.kpi_series import SeriesQuery

ORG = "ACME01"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def snapshot(n: int, value: int | None) -> RecordKpi:
    return RecordKpi("NET_SALES", "hourly", T0 + n * HOUR, value)


def series(app: ipm.Application) -> list[int | float | None]:
    query = SeriesQuery("NET_SALES", "hourly", T0, T0 + 100 * HOUR)
    return [kpi.value for kpi in app.kpis.series(ORG, query)]


def recorded(app: ipm.Application) -> list[str]:
    return [
        e.new.op
        for e in app.events(ORG, service="ipm")
        if e.new.action == "kpi.recorded"
    ]


def test_record_in_reports_created_unchanged_and_updated(app: ipm.Application) -> None:
    """With upsert, a bulk load creates, leaves alone or replaces, and says which."""
    with app.storage.unit_of_work() as uow:
        outcomes = [
            app.kpis.record_in(uow, ORG, snapshot(0, 1), upsert=True)[1],
            app.kpis.record_in(uow, ORG, snapshot(0, 1), upsert=True)[1],
            app.kpis.record_in(uow, ORG, snapshot(0, 2), upsert=True)[1],
            app.kpis.record_in(uow, ORG, snapshot(1, 5), upsert=True)[1],
        ]
        uow.commit()

    assert outcomes == ["created", "unchanged", "updated", "created"]
    assert series(app) == [2, 5]
    assert recorded(app) == ["c", "u", "c"]


def test_record_in_keeps_the_revision_rules_without_upsert(
    app: ipm.Application,
) -> None:
    """Without upsert an update needs its revision; a given one is always checked."""
    app.kpis.record(ORG, snapshot(0, 1))

    with app.storage.unit_of_work() as uow:
        with pytest.raises(RevisionRequired):
            app.kpis.record_in(uow, ORG, snapshot(0, 2))
        with pytest.raises(RevisionMismatch):
            app.kpis.record_in(
                uow, ORG, snapshot(0, 2), expected_revision="7", upsert=True
            )

    assert series(app) == [1]


def test_nothing_recorded_in_an_uncommitted_unit_of_work_remains(
    app: ipm.Application,
) -> None:
    """A batch that fails half way leaves neither snapshots nor events."""
    with pytest.raises(RuntimeError), app.storage.unit_of_work() as uow:
        for n in range(5):
            app.kpis.record_in(uow, ORG, snapshot(n, n))
        raise RuntimeError("the import slice died")

    assert series(app) == []
    assert recorded(app) == []


def test_predict_in_answers_like_record_in_and_writes_nothing(
    app: ipm.Application,
) -> None:
    """A validate-only run learns each outcome without changing anything."""
    app.kpis.record(ORG, snapshot(0, 1))

    with app.storage.unit_of_work() as uow:
        outcomes = [
            app.kpis.predict_in(uow, ORG, snapshot(0, 1), upsert=True),
            app.kpis.predict_in(uow, ORG, snapshot(0, 3), upsert=True),
            app.kpis.predict_in(uow, ORG, snapshot(1, 3)),
        ]
        uow.commit()

    assert outcomes == ["unchanged", "updated", "created"]
    assert series(app) == [1]
    assert recorded(app) == ["c"]


def test_the_typed_api_pages_with_after(app: ipm.Application) -> None:
    """series(after=...) continues after the row that starts at ``after``."""
    for n in range(5):
        app.kpis.record(ORG, snapshot(n, n))
    query = SeriesQuery("NET_SALES", "hourly", T0, T0 + 100 * HOUR)

    first = app.kpis.series(ORG, query, limit=2)
    rest = app.kpis.series(ORG, query, after=first[-1].bucket_start, limit=10)

    assert [k.value for k in first + rest] == [0, 1, 2, 3, 4]
