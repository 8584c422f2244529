"""The bulk contracts, run against every job repository and blob store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipm.adapters.blobs import FileBlobStore, MemoryBlobStore
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
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

    assert list((tmp_path / "jobs" / "a").iterdir()) == []


def test_a_killed_writer_s_leftover_goes_with_the_next_write(tmp_path: Path) -> None:
    """A temporary file of a writer killed mid-write is removed; a live one stays."""
    blobs = FileBlobStore(tmp_path)
    blobs.write("jobs/a/export.ndjson", iter([b"first\n"]))
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    folder = tmp_path / "jobs" / "a"
    dead = folder / f".export.ndjson.{killed.pid}.0123456789ab.part"
    live = folder / f".export.ndjson.{os.getpid()}.ba9876543210.part"
    other = folder / f".part-000001.{killed.pid}.0123456789ab.part"
    for leftover in (dead, live, other):
        leftover.write_bytes(b"half a file")

    blobs.write("jobs/a/export.ndjson", iter([b"second\n"]))

    assert not dead.exists()
    assert live.exists() and other.exists()
    assert b"".join(blobs.read("jobs/a/export.ndjson")) == b"second\n"
