"""A slice's size is bounded by the host, whatever max_lines a caller asks.

Any API key may ask ``continue`` for 1,000,000 lines; a slice is held in
memory, so ``BulkOptions.max_slice_lines`` and ``slice_bytes`` bound it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm import cli
from ipm.usecases.bulk import BulkOptions
from tests.conftest import ORG, event_lines


@pytest.fixture(params=["memory", "sqlite"])
def bounded(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ipm.Application]:
    options = BulkOptions(slice_lines=3, max_slice_lines=4, slice_bytes=1 << 20)
    if request.param == "memory":
        app = ipm.open_memory(bulk=options)
    else:
        app = ipm.open_sqlite(tmp_path / "ipm.sqlite", bulk=options)
    with app:
        yield app


def _started_import(app: ipm.Application, data: bytes) -> str:
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, iter([data]))
    job = app.bulk.commit(ORG, job.job_id, job.revision)

    return job.job_id


def test_an_import_slice_reads_no_more_than_the_host_allows(
    bounded: ipm.Application,
) -> None:
    """Regression: max_lines 1,000,000 over HTTP made one slice of about
    50,000 lines (200 MB); the host's max_slice_lines caps it."""
    job_id = _started_import(bounded, event_lines(10))

    job = bounded.bulk.continue_import(ORG, job_id, max_lines=1_000_000)

    assert job.counters.lines_read == 4
    assert (
        bounded.bulk.continue_import(ORG, job_id, max_lines=2).counters.lines_read == 6
    )


def test_an_export_slice_writes_no_more_than_the_host_allows(
    bounded: ipm.Application,
) -> None:
    bounded.publish_many(
        ORG, [json.loads(line) for line in event_lines(10).splitlines()]
    )
    job = bounded.bulk.create_export(ORG, filters={"service": "pos"})

    job = bounded.bulk.continue_export(ORG, job.job_id, max_lines=1_000_000)

    assert job.cursor.lines == 4


def test_a_slice_stops_at_its_byte_budget_and_takes_a_line_at_least() -> None:
    """A file of long lines cannot fill memory either: a slice reads about
    slice_bytes; a line longer than that is still read on its own."""
    data = event_lines(6)
    size = len(data.splitlines(keepends=True)[0])
    options = BulkOptions(slice_bytes=2 * size)
    with ipm.open_memory(bulk=options) as app:
        job_id = _started_import(app, data)

        first = app.bulk.continue_import(ORG, job_id, max_lines=100)

        assert first.counters.lines_read == 2
        assert first.cursor.position == 2 * size

    with ipm.open_memory(bulk=BulkOptions(slice_bytes=1)) as app:
        job_id = _started_import(app, data)

        assert app.bulk.continue_import(ORG, job_id).counters.lines_read == 1
        job = app.bulk.run(ORG, job_id)
        assert (job.status, job.counters.created) == ("completed", 6)

        app.bulk.create_export(ORG, filters={"service": "pos"})
        export = app.bulk.create_export(ORG, filters={"service": "pos"})
        assert app.bulk.continue_export(ORG, export.job_id).cursor.lines == 1
        export = app.bulk.run(ORG, export.job_id)
        assert export.result is not None and export.result.records == 6


def test_the_cli_takes_slices_past_the_bound_a_server_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--slice-lines is the operator's own choice, up to 1,000,000: ipm
    import and export open the database with the bound raised to it."""
    data = tmp_path / "events.ndjson"
    data.write_bytes(event_lines(30))
    db = tmp_path / "ipm.sqlite"
    bounds: list[int] = []
    opened = ipm.open_sqlite

    def open_sqlite(path: str, **options: Any) -> ipm.Application:
        bounds.append(options["bulk"].max_slice_lines)
        return opened(path, **options)

    monkeypatch.setattr(ipm, "open_sqlite", open_sqlite)
    flags = ["--db", str(db), "--org", ORG, "--slice-lines", "50000"]

    assert cli.main(["import", str(data), *flags]) == 0
    assert cli.main(["export", *flags, "-o", str(tmp_path / "out.ndjson")]) == 0

    assert bounds == [50_000, 50_000]
    # The 30 events and ipm's own five of the import job.
    assert len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 35
