"""Blob stores: where uploads, exports and their parts live.

:class:`FileBlobStore` keeps each blob as a file under one directory (by
default beside the SQLite database, ``<db>.blobs/``). A write goes to a
temporary file that is renamed into place once complete and flushed to
disk, so a blob is either absent or whole: a worker killed in the middle
of a write leaves the previous version (or nothing), never half a file.
Reads stream fixed-size chunks from any offset, so memory stays flat
whatever the size of the file.

:class:`MemoryBlobStore` does the same in a dict, for tests and
:func:`ipm.open_memory`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

DEFAULT_READ_SIZE = 1 << 20

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's directory."""
    if not _KEY.fullmatch(key) or ".." in key or len(key) > 512:
        raise ValueError(f"invalid blob key {key[:64]!r}")

    return key


class FileBlobStore:
    def __init__(self, root: str | Path, *, read_size: int = DEFAULT_READ_SIZE) -> None:
        self.root = Path(root)
        self.read_size = read_size

    def write(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # TODO: a writer killed mid-write leaves this file behind and nothing
        # sweeps such leftovers (each export join killed mid-way leaves one
        # as big as the export); a sweep needs a rule for writers still alive.
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        try:
            with open(temporary, "wb") as handle:
                size, digest = _copy(chunks, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

        return size, digest

    def read(self, key: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset``; KeyError when it does not exist."""
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed by _chunks
        except FileNotFoundError:
            raise KeyError(key) from None
        handle.seek(offset)

        return _chunks(handle, self.read_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

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

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)


def _copy(chunks: Iterable[bytes], handle: BinaryIO) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        handle.write(chunk)
        digest.update(chunk)
        size += len(chunk)

    return size, digest.hexdigest()


def _chunks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(size):
            yield chunk


def _slices(data: bytes, offset: int, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(offset, len(data), size):
        yield bytes(view[start : start + size])
