"""When a writer's temporary file is a leftover that a sweep may remove."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ipm.adapters import leftovers
from ipm.adapters.leftovers import hold, remove_if_left

pytestmark = pytest.mark.skipif(
    leftovers.fcntl is None, reason="no flock: nothing is ever swept"
)

STALE = 60.0


def _file(tmp_path: Path, age: float, name: str = ".x.part") -> Path:
    path = tmp_path / name
    path.write_bytes(b"half a file")
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def test_a_stale_file_no_one_holds_is_removed(tmp_path: Path) -> None:
    path = _file(tmp_path, STALE + 5)

    assert remove_if_left(path, STALE) is True
    assert not path.exists()


def test_a_fresh_file_stays(tmp_path: Path) -> None:
    path = _file(tmp_path, 1)

    assert remove_if_left(path, STALE) is False
    assert path.exists()


def test_a_file_a_writer_holds_stays_however_old(tmp_path: Path) -> None:
    path = _file(tmp_path, STALE * 100)
    fd = os.open(path, os.O_WRONLY)
    try:
        hold(fd)

        assert remove_if_left(path, STALE) is False
    finally:
        os.close(fd)
    assert path.exists()


def test_a_time_ahead_of_the_clock_is_no_sign_of_a_writer(tmp_path: Path) -> None:
    path = _file(tmp_path, -365 * 24 * 3600)

    assert remove_if_left(path, STALE) is True


def test_a_hard_link_or_a_fifo_is_never_taken_for_a_leftover(tmp_path: Path) -> None:
    linked = _file(tmp_path, STALE + 5)
    os.link(linked, tmp_path / "the user's file")
    fifo = tmp_path / ".fifo.part"
    os.mkfifo(fifo)

    assert remove_if_left(linked, STALE) is False
    assert remove_if_left(fifo, STALE) is False
    assert linked.exists() and fifo.exists()


def test_a_file_dated_anew_while_the_sweep_waited_for_its_lock_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the sweep read the file's date before it took the lock;
    a writer that dated its file anew and let go of it in between (closing
    it to rename it) lost it to a date read too early, and its write failed
    with a 503. The date is read again under the lock."""
    path = _file(tmp_path, STALE + 5)
    flock = leftovers.fcntl.flock

    def writer_finishes_first(fd: int, operation: int) -> Any:
        os.utime(path)  # the writer's freshen(), then it closes the file
        return flock(fd, operation)

    monkeypatch.setattr(leftovers.fcntl, "flock", writer_finishes_first)

    assert remove_if_left(path, STALE) is False
    assert path.exists()


def test_where_no_lock_can_be_taken_nothing_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: on NFS a shared lock-less open made flock fail (EBADF)
    and the sweep went by the date alone, so a live writer quiet for a
    minute lost its file. A lock that cannot be had leaves the file."""
    path = _file(tmp_path, STALE + 5)

    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(leftovers.fcntl, "flock", refused)

    assert remove_if_left(path, STALE) is False
    assert path.exists()


def test_a_leftover_that_cannot_be_opened_for_writing_is_still_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: opening for writing (for NFS's locks) made a read-only
    leftover, or another user's in a shared folder, stay for good, with a
    warning at every sweep. It is opened for reading then."""
    path = _file(tmp_path, STALE + 5)
    real_open = os.open

    def read_only(name: Any, flags: int, *args: Any) -> int:
        if flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", read_only)

    assert remove_if_left(path, STALE) is True
    assert not path.exists()


def test_a_clock_stepped_back_a_little_does_not_age_a_fresh_file(
    tmp_path: Path,
) -> None:
    """A file dated minutes ahead is a writer's fresh file under a clock
    stepped back; only one dated a day ahead or more is taken for old."""
    path = _file(tmp_path, -10 * 60)

    assert remove_if_left(path, STALE) is False
    assert path.exists()
