"""The bulk contracts: the job repository and the blob store, on any adapter.

An adapter proves itself by subclassing the contract and providing the
fixture it needs (``storage`` for :class:`JobStorageContract`, ``blobs``
for :class:`BlobStoreContract`)::

    class TestMyJobs(JobStorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            store = open_my_storage(tmp_path)
            yield store
            store.close()
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from ipm.domain.jobs import Counters, Cursor, Job, ReportLine
from ipm.ports import BLOB_MISSING, BlobStore, ListingBlobStore, Storage
from ipm.testing.storage import NEAR_ORGS, T0

if TYPE_CHECKING:
    from ipm.app import Application


def new_job(n: int, orgcode: str = "ACME", **changes: Any) -> Job:
    """An import job numbered ``n`` (ids sort like ``n``)."""
    job = Job.new_import(f"job_{n:04d}", orgcode, T0 + timedelta(seconds=n))

    return attrs.evolve(job, **changes) if changes else job


def _add(storage: Storage, *jobs: Job) -> None:
    with storage.unit_of_work() as uow:
        for job in jobs:
            uow.jobs.add(job)
        uow.commit()


class JobStorageContract:
    """Behaviour every job repository must show."""

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("provide a storage fixture")

    def test_job_reads_back_unchanged(self, storage: Storage) -> None:
        """A stored job reads back equal, every field included."""
        job = new_job(
            1,
            counters=Counters(lines_read=3, ok=2, failed=1, created=2),
            cursor=Cursor(120, 3, 1),
            filters={"service": "pos"},
            max_failed_lines=5,
            data_key="jobs/job_0001/upload",
        )

        _add(storage, job)
        with storage.unit_of_work(write=False) as uow:
            stored = uow.jobs.get("ACME", "job_0001")

        assert stored == job

    def test_job_of_another_org_is_invisible(self, storage: Storage) -> None:
        """Looking a job up under another org finds nothing."""
        _add(storage, new_job(1))

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.get("OTHER", "job_0001") is None

    def test_job_lookups_stay_in_their_org(self, storage: Storage) -> None:
        """Each org finds its own jobs only; an org with none (see
        NEAR_ORGS) finds none."""
        acme, other = new_job(1), new_job(2, "OTHER")
        _add(storage, acme, other)

        with storage.unit_of_work(write=False) as uow:

            def found(org: str) -> list[Job]:
                return uow.jobs.find(
                    org, statuses=None, job_type=None, before=None, limit=10
                )

            assert (found("ACME"), found("OTHER")) == ([acme], [other])
            assert uow.jobs.get("ACME", other.job_id) is None
            for org in NEAR_ORGS:
                assert found(org) == []
                assert uow.jobs.get(org, acme.job_id) is None

    def test_save_replaces_and_rollback_restores(self, storage: Storage) -> None:
        """A saved job replaces the old one; a rolled-back save leaves it."""
        job = new_job(1)
        _add(storage, job)
        moved = job.move_to("failed", T0)

        with storage.unit_of_work() as uow:
            uow.jobs.save(moved)
        with storage.unit_of_work() as uow:
            assert uow.jobs.get("ACME", job.job_id) == job
            uow.jobs.save(moved)
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.get("ACME", job.job_id) == moved

    def test_find_is_newest_first_with_filters(self, storage: Storage) -> None:
        """Jobs list newest first, filtered by status and type, below a position."""
        jobs = [new_job(n) for n in range(1, 6)]
        jobs[1] = jobs[1].move_to("failed", T0)
        _add(storage, *jobs, new_job(9, "OTHER"))

        with storage.unit_of_work(write=False) as uow:

            def ids(**where: Any) -> list[str]:
                found = uow.jobs.find(
                    "ACME",
                    statuses=where.get("statuses"),
                    job_type=where.get("job_type"),
                    before=where.get("before"),
                    limit=where.get("limit", 10),
                )
                return [job.job_id for job in found]

            assert ids() == ["job_0005", "job_0004", "job_0003", "job_0002", "job_0001"]
            assert ids(statuses=frozenset({"failed"})) == ["job_0002"]
            assert ids(before="job_0004", limit=2) == ["job_0003", "job_0002"]
            assert ids(job_type="export") == []

    def test_waiting_spans_every_org_in_id_order(self, storage: Storage) -> None:
        """Jobs in the statuses asked for, of every org, oldest id first,
        above a position."""
        jobs = [new_job(n, "ACME" if n % 2 else "OTHER") for n in range(1, 7)]
        jobs[2] = jobs[2].move_to("failed", T0)
        _add(storage, *reversed(jobs))

        with storage.unit_of_work(write=False) as uow:

            def ids(statuses: set[str], after: str | None, limit: int) -> list[str]:
                found = uow.jobs.waiting(frozenset(statuses), after, limit)
                return [job.job_id for job in found]

            waiting = {"awaiting_upload"}
            assert ids(waiting, None, 10) == [
                "job_0001",
                "job_0002",
                "job_0004",
                "job_0005",
                "job_0006",
            ]
            assert ids(waiting, "job_0002", 2) == ["job_0004", "job_0005"]
            assert ids({"failed", "uploaded"}, None, 10) == ["job_0003"]
            assert ids({"validated"}, None, 10) == []

    def test_report_reads_in_line_order_from_a_position(self, storage: Storage) -> None:
        """Report lines come back in line order, after the line asked for."""
        lines = [
            ReportLine(n, n * 10, "invalid_json", "bad", "", "x") for n in (7, 2, 5)
        ]

        with storage.unit_of_work() as uow:
            uow.jobs.add_report("job_0001", lines)
            uow.jobs.add_report("job_0002", [ReportLine(1, 0, "too_deep", "m")])
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert [r.line for r in uow.jobs.report("job_0001", 0, 10)] == [2, 5, 7]
            assert uow.jobs.report("job_0001", 2, 1) == [lines[2]]

    def test_actions_and_seen_round_trip_and_clear(self, storage: Storage) -> None:
        """Line actions and seen ids read back, and clear_run forgets them."""
        with storage.unit_of_work() as uow:
            uow.jobs.add_actions("job_0001", 1, b"ccdf")
            uow.jobs.add_actions("job_0001", 5, b"b")
            uow.jobs.add_seen("job_0001", [("e1", "h1"), ("e2", "h2")])
            uow.jobs.add_report("job_0001", [ReportLine(4, 30, "too_deep", "m")])
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.actions("job_0001", 0, 10) == [(1, b"ccdf"), (5, b"b")]
            assert uow.jobs.actions("job_0001", 1, 10) == [(5, b"b")]
            assert uow.jobs.seen("job_0001", ["e2", "e3"]) == {"e2": "h2"}
            assert uow.jobs.seen("job_0002", ["e1"]) == {}

        with storage.unit_of_work() as uow:
            uow.jobs.clear_run("job_0001")
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.actions("job_0001", 0, 10) == []
            assert uow.jobs.seen("job_0001", ["e1"]) == {}
            assert uow.jobs.report("job_0001", 0, 10) == []

    def test_seen_content_is_replaced_and_rollback_restores_it(
        self, storage: Storage
    ) -> None:
        """A later content for an id replaces the earlier; a rollback brings it back."""
        with storage.unit_of_work() as uow:
            uow.jobs.add_seen("job_0001", [("k", "v1")])
            uow.commit()
        with storage.unit_of_work() as uow:
            uow.jobs.add_seen("job_0001", [("k", "v2"), ("j", "w")])

        with storage.unit_of_work() as uow:
            assert uow.jobs.seen("job_0001", ["k", "j"]) == {"k": "v1"}
            uow.jobs.add_seen("job_0001", [("k", "v3")])
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.seen("job_0001", ["k"]) == {"k": "v3"}

    def test_seen_answers_for_many_ids(self, storage: Storage) -> None:
        """A lookup of thousands of ids answers for each of them."""
        pairs = [(f"e{n}", f"h{n}") for n in range(3000)]

        with storage.unit_of_work() as uow:
            uow.jobs.add_seen("job_0001", pairs)
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            found = uow.jobs.seen("job_0001", [f"e{n}" for n in range(0, 3500, 7)])

        assert found == {f"e{n}": f"h{n}" for n in range(0, 3000, 7)}

    def test_rolled_back_slice_leaves_nothing(self, storage: Storage) -> None:
        """A slice that fails before commit writes no report, action or id."""
        _add(storage, new_job(1))

        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.jobs.add_report("job_0001", [ReportLine(1, 0, "too_deep", "m")])
            uow.jobs.add_actions("job_0001", 1, b"f")
            uow.jobs.add_seen("job_0001", [("e1", "h1")])
            uow.jobs.clear_run("job_0001")
            raise RuntimeError("killed")

        with storage.unit_of_work(write=False) as uow:
            assert uow.jobs.report("job_0001", 0, 10) == []
            assert uow.jobs.actions("job_0001", 0, 10) == []
            assert uow.jobs.seen("job_0001", ["e1"]) == {}


class BlobStoreContract:
    """Behaviour every blob store must show."""

    @pytest.fixture
    def blobs(self) -> BlobStore:
        raise NotImplementedError("provide a blobs fixture")

    def test_write_reports_size_and_digest(self, blobs: BlobStore) -> None:
        """A write returns the size and SHA-256 of what was written."""
        data = [b"hello ", b"", b"world\n"]

        size, sha256 = blobs.write("jobs/a/upload", iter(data))

        assert (size, sha256) == (12, hashlib.sha256(b"hello world\n").hexdigest())
        assert blobs.exists("jobs/a/upload")

    def test_read_from_an_offset(self, blobs: BlobStore) -> None:
        """Reading from an offset yields exactly the bytes after it."""
        data = bytes(range(256)) * 100
        blobs.write("a", iter([data]))

        assert b"".join(blobs.read("a")) == data
        assert b"".join(blobs.read("a", 25_000)) == data[25_000:]
        assert b"".join(blobs.read("a", len(data))) == b""

    def test_a_large_write_of_many_chunks_reads_back_whole(
        self, blobs: BlobStore
    ) -> None:
        """Every chunk of a multi-megabyte write comes back, in order, from
        the start and from offsets inside, across and at the end of chunks:
        a store that drops a chunk, or keeps only a head, would make an
        import read fewer lines than were uploaded."""
        chunks = [
            hashlib.sha256(str(n).encode()).digest() * (1 + n * 613 % 4096)
            for n in range(200)
        ]
        data = b"".join(chunks)

        size, sha256 = blobs.write("jobs/big/upload", iter(chunks))

        assert size == len(data) > 3_000_000
        assert sha256 == hashlib.sha256(data).hexdigest()
        assert b"".join(blobs.read("jobs/big/upload")) == data
        for offset in (1, 65_535, 65_536, 65_537, len(data) // 2, len(data) - 1):
            assert b"".join(blobs.read("jobs/big/upload", offset)) == data[offset:]

    def test_missing_blob_is_a_key_error(self, blobs: BlobStore) -> None:
        """Reading a blob that does not exist raises KeyError at the call
        (FileNotFoundError is taken as the same: ipm.ports.BLOB_MISSING)."""
        with pytest.raises(BLOB_MISSING):
            blobs.read("nothing/here")
        assert not blobs.exists("nothing/here")

    def test_overwrite_and_delete(self, blobs: BlobStore) -> None:
        """A second write replaces the blob; delete removes it, twice is fine."""
        blobs.write("a", iter([b"one"]))
        blobs.write("a", iter([b"two"]))

        assert b"".join(blobs.read("a")) == b"two"
        blobs.delete("a")
        blobs.delete("a")
        assert not blobs.exists("a")

    def test_failed_write_keeps_the_old_blob(self, blobs: BlobStore) -> None:
        """A write whose source fails midway leaves the previous blob whole."""
        blobs.write("a", iter([b"old"]))

        def failing() -> Any:
            yield b"new"
            raise OSError("connection reset")

        with pytest.raises(OSError):
            blobs.write("a", failing())

        assert b"".join(blobs.read("a")) == b"old"

    def test_a_listing_store_lists_by_prefix(self, blobs: BlobStore) -> None:
        """Optional (:class:`~ipm.ports.ListingBlobStore`): every stored key
        with the prefix, whole keys only, nothing deleted or half-written."""
        if not isinstance(blobs, ListingBlobStore):
            pytest.skip("this blob store does not list its keys")
        for key in ("jobs/a/upload_1", "jobs/a/upload_1.ndjson", "jobs/a/report"):
            blobs.write(key, iter([b"x"]))
        blobs.write("jobs/ab/upload_2", iter([b"x"]))
        blobs.write("jobs/a/upload_3", iter([b"x"]))
        blobs.delete("jobs/a/upload_3")

        def failing() -> Any:
            yield b"half"
            raise OSError("connection reset")

        with pytest.raises(OSError):
            blobs.write("jobs/a/upload_4", failing())

        assert sorted(blobs.keys("jobs/a/upload")) == [
            "jobs/a/upload_1",
            "jobs/a/upload_1.ndjson",
        ]
        assert sorted(blobs.keys("jobs/a/")) == sorted(
            ["jobs/a/upload_1", "jobs/a/upload_1.ndjson", "jobs/a/report"]
        )
        assert list(blobs.keys("jobs/none/")) == []

    def test_keys_cannot_escape(self, blobs: BlobStore) -> None:
        """Keys that climb out of the store or are empty are refused."""
        for key in ("../x", "a/../../x", "/etc/x", "", "a//b"):
            with pytest.raises(ValueError):
                blobs.write(key, iter([b"x"]))


# -- helpers for tests of hosts and of ipm ---------------------------------------


def import_bytes(
    app: Application,
    orgcode: str,
    data: bytes,
    *,
    max_lines: int | None = None,
    **create: Any,
) -> Job:
    """Create, upload, commit and run an import of ``data`` to its end."""
    job = app.bulk.create_import(orgcode, **create)
    job = app.bulk.upload(orgcode, job.job_id, iter([data]))
    job = app.bulk.commit(orgcode, job.job_id, job.revision)

    return app.bulk.run(orgcode, job.job_id, max_lines=max_lines)


def report_of(app: Application, orgcode: str, job_id: str) -> list[dict[str, Any]]:
    """The job's error report, parsed."""
    data = b"".join(app.bulk.report(orgcode, job_id))

    return [json.loads(line) for line in data.splitlines()]


def actions_of(app: Application, orgcode: str, job_id: str) -> list[str]:
    """The action of every line of the job's run, in line order."""
    data = b"".join(app.bulk.results(orgcode, job_id))

    return [json.loads(line)["action"] for line in data.splitlines()]
