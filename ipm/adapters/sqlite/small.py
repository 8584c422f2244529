"""Small SQLite repositories: API keys and deployment settings."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

import sqlite_utils

from ipm.ports import ApiKeyRecord


def create_core_tables(db: sqlite_utils.Database) -> None:
    db.table("api_keys").create(
        {
            "key_id": str,
            "secret_hash": str,
            "actor": str,
            "orgs": str,
            "created_at": str,
        },
        pk="key_id",
        not_null={"secret_hash", "actor", "orgs", "created_at"},
    )
    db.table("settings").create({"name": str, "value": bytes}, pk="name")


class SQLiteKeyStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, record: ApiKeyRecord) -> None:
        self._conn.execute(
            "INSERT INTO api_keys (key_id, secret_hash, actor, orgs, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                record.key_id,
                record.secret_hash,
                record.actor,
                json.dumps(list(record.orgs)),
                record.created_at.isoformat(),
            ),
        )

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()

        return None if row is None else _key_record(row)

    def list(self) -> list[ApiKeyRecord]:
        rows = self._conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
        )

        return [_key_record(row) for row in rows]

    def remove(self, key_id: str) -> bool:
        cursor = self._conn.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))

        return cursor.rowcount == 1


_KEY_COLUMNS = "key_id, secret_hash, actor, orgs, created_at"


def _key_record(row: tuple[Any, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        secret_hash=row[1],
        actor=row[2],
        orgs=tuple(json.loads(row[3])),
        created_at=datetime.fromisoformat(row[4]),
    )


class SQLiteSettings:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, name: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM settings WHERE name = ?", (name,)
        ).fetchone()

        return None if row is None else bytes(row[0])

    def put(self, name: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
