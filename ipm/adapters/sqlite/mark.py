"""The mark that tells an ipm database file from its copies.

A connection keeps the file it opened, so a host connection opened before
the file was moved away, or swapped for a copy of itself, still names the
application's file. ipm keeps in the file (its ``settings`` table) where
it was marked, device and inode, and a random token; the first ipm to open
a file that is not where its mark says marks it afresh, so the file left
behind no longer matches (see ``SQLiteStorage._check_host_file``).
"""

from __future__ import annotations

import secrets
import sqlite3

MARK = "file_mark"
"""The settings row that tells this file from its copies (see claim_mark)."""


def claim_mark(
    conn: sqlite3.Connection,
    where: tuple[int, int] | None,
    busy_timeout: float,
    wait_ms: int = 500,
) -> tuple[bytes | None, str]:
    """The file's mark: where it was marked (device and inode) and a random
    token, made anew when the file is no longer there; and ``"here"`` when
    the mark is this file's own, else why not (``"busy"``, ``"read-only"``).

    A connection keeps the file it opened; a file moved away, or replaced
    by a copy of itself (``VACUUM INTO``, ``cp``, a restore), leaves a host's
    connection on the old file, named as ipm's. A copy holds the old mark,
    which names another inode: the first ipm to open it marks it afresh, so
    the old file's mark no longer matches (see SQLiteHostUnitOfWork). Two
    processes opening the copy at once agree: the second sees the first's
    mark under the write lock.

    Marking writes, so it waits at most ``wait_ms`` for the write lock (a
    host may open ipm inside its own write transaction) and leaves a
    read-only file as it is (see SQLiteStorage._check_host_file).
    """
    if where is None:
        return None, "here"  # an in-memory database: no other file to tell apart
    found = read_mark(conn)
    if is_here(found, where):
        return found, "here"  # every open but the first on a new or copied file

    conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        found = mark_here(conn, where)
        conn.execute("COMMIT")
    except sqlite3.OperationalError as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        code = error.sqlite_errorcode & 0xFF
        if code == sqlite3.SQLITE_READONLY:
            return read_mark(conn), "read-only"
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return read_mark(conn), "busy"
        raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    return found, "here"


def is_here(mark: bytes | None, where: tuple[int, int]) -> bool:
    """Whether ``mark`` was made for the file at ``where`` (device, inode)."""
    return mark is not None and mark.startswith(_place_of(where))


def mark_here(conn: sqlite3.Connection, where: tuple[int, int]) -> bytes:
    """The file's mark, made anew unless it is the file's own; in a write
    transaction of ``conn``, which holds the lock."""
    found = read_mark(conn)
    if is_here(found, where) and found is not None:
        return found

    made = _place_of(where) + secrets.token_hex(16).encode()
    write_mark(conn, made)
    return made


def _place_of(where: tuple[int, int]) -> bytes:
    return "{}:{}:".format(*where).encode()


def write_mark(conn: sqlite3.Connection, mark: bytes) -> None:
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (MARK, mark),
    )


def read_mark(conn: sqlite3.Connection) -> bytes | None:
    """The file's mark (see claim_mark); None if it has none."""
    try:
        row = conn.execute(
            "SELECT value FROM settings WHERE name = ?", (MARK,)
        ).fetchone()
    except sqlite3.OperationalError as error:
        if not str(error).startswith("no such table"):
            raise  # busy, interrupted, a disk fault: not an answer
        return None  # not a file ipm made

    value = None if row is None else row[0]
    if isinstance(value, str):
        return value.encode()  # a tool that rewrote the row as text
    return value if isinstance(value, bytes) else None
