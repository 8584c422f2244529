"""Temporary files of writers that are gone: when one may be removed.

A writer (the blob store's, ``ipm export``'s) writes under a temporary
name and renames the file into place once it is whole; killed on the way,
it leaves the temporary file behind. A sweep must tell such a leftover
from a file still being written, by another process or thread, in another
container sharing the volume, or on another machine. The writer holds an
exclusive lock on its file while it writes (the system lets go of it
however the process ends) and dates the file anew before it closes and
renames it; so a file is a leftover only when no process holds it and it
has not changed for a while (a date far ahead of the clock counts as
old). The process id a name may carry decides nothing: ids are reused, a
killed process lingers until reaped, and another container sees other
ids. Where locks hold on one machine only (some network file systems
mounted so) a writer elsewhere is told apart by its file's date alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: nothing is locked, and no sweep runs
    fcntl = None  # type: ignore[assignment]

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FAR_AHEAD = 24 * 3600.0


def hold(fd: int) -> None:
    """Mark the file open at ``fd`` as being written, until it is closed.

    Blocking: a sweep holds a file only while it looks at it. On a file
    system without locks nothing is held, and no sweep removes anything
    there (see :func:`remove_if_left`).
    """
    if fcntl is None:
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX)


def freshen(fd: int) -> None:
    """Date the file open at ``fd`` now, before it is closed and renamed:
    between the two the writer holds no lock, and a last byte written a
    while ago (an upload that stalled before its end) would make the file
    look like a leftover."""
    if os.utime in os.supports_fd:
        os.utime(fd)


def _open(path: str | Path) -> int:
    """``path`` opened to be looked at and locked: not following a link,
    not waiting on a FIFO; for writing when it may be (NFS emulates flock
    with locks that need it for an exclusive one), else for reading (a
    read-only leftover, or another user's in a shared folder)."""
    flags = _NO_FOLLOW | os.O_NONBLOCK
    try:
        return os.open(path, os.O_RDWR | flags)
    except PermissionError:
        return os.open(path, os.O_RDONLY | flags)
    except OSError as error:
        if error.errno != errno.EROFS:
            raise
        return os.open(path, os.O_RDONLY | flags)


def remove_if_left(path: str | Path, stale_seconds: float) -> bool:
    """Remove ``path`` when it is a leftover; whether it was removed.

    A leftover is a regular file with no other name (not a hard link to
    something else), that no process holds locked, and that has not
    changed for ``stale_seconds`` (a time more than a day ahead of the
    clock counts as a change long ago), still the file that was opened
    when it is removed.
    Where no lock can be taken (no ``flock``, or a file system that
    refuses it) nothing is removed: a live writer could not be told
    apart. Raises ``OSError`` for a file that cannot be looked at (another
    user's, a link loop).
    """
    if fcntl is None:
        return False
    try:
        fd = _open(path)
    except FileNotFoundError:
        return False  # another sweep or the writer's own rename took it
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held by a live writer, or no lock to be had
        # Read again under the lock: a writer may have dated it anew and
        # let go of it since the first look.
        age = time.time() - os.fstat(fd).st_mtime
        # A date ahead of the clock is a change now, unless it is far
        # ahead (a clock stepped back a little must not make a writer's
        # fresh file look old; one dated a day ahead is no writer's).
        if -_FAR_AHEAD < age < stale_seconds:
            return False
        if not os.path.samestat(opened, os.lstat(path)):
            return False  # renamed away and another put in its place
        os.unlink(path)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)

    return True
