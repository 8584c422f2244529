"""Publishing inside a host's transaction, on the host's own connection.

A call either adds its events and their deliveries to the host's
transaction or adds nothing at all, and it leaves the host's connection
as it found it: the same transaction, the same row and text factories.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.domain.errors import (
    EventIdConflict,
    HostTransactionLost,
    StorageBusy,
    StorageUnavailable,
)
from ipm.domain.webhooks import SubscriptionFilter
from ipm.usecases.cdc import Recorder
from ipm.usecases.webhooks import CreateWebhook
from tests.conftest import ORG

Shop = tuple[ipm.Application, str, Path]
"""An application, the id of its one webhook, and its database file."""


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    db = tmp_path / "shop.sqlite"
    with ipm.open_sqlite(db, allow_networks=["127.0.0.1/32"]) as app:
        command = CreateWebhook("http://127.0.0.1:9/hook", (SubscriptionFilter("pos"),))
        webhook = app.webhooks.create(ORG, command).webhook
        tables = sqlite3.connect(db)
        tables.execute("CREATE TABLE sales (id TEXT PRIMARY KEY, total INTEGER)")
        tables.commit()
        tables.close()
        yield app, webhook.webhook_id, db


def sale(n: int, total: int = 100) -> dict[str, Any]:
    return {
        "event_id": f"sale-{n}",
        "service": "pos",
        "action": "sale.created",
        "logical_guid": f"sale-{n}",
        "occurred_at": "2026-03-01T10:00:00Z",
        "payload": {"total_minor": total},
    }


def published(shop: Shop) -> tuple[list[str], list[str]]:
    """The host events stored, and the ids of the events a delivery is queued for."""
    app, webhook_id, _ = shop
    events = [e.new.event_id for e in app.events(ORG, service="pos")]
    queued = [d.event_id for d in app.webhooks.deliveries(ORG, webhook_id)]

    return events, queued


def sales(db: Path) -> list[str]:
    reader = sqlite3.connect(db)
    try:
        return [row[0] for row in reader.execute("SELECT id FROM sales ORDER BY id")]
    finally:
        reader.close()


def test_a_list_refused_part_way_leaves_nothing_in_the_host_transaction(
    shop: Shop,
) -> None:
    """Regression (F3): a conflict on the second event no longer leaves the first.

    The host catches the 409 and commits its own row: the first event of
    the refused list and its delivery must not commit with it.
    """
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db)
    host.execute("INSERT INTO sales VALUES ('s3', 300)")

    with pytest.raises(EventIdConflict):
        app.publish_many(ORG, [sale(3), sale(2, total=-1)], connection=host)
    host.commit()

    assert published(shop) == (["sale-2"], ["sale-2"])
    assert sales(db) == ["s3"]
    host.close()


def test_a_driver_error_between_event_and_delivery_takes_the_event_back(
    shop: Shop,
) -> None:
    """An event whose delivery cannot be queued is not left in the host's rows."""
    app, _, db = shop
    host = sqlite3.connect(db)
    host.execute(
        "CREATE TEMP TRIGGER no_deliveries BEFORE INSERT ON webhook_deliveries "
        "BEGIN SELECT RAISE(ABORT, 'no deliveries today'); END"
    )
    host.execute("INSERT INTO sales VALUES ('s1', 100)")

    with pytest.raises(sqlite3.IntegrityError, match="no deliveries today"):
        app.publish(ORG, sale(1), connection=host)
    host.commit()

    assert published(shop) == ([], [])
    assert sales(db) == ["s1"]
    host.close()


def test_the_host_keeps_its_transaction_and_its_savepoints_after_a_refusal(
    shop: Shop,
) -> None:
    """A refused call neither ends the host's transaction nor its own savepoints."""
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db, isolation_level=None)
    host.execute("BEGIN")
    host.execute("INSERT INTO sales VALUES ('s1', 100)")
    host.execute("SAVEPOINT before_sale")
    host.execute("INSERT INTO sales VALUES ('s3', 300)")

    with pytest.raises(EventIdConflict):
        app.publish_many(ORG, [sale(3), sale(2, total=-1)], connection=host)
    host.execute("RELEASE before_sale")
    host.execute("COMMIT")

    assert published(shop) == (["sale-2"], ["sale-2"])
    assert sales(db) == ["s1", "s3"]
    host.close()


def test_a_refusal_before_the_host_wrote_leaves_no_transaction_open(
    shop: Shop,
) -> None:
    """Python's default mode had no transaction open yet: none is left open."""
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db)

    with pytest.raises(EventIdConflict):
        app.publish_many(ORG, [sale(3), sale(2, total=-1)], connection=host)

    assert not host.in_transaction
    assert published(shop) == (["sale-2"], ["sale-2"])
    host.close()


def test_a_first_write_by_ipm_opens_the_host_transaction_without_committing(
    shop: Shop,
) -> None:
    """ipm's own savepoint does not commit when the host had written nothing yet."""
    app, _, db = shop
    host = sqlite3.connect(db)

    app.publish(ORG, sale(1), connection=host)
    assert host.in_transaction
    host.rollback()

    assert published(shop) == ([], [])
    host.close()


def test_a_host_transaction_that_cannot_write_is_busy_and_left_clean(
    shop: Shop,
) -> None:
    """Another writer holds the lock: StorageBusy, and no savepoint left behind."""
    app, _, db = shop
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    host = sqlite3.connect(db, timeout=0, isolation_level=None)
    host.execute("BEGIN")

    with pytest.raises(StorageBusy):
        app.publish(ORG, sale(1), connection=host)

    assert host.in_transaction
    with pytest.raises(sqlite3.OperationalError, match="no such savepoint"):
        host.execute("RELEASE ipm_unit_of_work")
    host.execute("ROLLBACK")
    other.execute("ROLLBACK")
    assert published(shop) == ([], [])
    host.close()
    other.close()


def _dict_rows(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        column[0]: value for column, value in zip(cursor.description, row, strict=True)
    }


def _text_rows(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(value) for value in row)


def _shouting(raw: bytes) -> str:
    return raw.decode().upper()


Setting = Callable[[sqlite3.Connection], None]

HOST_SETTINGS: dict[str, Setting] = {
    "dict rows": lambda c: setattr(c, "row_factory", _dict_rows),
    "sqlite3.Row": lambda c: setattr(c, "row_factory", sqlite3.Row),
    "rows of text": lambda c: setattr(c, "row_factory", _text_rows),
    "text as bytes": lambda c: setattr(c, "text_factory", bytes),
    "text as bytearray": lambda c: setattr(c, "text_factory", bytearray),
    "text upper-cased": lambda c: setattr(c, "text_factory", _shouting),
}


@pytest.mark.parametrize("setting", HOST_SETTINGS.values(), ids=HOST_SETTINGS)
def test_publishing_works_whatever_rows_the_host_reads(
    shop: Shop, setting: Setting
) -> None:
    """Regression (F4): a host's row or text factory no longer breaks the outbox."""
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db)
    setting(host)
    factories = (host.row_factory, host.text_factory)
    host.execute("INSERT INTO sales VALUES ('s1', 100)")

    first = app.publish(ORG, sale(1), connection=host)
    again = app.publish_many(ORG, [sale(2), sale(1), sale(3)], connection=host)
    host.commit()

    assert [e["event_id"] for e in again] == ["sale-2", "sale-1", "sale-3"]
    assert again[1] == first
    assert published(shop) == (["sale-2", "sale-1", "sale-3"],) * 2
    assert (host.row_factory, host.text_factory) == factories
    host.close()


@pytest.mark.parametrize("setting", HOST_SETTINGS.values(), ids=HOST_SETTINGS)
def test_the_host_factories_come_back_after_a_refusal(
    shop: Shop, setting: Setting
) -> None:
    """A refused call hands the connection back with the host's factories."""
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db)
    setting(host)
    factories = (host.row_factory, host.text_factory)

    with pytest.raises(EventIdConflict):
        app.publish(ORG, sale(2, total=-1), connection=host)

    assert (host.row_factory, host.text_factory) == factories
    assert published(shop) == (["sale-2"], ["sale-2"])
    host.close()


def test_a_host_cursor_read_across_a_publish_keeps_its_factory(shop: Shop) -> None:
    """Rows the host fetches after ipm returns are built the host's way."""
    app, _, db = shop
    host = sqlite3.connect(db)
    host.row_factory = _dict_rows
    host.text_factory = bytes
    host.executemany("INSERT INTO sales VALUES (?, ?)", [("s1", 1), ("s2", 2)])
    cursor = host.execute("SELECT id FROM sales ORDER BY id")
    first = cursor.fetchone()

    app.publish(ORG, sale(1), connection=host)
    second = cursor.fetchone()
    host.commit()

    assert (first, second) == ({"id": b"s1"}, {"id": b"s2"})
    host.close()


def test_a_deferred_host_transaction_waits_for_another_writer(shop: Shop) -> None:
    """After a plain BEGIN, a publish waits for a writer of another connection
    instead of failing at once: ipm takes the write lock before it reads."""
    app, _, db = shop
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO sales VALUES ('other', 1)")
    host = sqlite3.connect(db, timeout=10, isolation_level=None)
    host.execute("BEGIN")
    # The other writer commits while ipm waits: a snapshot read before
    # that commit could no longer be written from.
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()

    app.publish(ORG, sale(1), connection=host)
    host.execute("COMMIT")

    release.join()
    assert published(shop)[0] == ["sale-1"]
    assert sales(db) == ["other"]
    host.close()
    other.close()


@pytest.mark.parametrize("events", [[], [sale(2)]], ids=["empty list", "a repeat"])
def test_a_publish_that_writes_nothing_leaves_no_transaction_open(
    shop: Shop, events: list[dict[str, Any]]
) -> None:
    """In Python's default mode, a call that stores nothing does not leave the
    host holding the write lock: other writers go on at once."""
    app, _, db = shop
    app.publish(ORG, sale(2))
    host = sqlite3.connect(db)  # Python's default mode: no transaction yet

    app.publish_many(ORG, events, connection=host)

    assert not host.in_transaction
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    host.close()


@pytest.mark.parametrize("name", ["events", "Events", "EVENTS"])
def test_a_temp_table_named_like_ipm_s_is_refused_not_written(
    shop: Shop, name: str
) -> None:
    """Regression: SQLite resolves an unqualified name to a TEMP table first,
    so the event went there, was reported published, and vanished with the
    connection. Table names are not case-sensitive in SQLite."""
    app, _, db = shop
    host = sqlite3.connect(db)
    host.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM main.events WHERE 0")
    host.execute("INSERT INTO sales VALUES ('s1', 100)")

    with pytest.raises(ValueError, match=f"TEMP table or view named like ipm's {name}"):
        app.publish(ORG, sale(1), connection=host)
    host.commit()
    host.close()

    assert published(shop) == ([], [])
    assert sales(db) == ["s1"]


def test_a_connection_another_thread_is_publishing_on_is_refused(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads in ipm calls on one connection would share its savepoints:
    one's rollback would undo the other's events after telling it they were
    published. The second is refused, and the first goes on unharmed."""
    app, _, db = shop
    host = sqlite3.connect(db, check_same_thread=False)
    inside, go_on = threading.Event(), threading.Event()
    refused: list[BaseException] = []
    record = Recorder.record

    def waits_inside(self: Recorder, *args: Any, **kwargs: Any) -> Any:
        inside.set()
        go_on.wait(10)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "record", waits_inside)
    first = threading.Thread(
        target=app.publish, args=(ORG, sale(1)), kwargs={"connection": host}
    )
    first.start()
    inside.wait(10)
    monkeypatch.setattr(Recorder, "record", record)
    try:
        app.publish(ORG, sale(2), connection=host)
    except RuntimeError as error:
        refused.append(error)
    go_on.set()
    first.join(10)
    host.commit()
    host.close()

    assert len(refused) == 1 and "another thread" in str(refused[0])
    assert published(shop) == (["sale-1"], ["sale-1"])


def test_a_closed_application_publishes_nothing_on_a_host_connection(
    shop: Shop,
) -> None:
    app, _, db = shop
    host = sqlite3.connect(db)
    app.close()

    with pytest.raises(ipm.IpmError) as refused:
        app.publish(ORG, sale(1), connection=host)
    host.commit()
    host.close()

    assert refused.value.code == "storage_closed"
    with ipm.open_sqlite(db) as again:
        assert again.events(ORG, service="pos") == []


def test_a_host_table_named_like_ipm_s_is_named_at_open(tmp_path: Path) -> None:
    db = tmp_path / "host.sqlite"
    host = sqlite3.connect(db)
    host.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
    host.commit()
    host.close()

    with pytest.raises(sqlite3.OperationalError, match="a name ipm uses"):
        ipm.open_sqlite(db)


@pytest.mark.parametrize(
    "own",
    [
        "CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)",
        "CREATE VIEW jobs AS SELECT 1 AS id",
        "CREATE TABLE ipm_migrations (id INTEGER PRIMARY KEY)",
        "CREATE TABLE Webhooks (id INTEGER PRIMARY KEY)",
        "CREATE TABLE idx_events_orgcode_event_id (id INTEGER PRIMARY KEY)",
        # A name an early migration makes and a later one drops.
        "CREATE TABLE orders (id); CREATE INDEX webhook_deliveries_due ON orders(id)",
    ],
)
def test_a_host_file_with_ipm_s_names_is_refused_untouched(
    tmp_path: Path, own: str
) -> None:
    """Regression: a host view named jobs raised sqlite-utils' NoTable, a
    host table ipm_migrations "no such column: name", and every refused
    file had been switched to WAL: the refusal says the name, before any
    write."""
    db = tmp_path / "host.sqlite"
    host = sqlite3.connect(db)
    host.executescript(own)
    host.commit()
    host.close()
    before = db.read_bytes()

    with pytest.raises(sqlite3.OperationalError, match="a name ipm uses"):
        ipm.open_sqlite(db)

    assert db.read_bytes() == before
    assert not (tmp_path / "host.sqlite-wal").exists()


def test_a_host_file_locked_past_the_busy_timeout_is_left_untouched(
    tmp_path: Path,
) -> None:
    """Regression: a host file another process kept locked while it made a
    table jobs was checked for ipm's names without waiting, passed, and
    was switched to WAL by the open that then failed on the clash."""
    db = tmp_path / "host.sqlite"
    host = sqlite3.connect(db, isolation_level=None)
    host.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    host.execute("BEGIN EXCLUSIVE")
    host.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ipm.open_sqlite(db, busy_timeout=0.2)
    finally:
        host.execute("COMMIT")
    mode = host.execute("PRAGMA journal_mode").fetchone()[0]
    host.close()

    assert mode == "delete"
    with pytest.raises(sqlite3.OperationalError, match="a name ipm uses"):
        ipm.open_sqlite(db)


def test_a_host_trigger_named_like_ipm_s_is_named_at_open(tmp_path: Path) -> None:
    """The error names ipm's triggers too, not only its tables."""
    db = tmp_path / "host.sqlite"
    host = sqlite3.connect(db)
    host.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    host.execute(
        "CREATE TRIGGER webhooks_insert_counted AFTER INSERT ON orders "
        "BEGIN SELECT 1; END"
    )
    host.commit()
    host.close()

    with pytest.raises(sqlite3.OperationalError, match="triggers webhooks_insert"):
        ipm.open_sqlite(db)


def test_ipm_s_table_list_is_the_tables_a_new_file_has(tmp_path: Path) -> None:
    from ipm.adapters.sqlite.core import IPM_TABLES

    ipm.open_sqlite(tmp_path / "new.sqlite").close()
    reader = sqlite3.connect(tmp_path / "new.sqlite")
    tables = reader.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    reader.close()

    assert tuple(name for (name,) in tables) == IPM_TABLES


def test_a_full_disk_that_rolled_back_the_host_s_transaction_says_so(
    tmp_path: Path,
) -> None:
    """SQLite answers a full disk by rolling back the whole transaction, the
    host's rows with it. Regression: a raw driver error, after which the
    host's commit succeeded and kept nothing."""
    db = tmp_path / "shop.sqlite"
    with ipm.open_sqlite(db) as app:
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE orders (n INTEGER)")
        conn.commit()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 3}")  # a small disk
        for n in range(30):
            conn.execute("INSERT INTO orders VALUES (?)", (n,))

        with pytest.raises(HostTransactionLost, match="host's own rows"):
            for _ in range(100):
                app.publish(
                    ORG,
                    {
                        "service": "pos",
                        "action": "sale.created",
                        "payload": {"pad": "x" * 3000},
                    },
                    connection=conn,
                )

        assert not conn.in_transaction
        conn.close()
        assert app.events(ORG, service="pos") == []


def _copy(source: Path, target: Path) -> None:
    """Copy a database into a file in place, with SQLite's backup API."""
    with sqlite3.connect(source) as reading, sqlite3.connect(target) as writing:
        reading.backup(writing)
    reading.close()
    writing.close()


def _refused_on(
    app: ipm.Application, host: sqlite3.Connection, error: type[Exception], said: str
) -> bool:
    """An outbox publish on ``host`` (in a transaction, begun here) is
    refused with ``error``; whether the host's transaction stayed open.
    The connection is rolled back and closed either way."""
    host.execute("BEGIN")
    try:
        with pytest.raises(error, match=said):
            app.publish(
                ORG,
                {"service": "pos", "action": "sale.created", "payload": {}},
                connection=host,
            )
        return host.in_transaction
    finally:
        host.rollback()
        host.close()


def test_an_outbox_publish_into_a_file_put_in_place_of_ipm_s_is_refused(
    tmp_path: Path,
) -> None:
    """Regression: ipm refused its own writes once its file was replaced,
    but a host connection opened on the new file was written to, where this
    ipm's dispatcher never looks."""
    db = tmp_path / "shop.sqlite"
    copy = tmp_path / "copy.sqlite"
    with ipm.open_sqlite(db) as app:
        _copy(db, copy)
        os.replace(copy, db)

        _refused_on(app, sqlite3.connect(db), StorageUnavailable, "replaced")


def test_an_outbox_publish_into_a_file_moved_away_is_refused(tmp_path: Path) -> None:
    """Regression: a host connection kept across a move of the database (the
    file renamed with its -wal and -shm, a new one made under its name and
    ipm opened on that) still wrote to the moved file, as its name was the
    application's: the publish was accepted, the event in a file ipm no
    longer reads."""
    db = tmp_path / "shop.sqlite"
    host = sqlite3.connect(db)
    with ipm.open_sqlite(db):
        host.execute("SELECT count(*) FROM events").fetchall()
    for suffix in ("", "-wal", "-shm"):
        moved = tmp_path / f"shop-archive.sqlite{suffix}"
        os.replace(f"{db}{suffix}", moved)
    with ipm.open_sqlite(db) as app:
        _refused_on(app, host, ValueError, "another database")

        assert app.events(ORG, service="pos") == []


def test_an_outbox_publish_into_a_file_replaced_by_its_copy_is_refused(
    tmp_path: Path,
) -> None:
    """Regression: a host connection kept across a swap of the file for a
    copy of itself (VACUUM INTO, moved over it with the old -wal and -shm
    removed, ipm opened again) wrote to the old file: the copy held the old
    file's birth, so the check passed and the event went where ipm no
    longer reads."""
    db, host = _swapped_for_its_copy(tmp_path)

    with ipm.open_sqlite(db) as app, ipm.open_sqlite(db) as second:
        _refused_on(app, host, ValueError, "another database")
        for each in (app, second):  # both agree on the file, marked once
            with contextlib.closing(sqlite3.connect(db)) as current, current:
                sale = {"service": "pos", "action": "sale.created"}
                each.publish(ORG, sale, connection=current)

        assert len(app.events(ORG, service="pos")) == 3


def _swapped_for_its_copy(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """A file ipm made and published to, swapped for its copy (VACUUM
    INTO, moved over it, the old -wal and -shm removed) while ipm was
    stopped, and a host connection kept on the old file."""
    db = tmp_path / "shop.sqlite"
    host = sqlite3.connect(db)
    with ipm.open_sqlite(db) as app:
        app.publish(ORG, {"service": "pos", "action": "sale.created"})
        host.execute("SELECT count(*) FROM events").fetchall()
        with contextlib.closing(sqlite3.connect(db)) as compacting:
            compacting.execute("VACUUM INTO ?", (str(tmp_path / "compact.sqlite"),))
    os.replace(tmp_path / "compact.sqlite", db)
    for suffix in ("-wal", "-shm"):  # the old file's, which the host still holds
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as copy:
        copy.execute("PRAGMA journal_mode = WAL")  # as a cp of ipm's file is

    return db, host


def test_a_copy_left_unmarked_at_open_still_refuses_the_old_file(
    tmp_path: Path,
) -> None:
    """Regression: ipm opened on the copy while another connection held its
    write lock (so the open could not mark it) took the stale host
    connection's publish: the copy's mark was the old file's. The host's
    publish finds ipm's file free to lock, so the host's is another file."""
    db, host = _swapped_for_its_copy(tmp_path)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")

    with ipm.open_sqlite(db) as app:
        locker.execute("ROLLBACK")
        locker.close()
        _refused_on(app, host, ValueError, "another database")

        assert len(app.events(ORG, service="pos")) == 1


def test_a_copy_left_unmarked_at_open_is_marked_by_ipm_s_next_write(
    tmp_path: Path,
) -> None:
    """Regression: left unmarked at open, the copy stayed so while another
    connection held its lock at every publish, and a stale host connection
    was let through ("busy": compared as it is). ipm's own next write marks
    it, under the lock it holds anyway."""
    db, host = _swapped_for_its_copy(tmp_path)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")

    with ipm.open_sqlite(db) as app:
        locker.execute("ROLLBACK")
        app.publish(ORG, {"service": "pos", "action": "sale.voided"})
        locker.execute("BEGIN IMMEDIATE")  # held at the host's publish too
        try:
            _refused_on(app, host, ValueError, "another database")
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        assert len(app.events(ORG, service="pos")) == 2


def test_a_full_disk_at_the_mark_s_write_is_a_503_and_leaves_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: SQLite ends the transaction itself on a full disk; the
    mark's write then rolled back a transaction that was gone, raised
    "cannot rollback", and kept ipm's writer lock: every later write of the
    process waited out the busy timeout."""
    from ipm.adapters.sqlite import mark

    db, _ = _swapped_for_its_copy(tmp_path)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    app = ipm.open_sqlite(db, busy_timeout=2)
    locker.execute("ROLLBACK")
    locker.close()
    real = mark.write_mark

    def disk_full(conn: sqlite3.Connection, made: bytes) -> None:
        conn.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(mark, "write_mark", disk_full)
    with app:
        with pytest.raises(StorageUnavailable, match="the disk is full"):
            app.publish(ORG, {"service": "pos", "action": "sale.voided"})
        monkeypatch.setattr(mark, "write_mark", real)
        started = time.monotonic()
        app.publish(ORG, {"service": "pos", "action": "sale.voided"})

        assert time.monotonic() - started < 1
        assert len(app.events(ORG, service="pos")) == 2


def test_a_read_only_copy_refuses_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ipm opened on a read-only copy (left unmarked) took the
    stale host connection's publish; a host holding its file's write lock
    cannot be on a file that cannot be written."""
    db, host = _swapped_for_its_copy(tmp_path)
    _read_only_settings(monkeypatch)

    with ipm.open_sqlite(db) as app:
        _refused_on(app, host, ValueError, "another database")

        assert len(app.events(ORG, service="pos")) == 1


def _read_only_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """New connections answer a write of the mark as SQLite answers on a
    file it may read but not write, in WAL mode: BEGIN IMMEDIATE is let
    through, the write is refused."""
    real = sqlite3.connect

    class ReadOnlyFile(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith("INSERT INTO settings"):
                error = sqlite3.OperationalError("attempt to write a readonly database")
                error.sqlite_errorcode = sqlite3.SQLITE_READONLY  # type: ignore[attr-defined]
                raise error
            return super().execute(sql, *args)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, factory=ReadOnlyFile, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


def _copy_of_a_marked_file(tmp_path: Path) -> Path:
    """A copy (another inode) of a file ipm made and marked."""
    db, copy = tmp_path / "shop.sqlite", tmp_path / "copy.sqlite"
    with ipm.open_sqlite(db) as app:
        app.create_api_key("ops@acme.example", [ORG])
    _copy(db, copy)

    return copy


def test_a_read_only_copy_still_opens_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: opening a read-only file that was not marked where it
    is (a backup, a file of an older ipm) failed ("attempt to write a
    readonly database"): marking it is left to a later open."""
    copy = _copy_of_a_marked_file(tmp_path)
    _read_only_settings(monkeypatch)

    with ipm.open_sqlite(copy) as app:
        keys = app.list_api_keys()

    assert [key["actor"] for key in keys] == ["ops@acme.example"]


def test_ipm_opened_inside_the_host_s_write_transaction_does_not_wait_it_out(
    tmp_path: Path,
) -> None:
    """Regression: the first open of an unmarked file waited the whole busy
    timeout for the write lock the host held, then failed; it now waits
    briefly, and the host's publish compares with the mark read anew."""
    copy = _copy_of_a_marked_file(tmp_path)
    host = sqlite3.connect(copy, isolation_level=None)
    host.execute("BEGIN IMMEDIATE")
    host.execute("CREATE TABLE sales (id TEXT)")

    started = time.monotonic()
    with ipm.open_sqlite(copy, busy_timeout=10) as app:
        opened = time.monotonic() - started
        app.publish(ORG, {"service": "pos", "action": "sale.created"}, connection=host)
        host.execute("COMMIT")

        assert len(app.events(ORG, service="pos")) == 1
    host.close()
    assert opened < 5


def test_a_mark_rewritten_as_text_is_read_as_its_bytes(tmp_path: Path) -> None:
    """A tool that turned the mark's BLOB into text broke every open."""
    copy = _copy_of_a_marked_file(tmp_path)
    with ipm.open_sqlite(copy):
        pass
    with contextlib.closing(sqlite3.connect(copy)) as conn, conn:
        conn.execute(
            "UPDATE settings SET value = CAST(value AS TEXT) WHERE name = 'file_mark'"
        )

    with ipm.open_sqlite(copy) as app:
        app.publish(ORG, {"service": "pos", "action": "sale.created"})
        voided = {"service": "pos", "action": "sale.voided"}
        with contextlib.closing(sqlite3.connect(copy)) as host, host:
            app.publish(ORG, voided, connection=host)

        assert len(app.events(ORG, service="pos")) == 2


def test_an_outbox_publish_after_another_database_was_copied_in_is_a_503(
    tmp_path: Path,
) -> None:
    """Regression: another ipm database copied into the open file in place
    (SQLite's backup API) made an outbox publish a ValueError, "another
    database", which reads as the host's mistake: the file is the
    application's own, changed under it, and a restart is the answer."""
    db = tmp_path / "shop.sqlite"
    other = tmp_path / "other.sqlite"
    with ipm.open_sqlite(other):
        pass
    with ipm.open_sqlite(db) as app:
        _copy(other, db)

        _refused_on(app, sqlite3.connect(db), StorageUnavailable, "restart ipm")


def test_an_outbox_publish_after_an_older_copy_was_put_in_is_a_503(
    tmp_path: Path,
) -> None:
    """Regression: an older copy of the application's own database put into
    the open file (it lacks the last migration's table) made an outbox
    publish raise SQLite's "no such table" as it was, where ipm's own
    connections answer the 503 that says to restart."""
    db = tmp_path / "shop.sqlite"
    old = tmp_path / "old.sqlite"
    with ipm.open_sqlite(db) as app:
        _copy(db, old)
        with sqlite3.connect(old) as older:
            for change in ("insert", "update", "delete"):
                older.execute(f"DROP TRIGGER webhooks_{change}_counted")
            older.execute("DROP TABLE webhook_generation")
            older.execute("DELETE FROM ipm_migrations WHERE name LIKE '0010%'")
        older.close()
        _copy(old, db)

        still_open = _refused_on(
            app, sqlite3.connect(db), StorageUnavailable, "restart ipm"
        )

        assert still_open
