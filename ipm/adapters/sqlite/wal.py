"""Connections in WAL mode, and the thread that keeps the WAL short.

Checkpoints (copying the WAL back into the database file, with two
fsyncs) would otherwise run inside whichever COMMIT pushes the WAL past
SQLite's autocheckpoint size, so one request in every hundred or so paid
milliseconds for everyone's writes. A daemon thread per storage
(:class:`Checkpointer`) runs them instead, a moment after writes arrive;
the request connections keep a larger autocheckpoint size only as a
safety net for when that thread falls behind (or another process writes
without one).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from ipm.domain.errors import StorageBusy
from ipm.usecases.telling import Sometimes, held_back

log = logging.getLogger(__name__)


SYNCHRONOUS = ("normal", "full")
"""``normal``: a commit survives a crash of the process, and of the machine
once the next checkpoint ran; ``full``: it survives a power cut as soon as
it returns (an fsync per commit: about 4x fewer single-event commits)."""


def connect(
    path: str,
    busy_timeout: float,
    synchronous: str = "normal",
    *,
    create: bool = False,
) -> sqlite3.Connection:
    """A connection set up as ipm uses them. Unless ``create``, a file gone
    from the path is an error, never a new empty database made there (the
    check that the file is still the one opened, then the open, leave a
    moment in which it can go)."""
    target, uri = (path, False) if create else (_must_exist(path), True)
    conn = sqlite3.connect(
        target,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        uri=uri,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Switching a new file to WAL needs it to itself, and SQLite answers
        # "locked" at once (no busy wait) while another process opens it too.
        with_busy_retry(lambda: conn.execute("PRAGMA journal_mode = WAL"), busy_timeout)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    except BaseException:
        conn.close()  # a half-set connection would hold a descriptor till GC
        raise

    return conn


def _must_exist(path: str) -> str:
    """The URI that opens ``path`` only if a file is there (mode=rw)."""
    if path == ":memory:" or path == "":
        return path if path else ":memory:"

    # As given: os.path.abspath would fold link/.. the way the system does
    # not (ipm's storage gives an absolute path, made so without folding).
    # Its bytes, escaped: a name that is not UTF-8 stays that name, and an
    # empty authority (file://) keeps a path that starts // a path.
    escaped = quote(os.fsencode(path), safe="/")
    prefix = "file://" if path.startswith("/") else "file:"

    return f"{prefix}{escaped}?mode=rw"


SAFETY_CHECKPOINT_PAGES = 10_000
"""WAL size (pages) at which a COMMIT checkpoints itself; normally the
background checkpointer has long done it (about 40 MB at 4 KiB pages)."""

_RESTART_WAIT_MS = 2000

WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""Bytes the WAL file is trimmed to whenever SQLite starts it over."""


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own thread and connection.

    ``poke()`` (after each write commit, a few hundred nanoseconds) wakes
    it; it waits ``pause`` seconds so a burst of commits is checkpointed
    once, then copies what it can without blocking readers or writers.
    The thread starts with the first poke and ends with ``stop()``; the
    sqlite3 module releases the GIL while SQLite does the I/O.

    A passive checkpoint never catches up with writers that never stop,
    and SQLite only starts the WAL over once every frame is copied back.
    So when the WAL holds more than ``restart_frames`` frames, one
    checkpoint runs while holding this process's writer lock (a pause of a
    few milliseconds for its writers); the next writer then starts the WAL
    from its beginning, and ``journal_size_limit`` trims the file. Readers
    that never pause can still pin the old frames; past eight times that
    size the locked checkpoint is a RESTART, which waits up to two seconds
    for them.
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        writers: threading.Lock,
        pause: float = 0.1,
        restart_frames: int = 4096,
        same_file: Callable[[], bool] = lambda: True,
    ) -> None:
        self._path = path
        self._same_file = same_file
        self._busy_timeout = busy_timeout
        self._writers = writers
        self._restart_frames = restart_frames
        self._pause = pause
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # Held while the thread is inside SQLite; a fork waits for it.
        self._in_sqlite = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cannot_open = Sometimes(60.0)

    def poke(self) -> None:
        if self._thread is None:
            self._start()
        self._wake.set()

    def forget_thread(self, writers: threading.Lock) -> None:
        # In a forked child the parent's thread does not exist; the next
        # poke starts one of the child's own.
        self._thread = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_sqlite = threading.Lock()
        self._writers = writers

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._busy_timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(
                target=self._run, name="ipm-wal-checkpoint", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            if not self._same_file():
                # Opening the path now would open (or create) another file.
                raise sqlite3.OperationalError("the database file was replaced")
            with self._in_sqlite:
                conn = connect(self._path, self._busy_timeout)
                # A RESTART checkpoint waits at most this long for readers.
                conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
        except (sqlite3.Error, StorageBusy) as exc:
            # The file cannot be opened just now (a full disk, no
            # descriptor, the file gone, another process holding it
            # exclusively): the next commit starts the thread again, and
            # SQLite's own checkpoints go on meanwhile.
            held = self._cannot_open.due()
            if held is not None:
                log.warning(
                    "background WAL checkpoints paused: cannot open %s (%s)%s",
                    self._path,
                    exc,
                    held_back(held),
                )
            with self._lock:
                self._thread = None
            return
        try:
            while not self._stopping:
                self._wake.wait()
                if self._stopping:
                    break
                time.sleep(self._pause)
                self._wake.clear()
                self._checkpoint(conn)
        finally:
            with self._in_sqlite:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            with self._in_sqlite:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            _, frames, _ = row
            if frames > self._restart_frames and self._writers.acquire(
                timeout=self._busy_timeout
            ):
                # Readers that never pause keep the WAL in use, so past eight
                # times the size a RESTART checkpoint waits (briefly, writers
                # held off) for the readers of the old frames to finish.
                mode = "RESTART" if frames > 8 * self._restart_frames else "PASSIVE"
                try:
                    with self._in_sqlite:
                        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
                finally:
                    self._writers.release()
        except sqlite3.Error as exc:
            # The next commit pokes again; the safety size bounds the WAL.
            log.warning("WAL checkpoint failed: %s", exc)


def with_busy_retry(action: Callable[[], object], timeout: float) -> None:
    """Run ``action``, again while SQLite answers busy or locked without
    waiting, up to ``timeout`` seconds; then StorageBusy."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise StorageBusy("the database stayed locked; try again") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
