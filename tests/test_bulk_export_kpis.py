"""KPI exports: the snapshots as of the mark, filters, round trips, same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipm
from ipm.domain.errors import InvalidRequest
from ipm.domain.kpi import Kpi, snapshot_from_wire
from ipm.domain.kpi_series import SeriesQuery
from ipm.testing import FixedClock
from ipm.testing.jobs import import_bytes
from ipm.usecases.bulk_export import read_export_slice

ORG = "ACME01"
T0 = datetime(2026, 3, 1, tzinfo=UTC)

Key = tuple[str, str, str, str]


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    clock = FixedClock(T0 + timedelta(days=30, microseconds=250))
    if request.param == "memory":
        application = ipm.open_memory(clock=clock)
    else:
        application = ipm.open_sqlite(tmp_path / "ipm.sqlite", clock=clock)
    yield application
    application.close()


def put(
    app: ipm.Application,
    code: str,
    hour: int,
    value: Any,
    *,
    scope: str = "org",
    bucket: str = "hourly",
) -> Kpi:
    """Record a value, creating or updating the snapshot as needed."""
    start = T0 + (timedelta(hours=hour) if bucket == "hourly" else timedelta(hour))
    end = start + (timedelta(hours=1) if bucket == "hourly" else timedelta(1))
    snapshot = snapshot_from_wire(
        {
            "kpi_code": code,
            "scope": scope,
            "bucket": bucket,
            "bucket_start": start,
            "bucket_end": end,
            "value": value,
        }
    )
    with app.storage.unit_of_work() as uow:
        kpi, _ = app.kpis.record_in(uow, ORG, snapshot, upsert=True)
        uow.commit()

    return kpi


def export(app: ipm.Application, **create: Any) -> tuple[Any, list[dict[str, Any]]]:
    job = app.bulk.create_export(ORG, target="kpis", **create)
    job = app.bulk.run(ORG, job.job_id, max_lines=3)
    data = b"".join(app.bulk.download(ORG, job.job_id))

    return job, [json.loads(line) for line in data.splitlines()]


def key(row: dict[str, Any]) -> Key:
    return (row["kpi_code"], row["scope"], row["bucket"], row["bucket_start"])


def stored(app: ipm.Application, code: str, bucket: str = "hourly") -> list[Any]:
    """Every snapshot of one KPI in scope org, as ``/kpi/query`` shows it."""
    query = SeriesQuery(code, bucket, T0, T0 + timedelta(days=400))  # type: ignore[arg-type]

    return app.kpis.series_wire(ORG, query, limit=256)


def test_each_snapshot_is_one_line_as_kpi_query_shows_it(
    app: ipm.Application,
) -> None:
    """Every snapshot is exported once, at its latest value, as the query shows."""
    for hour in range(5):
        put(app, "NET_SALES", hour, hour * 10)
    put(app, "NET_SALES", 2, 2.5)
    put(app, "NET_SALES", 2, None)
    put(app, "BIG", 0, 2**70)

    job, lines = export(app)

    assert job.status == "completed"
    assert job.result.records == job.counters.records_written == 6
    by_key = {key(row): row for row in lines}
    assert len(by_key) == len(lines)
    for row in [*stored(app, "NET_SALES"), *stored(app, "BIG")]:
        assert by_key[key(row)] == row


class TickingClock:
    """A clock one microsecond later at every reading, like a real one."""

    def __init__(self) -> None:
        self._now = T0 + timedelta(days=30)

    def __call__(self) -> datetime:
        self._now += timedelta(microseconds=1)
        return self._now


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_an_exported_snapshot_has_the_query_s_times_on_a_moving_clock(
    storage: str, tmp_path: Path
) -> None:
    """Created and updated times in the file are the stored snapshot's own."""
    clock = TickingClock()
    if storage == "memory":
        app = ipm.open_memory(clock=clock)
    else:
        app = ipm.open_sqlite(tmp_path / "ipm.sqlite", clock=clock)
    with app:
        put(app, "NET_SALES", 0, 1)
        put(app, "NET_SALES", 1, 2)
        put(app, "NET_SALES", 1, 3)

        _, lines = export(app)

        assert lines == stored(app, "NET_SALES")
        assert lines[1]["created_at"] != lines[1]["updated_at"]


def test_the_export_is_the_snapshots_as_of_the_mark(app: ipm.Application) -> None:
    """Changes made after create are not in the file: it shows the mark."""
    before = put(app, "NET_SALES", 0, 1)
    put(app, "NET_SALES", 1, 2)
    job = app.bulk.create_export(ORG, target="kpis")

    put(app, "NET_SALES", 0, 100)
    put(app, "NET_SALES", 7, 7)
    job = app.bulk.run(ORG, job.job_id, max_lines=1)
    lines = [
        json.loads(x) for x in b"".join(app.bulk.download(ORG, job.job_id)).splitlines()
    ]

    assert [(row["bucket_start"][11:13], row["value"]) for row in lines] == [
        ("00", 1),
        ("01", 2),
    ]
    assert lines[0]["revision"] == before.revision


def test_kpi_events_without_their_snapshot_are_not_exported(
    app: ipm.Application,
) -> None:
    """A host cannot forge kpi.recorded events, so the export shows real ones."""
    real = put(app, "NET_SALES", 0, 1)
    payload = {
        "kpi_id": "kpi_elsewhere",
        "kpi_code": "NET_SALES",
        "scope": "org",
        "bucket": "hourly",
        "bucket_start": "2026-03-01T05:00:00Z",
        "old_value": None,
        "new_value": 7,
        "revision": "1",
    }
    forged = {"service": "ipm", "action": "kpi.recorded", "op": "c"}
    stolen = {**payload, "kpi_id": real.kpi_id, "new_value": 9}
    for fake in (payload, stolen):
        with pytest.raises(InvalidRequest):
            app.publish(ORG, {**forged, "payload": fake, "logical_guid": real.kpi_id})

    _, lines = export(app)

    assert [(row["kpi_id"], row["value"]) for row in lines] == [(real.kpi_id, 1)]


@pytest.mark.parametrize("action", ["kpi.recorded", "kpi.recorded_late"])
def test_a_host_event_naming_a_snapshot_does_not_hide_it(
    app: ipm.Application, action: str
) -> None:
    """Only ipm's own kpi.recorded events mean a snapshot changed again.

    Regression: a host event of another service with a kpi.recorded... action
    and the snapshot's id as its logical_guid removed the snapshot from
    every later export, with nothing said.
    """
    real = put(app, "NET_SALES", 0, 1)
    app.publish(
        ORG,
        {"service": "analytics", "action": action, "logical_guid": real.kpi_id},
    )

    _, lines = export(app)

    assert [(row["kpi_id"], row["value"]) for row in lines] == [(real.kpi_id, 1)]


def test_a_slice_run_again_writes_the_same_bytes(app: ipm.Application) -> None:
    """Re-read from one cursor after the snapshots moved, a slice is identical."""
    for hour in range(4):
        put(app, "NET_SALES", hour, hour)
    job = app.bulk.create_export(ORG, target="kpis")
    with app.storage.unit_of_work(write=False) as uow:
        first = read_export_slice(uow, job, 10, 5.0, 1 << 20)

    put(app, "NET_SALES", 1, 99)
    put(app, "NET_SALES", 9, 9)
    with app.storage.unit_of_work(write=False) as uow:
        again = read_export_slice(uow, job, 10, 5.0, 1 << 20)

    assert again.data() == first.data()
    assert len(first.lines) == 4 and first.exhausted


def test_filters_pick_code_bucket_and_window(app: ipm.Application) -> None:
    """kpi_code, bucket and [from_utc, to_utc) on bucket_start narrow the file."""
    for hour in range(6):
        put(app, "NET_SALES", hour, hour)
        put(app, "AOV", hour, hour)
    put(app, "NET_SALES", 0, 5, bucket="daily")
    window = {"from_utc": "2026-03-01T02:00:00Z", "to_utc": "2026-03-01T04:30:00Z"}

    _, by_code = export(app, filters={"kpi_code": "AOV"})
    _, by_bucket = export(app, filters={"bucket": "daily"})
    _, in_window = export(
        app, filters={"kpi_code": "NET_SALES", "bucket": "hourly", **window}
    )

    assert {row["kpi_code"] for row in by_code} == {"AOV"} and len(by_code) == 6
    assert [(row["kpi_code"], row["bucket"]) for row in by_bucket] == [
        ("NET_SALES", "daily")
    ]
    assert [row["bucket_start"][11:13] for row in in_window] == ["02", "03", "04"]


@pytest.mark.parametrize(
    ("target", "filters", "pointer"),
    [
        ("kpis", {"service": "pos"}, "/filters/service"),
        ("kpis", {"action_prefix": "sale."}, "/filters/action_prefix"),
        ("events", {"kpi_code": "NET_SALES"}, "/filters/kpi_code"),
        ("events", {"bucket": "daily"}, "/filters/bucket"),
        ("kpis", {"kpi_code": "net-sales"}, "/filters/kpi_code"),
        ("kpis", {"bucket": "yearly"}, "/filters/bucket"),
        (
            "kpis",
            {"from_utc": "2026-03-02T00:00:00Z", "to_utc": "2026-03-01T00:00:00Z"},
            "/filters/to_utc",
        ),
    ],
)
def test_filters_that_do_not_apply_are_refused(
    app: ipm.Application, target: str, filters: dict[str, str], pointer: str
) -> None:
    """A filter of the other target, or a bad one, is a 400 at its pointer."""
    with pytest.raises(InvalidRequest) as refused:
        app.bulk.create_export(ORG, target=target, filters=filters)  # type: ignore[arg-type]

    assert [p.pointer for p in refused.value.details] == [pointer]


def test_an_export_imports_again_into_a_fresh_database(
    app: ipm.Application, tmp_path: Path
) -> None:
    """Exported, then imported elsewhere, the snapshots keep keys and values."""
    for hour in range(4):
        put(app, "NET_SALES", hour, hour * 1.5, scope="store:S014")
    put(app, "NET_SALES", 0, 1, bucket="daily")
    put(app, "BIG", 3, -(2**70))
    put(app, "EMPTY", 3, None)
    job = app.bulk.create_export(ORG, target="kpis")
    job = app.bulk.run(ORG, job.job_id)
    data = b"".join(app.bulk.download(ORG, job.job_id))

    with ipm.open_sqlite(tmp_path / "fresh.sqlite") as fresh:
        loaded = import_bytes(fresh, "OTHER02", data, target="kpis")
        again = fresh.bulk.create_export("OTHER02", target="kpis")
        again = fresh.bulk.run("OTHER02", again.job_id)
        copied = b"".join(fresh.bulk.download("OTHER02", again.job_id))

    assert loaded.counters.created == job.result.records == 7
    assert loaded.counters.failed == 0
    assert _readings(copied) == _readings(data)


def _readings(data: bytes) -> dict[Key, tuple[Any, str]]:
    rows = [json.loads(line) for line in data.splitlines()]

    return {key(row): (row["value"], type(row["value"]).__name__) for row in rows}


def test_the_cli_exports_kpis_that_import_again(tmp_path: Path) -> None:
    """`ipm export --target kpis` writes a file `ipm import --target kpis` takes."""
    db, fresh = tmp_path / "ipm.sqlite", tmp_path / "fresh.sqlite"
    out = tmp_path / "kpis.ndjson"
    with ipm.open_sqlite(db) as app:
        for hour in range(3):
            put(app, "NET_SALES", hour, hour)

    exported = _cli(
        "export",
        "--db",
        str(db),
        "--org",
        ORG,
        "--target",
        "kpis",
        "--kpi-code",
        "NET_SALES",
        "-o",
        str(out),
    )
    imported = _cli("import", str(out), "--db", str(fresh), "--org", ORG,
                    "--target", "kpis")  # fmt: skip

    assert exported.returncode == 0, exported.stderr
    assert "3 snapshots" in exported.stdout
    assert imported.returncode == 0, imported.stderr
    with ipm.open_sqlite(fresh) as copy:
        assert [row["value"] for row in stored(copy, "NET_SALES")] == [0, 1, 2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ipm", *args]

    return subprocess.run(command, capture_output=True, text=True, timeout=60)


# -- the snapshot property ----------------------------------------------------

writes = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.integers(0, 3),
        st.one_of(st.none(), st.integers(-5, 5)),
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(before=writes, after=writes, slice_lines=st.integers(1, 4))
def test_the_file_equals_the_state_at_the_mark(
    before: list[tuple[str, int, Any]],
    after: list[tuple[str, int, Any]],
    slice_lines: int,
) -> None:
    """Whatever is written after create, the file holds the state at create."""
    app = ipm.open_memory()
    for code, hour, value in before:
        put(app, code, hour, value)
    state = {
        (code, row["bucket_start"]): row["value"]
        for code in ("A", "B")
        for row in stored(app, code)
    }
    job = app.bulk.create_export(ORG, target="kpis")

    for code, hour, value in after:
        put(app, code, hour, value)
    job = app.bulk.run(ORG, job.job_id, max_lines=slice_lines)
    rows = [
        json.loads(x) for x in b"".join(app.bulk.download(ORG, job.job_id)).splitlines()
    ]

    assert {(row["kpi_code"], row["bucket_start"]): row["value"] for row in rows} == (
        state
    )
    assert len(rows) == len(state)


def test_a_kpi_file_imported_as_events_says_which_target_it_needs(
    app: ipm.Application,
) -> None:
    """Its lines failed with eight faults each and no word of target kpis."""
    from ipm.testing.jobs import report_of

    put(app, "NET_SALES", 0, 10)
    _, rows = export(app)
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)

    job = import_bytes(app, ORG, data)
    (line,) = report_of(app, ORG, job.job_id)

    assert job.counters.failed == 1
    assert "(a KPI snapshot? an import takes those with target kpis)" in line["message"]
