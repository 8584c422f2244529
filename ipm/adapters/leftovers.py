"""Temporary files of writers that are gone: when one may be removed.

A writer (the blob store's, ``ipm export``'s) writes under a temporary
name and renames the file into place once it is whole; killed on the way,
it leaves the temporary file behind. A sweep must tell such a leftover
from a file still being written, by another process or thread, in another
container sharing the volume, or on another machine. The writer holds an
exclusive lock on its file while it writes (the system lets go of it
however the process ends) and dates the file anew before it closes and
renames it; so a file is a leftover only when no process holds it and it
has not changed for a while, in either direction of the clock. The
process id a name may carry decides nothing: ids are reused, a killed
process lingers until reaped, and another container sees other ids.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: nothing is locked, and no sweep runs
    fcntl = None  # type: ignore[assignment]

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


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


def remove_if_left(path: str | Path, stale_seconds: float) -> bool:
    """Remove ``path`` when it is a leftover; whether it was removed.

    A leftover is a regular file with no other name (not a hard link to
    something else), that no process holds locked, and that has not
    changed for ``stale_seconds`` (a time ahead of the clock counts as a
    change long ago), still the file that was opened when it is removed.
    Where no lock can be taken (no ``flock``, or a file system that
    refuses it) nothing is removed: a live writer could not be told
    apart. Raises ``OSError`` for a file that cannot be looked at (another
    user's, a link loop).
    """
    if fcntl is None:
        return False
    try:
        # For writing: NFS emulates flock with locks that need it for an
        # exclusive one. Not following a link, not waiting on a FIFO.
        fd = os.open(path, os.O_RDWR | _NO_FOLLOW | os.O_NONBLOCK)
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
        changed = os.fstat(fd).st_mtime
        if abs(time.time() - changed) < stale_seconds:
            return False
        if not os.path.samestat(opened, os.lstat(path)):
            return False  # renamed away and another put in its place
        os.unlink(path)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)

    return True
