"""A machine that cannot store (full disk, file size limit, read-only files)
is a 503 ``storage_unavailable`` that keeps nothing, never a 500.

The real faults run in a child process under ``RLIMIT_FSIZE`` (SIGXFSZ
ignored, so writes fail with EFBIG as on a full disk); the dispatcher's
waiting-out is driven by an injected fault.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.adapters.blobs import FileBlobStore, MemoryBlobStore
from ipm.adapters.faults import unavailable
from ipm.adapters.sqlite.wal import connect
from ipm.domain.errors import StorageBusy, StorageUnavailable
from tests.conftest import HOURLY_KPI

needs_rlimit = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as on Linux"
)

ORG = "ACME"


def _sqlite_error(code: int) -> sqlite3.Error:
    """A real error from SQLite with the given primary result code."""
    if code == sqlite3.SQLITE_FULL:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA max_page_count = 2")
        try:
            conn.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 10)
        except sqlite3.Error as exc:
            return exc
    raise AssertionError(f"no recipe for code {code}")


def test_machine_faults_are_told_apart_from_request_faults() -> None:
    full = unavailable(_sqlite_error(sqlite3.SQLITE_FULL))
    too_big = unavailable(OSError(errno.EFBIG, "File too large"))
    no_fds = unavailable(OSError(errno.EMFILE, "Too many open files"))

    assert isinstance(full, StorageUnavailable) and "disk is full" in full.message
    assert isinstance(too_big, StorageUnavailable)
    assert "file size limit" in too_big.message
    assert isinstance(no_fds, StorageUnavailable)
    assert (full.status, full.code) == (503, "storage_unavailable")
    # A constraint, a client gone, a missing file: not the machine's fault.
    assert unavailable(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert unavailable(ConnectionResetError(errno.ECONNRESET, "reset")) is None
    assert unavailable(FileNotFoundError(errno.ENOENT, "gone")) is None
    assert unavailable(ValueError("bad")) is None
    # Regression: OpenSSL's own codes in an SSLError's errno (1, 5) read as
    # EPERM and EIO, so a TLS failure in a host port was a "full disk" 503.
    assert unavailable(ssl.SSLError(1, "wrong version number")) is None
    assert unavailable(ssl.SSLError(5, "EOF in violation of protocol")) is None


def test_a_blob_that_cannot_be_written_is_unavailable_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")

    def chunks() -> Any:
        yield b"first part"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageUnavailable, match="disk is full"):
        blobs.write("jobs/j1/upload", chunks())

    assert not blobs.exists("jobs/j1/upload")
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_a_blob_folder_that_vanishes_under_a_write_is_unavailable(
    tmp_path: Path,
) -> None:
    """Regression: an upload whose folder was deleted mid-way was a 500 (the
    rename found no folder); it is a 503 and leaves nothing."""
    root = tmp_path / "blobs"
    blobs = FileBlobStore(root)

    def chunks() -> Any:
        yield b"first part"
        shutil.rmtree(root)
        yield b"second part"

    with pytest.raises(StorageUnavailable, match="its folder vanished"):
        blobs.write("jobs/j1/upload", chunks())

    assert not blobs.exists("jobs/j1/upload")
    assert blobs.write("jobs/j1/upload", iter([b"again"]))[0] == 5


def test_an_upload_whose_folder_vanishes_is_a_503_and_waits_again(
    tmp_path: Path,
) -> None:
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        job = app.bulk.create_import("ACME")
        root = Path(f"{tmp_path / 'ipm.sqlite'}.blobs")

        def chunks() -> Any:
            yield b'{"service": "pos", "action": "sale.created", '
            shutil.rmtree(root)
            yield b'"occurred_at": "2026-03-01T10:00:00Z"}\n'

        with pytest.raises(StorageUnavailable):
            app.bulk.upload("ACME", job.job_id, chunks())

        assert app.bulk.get("ACME", job.job_id).status == "awaiting_upload"
        data = (
            b'{"service": "pos", "action": "sale.created", '
            b'"occurred_at": "2026-03-01T10:00:00Z"}\n'
        )
        assert app.bulk.upload("ACME", job.job_id, iter([data])).status == "uploaded"


class _FullDisk(MemoryBlobStore):
    """A host's blob store on a disk that has filled up."""

    def write(self, key: str, chunks: Iterator[bytes]) -> tuple[int, str]:
        for _ in chunks:
            pass
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_under_a_host_s_blob_store_is_a_503_not_a_500() -> None:
    """Regression: ipm turned machine faults into 503 only inside its own
    adapters, so a host's store raising ENOSPC made an upload a 500 that
    read like a bug of ipm's."""
    data = b'{"service": "pos", "action": "sale.created"}\n'
    with ipm.open_memory(blobs=_FullDisk()) as app:
        key = app.create_api_key("ops@acme.example", ["ACME"])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME"}
        created = app.handle("POST", "/bulk/import/create", headers, b"{}").json()
        link = created["data"]["upload_url"].partition("://localhost")[2]

        answer = app.handle("PUT", link, {"content-length": str(len(data))}, data)
        job = app.bulk.get("ACME", created["data"]["job"]["job_id"])

    assert answer.status == 503
    assert answer.json()["error"]["code"] == "storage_unavailable"
    assert "disk is full" in answer.json()["error"]["message"]
    assert job.status == "awaiting_upload"


_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import ipm
    from ipm.domain.errors import StorageUnavailable

    folder = sys.argv[1]
    db = os.path.join(folder, "ipm.sqlite")
    app = ipm.open_sqlite(db)
    key = app.create_api_key("ops@acme.example", ["ACME"])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME"}
    for n in range(3):
        app.publish("ACME", {"service": "pos", "action": "sale.created",
                             "op": "c", "payload": {"n": n},
                             "logical_guid": f"g{n}"})
    out = {}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(os.path.join(folder, name))
                  for name in os.listdir(folder))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
    try:
        for n in range(3, 2000):
            app.publish("ACME", {"service": "pos", "action": "sale.created",
                                 "op": "c", "payload": {"n": n, "pad": "x" * 4000},
                                 "logical_guid": f"g{n}"})
        out["library"] = "no refusal"
    except StorageUnavailable as exc:
        out["library"] = exc.message
    kpi = {"kpi_code": "NET_SALES", "bucket": "hourly",
           "bucket_start": "2026-03-08T10:00:00Z",
           "bucket_end": "2026-03-08T11:00:00Z", "value": 10}
    answer = app.handle("POST", "/kpi/record", headers,
                        json.dumps({"kpi": kpi}).encode())
    out["kpi"] = [answer.status, answer.json()]
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    again = app.handle("POST", "/kpi/record", headers,
                       json.dumps({"kpi": kpi}).encode())
    out["kpi_after"] = again.status
    app.close()
    print(json.dumps(out))
    """
)


@needs_rlimit
def test_a_file_size_limit_is_a_503_that_keeps_nothing(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)

    assert "file size limit" in out["library"]
    status, envelope = out["kpi"]
    assert status == 503
    assert envelope["error"]["code"] == "storage_unavailable"
    assert "try again later" in envelope["error"]["message"]
    assert out["kpi_after"] == 200
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        stored = [e.new.payload["n"] for e in app.events(ORG, service="pos")]
    # The events before the limit, every one refused under it absent, whole.
    assert stored[:3] == [0, 1, 2]
    assert stored == list(range(len(stored)))


def test_a_blob_read_without_descriptors_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download or a continue reads blobs outside any unit of work: these
    were 500s when the process had no descriptor left."""
    from ipm.adapters import blobs as blobs_module

    blobs = FileBlobStore(tmp_path / "blobs")
    blobs.write("jobs/j1/upload", [b"line\n"])

    def no_descriptors(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(blobs_module, "open", no_descriptors, raising=False)
    monkeypatch.setattr(blobs_module.os, "scandir", no_descriptors)

    with pytest.raises(StorageUnavailable, match="file descriptors"):
        blobs.read("jobs/j1/upload")
    with pytest.raises(StorageUnavailable, match="file descriptors"):
        blobs.write("jobs/j1/other", [b"x"])
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "blobs/jobs/j1").iterdir()) == ["upload"]
    with pytest.raises(KeyError):
        blobs.read("jobs/j1/missing")


def test_refusals_for_a_machine_fault_reach_the_log_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client hears 503; the operator must hear it too (ipm serve logged
    nothing), but not once per request."""
    with ipm.open_memory() as app:
        key = app.create_api_key("ops@acme.example", [ORG])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

        def disk_full(*args: Any, **kwargs: Any) -> Any:
            raise StorageUnavailable(
                "the server cannot store anything: the disk is full"
            )

        monkeypatch.setattr(app.storage, "unit_of_work", disk_full)
        with caplog.at_level(logging.ERROR, logger="ipm.api.core"):
            statuses = [
                app.handle("POST", "/cdc/list", headers, b"{}").status for _ in range(3)
            ]

    assert statuses == [503, 503, 503]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ipm.api.core"]
    assert "disk is full" in line and "503" in line


def test_a_listing_that_cannot_read_a_folder_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.walk skips folders it cannot read: out of descriptors, an export's
    stray parts would have passed for none and stayed on disk."""

    blobs = FileBlobStore(tmp_path / "blobs")
    blobs.write("jobs/j1/part-000003", [b"x"])

    def no_descriptors(path: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    assert blobs.keys("jobs/gone/") == []
    monkeypatch.setattr(os, "scandir", no_descriptors)
    with pytest.raises(OSError):
        blobs.keys("jobs/j1/part-")


def test_a_disk_i_o_error_at_open_names_the_file_and_the_likely_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says "disk I/O error" for a full disk or a size limit too."""
    from ipm.adapters.sqlite import core

    def failing_disk(*args: Any, **kwargs: Any) -> Any:
        error = sqlite3.OperationalError("disk I/O error")
        error.sqlite_errorcode = 778  # SQLITE_IOERR_WRITE
        raise error

    monkeypatch.setattr(core, "connect", failing_disk)
    path = tmp_path / "ipm.sqlite"

    with pytest.raises(sqlite3.OperationalError) as caught:
        ipm.open_sqlite(path)

    assert str(caught.value) == (
        f"disk I/O error: {path} (the disk may be full, at a file size limit "
        "or failing)"
    )


def test_a_read_only_folder_at_open_is_named_as_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL database in a folder ipm cannot write to cannot be opened even
    to read ("attempt to write a readonly database"): the message says the
    folder is why, not the file (which may well be writable)."""
    from ipm.adapters.sqlite import core

    def read_only(*args: Any, **kwargs: Any) -> Any:
        error = sqlite3.OperationalError("attempt to write a readonly database")
        error.sqlite_errorcode = 8  # SQLITE_READONLY
        raise error

    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "ipm.sqlite"
    real_access = os.access
    monkeypatch.setattr(core, "connect", read_only)
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: False if str(p) == str(folder) else real_access(p, mode),
    )

    with pytest.raises(sqlite3.OperationalError) as caught:
        ipm.open_sqlite(path)

    assert str(caught.value) == (
        f"attempt to write a readonly database: {path} (its folder is not "
        "writable: SQLite makes the -wal and -shm files beside the database, "
        "even to read it)"
    )


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_gone_from_under_ipm_refuses_writes(
    tmp_path: Path, how: str
) -> None:
    """Regression: writes after the file was deleted (or a copy moved over
    it) were answered 200 and went to the old file: lost at close, or a
    malformed database. They are 503s; reads still answer."""
    path = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(path) as app:
        key = app.create_api_key("ops@acme.example", ["ACME"])
        app.publish("ACME", {"service": "pos", "action": "sale.created"})
        if how == "deleted":
            path.unlink()
        else:
            copy = tmp_path / "copy.sqlite"
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)
            copy.replace(path)
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME"}
        kpi = HOURLY_KPI

        with pytest.raises(StorageUnavailable, match="deleted or replaced"):
            app.publish("ACME", {"service": "pos", "action": "sale.created"})
        answer = app.handle(
            "POST", "/kpi/record", headers, json.dumps({"kpi": kpi}).encode()
        )
        listed = app.handle("POST", "/cdc/list", headers, b"{}")

    assert answer.status == 503
    assert answer.json()["error"]["code"] == "storage_unavailable"
    assert listed.status == 200
    # Nothing opened (or created) whatever is at the path now: a restart
    # finds what the operator left there, not an empty database.
    assert path.exists() == (how == "replaced")


def test_a_file_gone_between_the_check_and_the_open_is_not_made_anew(
    tmp_path: Path,
) -> None:
    """Regression (seen once in a loaded full run): the checkpoint thread
    checked that the file was still the one opened, the file went, and its
    open then made a new empty database at the path. Every open after the
    first now opens only a file that is there."""
    path = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(path) as app:
        path.unlink()
        storage: Any = app.storage
        storage._same_file = lambda: True  # the moment after the check
        checkpointer = storage._checkpointer
        checkpointer._same_file = lambda: True
        checkpointer._stopping = True  # once open, it would close at once
        checkpointer._run()
        storage._idle.clear()  # no pooled connection: a new one is opened
        with pytest.raises(StorageUnavailable):
            storage._acquire()

    assert not path.exists()
    assert connect(str(tmp_path / "new.sqlite"), 1.0, create=True) is not None
    with pytest.raises(sqlite3.OperationalError):
        connect(str(tmp_path / "gone.sqlite"), 1.0)
    assert not (tmp_path / "gone.sqlite").exists()


@pytest.mark.parametrize("name", [b"n\xffu.sqlite", b"a b%41#?\xc3\xa9.sqlite"])
@pytest.mark.parametrize("lead", ["", "/"])
def test_later_opens_name_the_same_file_whatever_its_name(
    tmp_path: Path, name: bytes, lead: str
) -> None:
    """Regression: the opens after the first spelt the path as a URI, which
    failed for a name that is not UTF-8 (a 500) and read a path starting
    // as a host name."""
    path = lead + os.fsdecode(os.fsencode(str(tmp_path)) + b"/" + name)
    with ipm.open_sqlite(path) as app:
        for _ in range(3):
            app.storage._idle.clear()  # type: ignore[attr-defined]
            app.publish("ACME", {"service": "pos", "action": "sale.created"})
        stored = len(app.events("ACME"))

    assert stored == 3
    assert sorted(os.listdir(tmp_path))[0] == os.fsdecode(name)


_UNDO_0010 = (
    *(
        f"DROP TRIGGER webhooks_{change}_counted"
        for change in ("insert", "update", "delete")
    ),
    "DROP TABLE webhook_generation",
    "DELETE FROM ipm_migrations WHERE name LIKE '0010%'",
)
# (A column 0007 added, gone as from an older copy; the file's own record
# of its migrations lacks 0010 only, enough to tell it is not up to date.)
_UNDO_0007 = (*_UNDO_0010, "ALTER TABLE webhooks DROP COLUMN held_until")


@pytest.mark.parametrize(
    ("undo", "route", "body"),
    [
        (_UNDO_0010, "/kpi/record", {"kpi": HOURLY_KPI}),
        (
            _UNDO_0007,
            "/webhook/create",
            {
                "endpoint_url": "https://hooks.example/in",
                "event_filters": [{"service": "pos"}],
            },
        ),
    ],
    ids=["table", "column"],
)
def test_an_older_copy_put_into_the_open_file_is_a_503_that_says_restart(
    tmp_path: Path, undo: tuple[str, ...], route: str, body: dict[str, Any]
) -> None:
    """Regression: a copy from before the last migrations restored into the
    running file (SQLite's backup API keeps the file, so nothing looked
    replaced) made every publish a 500 ("no such table"), and a webhook
    create one too ("table webhooks has no column named held_until")."""
    path = tmp_path / "ipm.sqlite"
    old = tmp_path / "old.sqlite"
    with ipm.open_sqlite(old) as app:
        key = app.create_api_key("ops@acme.example", ["ACME"])
    with sqlite3.connect(old) as conn:
        for statement in undo:
            conn.execute(statement)
    conn.close()
    with ipm.open_sqlite(path) as app:
        with sqlite3.connect(old) as source, sqlite3.connect(path) as target:
            source.backup(target)
        source.close()
        target.close()
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME"}

        with pytest.raises(StorageUnavailable, match="restart ipm"):
            app.publish("ACME", {"service": "pos", "action": "sale.created"})
        answer = app.handle("POST", route, headers, json.dumps(body).encode())

    assert answer.status == 503, answer.body
    assert answer.json()["error"]["code"] == "storage_unavailable"
    if undo is _UNDO_0007:
        return
    with ipm.open_sqlite(path) as app:  # a restart brings the file up to date
        app.publish("ACME", {"service": "pos", "action": "sale.created"})
        assert len(app.events("ACME")) == 1


def test_no_new_connection_opens_a_file_put_in_place_of_the_database(
    tmp_path: Path,
) -> None:
    """Reads that need a connection of their own are refused too, rather
    than reading another file (or creating an empty one)."""
    path = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(path) as app:
        storage: Any = app.storage
        path.unlink()
        pooled = [storage._acquire() for _ in range(len(storage._idle))]

        with pytest.raises(StorageUnavailable, match="deleted or replaced"):
            storage._acquire()  # the pool is empty: a new connection
        for conn in pooled:
            storage._give_back(conn)

    assert not path.exists()


@pytest.mark.parametrize(
    "fault",
    [
        sqlite3.OperationalError("disk I/O error"),
        # What connect() raises while another process holds the file in
        # exclusive locking mode: not an sqlite3.Error.
        StorageBusy("the database stayed locked; try again"),
    ],
    ids=["disk", "busy"],
)
def test_a_checkpointer_that_cannot_open_the_file_tries_again_later(
    fault: Exception,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: its thread died with a raw traceback (connect raised
    outside its guard, or raised StorageBusy) and was never started again."""
    import threading

    from ipm.adapters.sqlite import wal

    path = str(tmp_path / "ipm.sqlite")
    sqlite3.connect(path).close()
    checkpointer = wal.Checkpointer(path, 1.0, threading.Lock(), pause=0.01)
    real = wal.connect

    def cannot_open(*args: Any, **kwargs: Any) -> Any:
        raise fault

    monkeypatch.setattr(wal, "connect", cannot_open)
    with caplog.at_level(logging.WARNING, logger="ipm.adapters.sqlite.wal"):
        checkpointer.poke()
        first = checkpointer._thread
        assert first is not None
        first.join(5)
    monkeypatch.setattr(wal, "connect", real)
    checkpointer.poke()
    second = checkpointer._thread
    checkpointer.stop()

    assert not first.is_alive()
    assert second is not None and second is not first
    assert "background WAL checkpoints paused" in caplog.text


def test_a_relative_path_survives_a_change_of_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: after the host's chdir (a daemon moving to /), every
    write was refused as if the file had been replaced."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    with ipm.open_sqlite("rel.sqlite") as app:
        monkeypatch.chdir(elsewhere)
        app.publish("ACME", {"service": "pos", "action": "sale.created"})
        job = app.bulk.create_import("ACME")
        app.bulk.upload("ACME", job.job_id, iter([b"\n"]))

    assert (home / "rel.sqlite").is_file()
    assert (home / "rel.sqlite.blobs").is_dir()  # the upload, beside the file
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("path", [None, 5])
def test_a_path_that_is_no_path_is_refused(path: Any) -> None:
    with pytest.raises(TypeError, match="path must be a str or a Path"):
        ipm.open_sqlite(path)


def test_a_file_named_memory_does_not_make_a_database_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ ":memory:" is SQLite's in-memory database, whatever the folder holds."""
    monkeypatch.chdir(tmp_path)
    Path(":memory:").write_text("not a database")
    with ipm.open_sqlite(":memory:") as app:
        Path(":memory:").unlink()
        app.publish("ACME", {"service": "pos", "action": "sale.created"})


def test_a_file_error_of_the_caller_s_chunks_goes_on_as_it_is(
    tmp_path: Path,
) -> None:
    """Only the store's own folder vanishing is a 503; a source file the
    caller could not read is the caller's error."""
    blobs = FileBlobStore(tmp_path / "blobs")

    def chunks() -> Any:
        yield b"first part"
        raise FileNotFoundError(errno.ENOENT, "No such file", "source.ndjson")

    with pytest.raises(FileNotFoundError, match=r"source\.ndjson"):
        blobs.write("jobs/j1/upload", chunks())

    assert not blobs.exists("jobs/j1/upload")


def test_a_path_through_a_link_and_back_names_what_the_system_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: "link/../db.sqlite" was folded into "db.sqlite" beside the
    link, where the system follows the link first: ipm opened (and
    created) another, empty database."""
    (tmp_path / "b" / "sub").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "b" / "sub")
    with ipm.open_sqlite(tmp_path / "b" / "db.sqlite") as app:
        app.create_api_key("ops@acme.example", ["ACME"])
    monkeypatch.chdir(tmp_path / "a")

    with ipm.open_sqlite("link/../db.sqlite") as relative:
        keys = relative.list_api_keys()
    with ipm.open_sqlite(tmp_path / "a" / "link" / ".." / "db.sqlite") as absolute:
        again = absolute.list_api_keys()

    assert len(keys) == len(again) == 1
    assert not (tmp_path / "a" / "db.sqlite").exists()


def test_a_path_with_a_trailing_slash_is_the_file_sqlite_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: "db/" kept its slash: the replaced-file check never
    fired, and the key file and blobs were to go inside a "folder" db/."""
    from ipm.domain.webhooks import SubscriptionFilter
    from ipm.usecases.webhooks import CreateWebhook

    monkeypatch.chdir(tmp_path)
    with ipm.open_sqlite("db/", allow_networks=["127.0.0.1/32"]) as app:
        app.webhooks.create(
            "ACME",
            CreateWebhook("http://127.0.0.1:9/hook", (SubscriptionFilter("pos"),)),
        )
        Path("db").rename("db.moved")

        with pytest.raises(StorageUnavailable, match="deleted or replaced"):
            app.publish("ACME", {"service": "pos", "action": "sale.created"})

    assert Path("db.key").is_file()
