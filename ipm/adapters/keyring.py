"""Keyrings: where the keys that seal webhook secrets at rest are kept.

A key that sits in the same file as the secrets it protects protects
nothing: whoever copies the database has both. :class:`FileKeyring` (the
default of :func:`ipm.open_sqlite`) therefore keeps its keys in a separate
file, ``<database>.key``, created on first use with mode 0600. Back it up
apart from the database; without it, stored secrets cannot be read and
their webhooks cannot sign. A host with a real key service plugs in its
own :class:`~ipm.ports.Keyring`. :class:`MemoryKeyring` is for tests and
in-memory applications.

Every key has an id, stored with each sealed secret, so that
:meth:`FileKeyring.rotate` can make a new key current while secrets
sealed under older keys stay readable.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import stat
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from ipm.adapters.faults import machine_faults, raise_if_machine_fault
from ipm.domain.errors import StorageUnavailable
from ipm.domain.webhooks import is_key_id

try:
    import fcntl
except ImportError:  # not POSIX: rotation is safe within one process only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

KEY_BYTES = 32
_FORMAT = 1
_MOST_FILE_BYTES = 1 << 20
"""A key file larger than this is refused unread (keys take about 60 bytes
each: a file that size holds thousands of rotations)."""


@contextlib.contextmanager
def _exclusive(lock_path: Path, open_here: set[int]) -> Iterator[None]:
    """An advisory lock across processes (POSIX); in-process only elsewhere.

    The descriptor is listed in ``open_here`` while it is open: a child
    forked meanwhile closes its copy, which would otherwise hold the lock
    for as long as the child lives.
    """
    if fcntl is None:
        yield
        return

    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    open_here.add(descriptor)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        open_here.discard(descriptor)
        os.close(descriptor)


def _new_key_id() -> str:
    return "k" + secrets.token_hex(4)


class MemoryKeyring:
    """Keys in memory only; gone with the process."""

    def __init__(self, key: bytes | None = None) -> None:
        first = key if key is not None else secrets.token_bytes(KEY_BYTES)
        _check_key(first)
        self._current = _new_key_id()
        self._keys = {self._current: first}

    def current(self) -> tuple[str, bytes]:
        return self._current, self._keys[self._current]

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def rotate(self) -> str:
        self._current = _new_key_id()
        self._keys[self._current] = secrets.token_bytes(KEY_BYTES)

        return self._current

    def __repr__(self) -> str:
        return f"MemoryKeyring(keys={len(self._keys)})"


class FileKeyring:
    """Keys in a JSON file kept apart from the database, mode 0600.

    The file is created on first use. Several processes may start at once:
    the file is written under a temporary name and linked into place, so
    exactly one of them creates it and the others read that one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._current: str | None = None
        self._keys: dict[str, bytes] = {}
        # The keys this process sealed or opened with (or made): the file
        # must keep them. Keys only read from a file may go (a wrong file,
        # put right again before any of its keys was used).
        self._used: set[str] = set()
        self._lock_files: set[int] = set()  # rotate()'s lock, while open
        _KEYRINGS.add(self)

    def current(self) -> tuple[str, bytes]:
        with self._lock, machine_faults():
            if self._current is None:
                self._load_or_create()
            elif not self.path.exists():
                # The file went away while we ran: a secret sealed now with
                # the key held here would be lost at the next start. Write
                # the keys known here back first.
                log.error("key file %s is gone; writing the keys back", self.path)
                self._restore()
            else:
                # Read again (sealing is rare): the key used must be one the
                # file holds, or what it seals is lost at the next start.
                self._reload()
            assert self._current is not None
            self._used.add(self._current)

            return self._current, self._keys[self._current]

    def get(self, key_id: str) -> bytes | None:
        with self._lock, machine_faults():
            # Another process may have rotated since we read the file. A file
            # that is gone is not made anew here: a fresh key would open
            # nothing sealed before, and would hide that the old one is lost.
            # A link to nothing is there, and said to be unreadable.
            if key_id not in self._keys and os.path.lexists(self.path):
                self._reload()
            key = self._keys.get(key_id)
            if key is not None:
                # A key that opened a secret must stay on disk too: a file
                # without it is a replaced one (see _reload).
                self._used.add(key_id)

            return key

    def rotate(self) -> str:
        """Add a new key and make it current; older keys stay readable."""
        # Read, add and replace under an exclusive lock on a sibling file, so
        # two processes rotating at once each keep the other's new key.
        lock_file = self.path.with_name(self.path.name + ".lock")
        with self._lock, machine_faults(), _exclusive(lock_file, self._lock_files):
            gone = bool(self._keys) and not os.path.lexists(self.path)
            if gone:
                # The keys held here go back with the new one, rather than a
                # new file without them.
                log.error("key file %s is gone; writing the keys back", self.path)
            kept = dict(self._keys) if gone else self._load_or_create()
            key_id = _new_key_id()
            keys = {**kept, key_id: secrets.token_bytes(KEY_BYTES)}
            temporary = self._write_temporary(key_id, keys)
            try:
                if gone:
                    # Linked, not replaced: a file another process wrote back
                    # meanwhile (without this lock) must not be overwritten.
                    os.link(temporary, self.path)
                else:
                    os.replace(temporary, self.path)
                _sync_folder(self.path.parent)
            except FileExistsError:
                raise StorageUnavailable(
                    "the key file was written back by another process during "
                    "the rotation; rotate again"
                ) from None
            finally:
                temporary.unlink(missing_ok=True)
            # Current only once it is on disk: a key that never reached the
            # file would seal secrets that no later start can open.
            self._keys, self._current = {**self._keys, **keys}, key_id
            self._used.add(key_id)
            log.info("rotated the webhook secret key in %s", self.path)

            return key_id

    def __repr__(self) -> str:
        return f"FileKeyring({str(self.path)!r})"

    def _reload(self) -> dict[str, bytes]:
        """Take the file as it is now, and return its keys, if it holds every
        key this process sealed with (same bytes): another process may have
        rotated (a key added), but a file without one of them was replaced
        (another deployment's, a backup too old), and is refused. Keys held
        here stay readable here either way."""
        keys, current = self._read()
        gone = sorted(k for k in self._used if keys.get(k) != self._keys[k])
        if gone:
            log.error(
                "key file %s no longer holds the key(s) %s this process sealed "
                "with: it was replaced; nothing is sealed until it is restored",
                self.path,
                ", ".join(gone),
            )
            raise StorageUnavailable(
                "the webhook secret key file was replaced by one without the "
                "keys sealed with before; restore it from its backup"
            )
        self._keys, self._current = {**self._keys, **keys}, current

        return keys

    def _load_or_create(self) -> dict[str, bytes]:
        if not os.path.lexists(self.path):
            self._create()

        return self._reload()

    def _create(self) -> None:
        # Nothing is kept here until the file exists: the caller then loads
        # it (ours, or the one another process linked first).
        key_id = _new_key_id()
        temporary = self._write_temporary(
            key_id, {key_id: secrets.token_bytes(KEY_BYTES)}
        )
        try:
            os.link(temporary, self.path)
            _sync_folder(self.path.parent)
            log.info("created the webhook secret key file %s", self.path)
        except FileExistsError:
            pass  # another process won the race; its file is the one
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def _restore(self) -> None:
        assert self._current is not None
        temporary = self._write_temporary(self._current, self._keys)
        try:
            os.link(temporary, self.path)
            _sync_folder(self.path.parent)
        except FileExistsError:
            # Another process wrote one meanwhile: taken if it holds ours.
            self._reload()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def _read(self) -> tuple[dict[str, bytes], str]:
        """The file's keys and current key id; a file that cannot be read
        (damaged, a folder, a link to nothing, too large) is said as such."""
        try:
            # Not blocking: a FIFO at the path would wait for a writer.
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as handle:
                mode = os.fstat(descriptor).st_mode
                if not stat.S_ISREG(mode):
                    raise ValueError("it is not a regular file")
                # At most a little more than the bound.
                data = handle.read(_MOST_FILE_BYTES + 1)
            if len(data) > _MOST_FILE_BYTES:
                raise ValueError("it is far larger than keys take")
            keys, current = _parsed(data)
        except OSError as error:
            raise_if_machine_fault(error)  # a full disk, no descriptor: passing
            why = (error.strerror or type(error).__name__).lower()
        except ValueError as error:
            why = str(error)
        else:
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("key file %s is readable by other users", self.path)
            return keys, current

        # Not a passing outage: a damaged file stays damaged. The log names
        # the file; the refusal (an answer, perhaps) does not.
        log.error("key file %s cannot be read: %s", self.path, why)
        raise StorageUnavailable(
            f"the webhook secret key file cannot be read ({why}); "
            "restore it from its backup"
        )

    def _write_temporary(self, current: str, keys: dict[str, bytes]) -> Path:
        """The key file's next content under a temporary name, on disk; a
        write that fails (a full disk) leaves no temporary file."""
        document = {
            "format": _FORMAT,
            "current": current,
            "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()},
        }
        temporary = self.path.with_name(
            f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        )
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

        return temporary


def _parsed(data: bytes) -> tuple[dict[str, bytes], str]:
    """The keys of a key file and the current one's id; a ValueError that
    says what is wrong with it, never what it holds."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    if not isinstance(document, dict) or not _is_format(document.get("format")):
        raise ValueError(f"it is not an ipm key file of format {_FORMAT}")
    listed, current = document.get("keys"), document.get("current")
    if (
        not isinstance(listed, dict)
        or not isinstance(current, str)
        or (current not in listed)
    ):
        raise ValueError("it lists no current key")
    if not all(map(is_key_id, listed)):
        raise ValueError("a key id in it is not 1-255 printable ASCII characters")
    try:
        keys = {
            str(key_id): base64.b64decode(text, validate=True)
            for key_id, text in listed.items()
        }
    except (ValueError, TypeError):
        raise ValueError("a key in it is not base64") from None
    if not all(len(key) == KEY_BYTES for key in keys.values()):
        raise ValueError(f"a key in it is not {KEY_BYTES} bytes")

    return keys, current


def _is_format(value: object) -> bool:
    return type(value) is int and value == _FORMAT


_KEYRINGS: weakref.WeakSet[FileKeyring] = weakref.WeakSet()
"""Every FileKeyring of the process, for a fork to renew their locks."""


def _renew_locks() -> None:
    # A child forked while another thread held a keyring's lock (waiting on
    # a rotation's file lock, say) would wait on it for ever; and its copy of
    # the rotation's file lock would hold every process's rotate() back.
    for keyring in list(_KEYRINGS):
        keyring._lock = threading.Lock()
        for descriptor in keyring._lock_files:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        keyring._lock_files = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX): a power cut must not
    bring back the old key file after secrets were sealed with the new."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key must be {KEY_BYTES} bytes")


def default_keyring(database_path: str | None) -> FileKeyring | MemoryKeyring:
    """The keyring an application uses unless the host passes one."""
    if database_path is None or database_path == ":memory:":
        return MemoryKeyring()

    return FileKeyring(f"{database_path}.key")
