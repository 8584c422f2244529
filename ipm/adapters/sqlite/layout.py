"""The layout of ipm's SQLite file: its migrations, and the names of the
tables, indexes and triggers they make, which a host's own objects in the
same file must not take.

:func:`migrate` brings a file up to date in one transaction;
:func:`refuse_host_names` refuses, before anything is written, a file the
host made that holds one of those names.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlite_utils

from ipm.adapters.sqlite.wal import with_busy_retry
from ipm.adapters.sqlite.webhooks import COUNTING_TRIGGERS

log = logging.getLogger(__name__)

Migration = tuple[str, Callable[[sqlite_utils.Database], None]]


class SchemaTooNew(RuntimeError):
    """The database holds migrations this version of ipm does not know."""


IPM_TABLES = (
    "api_keys",
    "events",
    "ipm_migrations",
    "job_actions",
    "job_report",
    "job_seen",
    "jobs",
    "kpi_alerts",
    "kpis",
    "settings",
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_generation",
    "webhooks",
)
"""The tables ipm keeps in its file: names a host's own tables cannot take."""

IPM_TRIGGERS = COUNTING_TRIGGERS
"""The triggers ipm keeps in its file (see ``count_webhook_changes``)."""


def _clash(error: sqlite3.OperationalError) -> Exception:
    """A migration's error, saying so when a table of the host's is in the way."""
    said = str(error)
    if "already exists" not in said and "there is already a" not in said:
        return error

    return _clash_error(str(error))


def _clash_error(said: str) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(
        f"{said}: the file has a table, view, index or trigger of its own with "
        f"a name ipm uses; ipm keeps the tables {', '.join(IPM_TABLES)} and the "
        f"triggers {', '.join(IPM_TRIGGERS)} in the file, so rename the "
        "file's own or give ipm a file of its own"
    )


def refuse_host_names(
    path: str, busy_timeout: float, migrations: Sequence[Migration]
) -> None:
    """Refuse, before anything is written to it (its journal mode
    included), a file that ipm has not set up and that holds something of
    the host's under a name ipm takes. A file ipm set up is left to the
    migrations; a file SQLite cannot read is left to the open, which says
    why; a file another process keeps locked past ``busy_timeout`` is
    refused as locked, as the open would refuse it, still untouched."""
    if not os.path.isfile(path):
        return
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        in_the_way = _host_objects(conn, _names_ipm_makes(migrations))
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            raise sqlite3.OperationalError(f"{error}: {path}") from None
        return  # not a database...: the open says so
    except sqlite3.Error:
        return
    finally:
        conn.close()
    if in_the_way:
        raise _clash_error(f"the file's {in_the_way} is in the way")


def _host_objects(conn: sqlite3.Connection, names: frozenset[str]) -> str | None:
    """The first object of the file's named like one of ipm's ("table
    jobs"), unless ipm set the file up (its own ipm_migrations is there)."""
    found = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE lower(name) IN "
        f"({', '.join('?' for _ in names)})",
        sorted(names),
    ).fetchall()
    kinds = {name.lower(): kind for kind, name in found}
    if kinds.get("ipm_migrations") == "table":
        columns = {row[1] for row in conn.execute("PRAGMA table_info(ipm_migrations)")}
        if {"name", "applied_at"} <= columns:
            return None  # ipm's own: the migrations take it from here

    return " ".join(found[0]) if found else None


_MADE: dict[tuple[str, ...], frozenset[str]] = {}


def _names_ipm_makes(migrations: Sequence[Migration]) -> frozenset[str]:
    """Every table, index and trigger name the migrations make (lower case),
    found once by running them on an empty database in memory."""
    key = tuple(name for name, _ in migrations)
    if key not in _MADE:
        made: set[str] = set()
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            db = sqlite_utils.Database(conn)
            # Step by step: a name a later step drops is met by the step
            # that makes it, in a file that has not had it yet.
            for _, step in migrations:
                step(db)
                made |= {
                    row[0].lower()
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                    )
                }
        finally:
            conn.close()
        _MADE[key] = frozenset(made | {name.lower() for name in IPM_TABLES})

    return _MADE[key]


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration], busy_timeout: float
) -> list[str]:
    """Apply the migrations this file lacks, in order, in one transaction."""
    known = [name for name, _ in migrations]
    if applied_migrations(conn) == set(known):
        # Every open runs this: a current file is only read, so opening it
        # (a read-only command, a new worker) never waits behind writers.
        return []

    with_busy_retry(lambda: conn.execute("BEGIN IMMEDIATE"), busy_timeout)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ipm_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT name FROM ipm_migrations")}
        unknown = applied - set(known)
        if unknown:
            raise SchemaTooNew(
                f"database has migrations this ipm does not know: {sorted(unknown)}"
                " (a newer ipm wrote it; it is left untouched)"
            )

        db = sqlite_utils.Database(conn)
        done = []
        for name, step in migrations:
            if name in applied:
                continue
            try:
                step(db)
            except sqlite3.OperationalError as error:
                raise _clash(error) from error
            conn.execute(
                "INSERT INTO ipm_migrations (name, applied_at) VALUES (?, ?)",
                (name, datetime.now(UTC).isoformat()),
            )
            done.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

    if done and applied:
        # An upgrade of an existing file is news; a new file's schema is not
        # (ipm serve's start is one line, where it listens and on what file).
        log.info("applied %d schema migration(s): %s", len(done), ", ".join(done))
    elif done:
        log.debug("created the schema: %d migration(s)", len(done))

    return done


def applied_migrations(conn: sqlite3.Connection) -> set[str] | None:
    """The migrations the file has, read without a lock; None if unknown yet."""
    try:
        rows = conn.execute("SELECT name FROM ipm_migrations").fetchall()
    except sqlite3.OperationalError:
        return None  # a new file (no such table), or busy: the locked path decides

    return {row[0] for row in rows}
