"""Where ``ipm import`` reads and ``ipm export`` writes, and its progress bar.

Input that is not a regular file (standard input, a pipe) is first copied,
a chunk at a time, to an unnamed temporary file, so the upload knows its
size. An output is written whole or not at all, and never lands on the
database, its journals, its blobs or the input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple, TextIO

from ipm.adapters.leftovers import freshen, hold, remove_if_left
from ipm.cli._common import CannotRun, file_label, lines_text, shown
from ipm.domain.jobs import Job
from ipm.usecases.bulk import BulkOptions

log = logging.getLogger(__name__)


class Input(NamedTuple):
    """An import's bytes, ready to upload from the current position."""

    handle: IO[bytes]
    size: int
    label: str | None


@contextlib.contextmanager
def opened_input(name: str) -> Iterator[Input]:
    """FILE for reading, ``-`` being standard input, with its size.

    A pipe, a FIFO or a device has no size until it ends: it is copied to
    an unnamed temporary file first (gone when closed, even if the process
    dies). The copy stops one byte past the largest upload ipm takes, so
    an endless device is refused as too large instead of filling the disk.
    """
    with contextlib.ExitStack() as stack:
        if name == "-":
            if sys.stdin is None:
                raise CannotRun("there is no standard input to read")
            handle, label = sys.stdin.buffer, None
        else:
            handle = stack.enter_context(_opened(name))
            label = file_label(Path(name).name)[:256] or None
        if not _is_regular(handle):
            handle = stack.enter_context(_spooled(handle))
        size = os.fstat(handle.fileno()).st_size - handle.tell()

        yield Input(handle, size, label)


def _opened(name: str) -> IO[bytes]:
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"no file {name}") from None


def _is_regular(handle: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    except (OSError, ValueError):
        # No file descriptor at all (a stream object standing in for stdin).
        return False


@contextlib.contextmanager
def _spooled(source: IO[bytes]) -> Iterator[IO[bytes]]:
    limit = BulkOptions().max_upload_bytes + 1
    with tempfile.TemporaryFile(prefix="ipm-import-") as spool:
        copied = 0
        while copied < limit and (chunk := source.read(min(1 << 20, limit - copied))):
            spool.write(chunk)
            copied += len(chunk)
        spool.seek(0)

        yield spool


class Progress:
    """A one-line progress bar on a terminal: lines, bytes, rate."""

    def __init__(self, stream: TextIO, verb: str) -> None:
        self._stream = stream
        self._verb = verb
        self._started = time.monotonic()
        self._shown = 0.0
        self._width = 0
        self._lines_before = 0

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started

    def count_from(self, lines: int) -> None:
        """Lines a resumed job had read before this run: not in its rate."""
        self._lines_before = lines

    def bytes(self, done: int) -> None:
        self._show(f"{self._verb}: uploading {size_text(done)}")

    def job(self, job: Job) -> None:
        lines = job.cursor.lines
        rate = (lines - self._lines_before) / max(self.seconds, 1e-6)
        text = f"{self._verb}: {lines_text(lines)}"
        total = job.upload.size if job.upload and not job.upload.gzip else None
        if total:
            share = min(job.cursor.position / total, 1.0)
            bar = "#" * int(share * 20)
            text = f"{self._verb} [{bar:<20}] {share:4.0%} {lines_text(lines)}"
            text += f", {size_text(job.cursor.position)} of {size_text(total)}"
        if job.job_type == "import":
            text += f", {job.counters.failed:,} failed"
        self._show(f"{text}, {rate:,.0f} lines/s", force=job.terminal)

    def done(self) -> None:
        self._stream.write("\n")
        self._stream.flush()

    def note(self, line: str) -> None:
        """A line of its own above the bar, which is drawn again after it."""
        self._stream.write(f"\r{' ' * self._width}\r{line}\n")
        self._stream.flush()
        self._width = 0
        self._shown = 0.0

    def _show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < 0.1:
            return
        self._shown = now
        # Cut to the terminal's width: a longer line wraps, and each redraw
        # (\r returns to the start of the last row only) leaves a trail.
        text = text[: self._columns() - 1]
        padding = " " * max(self._width - len(text), 0)
        self._width = len(text)
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return sys.maxsize  # no terminal: nothing wraps
        # 0: a terminal that does not say its size (a fresh pseudo-terminal).
        return max(columns, 20) if columns else sys.maxsize


def say_aside(progress: Progress | None, line: str) -> None:
    """A line on stderr, above the progress bar when there is one."""
    if progress is not None:
        progress.note(line)
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def file_chunks(handle: IO[bytes], progress: Progress | None) -> Iterator[bytes]:
    done = 0
    while chunk := handle.read(1 << 20):
        done += len(chunk)
        if progress is not None:
            progress.bytes(done)
        yield chunk


def write_output(name: str, chunks: Iterable[bytes]) -> None:
    """Write ``name`` whole or not at all; ``-`` is standard output.

    A regular file (or a new one) is written beside itself and moved into
    place at the end; through a symbolic link, beside the link's target,
    which it replaces (the link stays). A FIFO or a device cannot be
    replaced, so it is written to directly.
    """
    if name == "-":
        _copy(chunks, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return

    path = Path(name)
    if path.exists() and not path.is_file():
        with open(path, "wb") as handle:
            _copy(chunks, handle)
        return

    _replace(path.resolve(), chunks)


def _replace(target: Path, chunks: Iterable[bytes]) -> None:
    # A fresh name (O_EXCL) so that no file of the user's is overwritten
    # on the way; 0o666 lets the umask decide a new file's mode.
    partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}{_PARTIAL}")
    old = target.stat() if target.exists() else None
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _writing_mode(old))
    try:
        final = None
        if old is not None:
            final = stat.S_IMODE(old.st_mode)
            if not _same_group(fd, old):
                # No group bits for a group the file was not shared with.
                final &= ~0o070
                os.fchmod(fd, _writing_mode(old) & ~0o070)
        # Held until the file is closed: a sweep passes over a file in use.
        hold(fd)
        with open(fd, "wb") as handle:
            _copy(chunks, handle)
            handle.flush()
            # On disk before it takes the name: a power cut leaves the old
            # file or the whole new one, never a renamed empty one.
            os.fsync(fd)
            freshen(fd)
        if final is not None:
            os.chmod(partial, final)  # the umask took bits of it, or writing
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)

    _sweep_partials(target)


def _writing_mode(old: os.stat_result | None) -> int:
    """The mode a partial file is made with: the umask's for a new file;
    for one replacing a file, no wider for group and others than that file
    (its new content is as private as the old, in a killed run's leftover
    too) and always the owner's to read and write (so a later run can
    sweep a leftover)."""
    if old is None:
        return 0o666

    return (stat.S_IMODE(old.st_mode) & 0o077) | 0o600


def _same_group(fd: int, old: os.stat_result) -> bool:
    """Give the partial file the replaced file's group; whether it has it."""
    if os.fstat(fd).st_gid == old.st_gid:
        return True
    try:
        os.fchown(fd, -1, old.st_gid)
    except OSError:
        return False

    return True


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut, where the system
    lets a folder be synced (best effort: the file itself is whole)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_PARTIAL = ".partial"
_STALE_PARTIAL_SECONDS = 60.0


def _sweep_partials(target: Path) -> None:
    """Remove what killed runs left beside ``target``: their ``.partial`` files.

    A run killed while writing (SIGKILL, a power cut) cannot remove its
    own. A partial file is removed only when its name is one this module
    makes for ``target``, it is a regular file with no other name (not a
    hard link to something of the user's), it has not changed for a
    minute, and no process holds its lock (a live writer takes it just
    after it creates the file). Anything that goes wrong leaves the file
    where it is.
    """
    pattern = re.compile(
        re.escape(target.name) + r"\.[0-9a-f]{8}" + re.escape(_PARTIAL)
    )
    try:
        names = [name for name in os.listdir(target.parent) if pattern.fullmatch(name)]
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            _remove_if_abandoned(target.parent / name)


def _remove_if_abandoned(path: Path) -> None:
    if remove_if_left(path, _STALE_PARTIAL_SECONDS):
        log.info("removed %s, left by an earlier run that was killed", shown(path.name))


def _copy(chunks: Iterable[bytes], handle: IO[bytes]) -> None:
    for chunk in chunks:
        handle.write(chunk)


def size_text(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000

    return f"{size:.1f} GB"


def protected_paths(db: str, *inputs: str) -> list[tuple[Path, str]]:
    """What an output must never replace: the database, its journals, inputs."""
    kept = [(Path(db), "the database")]
    # SQLite keeps its journals beside the file a link leads to, not the link.
    for name in dict.fromkeys((db, str(Path(db).resolve()))):
        kept += [(Path(f"{name}-{end}"), "a file of the database") for end in _JOURNALS]
    kept += [(Path(name), "the input file") for name in inputs if name != "-"]

    return kept


_JOURNALS = ("wal", "shm", "journal")


def standard_output_name(option: str, name: str) -> str:
    """``-`` for a name of the file standard output already writes to
    (``/dev/stdout``, ``/proc/self/fd/1``, or the very file the shell sent
    it to); ``name`` itself otherwise.

    Such a file is written through standard output, never replaced:
    replaced, it lost what ``>>`` had appended before, and the summary line
    went into it. A regular file reached through another descriptor
    (``/dev/stderr``, ``/dev/fd/3``) is refused for the same reason. A pipe
    or a device is no regular file and is written to as before.
    """
    if name == "-":
        return name
    try:
        found = os.stat(name)
    except (OSError, ValueError):
        return name  # a new file, or one check_output names the trouble of
    through_stream = stat.S_ISREG(found.st_mode) or stat.S_ISFIFO(found.st_mode)
    if through_stream and _is_open_as(found, sys.stdout):
        return "-"  # a pipe too: the summary then goes to stderr
    if not stat.S_ISREG(found.st_mode):
        return name  # a device (a terminal, /dev/null): written to as before
    if _open_here(found):
        raise CannotRun(
            f"{option} {name} is a file this command writes through another "
            "descriptor: it is not replaced (- writes to standard output)"
        )

    return name


def _is_open_as(found: os.stat_result, stream: IO[str]) -> bool:
    """Whether ``stream`` (a standard stream, perhaps closed) writes ``found``."""
    try:
        return os.path.samestat(found, os.fstat(stream.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _open_here(found: os.stat_result) -> bool:
    """Whether this process holds ``found`` open, on any descriptor: a name
    that reaches one (``/dev/stderr``, ``/dev/fd/3``, a link to either) is
    not told by its spelling. Checked before ipm opens anything of its own."""
    descriptors = [0, 1, 2]  # with neither listing, as far as is known
    for listing in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError, ValueError):
            descriptors = [int(fd) for fd in os.listdir(listing)]
            break
    for fd in descriptors:
        with contextlib.suppress(OSError):
            if os.path.samestat(found, os.fstat(fd)):
                return True

    return False


def _refuse_protected_stream(option: str, protected: list[tuple[Path, str]]) -> None:
    """Standard output sent into a file ipm must not write (``-o - >>
    ipm.sqlite``, ``--report - >> FILE`` of the input) is refused as that
    file named is."""
    try:
        out = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return
    if not stat.S_ISREG(out.st_mode):
        return
    for kept, what in protected:
        with contextlib.suppress(OSError):
            if os.path.samestat(out, os.stat(kept)):
                raise CannotRun(
                    f"{option} goes to standard output, which is {what}: it is "
                    "not written to"
                )


def check_output(
    option: str, name: str, protected: list[tuple[Path, str]], *, asked: bool = True
) -> None:
    """Refuse, before any work, an output that cannot or must not be written.

    An output the user did not ask for (``asked=False``: the import's report
    beside its input) is refused only where it must not go; one that merely
    cannot be written is told about at the end, the work done.
    """
    if name == "-":
        _refuse_protected_stream(option, protected)
        return

    path = Path(name)
    if not name or path.name in ("", ".", "..") or path.is_dir():
        raise IsADirectoryError(f"{name!r} is not a file name to write")
    try:
        resolved = path.resolve()
    except RuntimeError:  # how Python 3.11 says the links make a loop
        raise CannotRun(f"{option} {name} is a loop of symbolic links") from None
    for kept, what in protected:
        if _same_file(resolved, kept):
            raise CannotRun(f"{option} {name} is {what}: it is not overwritten")
    if asked and resolved.is_file() and _read_only(resolved):
        raise CannotRun(f"{option} {name} is read-only: it is not overwritten")
    db = protected[0][0]
    if resolved.is_relative_to(Path(f"{db}.blobs").resolve()):
        raise CannotRun(f"{option} {name} is inside the database's blobs folder")

    if not resolved.parent.is_dir():
        raise FileNotFoundError(f"no folder {resolved.parent} to write {name} in")
    if asked and (not path.exists() or path.is_file()):
        _try_writing_beside(option, name, resolved)


def _try_writing_beside(option: str, name: str, target: Path) -> None:
    """Make and remove a partial file where the output will be written, so
    that a folder nothing can be made in (read-only, immutable, /proc) is
    refused before the work rather than after it: permissions alone do not
    tell (root passes every check of them)."""
    probe = target.with_name(f"{target.name}.{secrets.token_hex(4)}{_PARTIAL}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CannotRun(f"{option} {name} cannot be written: {reason}") from None
    try:
        probe.unlink()
    except OSError as error:
        # An append-only folder: the file made there could not take the
        # output's name either.
        reason = error.strerror or type(error).__name__
        raise CannotRun(
            f"{option} {name} cannot be written: a file made beside it cannot be"
            f" removed or renamed ({reason}); {probe.name} is left there"
        ) from None


def _read_only(path: Path) -> bool:
    """Whether a file says it is not to be changed: no write bit for anyone
    (even for root, who may write it), or none for this user. Its folder
    would let a rename replace it; shell redirection would refuse it."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(path.stat().st_mode) & 0o222 == 0 or not os.access(
            path, os.W_OK
        )

    return False


def _same_file(resolved: Path, other: Path) -> bool:
    if resolved == other.resolve():
        return True
    # Another name for the same file (a hard link).
    with contextlib.suppress(OSError):
        return os.path.samefile(resolved, other)

    return False
