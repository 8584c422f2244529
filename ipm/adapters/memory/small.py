"""Small in-memory repositories: API keys and deployment settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipm.ports import ApiKeyRecord

if TYPE_CHECKING:
    from ipm.adapters.memory.core import UndoLog


class MemoryKeyStore:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._keys: dict[str, ApiKeyRecord] = {}

    def add(self, record: ApiKeyRecord) -> None:
        self._keys[record.key_id] = record
        self._undo.push(lambda: self._forget(record.key_id))

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._keys.get(key_id)

    def list(self) -> list[ApiKeyRecord]:
        return sorted(self._keys.values(), key=lambda r: (r.created_at, r.key_id))

    def remove(self, key_id: str) -> bool:
        record = self._keys.pop(key_id, None)
        if record is None:
            return False

        self._undo.push(lambda: self._keys.__setitem__(key_id, record))
        return True

    def _forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)


class MemorySettings:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._values: dict[str, bytes] = {}

    def get(self, name: str) -> bytes | None:
        return self._values.get(name)

    def put(self, name: str, value: bytes) -> None:
        old = self._values.get(name)
        self._values[name] = value
        self._undo.push(lambda: self._restore(name, old))

    def _restore(self, name: str, old: bytes | None) -> None:
        if old is None:
            self._values.pop(name, None)
        else:
            self._values[name] = old
