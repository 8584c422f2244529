"""The SQLite job repository (migration ``0004_jobs``).

A job is one row: the columns lists filter on, and the whole job as a JSON
document. A job's run leaves three more kinds of rows, all written in the
transaction of the slice that produced them: report lines, runs of line
actions (one byte per line) and, for validate-only runs, the event ids seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

import sqlite_utils

from ipm.domain.jobs import Job, ReportLine
from ipm.domain.jsoncodec import dumps, loads

_SEEN_BATCH = 500
"""Ids per lookup: well under SQLite's limit on host parameters."""


def create_jobs_tables(db: sqlite_utils.Database) -> None:
    db.table("jobs").create(
        {
            "job_id": str,
            "orgcode": str,
            "job_type": str,
            "status": str,
            "document": bytes,
        },
        pk="job_id",
        not_null={"orgcode", "job_type", "status", "document"},
    )
    db.table("jobs").create_index(["orgcode", "job_id"])
    db.table("jobs").create_index(["orgcode", "status", "job_id"])

    db.table("job_report").create(
        {
            "job_id": str,
            "line": int,
            "byte_offset": int,
            "code": str,
            "message": str,
            "pointer": str,
            "excerpt": str,
        },
        pk=("job_id", "line"),
        not_null={"byte_offset", "code", "message", "pointer", "excerpt"},
    )
    db.table("job_actions").create(
        {"job_id": str, "first_line": int, "actions": bytes},
        pk=("job_id", "first_line"),
        not_null={"actions"},
    )
    db.table("job_seen").create(
        {"job_id": str, "event_id": str, "content_hash": str},
        pk=("job_id", "event_id"),
        not_null={"content_hash"},
    )


class SQLiteJobRepository:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, job: Job) -> None:
        self._conn.execute(
            "INSERT INTO jobs (job_id, orgcode, job_type, status, document) "
            "VALUES (?, ?, ?, ?, ?)",
            (job.job_id, job.orgcode, job.job_type, job.status, _document(job)),
        )

    def get(self, orgcode: str, job_id: str) -> Job | None:
        row = self._conn.execute(
            "SELECT document FROM jobs WHERE orgcode = ? AND job_id = ?",
            (orgcode, job_id),
        ).fetchone()

        return None if row is None else Job.from_record(loads(row[0]))

    def save(self, job: Job) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, document = ? WHERE orgcode = ? AND job_id = ?",
            (job.status, _document(job), job.orgcode, job.job_id),
        )

    def find(
        self,
        orgcode: str,
        *,
        statuses: frozenset[str] | None,
        job_type: str | None,
        before: str | None,
        limit: int,
    ) -> list[Job]:
        clauses = ["orgcode = ?"]
        params: list[Any] = [orgcode]
        if before is not None:
            clauses.append("job_id < ?")
            params.append(before)
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += sorted(statuses)
        if job_type is not None:
            clauses.append("job_type = ?")
            params.append(job_type)

        rows = self._conn.execute(
            f"SELECT document FROM jobs WHERE {' AND '.join(clauses)} "
            "ORDER BY job_id DESC LIMIT ?",
            [*params, limit],
        ).fetchall()

        return [Job.from_record(loads(row[0])) for row in rows]

    def waiting(
        self, statuses: frozenset[str], after: str | None, limit: int
    ) -> list[Job]:
        marks = ", ".join("?" * len(statuses))
        rows = self._conn.execute(
            f"SELECT document FROM jobs WHERE status IN ({marks}) "
            "AND job_id > ? ORDER BY job_id LIMIT ?",
            [*sorted(statuses), after or "", limit],
        ).fetchall()

        return [Job.from_record(loads(row[0])) for row in rows]

    def add_report(self, job_id: str, lines: Sequence[ReportLine]) -> None:
        self._conn.executemany(
            "INSERT INTO job_report "
            "(job_id, line, byte_offset, code, message, pointer, excerpt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, r.line, r.offset, r.code, r.message, r.pointer, r.excerpt)
                for r in lines
            ],
        )

    def report(self, job_id: str, after_line: int, limit: int) -> list[ReportLine]:
        rows = self._conn.execute(
            "SELECT line, byte_offset, code, message, pointer, excerpt FROM job_report "
            "WHERE job_id = ? AND line > ? ORDER BY line LIMIT ?",
            (job_id, after_line, limit),
        ).fetchall()

        return [ReportLine(*row) for row in rows]

    def add_actions(self, job_id: str, first_line: int, actions: bytes) -> None:
        self._conn.execute(
            "INSERT INTO job_actions (job_id, first_line, actions) VALUES (?, ?, ?)",
            (job_id, first_line, actions),
        )

    def actions(
        self, job_id: str, after_line: int, limit: int
    ) -> list[tuple[int, bytes]]:
        rows = self._conn.execute(
            "SELECT first_line, actions FROM job_actions "
            "WHERE job_id = ? AND first_line > ? ORDER BY first_line LIMIT ?",
            (job_id, after_line, limit),
        ).fetchall()

        return [(int(first), bytes(actions)) for first, actions in rows]

    def seen(self, job_id: str, event_ids: Collection[str]) -> dict[str, str]:
        wanted = list(event_ids)
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _SEEN_BATCH):
            batch = wanted[start : start + _SEEN_BATCH]
            rows = self._conn.execute(
                "SELECT event_id, content_hash FROM job_seen WHERE job_id = ? "
                f"AND event_id IN ({', '.join('?' * len(batch))})",
                [job_id, *batch],
            )
            found.update(rows)

        return found

    def add_seen(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        self._conn.executemany(
            "INSERT INTO job_seen (job_id, event_id, content_hash) VALUES (?, ?, ?) "
            "ON CONFLICT (job_id, event_id) DO UPDATE SET "
            "content_hash = excluded.content_hash",
            [(job_id, event_id, content) for event_id, content in pairs],
        )

    def clear_run(self, job_id: str) -> None:
        for table in ("job_report", "job_actions", "job_seen"):
            self._conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))


def _document(job: Job) -> bytes:
    return dumps(job.to_record())
