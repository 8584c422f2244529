"""An import reads exactly the bytes that were uploaded, or fails saying so.

The upload's size is recorded when it is stored; a slice that runs out of
data anywhere else (the file cut, grown or deleted behind ipm's back, by a
restore or a disk fault) fails the job instead of importing part of it.
"""

from __future__ import annotations

import gzip

import pytest

import ipm
from ipm.domain.jobs import Job
from tests.conftest import ORG, event_lines


def _started(app: ipm.Application, data: bytes) -> Job:
    """An import of ``data`` with its first slice (10 lines) done."""
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, iter([data]))
    job = app.bulk.commit(ORG, job.job_id, job.revision)
    job = app.bulk.continue_import(ORG, job.job_id, max_lines=10)
    assert (job.status, job.counters.lines_read) == ("processing", 10)
    assert job.data_key is not None

    return job


def _stored(app: ipm.Application, job: Job) -> bytes:
    assert job.data_key is not None
    return b"".join(app.bulk.blobs.read(job.data_key))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda data: data[:1000], id="cut-past-the-cursor"),
        pytest.param(lambda data: data[:500], id="cut-before-the-cursor"),
        pytest.param(lambda data: data[:-1], id="last-newline-gone"),
        pytest.param(lambda data: data + event_lines(5, 100), id="grown"),
    ],
)
def test_data_changed_after_the_upload_fails_the_job(
    app: ipm.Application, change: object
) -> None:
    """Regression: a cut file ended the job completed with part of it."""
    job = _started(app, event_lines(100))
    assert job.data_key is not None
    app.bulk.blobs.write(job.data_key, iter([change(_stored(app, job))]))  # type: ignore[operator]

    ended = app.bulk.run(ORG, job.job_id)

    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error.code == "upload_changed"
    assert "changed after the upload" in ended.error.message
    assert len(app.events(ORG, service="pos")) <= 100


def test_the_unpacked_copy_of_a_gzip_upload_is_held_to_its_size(
    app: ipm.Application,
) -> None:
    job = _started(app, gzip.compress(event_lines(100)))
    assert job.upload is not None and job.upload.gzip
    assert job.data_key is not None
    app.bulk.blobs.write(job.data_key, iter([_stored(app, job)[:3000]]))

    ended = app.bulk.run(ORG, job.job_id)

    assert ended.error is not None
    assert ended.error.code == "upload_changed"


def test_data_deleted_after_the_upload_fails_the_job(app: ipm.Application) -> None:
    job = _started(app, event_lines(100))
    assert job.data_key is not None
    app.bulk.blobs.delete(job.data_key)

    ended = app.bulk.run(ORG, job.job_id)

    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error.code == "upload_missing"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xef\xbb\xbf" + event_lines(30), id="bom"),
        pytest.param(event_lines(30).replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(event_lines(30)[:-1], id="no-final-newline"),
        pytest.param(event_lines(30) + b"\n\n  \n", id="blank-lines-at-the-end"),
        pytest.param(gzip.compress(event_lines(30)), id="gzip"),
    ],
)
def test_an_unchanged_upload_of_any_shape_ends_where_it_was_stored(
    app: ipm.Application, data: bytes
) -> None:
    job = _started(app, data)

    ended = app.bulk.run(ORG, job.job_id)

    assert (ended.status, ended.error) == ("completed", None)
    assert ended.counters.created == 30


def test_an_export_whose_parts_were_deleted_fails_instead_of_500s(
    app: ipm.Application,
) -> None:
    """Regression: the join raised KeyError (a 500 on every continue, the job
    processing for ever); it fails with parts_missing and leaves no file."""
    app.publish_many(
        ORG, [{"service": "pos", "action": "sale.created"} for _ in range(30)]
    )
    job = app.bulk.create_export(ORG, filters={"service": "pos"})
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=10)
    assert job.status == "processing"
    for key in list(app.bulk.blobs.keys("")):  # type: ignore[attr-defined]
        app.bulk.blobs.delete(key)

    ended = app.bulk.run(ORG, job.job_id)

    assert ended.status == "failed"
    assert ended.error is not None and ended.error.code == "parts_missing"
    assert list(app.bulk.blobs.keys("")) == []  # type: ignore[attr-defined]
    assert app.bulk.run(ORG, job.job_id) == ended


def test_an_export_whose_part_was_cut_fails_instead_of_completing(
    app: ipm.Application,
) -> None:
    """Regression: a part cut behind ipm's back completed the export with
    a records count its file did not hold, and a broken first line."""
    from ipm.usecases.bulk_export import file_key, part_key

    app.publish_many(
        ORG, [{"service": "pos", "action": "sale.created"} for _ in range(30)]
    )
    job = app.bulk.create_export(ORG, filters={"service": "pos"})
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=10)
    first = part_key(job.job_id, 0)
    whole = b"".join(app.bulk.blobs.read(first))
    app.bulk.blobs.write(first, iter([whole[len(whole) // 2 :]]))

    ended = app.bulk.run(ORG, job.job_id)

    assert ended.status == "failed"
    assert ended.error is not None and ended.error.code == "parts_changed"
    assert not app.bulk.blobs.exists(file_key(job.job_id))
