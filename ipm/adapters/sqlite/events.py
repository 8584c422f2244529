"""The SQLite event store: the ``events`` table, read by keyset on sequence."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlite_utils

from ipm.domain.events import (
    NO_AUDIT,
    Audit,
    Event,
    EventFilter,
    FeedScan,
    NewEvent,
    SourceRef,
    hash_content,
)
from ipm.domain.jsoncodec import dumps, loads
from ipm.domain.timeutil import format_utc, to_utc

_COLUMNS = (
    "sequence, orgcode, event_id, service, action, op, logical_guid, "
    "channel_code, occurred_at, recorded_at, payload, audit, content_hash"
)


def create_events_table(db: sqlite_utils.Database) -> None:
    db.table("events").create(
        {
            "sequence": int,
            "orgcode": str,
            "event_id": str,
            "service": str,
            "action": str,
            "op": str,
            "logical_guid": str,
            "channel_code": str,
            "occurred_at": str,
            "recorded_at": str,
            "payload": str,
            "audit": str,
            "content_hash": str,
        },
        pk="sequence",
        not_null={
            "orgcode",
            "event_id",
            "service",
            "action",
            "op",
            "occurred_at",
            "recorded_at",
            "payload",
            "audit",
            "content_hash",
        },
    )
    table = db.table("events")
    table.create_index(["orgcode", "event_id"], unique=True)
    table.create_index(["orgcode", "sequence"])
    table.create_index(["orgcode", "service", "sequence"])
    table.create_index(["orgcode", "logical_guid", "sequence"])
    table.create_index(["orgcode", "channel_code", "sequence"])


def sparse_event_indexes(db: sqlite_utils.Database) -> None:
    """Index logical_guid and channel_code only where an event has one.

    Most events carry no channel, and ipm's own carry no channel either, so
    a full index wrote an entry (one more page per commit) that no query
    can use: a filter ``channel_code = ?`` implies IS NOT NULL, and SQLite
    then uses the partial index.
    """
    for column in ("logical_guid", "channel_code"):
        db.execute(f"DROP INDEX IF EXISTS idx_events_orgcode_{column}_sequence")
        db.execute(
            f"CREATE INDEX idx_events_{column}_present ON events "
            f"(orgcode, {column}, sequence) WHERE {column} IS NOT NULL"
        )


class SQLiteEventStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def append(self, orgcode: str, new: NewEvent, recorded_at: datetime) -> Event:
        content_hash = new.content_hash()
        cursor = self._conn.execute(
            "INSERT INTO events (orgcode, event_id, service, action, op, "
            "logical_guid, channel_code, occurred_at, recorded_at, payload, "
            "audit, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _row(orgcode, new, format_utc(recorded_at), content_hash),
        )
        assert cursor.lastrowid is not None

        return Event(
            sequence=cursor.lastrowid,
            orgcode=orgcode,
            recorded_at=recorded_at,
            content_hash=content_hash,
            new=new,
        )

    def append_many(
        self, orgcode: str, news: Sequence[NewEvent], recorded_at: datetime
    ) -> builtins.list[Event]:
        """One ``executemany`` for the lot, sequences numbered here.

        ``lastrowid`` means nothing after ``executemany``, so the sequences
        are taken from ``max(sequence)``, exactly as SQLite would pick them
        for an ``INTEGER PRIMARY KEY``. That is safe because the caller's
        write transaction holds the database's write lock: nobody else can
        append between the read and the insert.
        """
        if not news:
            return []

        first = self.last_sequence() + 1
        recorded = format_utc(recorded_at)
        events: list[Event] = []
        rows: list[tuple[Any, ...]] = []
        add_event, add_row = events.append, rows.append
        for sequence, new in enumerate(news, start=first):
            content_hash = hash_content(new, new.wire_time)
            add_row((sequence, *_row(orgcode, new, recorded, content_hash)))
            add_event(Event(sequence, orgcode, recorded_at, content_hash, new))
        self._conn.executemany(
            "INSERT INTO events (sequence, orgcode, event_id, service, action, op, "
            "logical_guid, channel_code, occurred_at, recorded_at, payload, "
            "audit, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

        return events

    def existing_ids(self, orgcode: str, event_ids: Collection[str]) -> dict[str, str]:
        wanted = builtins.list(event_ids)
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = self._conn.execute(
                "SELECT event_id, content_hash FROM events "
                f"WHERE orgcode = ? AND event_id IN ({marks})",
                (orgcode, *chunk),
            )
            found.update(rows)

        return found

    def get(self, orgcode: str, event_id: str) -> Event | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE orgcode = ? AND event_id = ?",
            (orgcode, event_id),
        ).fetchone()

        return None if row is None else _event(row)

    def list(self, orgcode: str, where: EventFilter, limit: int) -> list[Event]:
        sql, params = _select(_COLUMNS, orgcode, where, limit)
        rows = self._conn.execute(sql, params).fetchall()

        return [_event(row) for row in rows]

    def feed(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[tuple[int, bytes]]:
        """Like :meth:`list`, but each event already as its wire JSON.

        SQLite builds the JSON itself from the stored text, so a page of
        the feed never turns payloads into Python objects and back.
        """
        sql, params = _select(f"sequence, {_WIRE}", orgcode, where, limit)
        rows = self._conn.execute(sql, params).fetchall()

        return [(row[0], row[1].encode()) for row in rows]

    def feed_scan(
        self, orgcode: str, where: EventFilter, limit: int, examine: int
    ) -> FeedScan:
        if not where.sifting:
            # Every event the keyed filters find is a match: no more are
            # looked at than are returned.
            found = self.feed(orgcode, where, min(limit, examine))
            cut = len(found) == examine < limit

            return FeedScan(found, found[-1][0] if cut else None)

        keyed, params = _keyed(orgcode, where)
        sifted, sifted_params = _sifted(where)
        # The keyed filters' index gives the events to look at, at most
        # ``examine`` of them; the other filters run on those alone.
        scanned = (
            f"WITH scanned AS (SELECT sequence FROM events WHERE {keyed} "
            "ORDER BY sequence LIMIT ?) "
        )
        rows = self._conn.execute(
            f"{scanned}SELECT sequence, {_WIRE} FROM events "
            f"WHERE sequence IN (SELECT sequence FROM scanned) AND {sifted} "
            "ORDER BY sequence LIMIT ?",
            [*params, examine, *sifted_params, limit],
        ).fetchall()
        found = [(row[0], row[1].encode()) for row in rows]
        if len(found) >= limit:
            return FeedScan(found)

        looked, last = self._conn.execute(
            f"{scanned}SELECT count(*), max(sequence) FROM scanned", [*params, examine]
        ).fetchone()

        return FeedScan(found, last if looked >= examine else None)

    def last_sequence(self) -> int:
        row = self._conn.execute("SELECT max(sequence) FROM events").fetchone()

        return int(row[0] or 0)


# Well under SQLite's smallest limit on bound parameters (999).
_IDS_PER_QUERY = 500


def _row(
    orgcode: str, new: NewEvent, recorded_at: str, content_hash: str
) -> tuple[Any, ...]:
    return (
        orgcode,
        new.event_id,
        new.service,
        new.action,
        new.op,
        new.logical_guid,
        new.channel_code,
        new.wire_time,
        recorded_at,
        _payload_text(new),
        _audit_text(new),
        content_hash,
    )


def _payload_text(new: NewEvent) -> str:
    payload = new.payload
    if type(payload) is not dict:
        payload = dict(payload)

    return dumps(payload).decode()


def _audit_text(new: NewEvent) -> str:
    # An import slice gives every line without an audit the same importer's
    # Audit object: its text is made once, not once a row.
    audit, text = _last_audit[0]
    if new.audit is audit:
        return text

    text = dumps(new.audit.to_wire()).decode()
    _last_audit[0] = (new.audit, text)
    return text


_last_audit: list[tuple[Audit, str]] = [(NO_AUDIT, dumps(NO_AUDIT.to_wire()).decode())]
"""The last audit written and its text, swapped whole (threads may share it)."""


_WIRE = (
    "json_object('sequence', sequence, 'event_id', event_id, 'orgcode', orgcode, "
    "'service', service, 'action', action, 'op', op, 'logical_guid', logical_guid, "
    "'channel_code', channel_code, 'occurred_at', occurred_at, "
    "'recorded_at', recorded_at, 'payload', json(payload), 'audit', json(audit))"
)


def _select(
    columns: str, orgcode: str, where: EventFilter, limit: int
) -> tuple[str, list[Any]]:
    keyed, params = _keyed(orgcode, where)
    sifted, sifted_params = _sifted(where)
    sql = (
        f"SELECT {columns} FROM events WHERE {keyed} AND {sifted} "
        "ORDER BY sequence LIMIT ?"
    )

    return sql, [*params, *sifted_params, limit]


def _keyed(orgcode: str, where: EventFilter) -> tuple[str, list[Any]]:
    """The filters an index finds (``EventFilter.keyed``), as SQL."""
    clauses = ["orgcode = ?", "sequence > ?"]
    params: list[Any] = [orgcode, where.after_sequence]
    for column in ("service", "logical_guid", "channel_code"):
        value = getattr(where, column)
        if value is not None:
            # A record's history is a few events: with a logical_guid, its
            # index is the one to take. Without statistics SQLite may take
            # the channel's (most of an org's events), so the other
            # columns are written as expressions no index can serve.
            steered = where.logical_guid is not None and column != "logical_guid"
            clauses.append(f"+{column} = ?" if steered else f"{column} = ?")
            params.append(value)
    if where.until_sequence is not None:
        clauses.append("sequence <= ?")
        params.append(where.until_sequence)

    return " AND ".join(clauses), params


def _sifted(where: EventFilter) -> tuple[str, list[Any]]:
    """The other filters (``EventFilter.sifts``), as SQL; ``1`` for none."""
    clauses = ["1"]
    params: list[Any] = []
    if where.action_prefix is not None:
        clauses.append("substr(action, 1, ?) = ?")
        params += [len(where.action_prefix), where.action_prefix]
    if where.recorded_from is not None:
        clauses.append(f"{_SORTABLE_RECORDED_AT} >= ?")
        params.append(_sortable_time(where.recorded_from))
    if where.recorded_before is not None:
        clauses.append(f"{_SORTABLE_RECORDED_AT} < ?")
        params.append(_sortable_time(where.recorded_before))

    return " AND ".join(clauses), params


# recorded_at is stored as format_utc writes it: microseconds only when
# there are some, so "…:00Z" would sort after "…:00.5Z" as text. Padded to
# one width, the text sorts as the instants do.
_SORTABLE_RECORDED_AT = (
    "(CASE WHEN length(recorded_at) = 20 "
    "THEN substr(recorded_at, 1, 19) || '.000000Z' ELSE recorded_at END)"
)


def _sortable_time(moment: datetime) -> str:
    """``moment`` as the padded text :data:`_SORTABLE_RECORDED_AT` compares."""
    return to_utc(moment).isoformat(timespec="microseconds")[:-6] + "Z"


def _event(row: tuple[Any, ...]) -> Event:
    audit = loads(row[11])
    new = NewEvent(
        event_id=row[2],
        service=row[3],
        action=row[4],
        op=row[5],
        logical_guid=row[6],
        channel_code=row[7],
        occurred_at=datetime.fromisoformat(row[8]),
        payload=loads(row[10]),
        audit=Audit(
            actor=audit["actor"],
            context_source=audit["context_source"],
            reason=audit["reason"],
            source_refs=tuple(SourceRef(**ref) for ref in audit["source_refs"]),
        ),
    )

    return Event(
        sequence=row[0],
        orgcode=row[1],
        recorded_at=datetime.fromisoformat(row[9]),
        content_hash=row[12],
        new=new,
    )
