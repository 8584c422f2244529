"""Export files are kept BulkOptions.file_seconds, then discarded by a sweep:
a deployment that exports over HTTP (where nothing says a file was
fetched) does not fill its disk."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import ipm
from ipm.domain.errors import NotFound
from ipm.testing import FixedClock, MemoryBlobStore
from ipm.testing.storage import T0
from ipm.usecases.bulk import BulkOptions
from tests.conftest import DAY, ORG, open_app, timed_app


@pytest.fixture(params=["memory", "sqlite"])
def timed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ipm.Application, FixedClock]]:
    yield from timed_app(
        request.param, tmp_path, file_seconds=3 * DAY, link_seconds=7 * DAY
    )


def _export(app: ipm.Application) -> str:
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 3)
    job = app.bulk.create_export(ORG)
    done = app.bulk.run(ORG, job.job_id)
    assert done.status == "completed"
    return done.job_id


def test_a_file_is_kept_for_file_seconds_then_discarded(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    app, clock = timed
    old = _export(app)
    clock.advance(2 * DAY)
    young = _export(app)

    clock.advance(DAY - 1)
    kept = app.bulk.discard_old_files()
    still = b"".join(app.bulk.download(ORG, old))
    clock.advance(1)
    discarded = app.bulk.discard_old_files()
    again = app.bulk.discard_old_files()

    assert (kept, discarded, again) == (0, 1, 0)
    assert still.count(b"\n") >= 3
    with pytest.raises(NotFound):
        b"".join(app.bulk.download(ORG, old))
    job = app.bulk.get(ORG, old)
    assert job.status == "completed" and job.result is not None
    assert app.bulk.has_file(app.bulk.get(ORG, young))


def test_a_file_past_its_time_is_gone_before_the_sweep_runs(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """No link to it, and no download, although its bytes wait for the sweep."""
    app, clock = timed
    job_id = _export(app)
    clock.advance(3 * DAY)

    assert not app.bulk.has_file(app.bulk.get(ORG, job_id))
    with pytest.raises(NotFound):
        b"".join(app.bulk.download(ORG, job_id))


def test_a_download_link_expires_with_its_file(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    app, clock = timed
    job_id = _export(app)
    clock.advance(DAY)

    link = app.bulk.link("download", app.bulk.get(ORG, job_id), "http://x")

    assert link.expires_at == T0 + timedelta(days=3)


def test_none_keeps_files_until_discarded_by_hand(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    options = BulkOptions(file_seconds=None)
    with open_app("sqlite", tmp_path, clock=clock, bulk=options) as app:
        job_id = _export(app)
        clock.advance(400 * DAY)

        assert app.bulk.discard_old_files() == 0
        assert b"".join(app.bulk.download(ORG, job_id)).count(b"\n") >= 3


@pytest.mark.parametrize("value", [0, -1, 367 * DAY, "7d", True])
def test_file_seconds_out_of_range_is_refused_when_built(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        BulkOptions(file_seconds=value)  # type: ignore[arg-type]


class _FileMinded(MemoryBlobStore):
    """A host store on files: it lets FileNotFoundError through for a
    missing key instead of the KeyError the contract asks for."""

    def read(self, key: str, offset: int = 0) -> Iterator[bytes]:
        try:
            return super().read(key, offset)
        except KeyError:
            raise FileNotFoundError(key) from None


def test_a_host_store_missing_a_file_is_a_404_not_a_500() -> None:
    """Regression: a host store saying FileNotFoundError for a file deleted
    behind ipm's back made the download link a 500."""
    blobs = _FileMinded()
    with ipm.open_memory(blobs=blobs) as app:
        job_id = _export(app)
        for key in list(blobs.keys("")):
            blobs.delete(key)

        with pytest.raises(NotFound):
            app.bulk.download(ORG, job_id)
