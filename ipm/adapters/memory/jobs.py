"""The in-memory job repository: jobs, reports, line actions, seen ids.

A job's one mutable part, its ``filters``, is a copy of its own when
stored and again on every read (through the JSON codec, as SQLite keeps
it): a host that edits a job it gave or read changes nothing stored.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs

from ipm.domain.jobs import Job, ReportLine
from ipm.domain.jsoncodec import dumps, loads

if TYPE_CHECKING:
    from ipm.adapters.memory.core import UndoLog

K = TypeVar("K")
V = TypeVar("V")


class MemoryJobRepository:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._jobs: dict[tuple[str, str], Job] = {}
        self._reports: dict[str, dict[int, ReportLine]] = {}
        self._actions: dict[str, dict[int, bytes]] = {}
        self._seen: dict[str, dict[str, str]] = {}

    def add(self, job: Job) -> None:
        key = (job.orgcode, job.job_id)
        self._jobs[key] = _own_copy(job)
        self._undo.push(lambda: self._forget_job(key))

    def _forget_job(self, key: tuple[str, str]) -> None:
        del self._jobs[key]

    def get(self, orgcode: str, job_id: str) -> Job | None:
        job = self._jobs.get((orgcode, job_id))

        return None if job is None else _own_copy(job)

    def save(self, job: Job) -> None:
        key = (job.orgcode, job.job_id)
        old = self._jobs[key]
        self._jobs[key] = _own_copy(job)
        self._undo.push(lambda: self._jobs.__setitem__(key, old))

    def find(
        self,
        orgcode: str,
        *,
        statuses: frozenset[str] | None,
        job_type: str | None,
        before: str | None,
        limit: int,
    ) -> list[Job]:
        found = [
            job
            for (org, job_id), job in self._jobs.items()
            if org == orgcode
            and (before is None or job_id < before)
            and (statuses is None or job.status in statuses)
            and (job_type is None or job.job_type == job_type)
        ]
        found.sort(key=lambda job: job.job_id, reverse=True)

        return [_own_copy(job) for job in found[:limit]]

    def waiting(
        self, statuses: frozenset[str], after: str | None, limit: int
    ) -> list[Job]:
        found = sorted(
            (
                job
                for (_, job_id), job in self._jobs.items()
                if job.status in statuses and (after is None or job_id > after)
            ),
            key=lambda job: job.job_id,
        )

        return [_own_copy(job) for job in found[:limit]]

    def add_report(self, job_id: str, lines: Sequence[ReportLine]) -> None:
        self._add(self._reports, job_id, {line.line: line for line in lines})

    def report(self, job_id: str, after_line: int, limit: int) -> list[ReportLine]:
        return _after(self._reports.get(job_id, {}), after_line, limit)

    def add_actions(self, job_id: str, first_line: int, actions: bytes) -> None:
        self._add(self._actions, job_id, {first_line: actions})

    def actions(
        self, job_id: str, after_line: int, limit: int
    ) -> list[tuple[int, bytes]]:
        runs = self._actions.get(job_id, {})
        firsts = _after(dict(zip(runs, runs, strict=True)), after_line, limit)

        return [(first, runs[first]) for first in firsts]

    def seen(self, job_id: str, event_ids: Collection[str]) -> dict[str, str]:
        known = self._seen.get(job_id, {})

        return {i: known[i] for i in event_ids if i in known}

    def add_seen(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        self._add(self._seen, job_id, dict(pairs))

    def clear_run(self, job_id: str) -> None:
        _forget(self._undo, self._reports, job_id)
        _forget(self._undo, self._actions, job_id)
        _forget(self._undo, self._seen, job_id)

    def _add(
        self, table: dict[str, dict[K, V]], job_id: str, items: dict[K, V]
    ) -> None:
        rows = table.setdefault(job_id, {})
        replaced = {key: rows[key] for key in items if key in rows}
        added = [key for key in items if key not in rows]
        rows.update(items)
        self._undo.push(lambda: _restore(rows, added, replaced))


def _forget(undo: UndoLog, table: dict[str, V], job_id: str) -> None:
    old = table.pop(job_id, None)
    if old is not None:
        undo.push(lambda: table.__setitem__(job_id, old))


def _restore(rows: dict[K, V], added: list[K], replaced: dict[K, V]) -> None:
    for key in added:
        rows.pop(key, None)
    rows.update(replaced)


def _after(rows: dict[int, V], after: int, limit: int) -> list[V]:
    keys = sorted(rows)
    start = bisect.bisect_right(keys, after)

    return [rows[key] for key in keys[start : start + limit]]


def _own_copy(job: Job) -> Job:
    """``job`` with filters nobody else holds."""
    if job.filters is None:
        return job

    return attrs.evolve(job, filters=loads(dumps(dict(job.filters))))
