"""Blob stores: where uploads, exports and their parts live.

:class:`FileBlobStore` keeps each blob as a file under one directory (by
default beside the SQLite database, ``<db>.blobs/``). A write goes to a
temporary file that is renamed into place once complete and flushed to
disk, so a blob is either absent or whole: a worker killed in the middle
of a write leaves the previous version (or nothing), never half a file.
Its temporary file names its process, which holds it locked while it
writes; the next write of the same key removes it once no process holds
it and it has not changed for a minute, and :meth:`FileBlobStore.sweep`
(run in the background when ipm opens the store, and hourly by ``ipm
serve``) removes such leftovers under every key, since most keys (an
upload's) are never written again.
Reads stream fixed-size chunks from any offset, so memory stays flat
whatever the size of the file.

:class:`MemoryBlobStore` does the same in a dict, for tests and
:func:`ipm.open_memory`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ipm.adapters.faults import machine_faults, refusal
from ipm.adapters.leftovers import freshen, hold, remove_if_left

log = logging.getLogger(__name__)

DEFAULT_READ_SIZE = 1 << 20

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's directory."""
    if not _KEY.fullmatch(key) or ".." in key or len(key) > 512:
        raise ValueError(f"invalid blob key {key[:64]!r}")

    return key


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{12}\.part")
"""A writer's temporary file: ``.<name>.<pid>.<12 hex>.part``."""


def _sweep_leftovers(path: Path) -> None:
    """Remove what writers of ``path`` that were killed mid-write left behind.

    A killed writer cannot remove its temporary file (an export join leaves
    one as big as the export). Only files whose writer is gone are removed
    (see :data:`STALE_SECONDS`): another process or thread may be writing
    the same key now.
    """
    if os.name != "posix" or not path.parent.is_dir():
        return  # without POSIX locks a slow writer could not be told apart
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return  # a delete pruned the empty folder: nothing left to sweep
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if found and found["name"] == path.name:
            _remove_if_left(entry.path)


STALE_SECONDS = 60.0
"""A temporary file that no writer holds and that has not changed for this
long is a leftover (see :mod:`ipm.adapters.leftovers`)."""


def _remove_if_left(path: str) -> bool:
    """Remove the temporary file at ``path`` when its writer is gone (see
    :mod:`ipm.adapters.leftovers`); whether it was removed. A file that
    cannot be looked at (another user's, a link loop) is left and said in
    the log: one such file must not stop a sweep of all the others."""
    try:
        return remove_if_left(path, STALE_SECONDS)
    except OSError as error:
        log.warning("left %s in the blob folder: %s", path, error.strerror or error)
        return False


_RENAME_OPEN = os.name == "posix"
"""Whether a file may be renamed while open (not on Windows)."""


def _place(temporary: Path, path: Path) -> None:
    try:
        os.replace(temporary, path)
    except FileNotFoundError as exc:
        # The folder or the file went while the bytes were written (deleted
        # by hand, a volume unmounted): nothing was kept. (An error of the
        # caller's chunks goes on as it is.)
        raise refusal("its unfinished file or its folder vanished") from exc
    except IsADirectoryError as exc:
        # A folder made by hand where the blob goes: the operator's to clear.
        raise refusal(f"a folder stands where {path.name} goes") from exc


class FileBlobStore:
    def __init__(self, root: str | Path, *, read_size: int = DEFAULT_READ_SIZE) -> None:
        self.root = Path(root)
        self.read_size = read_size

    def write(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        path = self._path(key)
        # The writer's process id in the name tells a person reading the
        # folder whose file it was; sweeps go by lock and date alone.
        token = f"{os.getpid()}.{secrets.token_hex(6)}"
        temporary = path.with_name(f".{path.name}.{token}.part")
        with machine_faults():
            try:
                _sweep_leftovers(path)
                with _create(temporary) as handle:
                    hold(handle.fileno())
                    size, digest = _copy(chunks, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                    freshen(handle.fileno())
                    if _RENAME_OPEN:
                        # Still locked: no moment without a claim on it.
                        _place(temporary, path)
                if not _RENAME_OPEN:
                    _place(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                # A refused write (too large, cut short) leaves no folder
                # either, when it was the key's first.
                _prune(path.parent, self.root)
                raise

        return size, digest

    def sweep(self) -> int:
        """Remove every temporary file whose writer process is gone; the count.

        An upload killed mid-way (its client or worker died) leaves one as
        big as the part it had received, under a key no one writes again.
        """
        if os.name != "posix" or not self.root.is_dir():
            return 0

        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                found = _TEMPORARY.fullmatch(name)
                if found and _remove_if_left(os.path.join(folder, name)):
                    removed += 1
        for folder, _, _ in os.walk(self.root, topdown=False):
            _prune(Path(folder), self.root)
        if removed:
            log.info("removed %d unfinished blob write(s) of ended processes", removed)

        return removed

    def read(self, key: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset``; KeyError when it does not exist."""
        with machine_faults():
            try:
                # Closed by _FileChunks, read or not (hence the noqa).
                handle = open(self._path(key), "rb")  # noqa: SIM115
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                # A folder where the file was (or above it) holds no blob:
                # missing, as exists() says.
                raise KeyError(key) from None
        handle.seek(offset)

        return _FileChunks(handle, self.read_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> list[str]:
        """Every stored key starting with ``prefix`` (writes under way are
        not keys yet)."""
        base = prefix.rpartition("/")[0]
        folder = self._path(base) if base else self.root
        found = []

        def unreadable(error: OSError) -> None:
            # A folder gone meanwhile lists nothing; any other failure (no
            # descriptors) must not pass for "nothing here".
            if not isinstance(error, FileNotFoundError):
                raise error

        for parent, _, names in os.walk(folder, onerror=unreadable):
            for name in names:
                key = Path(parent, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and _KEY.fullmatch(key):
                    found.append(key)

        return found

    def delete(self, key: str) -> None:
        """Remove the blob, and its folders once they hold nothing else."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        _prune(path.parent, self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)


class MemoryBlobStore:
    def __init__(self, *, read_size: int = DEFAULT_READ_SIZE) -> None:
        self.read_size = read_size
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def write(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        check_key(key)
        parts: list[bytes] = []
        digest = hashlib.sha256()
        for chunk in chunks:
            parts.append(chunk)
            digest.update(chunk)
        data = b"".join(parts)
        with self._lock:
            self._blobs[key] = data

        return len(data), digest.hexdigest()

    def read(self, key: str, offset: int = 0) -> Iterator[bytes]:
        with self._lock:
            data = self._blobs[check_key(key)]

        return _slices(data, offset, self.read_size)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._blobs

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [key for key in self._blobs if key.startswith(prefix)]

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)


def _prune(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents below ``root`` while they are empty.

    A job's blobs share a folder; once its last one is deleted the folder
    would stay behind forever. A writer that creates a file in a folder
    being pruned gets it back (see :func:`_create`).
    """
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty, or another prune took it and goes on upward
        folder = folder.parent


def _create(path: Path) -> BinaryIO:
    """Open a new file for writing, with its folders, even while prunes run.

    A concurrent :func:`_prune` may remove a folder between its creation
    and the file's (``mkdir`` itself then fails half-way, FileNotFoundError
    or FileExistsError): the steps are tried again. Once the file exists,
    its folder is not empty and no prune takes it.
    """
    for _ in range(_CREATE_TRIES - 1):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "wb")
        except (FileNotFoundError, FileExistsError):
            continue

    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


_CREATE_TRIES = 20


def _copy(chunks: Iterable[bytes], handle: BinaryIO) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        handle.write(chunk)
        digest.update(chunk)
        size += len(chunk)

    return size, digest.hexdigest()


class _FileChunks(Iterator[bytes]):
    """An open file's chunks; :meth:`close` closes it, read or not (a
    generator's ``with`` would start only at the first chunk, so closing
    one never read left the file open)."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle, self._size = handle, size

    def __next__(self) -> bytes:
        if self._handle.closed:
            raise StopIteration
        chunk = self._handle.read(self._size)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._handle.close()


def _slices(data: bytes, offset: int, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(offset, len(data), size):
        yield bytes(view[start : start + size])
