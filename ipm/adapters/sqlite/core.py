"""The SQLite storage: one file, WAL, serialised writers, versioned schema.

Theory of operation. Each unit of work borrows a connection from a small
pool and gives it back when it ends, so readers run in parallel under WAL
and a server that starts a thread per request does not leave a
connection behind per thread (the pool keeps at most ``max_idle``).

A write unit of work first takes the storage's writer lock (so this
process's writers queue in Python, woken at once, rather than in SQLite's
sleeping busy handler), then opens with ``BEGIN IMMEDIATE``, which takes
SQLite's single write lock up front, so two writers never interleave and
an event's sequence (its rowid, assigned inside that lock) follows commit
order. Between processes the busy timeout makes a second writer wait
instead of failing; a short retry loop covers the few cases where SQLite
answers ``SQLITE_BUSY`` without waiting. A read unit of work opens a
deferred transaction, so all its reads see one snapshot. A forked child
starts afresh (locks, pool, checkpoint thread) on its first use.

Checkpoints run on a thread of each storage, not inside a request's
COMMIT (see :mod:`ipm.adapters.sqlite.wal`).

The schema is a list of named migrations. The names applied are recorded
in the database, so an older file is brought up to date when it is opened,
and a file written by a newer ipm (with migrations this code does not know)
is refused rather than damaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import cached_property
from pathlib import Path
from typing import Self

from ipm.adapters.faults import (
    machine_faults,
    raise_if_machine_fault,
    refusal,
    unavailable,
)
from ipm.adapters.sqlite.events import SQLiteEventStore
from ipm.adapters.sqlite.jobs import SQLiteJobRepository
from ipm.adapters.sqlite.kpis import SQLiteKpiRepository
from ipm.adapters.sqlite.layout import IPM_TABLES as IPM_TABLES
from ipm.adapters.sqlite.layout import IPM_TRIGGERS as IPM_TRIGGERS
from ipm.adapters.sqlite.layout import Migration as Migration
from ipm.adapters.sqlite.layout import SchemaTooNew as SchemaTooNew
from ipm.adapters.sqlite.layout import applied_migrations, refuse_host_names
from ipm.adapters.sqlite.layout import migrate as migrate
from ipm.adapters.sqlite.mark import claim_mark, mark_here, read_mark
from ipm.adapters.sqlite.small import SQLiteKeyStore, SQLiteSettings
from ipm.adapters.sqlite.wal import (
    SAFETY_CHECKPOINT_PAGES as SAFETY_CHECKPOINT_PAGES,
)
from ipm.adapters.sqlite.wal import SYNCHRONOUS as SYNCHRONOUS
from ipm.adapters.sqlite.wal import WAL_SIZE_LIMIT as WAL_SIZE_LIMIT
from ipm.adapters.sqlite.wal import Checkpointer as Checkpointer
from ipm.adapters.sqlite.wal import connect as connect
from ipm.adapters.sqlite.wal import with_busy_retry
from ipm.adapters.sqlite.webhooks import (
    QueuingCache,
    SQLiteDeliveryStore,
    SQLiteWebhookStore,
)
from ipm.domain.errors import (
    HostTransactionLost,
    StorageBusy,
    StorageClosed,
    StorageUnavailable,
)

log = logging.getLogger(__name__)


class SQLiteUnitOfWork:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        write: bool,
        busy_timeout: float,
        release: Callable[[sqlite3.Connection], None] | None = None,
        committed: Callable[[], None] | None = None,
        writers: threading.Lock | None = None,
        queuing: QueuingCache | None = None,
        migrations: frozenset[str] | None = None,
        begun: Callable[[sqlite3.Connection], Callable[[], None] | None] | None = None,
    ) -> None:
        self._begun = begun
        self._after_commit: Callable[[], None] | None = None
        self._migrations = migrations
        self._queuing_cache = queuing
        self._release = release
        self._on_commit = committed
        self._writers = writers if write else None
        self._holds_writers = False
        self._conn = conn
        self._write = write
        self._busy_timeout = busy_timeout
        self._committed = False
        self.connection = conn

    # Repositories are made on first use: most units of work touch two.

    @cached_property
    def events(self) -> SQLiteEventStore:
        return SQLiteEventStore(self._conn)

    @cached_property
    def keys(self) -> SQLiteKeyStore:
        return SQLiteKeyStore(self._conn)

    @cached_property
    def settings(self) -> SQLiteSettings:
        return SQLiteSettings(self._conn)

    @cached_property
    def webhooks(self) -> SQLiteWebhookStore:
        return SQLiteWebhookStore(self._conn, self._queuing_cache)

    @cached_property
    def deliveries(self) -> SQLiteDeliveryStore:
        return SQLiteDeliveryStore(self._conn)

    @cached_property
    def jobs(self) -> SQLiteJobRepository:
        return SQLiteJobRepository(self._conn)

    @cached_property
    def kpis(self) -> SQLiteKpiRepository:
        return SQLiteKpiRepository(self._conn)

    def __enter__(self) -> Self:
        if self._writers is not None:
            if not self._writers.acquire(timeout=self._busy_timeout):
                self._give_back()
                raise StorageBusy("the database stayed locked; try again")
            self._holds_writers = True
        begin = "BEGIN IMMEDIATE" if self._write else "BEGIN"
        try:
            with machine_faults():
                with_busy_retry(lambda: self._conn.execute(begin), self._busy_timeout)
        except BaseException:
            self._give_back()
            raise
        if self._begun is not None:
            try:
                with machine_faults():
                    self._after_commit = self._begun(self._conn)
            except BaseException:
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                finally:
                    self._give_back()
                raise

        return self

    def __exit__(self, *exc_info: object) -> None:
        exc = exc_info[1]
        unmigrated = False
        try:
            if not self._committed and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            unmigrated = _names_a_missing_part(exc) and self._unmigrated()
        except sqlite3.Error:
            # A disk that failed the call may fail its rollback too; SQLite
            # then rolls back when the connection is next used or closed.
            if exc is None:
                raise
        finally:
            self._give_back()
        if unmigrated and isinstance(exc, BaseException):
            # An older copy was put into the open file (SQLite's backup
            # API, a restore tool): its tables are not the ones this
            # process migrated. Not a bug to report, nor anything to retry
            # until ipm opens the file again and brings it up to date.
            raise StorageUnavailable(_UNMIGRATED) from exc
        if isinstance(exc, BaseException):
            raise_if_machine_fault(exc)

    def _unmigrated(self) -> bool:
        """Whether the file now lacks migrations it had when it was opened."""
        if self._migrations is None:
            return False
        applied = applied_migrations(self._conn)

        return applied is None or not self._migrations <= applied

    def _give_back(self) -> None:
        if self._holds_writers:
            self._holds_writers = False
            assert self._writers is not None
            self._writers.release()
        if self._release is not None:
            self._release(self._conn)
            self._release = None

    def commit(self) -> None:
        with_busy_retry(lambda: self._conn.execute("COMMIT"), self._busy_timeout)
        if self._write and self._on_commit is not None:
            self._on_commit()
        if self._after_commit is not None:
            self._after_commit()
        self._committed = True


class SQLiteHostUnitOfWork(SQLiteUnitOfWork):
    """A unit of work inside the transaction a host holds on its own connection.

    The host's commit or rollback decides for its rows and ipm's together,
    so nothing here commits or rolls back the host's transaction. ipm's
    writes sit in a savepoint within it instead: :meth:`commit` releases
    the savepoint into the host's transaction, and leaving without it rolls
    back to the savepoint. A call that fails part-way (a conflict on the
    second event of a list, a driver error between an event and its
    delivery) thus leaves nothing of itself behind, and the host's own rows
    and savepoints as they were. When Python's default mode has not opened
    the host's transaction yet, the one it would open at ipm's first write
    is opened here, and closed again if the unit of work fails.

    ipm reads rows as plain tuples of ``str``, ``int`` and ``bytes``, which
    a host may have told its connection to build otherwise
    (``row_factory``, ``text_factory``): both are set to the defaults while
    ipm works and put back when it is done, whatever the outcome.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        busy_timeout: float,
        queuing: QueuingCache | None = None,
        check_file: Callable[[sqlite3.Connection], None] | None = None,
        migrations: frozenset[str] | None = None,
    ) -> None:
        super().__init__(
            conn,
            write=True,
            busy_timeout=busy_timeout,
            queuing=queuing,
            migrations=migrations,
        )
        self._check_file = check_file
        self._settings = ExitStack()
        self._began = False
        self._changes_at_start = conn.total_changes

    def __enter__(self) -> Self:
        conn = self._conn
        with ExitStack() as settings:
            settings.enter_context(_one_thread_at_a_time(conn))
            settings.enter_context(_plain_rows(conn))
            shadows = [row[0] for row in conn.execute(_SHADOWS)]
            if shadows:
                raise ValueError(
                    f"the connection has a TEMP table or view named like ipm's "
                    f"{', '.join(shadows)}: SQLite would put ipm's rows there, "
                    "to vanish with the connection; drop it or rename it"
                )
            if not conn.in_transaction:
                # Python's default mode would open the host's transaction
                # at ipm's first write; opened now, so that the savepoint
                # is not the transaction itself (its RELEASE would commit).
                # IMMEDIATE unless the host asked for EXCLUSIVE: ipm writes.
                level = conn.isolation_level or ""
                conn.execute(f"BEGIN {level if level == 'EXCLUSIVE' else 'IMMEDIATE'}")
                self._began = True
            try:
                conn.execute(f"SAVEPOINT {_SAVEPOINT}")
            except BaseException:
                self._end_own_transaction()
                raise
            try:
                # The write lock first, waiting for it as long as the busy
                # timeout allows: ipm reads (is this event id taken?) before
                # it writes, and in a deferred transaction a writer of
                # another process committing between the two would make the
                # write fail at once, with no wait that could help.
                conn.execute(_TAKE_WRITE_LOCK)
                # Named as ipm's file is not enough: a connection keeps the
                # file it opened, which may have been renamed since and
                # another (or a copy) put under its name, which ipm opened.
                # Read under the lock, so no snapshot is taken before it.
                if self._check_file is not None:
                    self._check_file(conn)
            except BaseException as exc:
                self._take_back()
                # A host connection opened read-only (mode=ro, query_only):
                # the 503 ipm's own read-only files give, not a driver error.
                raise_if_machine_fault(exc)
                raise
            self._settings = settings.pop_all()

        return self

    def __exit__(self, *exc_info: object) -> None:
        exc = exc_info[1]
        host_had_a_transaction = not self._began
        with self._settings:
            if not self._committed:
                self._take_back()
            # (Read while ipm's row settings still hold.)
            unmigrated = _names_a_missing_part(exc) and self._unmigrated()
        if not isinstance(exc, BaseException):
            return
        if unmigrated:
            # As on ipm's own connections (see SQLiteUnitOfWork.__exit__).
            raise StorageUnavailable(_UNMIGRATED) from exc
        refusal = unavailable(exc)
        if refusal is None:
            return
        if host_had_a_transaction and not self._conn.in_transaction:
            # SQLite rolled back the host's whole transaction, its own rows
            # included: a host that commits now would commit nothing and
            # believe its rows kept. Say so plainly.
            raise HostTransactionLost(
                f"{refusal.message.removesuffix(', try again later')}; SQLite "
                "rolled back the whole transaction on this connection, so "
                "the host's own rows in it are gone too: start the "
                "transaction again, do not commit"
            ) from exc
        raise refusal from exc

    def commit(self) -> None:
        conn = self._conn
        conn.execute(f"RELEASE {_SAVEPOINT}")
        self._committed = True
        if self._began and conn.total_changes == self._changes_at_start:
            # Nothing written (an empty list, a repeated event): the
            # transaction opened here would only hold the write lock for
            # the host, where Python itself would have opened none.
            conn.execute("ROLLBACK")

    def _take_back(self) -> None:
        """Undo every write of this unit of work, and only those.

        A failure here propagates rather than being swallowed: the host
        must not mistake a half-undone call for a clean refusal and commit.
        """
        conn = self._conn
        if not conn.in_transaction:
            # SQLite rolled the whole transaction back itself (a full disk,
            # an I/O error): the host's rows went too, and __exit__ tells it
            # so (HostTransactionLost).
            return

        if self._began:
            self._end_own_transaction()
        else:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")

    def _end_own_transaction(self) -> None:
        # Opened by __enter__, so it holds nothing of the host's.
        if self._began and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


_SHADOWS = (
    "SELECT name FROM temp.sqlite_master WHERE type IN ('table', 'view') "
    f"AND lower(name) IN ({', '.join(repr(name) for name in IPM_TABLES)})"
)
"""A host's TEMP table or view named like one of ipm's tables, in any case
(SQLite's names are not case-sensitive): SQLite would read and write it
instead of ipm's for as long as the connection lives."""

_SAVEPOINT = "ipm_unit_of_work"
"""The savepoint that holds ipm's writes inside a host's transaction."""
_TAKE_WRITE_LOCK = "UPDATE ipm_migrations SET name = name WHERE 0"
"""A write that changes nothing: SQLite takes the write lock for it all the same."""


_IN_USE: dict[int, int] = {}
"""Host connections (by id) inside an ipm unit of work, and by which thread."""
_IN_USE_LOCK = threading.Lock()


@contextmanager
def _one_thread_at_a_time(conn: sqlite3.Connection) -> Iterator[None]:
    """Refuse a host connection another thread is inside an ipm call with.

    Two threads writing through one connection share its transaction and
    savepoints: a call that fails and rolls back to its savepoint would
    undo what the other thread wrote after it, and the other would be told
    it succeeded. sqlite3 asks hosts to serialise a shared connection; one
    that did not gets this error instead of a silent loss. The same thread
    may nest calls (its savepoints stack).
    """
    key, me = id(conn), threading.get_ident()
    with _IN_USE_LOCK:
        holder = _IN_USE.get(key)
        if holder is not None and holder != me:
            raise RuntimeError(
                "another thread is inside an ipm call on this connection; a "
                "sqlite3 connection is used by one thread at a time (serialise "
                "with a lock of your own, or give each thread its connection)"
            )
        _IN_USE[key] = me
    try:
        yield
    finally:
        if holder is None:
            with _IN_USE_LOCK:
                del _IN_USE[key]


@contextmanager
def _plain_rows(conn: sqlite3.Connection) -> Iterator[None]:
    """``conn`` reads plain rows (tuples, text as ``str``) inside the block.

    The host's own factories are put back on the way out, even when the
    block raises. Cursors made before it keep the factory they were made
    with, and text is decoded when a row is fetched, so the host's open
    cursors read as before.
    """
    row_factory, text_factory = conn.row_factory, conn.text_factory
    conn.row_factory, conn.text_factory = None, str
    try:
        yield
    finally:
        conn.row_factory, conn.text_factory = row_factory, text_factory


MEMORY = ":memory:"
"""The path of an in-memory database, as SQLite reads it."""


def anchored(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute without changing what it names.

    A host that changes its working folder afterwards (a daemon moving to
    /) must still open, check and keep files beside this file, not one of
    the same name elsewhere. The working folder is put in front of a
    relative path as it is: ``os.path.abspath`` would also fold
    ``link/..`` into ``.``, where the system follows the link first, and
    name another file.
    """
    text = os.fspath(path)
    if text == MEMORY:
        return text
    # SQLite opens "db/" as the file "db": so must the key and blob paths
    # beside it, and the check that the file is still the one opened.
    text = text.rstrip(os.sep) or text
    if os.path.isabs(text):
        return text

    return os.path.join(os.getcwd(), text)


def _file_identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode, None when there is no file there (an
    in-memory database, or a file gone)."""
    if path == MEMORY:
        return None  # not a file of that name in the working folder
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None

    return found.st_dev, found.st_ino


class SQLiteStorage:
    """:class:`~ipm.ports.Storage` on one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: Sequence[Migration],
        busy_timeout: float = 30.0,
        max_idle: int = 16,
        synchronous: str = "normal",
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.path = anchored(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._open: set[sqlite3.Connection] = set()
        self._admin: sqlite3.Connection | None = None
        self._closed = False
        # SQLite lets one writer in at a time; one lock per storage makes
        # this process's writers queue for it here, woken as soon as it is
        # free, instead of in SQLite's busy handler, which sleeps and polls
        # (1 ms, 2 ms, ... 100 ms) and gave 16 threads a p99 of 90 ms.
        # Writers in other processes still meet at SQLite's lock.
        self._writers = threading.Lock()
        self._queuing = QueuingCache()
        self._identity: tuple[int, int] | None = None  # known once opened
        self._mark: bytes | None = None  # likewise (see ipm.adapters.sqlite.mark)
        self._marked = True
        self._migrations = frozenset(name for name, _ in migrations)
        self._checkpointer = Checkpointer(
            self.path, busy_timeout, self._writers, same_file=self._same_file
        )
        refuse_host_names(self.path, busy_timeout, migrations)
        _STORAGES.add(self)
        try:
            conn = self._acquire(opening=True)
        except sqlite3.Error as error:
            # SQLite's own message ("unable to open database file", "file is
            # not a database") does not say which file, nor that a "disk
            # I/O error" is most often a full disk.
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            hint = ""
            if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL):
                hint = " (the disk may be full, at a file size limit or failing)"
            elif code == sqlite3.SQLITE_READONLY and not _folder_writable(self.path):
                hint = (
                    " (its folder is not writable: SQLite makes the -wal and "
                    "-shm files beside the database, even to read it)"
                )
            raise type(error)(f"{error}: {self.path}{hint}") from error
        try:
            try:
                migrate(conn, migrations, busy_timeout)
                self._identity = _file_identity(self.path)
                self._mark, claimed = claim_mark(conn, self._identity, busy_timeout)
                self._marked = claimed == "here"
            finally:
                self._give_back(conn)
        except BaseException:
            # Refused: no connection of it stays open (nor its -wal file)
            # until the collector comes by.
            self.close()
            raise

    def unit_of_work(self, *, write: bool = True) -> SQLiteUnitOfWork:
        if write:
            self._check_same_file()
        return SQLiteUnitOfWork(
            self._acquire(),
            write=write,
            busy_timeout=self._busy_timeout,
            release=self._give_back,
            committed=self._checkpointer.poke,
            writers=self._writers,
            queuing=self._queuing,
            migrations=self._migrations,
            begun=None if self._marked or not write else self._mark_within,
        )

    def _mark_within(self, conn: sqlite3.Connection) -> Callable[[], None] | None:
        """Mark, inside one of ipm's own write transactions (the lock is
        held), a file the open could not mark (see ipm.adapters.sqlite.mark); the mark
        is this storage's once the transaction commits."""
        if self._identity is None:
            return None
        try:
            found = mark_here(conn, self._identity)
        except sqlite3.Error:
            if conn.in_transaction:
                # A read-only file, another database copied in: the write
                # this transaction is for meets the same, and says so.
                return None
            raise  # SQLite ended the transaction (a full disk): not a unit

        def marked() -> None:
            self._mark, self._marked = found, True

        return marked

    def _same_file(self) -> bool:
        """Whether the path still names the file this storage opened."""
        return self._identity is None or _file_identity(self.path) == self._identity

    def _check_same_file(self) -> None:
        """Refuse writes, and new connections, once the file was deleted or
        replaced under ipm.

        Its connections still write to the file they opened: to a deleted
        one (lost at close), or over a copy moved in place (which then
        reads as malformed); a new connection would open the other file, or
        create an empty one. Each write and each new connection asks the
        file system first (a ``stat``, about a microsecond).
        """
        if self._same_file():
            return
        raise refusal(
            "its database file was deleted or replaced while it was open "
            f"({self.path}; restart ipm to use the file there now)"
        )

    def unit_of_work_on(self, conn: sqlite3.Connection) -> SQLiteHostUnitOfWork:
        """A unit of work inside a transaction the host opened on ``conn``.

        Nothing is committed here: the host's own commit or rollback
        decides for its rows and ipm's together (see
        :class:`SQLiteHostUnitOfWork`). So a connection that would commit
        each statement on its own (autocommit, no transaction open) is
        refused, as is one to another database: either would quietly break
        that promise.
        """
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError(
                f"connection must be a sqlite3.Connection, not {type(conn).__name__}"
            )
        if self._closed:
            raise StorageClosed("the storage is closed")
        try:
            conn.cursor().close()  # sqlite3 checks the thread and the state
        except sqlite3.ProgrammingError as error:
            # Closed, or made in another thread with check_same_thread on.
            raise ValueError(f"the connection cannot be used here: {error}") from None
        if not conn.in_transaction and _autocommits(conn):
            raise ValueError(
                "the connection is in autocommit mode with no transaction open: "
                "BEGIN one first, so the events commit or roll back with your rows"
            )
        if not self._is_ours(conn):
            raise ValueError(_ANOTHER_DATABASE)
        # As for ipm's own writes: a file put in place of the one this
        # storage opened is not written to (its dispatcher would never see
        # what lands there).
        self._check_same_file()

        return SQLiteHostUnitOfWork(
            conn,
            busy_timeout=self._busy_timeout,
            queuing=self._queuing,
            check_file=self._check_host_file,
            migrations=self._migrations,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_host_file(self, conn: sqlite3.Connection) -> None:
        """Refuse a host connection (holding its file's write lock) that
        reads another file than this storage's (see ipm.adapters.sqlite.mark).

        A file left unmarked at open (busy, or read-only) is marked now if
        its write lock is free at once. Free, or read-only, it cannot be the
        host's file, whose lock the host holds: the host's is another file.
        Busy, it most likely is the host's, and the marks are compared as
        they are (a copy's mark does not tell it from its original).
        """
        if not self._marked:
            own = self._acquire()
            try:
                mark, claimed = claim_mark(
                    own, self._identity, self._busy_timeout, wait_ms=0
                )
            finally:
                self._give_back(own)
            if claimed == "read-only":
                raise ValueError(_ANOTHER_DATABASE)
            if claimed == "here":
                self._mark, self._marked = mark, True
            elif read_mark(conn) != mark:
                raise ValueError(_ANOTHER_DATABASE)
            else:
                return

        if self._mark is not None and read_mark(conn) != self._mark:
            raise self._not_this_file()

    def _not_this_file(self) -> Exception:
        """Why a host connection named as ipm's file reads another one."""
        if self._mark_now() != self._mark:
            # The file ipm opened now holds another database (copied into
            # it in place): ipm's own connections read it too.
            return refusal(
                "another database was copied into its file while it was open "
                "(restart ipm to use the file as it is now)"
            )

        return ValueError(_ANOTHER_DATABASE)

    def _mark_now(self) -> bytes | None:
        """The file's mark as it is now (see ipm.adapters.sqlite.mark)."""
        conn = self._acquire()
        try:
            return read_mark(conn)
        finally:
            self._give_back(conn)

    def _is_ours(self, conn: sqlite3.Connection) -> bool:
        """Whether ``conn``'s main database is named as this storage's file
        (the host unit of work then checks it is that file: _check_host_file)."""
        with _plain_rows(conn):
            files = [row[2] for row in conn.execute("PRAGMA database_list")]
        main = files[0] if files else ""
        try:
            return bool(main) and os.path.samefile(main, self.path)
        except OSError:
            return False

    def close(self) -> None:
        """Refuse new units of work; close every connection not in use.

        A connection another thread is using is closed when that thread
        gives it back: closing it under a running statement crashes the
        process (SQLite frees what the statement still reads), and the
        call under way finishes as if close had come a moment later.
        """
        self._checkpointer.stop()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            if self._admin is not None:
                idle.append(self._admin)
                self._admin = None
            for conn in idle:
                self._open.discard(conn)
        for conn in idle:
            conn.close()

    def forget_parent(self) -> None:
        """In a forked child: start afresh from what the parent held.

        A lock held by a parent thread would stay held for good (that thread
        does not exist here), and SQLite connections must not cross a fork:
        the child opens its own and leaves the parent's untouched.
        """
        self._lock = threading.Lock()
        self._writers = threading.Lock()
        self._idle = []
        self._open = set()
        self._admin = None
        self._checkpointer.forget_thread(self._writers)

    def _connection(self) -> sqlite3.Connection:
        """One long-lived connection outside the pool, for tools and benchmarks."""
        if self._admin is None:
            self._admin = self._acquire()

        return self._admin

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def _acquire(self, *, opening: bool = False) -> sqlite3.Connection:
        """A pooled connection, or a new one. A file that cannot be opened
        is a driver error naming it while the storage opens, and a 503
        (StorageUnavailable) once it serves."""
        with self._lock:
            if self._closed:
                raise StorageClosed("the storage is closed")
            if self._idle:
                return self._idle.pop()

        if not opening:
            self._check_same_file()
        # Opening, SQLite's own error names the file (see __init__).
        with contextlib.nullcontext() if opening else machine_faults():
            conn = connect(
                self.path, self._busy_timeout, self._synchronous, create=opening
            )
        with self._lock:
            self._open.add(conn)

        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
            self._open.discard(conn)
        conn.close()


_STORAGES: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()


_held_for_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # A child forked while the checkpoint thread is inside SQLite inherits
    # SQLite's mutexes held, and hangs on its first connection: wait for
    # the thread to step out (a checkpoint takes milliseconds).
    for storage in list(_STORAGES):
        lock = storage._checkpointer._in_sqlite
        lock.acquire()
        _held_for_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork() -> None:
    _held_for_fork.clear()
    for storage in list(_STORAGES):
        storage.forget_parent()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork,
)


def _folder_writable(path: str) -> bool:
    return os.access(os.path.dirname(os.path.realpath(path)) or ".", os.W_OK)


_UNMIGRATED = (
    "the database file's tables are older than the ones ipm opened it with "
    "(an older copy put into it?); nothing of this request was kept: "
    "restart ipm to bring the file up to date"
)


def _names_a_missing_part(exc: object) -> bool:
    """Whether ``exc`` is SQLite saying a table or column is not there."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    said = str(exc)

    return said.startswith(("no such table", "no such column")) or (
        said.startswith("table ") and " has no column named " in said
    )


_ANOTHER_DATABASE = "the connection is to another database than this application's"


def _autocommits(conn: sqlite3.Connection) -> bool:
    """Whether ``conn`` commits each statement by itself when none is open."""
    mode = getattr(conn, "autocommit", None)  # Python 3.12's PEP 249 switch
    if mode is True or mode is False:
        return mode

    return conn.isolation_level is None
