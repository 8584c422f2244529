"""The bulk contracts, run against every job repository and blob store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.adapters.blobs import STALE_SECONDS, FileBlobStore, MemoryBlobStore
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
from ipm.cli import _server
from ipm.domain.errors import StorageUnavailable
from ipm.ports import BlobStore, Storage
from ipm.testing import BlobStoreContract, JobStorageContract


class TestMemoryJobs(JobStorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = MemoryStorage()
        yield store
        store.close()


class TestSQLiteJobs(JobStorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        store = open_storage(tmp_path / "ipm.sqlite")
        yield store
        store.close()


class TestMemoryBlobs(BlobStoreContract):
    @pytest.fixture
    def blobs(self) -> BlobStore:
        return MemoryBlobStore(read_size=1000)


class TestFileBlobs(BlobStoreContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        return FileBlobStore(tmp_path / "blobs", read_size=1000)


def test_file_blobs_leave_no_partial_file(tmp_path: Path) -> None:
    """A failed write leaves no temporary file behind."""
    blobs = FileBlobStore(tmp_path)

    def failing() -> Iterator[bytes]:
        yield b"x"
        raise OSError("gone")

    with pytest.raises(OSError):
        blobs.write("jobs/a/upload", failing())

    # Nor its folder, which held nothing else.
    assert list(tmp_path.iterdir()) == []


def test_a_folder_where_a_blob_was_is_a_missing_blob(tmp_path: Path) -> None:
    """A blob's file replaced by a folder, or a file where its folder was,
    reads as missing (KeyError, as exists() says), not an OSError that the
    routes would answer with a 500."""
    blobs = FileBlobStore(tmp_path)
    (tmp_path / "jobs" / "a" / "export.ndjson").mkdir(parents=True)
    (tmp_path / "jobs" / "b").write_bytes(b"a file, not a folder")

    for key in ("jobs/a/export.ndjson", "jobs/b/export.ndjson"):
        assert not blobs.exists(key)
        with pytest.raises(KeyError):
            blobs.read(key)


def _aged(path: Path, seconds: float) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_a_folder_where_a_blob_goes_is_a_503_not_a_500(tmp_path: Path) -> None:
    """A write whose key names a folder (made by hand) is StorageUnavailable,
    saying so, and leaves no temporary file."""
    blobs = FileBlobStore(tmp_path)
    (tmp_path / "jobs" / "a" / "export.ndjson").mkdir(parents=True)

    with pytest.raises(StorageUnavailable, match="a folder stands where"):
        blobs.write("jobs/a/export.ndjson", iter([b"x\n"]))

    assert list((tmp_path / "jobs" / "a").glob("*.part")) == []


def test_a_killed_writer_s_leftover_goes_with_the_next_write(tmp_path: Path) -> None:
    """A stale temporary file of a writer killed mid-write is removed by the
    next write of its key; a fresh one stays, and so do other keys'."""
    blobs = FileBlobStore(tmp_path)
    blobs.write("jobs/a/export.ndjson", iter([b"first\n"]))
    folder = tmp_path / "jobs" / "a"
    dead = folder / ".export.ndjson.4242.0123456789ab.part"
    fresh = folder / f".export.ndjson.{os.getpid()}.ba9876543210.part"
    other = folder / ".part-000001.4242.0123456789ab.part"
    for leftover in (dead, fresh, other):
        leftover.write_bytes(b"half a file")
    _aged(dead, STALE_SECONDS + 5)
    _aged(other, STALE_SECONDS + 5)

    blobs.write("jobs/a/export.ndjson", iter([b"second\n"]))

    assert not dead.exists()
    assert fresh.exists() and other.exists()
    assert b"".join(blobs.read("jobs/a/export.ndjson")) == b"second\n"


def test_a_sweep_removes_dead_writers_leftovers_under_every_key(tmp_path: Path) -> None:
    """An upload killed mid-way is cleaned up though its key is never written again."""
    blobs = FileBlobStore(tmp_path)
    blobs.write("jobs/b/upload_1", iter([b"kept\n"]))
    dead = tmp_path / "jobs" / "a" / ".upload_7.4242.0123456789ab.part"
    fresh = tmp_path / "jobs" / "b" / f".upload_8.{os.getpid()}.ba9876543210.part"
    look_alike = tmp_path / "jobs" / "b" / "upload_9.4242.part"
    for path in (dead, fresh, look_alike):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an upload")
        _aged(path, STALE_SECONDS + 5)
    _aged(fresh, 0)

    removed = blobs.sweep()

    assert removed == 1 and not dead.exists()
    assert fresh.exists() and look_alike.exists()
    assert b"".join(blobs.read("jobs/b/upload_1")) == b"kept\n"


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_a_fresh_file_stays_though_no_process_has_its_writer_s_id(
    tmp_path: Path,
) -> None:
    """Regression: a sweeper in another container sees no process of a live
    writer's id, and a writer holds no lock between creating its file and
    locking it (or closing and renaming it): the sweep removed such files,
    and the write failed with a 503 after every byte had arrived. A file
    goes only once it has not changed for STALE_SECONDS."""
    blobs = FileBlobStore(tmp_path)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    folder = tmp_path / "jobs" / "a"
    folder.mkdir(parents=True)
    unlocked = folder / f".upload.{ended.pid}.0123456789ab.part"
    unlocked.write_bytes(b"being written")

    assert blobs.sweep() == 0
    assert unlocked.exists()


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_a_leftover_of_a_reused_process_id_goes_once_it_is_stale(
    tmp_path: Path,
) -> None:
    """Regression: a server killed mid-upload in a container is process 1
    again after its restart, so the leftover's writer looked alive and its
    file (up to an upload's size) stayed for good. A file no one holds and
    unchanged for STALE_SECONDS goes whatever process has its writer's id;
    a fresher one stays (its writer may be about to rename it)."""
    blobs = FileBlobStore(tmp_path)
    folder = tmp_path / "jobs" / "a"
    folder.mkdir(parents=True)
    own = os.getpid()  # alive, as a reused id is
    stale = folder / f".upload.{own}.0123456789ab.part"
    fresh = folder / f".upload.{own}.ba9876543210.part"
    for path in (stale, fresh):
        path.write_bytes(b"half an upload")
    _aged(stale, STALE_SECONDS + 5)

    assert blobs.sweep() == 1
    assert not stale.exists() and fresh.exists()


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_a_writer_s_file_stays_however_long_it_waits(tmp_path: Path) -> None:
    """A live writer holds its temporary file: a sweep while it waits for its
    next chunk (a slow upload) leaves it, however old the file looks."""
    blobs = FileBlobStore(tmp_path)
    seen: list[int] = []

    def slow() -> Iterator[bytes]:
        yield b"first\n"
        (part,) = (tmp_path / "jobs" / "a").glob(".*.part")
        _aged(part, STALE_SECONDS * 10)
        seen.append(blobs.sweep())
        assert part.exists()
        yield b"second\n"

    blobs.write("jobs/a/upload", slow())

    assert seen == [0]
    assert b"".join(blobs.read("jobs/a/upload")) == b"first\nsecond\n"


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_a_write_whose_last_byte_came_long_ago_keeps_its_file_until_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: between closing its file and renaming it a writer holds
    no lock, and a last byte written over a minute before (an upload that
    stalled before its end) made the file look stale: a sweep then removed
    it and the write failed with a 503. The file is dated anew first."""
    blobs = FileBlobStore(tmp_path)
    rename = os.replace
    swept: list[int] = []

    def stalled() -> Iterator[bytes]:
        yield b"x" * 65536  # past the write buffer: on disk at once
        (part,) = (tmp_path / "jobs" / "a").glob(".*.part")
        _aged(part, STALE_SECONDS * 10)

    def sweep_then_rename(source: Any, target: Any) -> None:
        swept.append(blobs.sweep())
        rename(source, target)

    monkeypatch.setattr(os, "replace", sweep_then_rename)
    blobs.write("jobs/a/upload", stalled())

    assert swept == [0]
    assert b"".join(blobs.read("jobs/a/upload")) == b"x" * 65536


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_a_write_stalled_just_before_its_rename_keeps_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stopped for minutes between dating its file and renaming it
    (SIGSTOP, a paused VM) still holds it: the rename happens under the lock."""
    blobs = FileBlobStore(tmp_path)
    rename = os.replace
    swept: list[int] = []

    def stalled_then_rename(source: Any, target: Any) -> None:
        _aged(Path(source), STALE_SECONDS * 10)
        swept.append(blobs.sweep())
        rename(source, target)

    monkeypatch.setattr(os, "replace", stalled_then_rename)
    blobs.write("jobs/a/upload", iter([b"whole\n"]))

    assert swept == [0]
    assert b"".join(blobs.read("jobs/a/upload")) == b"whole\n"


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_one_odd_file_does_not_stop_the_sweep(tmp_path: Path) -> None:
    """Regression: a FIFO named like a leftover made the sweep wait for
    ever, and a link loop (or a file it may not open) ended it, so every
    stale leftover after it in the walk stayed. Each is left and logged;
    the rest go, a leftover dated ahead of the clock too."""
    blobs = FileBlobStore(tmp_path)
    folder = tmp_path / "jobs" / "a"
    folder.mkdir(parents=True)
    os.mkfifo(folder / ".fifo.1.0123456789ab.part")
    (folder / ".loop.1.0123456789ab.part").symlink_to(
        folder / ".loop.1.0123456789ab.part"
    )
    stale = folder / ".upload.1.0123456789ab.part"
    ahead = folder / ".export.1.0123456789ab.part"
    for leftover in (stale, ahead):
        leftover.write_bytes(b"half a file")
    _aged(stale, STALE_SECONDS + 5)
    _aged(ahead, -365 * 24 * 3600)

    assert blobs.sweep() == 2
    assert not stale.exists() and not ahead.exists()


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_ipm_serve_sweeps_unfinished_writes_hourly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leftover the sweep at open could not take yet (its writer a zombie
    then, or its file too fresh) goes with a later hourly sweep."""
    monkeypatch.setattr(_server, "EXPIRE_EVERY", 0.05)
    stopping = threading.Event()
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        for thread in threading.enumerate():
            if thread.name == "ipm-blob-sweep":
                thread.join()
        leftover = (
            tmp_path / "ipm.sqlite.blobs" / "jobs" / "a" / ".u.1.0a0b0c0d0e0f.part"
        )
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half an upload")
        _aged(leftover, STALE_SECONDS + 5)
        sweeper = threading.Thread(
            target=_server._expire_idle_jobs, args=(app, stopping)
        )
        sweeper.start()
        try:
            deadline = time.monotonic() + 10
            while leftover.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stopping.set()
            sweeper.join()

    assert not leftover.exists()


def test_opening_ipm_sweeps_its_blob_folder(tmp_path: Path) -> None:
    """open_sqlite starts the sweep in the background; a dead upload goes."""
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    dead = (
        tmp_path
        / "ipm.sqlite.blobs"
        / "jobs"
        / "a"
        / f".u.{killed.pid}.0a0b0c0d0e0f.part"
    )
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"half an upload")
    _aged(dead, STALE_SECONDS + 5)

    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        assert app.bulk.blobs is not None  # opened with the bulk use case
        deadline = time.monotonic() + 10
        while dead.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    assert not dead.exists()


def test_deleting_a_job_s_last_blob_removes_its_folders(tmp_path: Path) -> None:
    """A folder goes with its last blob; the store's root and busy folders stay."""
    root = tmp_path / "blobs"
    blobs = FileBlobStore(root)
    blobs.write("jobs/a/export.ndjson", iter([b"a\n"]))
    blobs.write("jobs/a/part-000000", iter([b"a\n"]))
    blobs.write("jobs/b/upload", iter([b"b\n"]))

    blobs.delete("jobs/a/part-000000")
    kept = (root / "jobs" / "a").is_dir()
    blobs.delete("jobs/a/export.ndjson")
    blobs.delete("jobs/b/upload")

    assert kept
    assert root.is_dir() and list(root.iterdir()) == []


def test_a_refused_first_write_leaves_no_folder(tmp_path: Path) -> None:
    """Regression: an upload refused mid-way (too large, cut short) left its
    job's folder behind, empty, until the next sweep; a folder that holds
    another blob stays."""
    root = tmp_path / "blobs"
    blobs = FileBlobStore(root)
    blobs.write("jobs/kept/upload", iter([b"k\n"]))

    def refused() -> Iterator[bytes]:
        yield b"partial"
        raise ValueError("too large")

    for key in ("jobs/new/upload", "jobs/kept/other"):
        with pytest.raises(ValueError):
            blobs.write(key, refused())

    assert not (root / "jobs" / "new").exists()
    assert sorted(p.name for p in (root / "jobs" / "kept").iterdir()) == ["upload"]


def test_a_sweep_removes_empty_folders(tmp_path: Path) -> None:
    """Folders left empty by an earlier version of ipm go with the next sweep."""
    root = tmp_path / "blobs"
    (root / "jobs" / "old" / "deeper").mkdir(parents=True)
    blobs = FileBlobStore(root)
    blobs.write("jobs/kept/upload", iter([b"k\n"]))

    blobs.sweep()

    assert not (root / "jobs" / "old").exists()
    assert b"".join(blobs.read("jobs/kept/upload")) == b"k\n"


def test_writes_race_deletes_of_the_same_folder_without_failing(tmp_path: Path) -> None:
    """A write lands even when a delete prunes its folder as it starts."""
    import threading

    blobs = FileBlobStore(tmp_path / "blobs")
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for number in range(300):
                key = f"jobs/shared/{name}-{number}"
                blobs.write(key, iter([b"x\n"]))
                assert b"".join(blobs.read(key)) == b"x\n"
                blobs.delete(key)
        except BaseException as error:  # reported below, with the thread's name
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
