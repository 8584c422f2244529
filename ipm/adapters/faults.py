"""Failures of the machine rather than of the request: a full disk, a file
size limit, read-only files, no file descriptors left, an I/O error.

The storage adapters turn them into :class:`StorageUnavailable` (503
``storage_unavailable``), so a client is told the server cannot keep its
request just now, instead of a 500 that reads like a bug, and the
dispatcher can wait them out as it waits out a busy database.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sqlite3
from collections.abc import Iterator
from ssl import SSLError
from urllib.error import HTTPError, URLError

from ipm.domain.errors import StorageUnavailable

_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file size limit was reached",
    errno.EROFS: "the files are read-only",
    errno.EACCES: "the files cannot be written (permissions)",
    errno.EPERM: "the files cannot be written (permissions)",
    errno.EMFILE: "the process has no file descriptors left",
    errno.ENFILE: "the system has no file descriptors left",
    errno.ENOMEM: "the machine is out of memory",
    errno.EIO: "the disk reported an I/O error",
}

# Primary result codes (the low byte of an extended one).
_SQLITE_REASONS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: (
        "the disk reported an I/O error (or a file size limit was reached)"
    ),
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_NOMEM: "the machine is out of memory",
}


def unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The refusal for ``exc`` when it is such a failure, else None."""
    reason: str | None = None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            reason = _SQLITE_REASONS.get(code & 0xFF)
    elif isinstance(exc, OSError) and not isinstance(exc, ConnectionError | SSLError):
        # (An SSLError's errno is OpenSSL's own code, not the system's.)
        reason = _OS_REASONS.get(exc.errno or 0)
    if reason is None:
        return None

    return refusal(reason)


def unreachable(exc: BaseException) -> StorageUnavailable | None:
    """The refusal for a port of the host's that reaches a service over the
    network (an object store that presigns, a key service) and could not:
    a refused or reset connection, a timeout, a failed name lookup, a
    network or host out of reach, a TLS failure (urllib's URLError over
    any of them too), or a 5xx answer of the service (urllib's HTTPError).
    Only a
    request's ports are asked: the dispatcher's transport has its own
    reading of these (a failed attempt, tried again later)."""
    if not _unreachable(exc):
        return None

    return StorageUnavailable(
        "ipm cannot reach a service it keeps files or keys with just now; "
        "nothing of this request was kept, try again later"
    )


_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
)


def _unreachable(exc: BaseException) -> bool:
    # A service that answered it is unavailable (urllib raises the 5xx).
    # As is one asking for a while (408, 429).
    if isinstance(exc, HTTPError):
        code = exc.code
        return isinstance(code, int) and (code >= 500 or code in (408, 429))
    # urllib's URLError carries the socket's error as its reason.
    if isinstance(exc, URLError) and isinstance(exc.reason, BaseException):
        return isinstance(exc.reason, OSError) and _unreachable(exc.reason)
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | SSLError):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def refusal(reason: str) -> StorageUnavailable:
    """The 503 for a machine fault, saying which."""
    return StorageUnavailable(
        f"ipm cannot store anything just now: {reason}; "
        "nothing of this request was kept, try again later"
    )


def raise_if_machine_fault(exc: BaseException) -> None:
    """Raise the refusal for ``exc`` (from it) when it is such a failure."""
    refusal = unavailable(exc)
    if refusal is not None:
        raise refusal from exc


@contextlib.contextmanager
def machine_faults() -> Iterator[None]:
    """What fails inside as :class:`StorageUnavailable` when it is such a
    failure; anything else as it was raised."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise_if_machine_fault(exc)
        raise
