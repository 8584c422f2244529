"""SQLite webhooks, deliveries and attempts (migration ``0003_webhooks``).

Claiming runs inside the caller's write unit of work, which began with
``BEGIN IMMEDIATE``: the select and the lease it sets are one step under
SQLite's write lock, so two dispatchers, in one process or several, can
never lease the same delivery. Queue times are stored as integer
microseconds since the epoch so comparisons are exact and indexable.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import sqlite_utils

from ipm.domain.jsoncodec import dumps, loads
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import (
    Delivery,
    DeliveryAttempt,
    SubscriptionFilter,
    Webhook,
    fair_share,
    in_turns,
    sealing_key_id,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_WEBHOOK_COLUMNS = (
    "webhook_id, orgcode, endpoint_url, event_filters, signing_algorithm, "
    "sealed_secret, secret_last4, created_at, updated_at, status, ordering_key, "
    "description, disabled_reason, revision, failing_since, held_until"
)
_DELIVERY_COLUMNS = (
    "delivery_id, webhook_id, orgcode, event_sequence, event_id, body, "
    "created_at, next_attempt_at, ordering_value, status, attempts, "
    "last_attempt_at, last_status, last_error, seq, lease_owner, lease_until"
)


def add_webhook_holds(db: sqlite_utils.Database) -> None:
    """A webhook can be held while its endpoint does not answer, and the
    queue is claimed webhook by webhook (each one's due deliveries in order),
    no longer oldest first across all of them."""
    db.execute("ALTER TABLE webhooks ADD COLUMN held_until INTEGER")
    db.execute("DROP INDEX IF EXISTS webhook_deliveries_due")
    db.execute(
        "CREATE INDEX webhook_deliveries_webhook_due ON webhook_deliveries "
        "(webhook_id, next_attempt_at, seq) WHERE status = 'pending'"
    )


_CHANGES = ("INSERT", "UPDATE", "DELETE")
COUNTING_TRIGGERS = tuple(f"webhooks_{change.lower()}_counted" for change in _CHANGES)
"""The triggers that draw a new generation on every change to ``webhooks``."""


def count_webhook_changes(db: sqlite_utils.Database) -> None:
    """A generation every change to ``webhooks`` draws anew (triggers, so no
    write path can forget it): the webhooks an event is queued for can then
    be kept decoded between transactions, and read again only once
    something changed them, in this process or another.

    Drawn at random (64 bits), not counted: a count comes back to numbers
    already seen, with other webhooks behind them, after a write rolled
    back or a copy restored into the file, and a cache keyed on it would
    hand those out. A random one does not (nor does the first, so two files
    migrated alike do not share one)."""
    db.execute(
        "CREATE TABLE webhook_generation "
        "(id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO webhook_generation (id, generation) VALUES (1, random())")
    for change, trigger in zip(_CHANGES, COUNTING_TRIGGERS, strict=True):
        db.execute(
            f"CREATE TRIGGER {trigger} AFTER {change} ON webhooks "
            "BEGIN UPDATE webhook_generation "
            "SET generation = random() WHERE id = 1; END"
        )


class QueuingCache:
    """Each org's queuing webhooks, decoded, with the generation they were
    read at; shared by a storage's connections. Decoding them in every
    transaction cost more than the rest of a publish (50 webhooks: a
    seventh of the publishes a second). The orgs used longest ago go first
    once it holds more than ``size`` orgs or ``webhooks`` webhooks (about
    1.4 KB each decoded)."""

    def __init__(self, size: int = 1024, webhooks: int = 20_000) -> None:
        self._size = size
        self._most = webhooks
        self._held = 0
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[int, builtins.list[Webhook]]] = (
            OrderedDict()
        )

    def get(self, orgcode: str, generation: int) -> builtins.list[Webhook] | None:
        with self._lock:
            known = self._known.get(orgcode)
            if known is None or known[0] != generation:
                return None
            self._known.move_to_end(orgcode)
            return known[1]

    def put(
        self, orgcode: str, generation: int, webhooks: builtins.list[Webhook]
    ) -> None:
        with self._lock:
            before = self._known.pop(orgcode, None)
            self._held -= 0 if before is None else len(before[1])
            self._known[orgcode] = (generation, webhooks)
            self._held += len(webhooks)
            while len(self._known) > 1 and (
                len(self._known) > self._size or self._held > self._most
            ):
                _, (_, dropped) = self._known.popitem(last=False)
                self._held -= len(dropped)


def index_deliveries_by_webhook(db: sqlite_utils.Database) -> None:
    """The per-webhook queue index 0007 now makes, for files that recorded
    0007 in its first form (a held_until column alone) and kept the global
    one: claims there read the whole queue (about 7x slower)."""
    db.execute("DROP INDEX IF EXISTS webhook_deliveries_due")
    db.execute(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_webhook_due ON "
        "webhook_deliveries (webhook_id, next_attempt_at, seq) "
        "WHERE status = 'pending'"
    )


def create_webhook_tables(db: sqlite_utils.Database) -> None:
    db.table("webhooks").create(
        {
            "webhook_id": str,
            "orgcode": str,
            "endpoint_url": str,
            "event_filters": str,
            "signing_algorithm": str,
            "sealed_secret": bytes,
            "secret_last4": str,
            "created_at": str,
            "updated_at": str,
            "status": str,
            "ordering_key": str,
            "description": str,
            "disabled_reason": str,
            "revision": str,
            "failing_since": str,
        },
        pk="webhook_id",
        not_null={
            "orgcode",
            "endpoint_url",
            "event_filters",
            "signing_algorithm",
            "sealed_secret",
            "secret_last4",
            "created_at",
            "updated_at",
            "status",
            "revision",
        },
    )
    db.table("webhooks").create_index(["orgcode", "webhook_id"])
    db.table("webhooks").create_index(["orgcode", "status", "webhook_id"])

    db.table("webhook_deliveries").create(
        {
            "seq": int,
            "delivery_id": str,
            "webhook_id": str,
            "orgcode": str,
            "event_sequence": int,
            "event_id": str,
            "body": bytes,
            "created_at": str,
            "next_attempt_at": int,
            "ordering_value": str,
            "status": str,
            "attempts": int,
            "last_attempt_at": str,
            "last_status": int,
            "last_error": str,
            "lease_owner": str,
            "lease_until": int,
        },
        pk="seq",
        not_null={
            "delivery_id",
            "webhook_id",
            "orgcode",
            "event_sequence",
            "event_id",
            "body",
            "created_at",
            "next_attempt_at",
            "status",
            "attempts",
        },
        foreign_keys=[("webhook_id", "webhooks", "webhook_id")],
    )
    deliveries = db.table("webhook_deliveries")
    deliveries.create_index(["delivery_id"], unique=True)
    deliveries.create_index(["webhook_id", "event_sequence"], unique=True)
    deliveries.create_index(["webhook_id", "status", "seq"])
    # Partial indexes keep the dispatcher's two questions ("what is due?",
    # "is an older delivery of this key still pending?") off delivered rows.
    db.execute(
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries "
        "(next_attempt_at, seq) WHERE status = 'pending'"
    )
    db.execute(
        "CREATE INDEX webhook_deliveries_key ON webhook_deliveries "
        "(webhook_id, ordering_value, seq) "
        "WHERE status = 'pending' AND ordering_value IS NOT NULL"
    )

    db.table("webhook_attempts").create(
        {
            "id": int,
            "delivery_id": str,
            "number": int,
            "kind": str,
            "started_at": str,
            "duration_ms": float,
            "status": int,
            "error": str,
            "response_excerpt": bytes,
        },
        pk="id",
        not_null={"delivery_id", "number", "kind", "started_at", "duration_ms"},
    )
    db.table("webhook_attempts").create_index(["delivery_id", "id"])


class SQLiteWebhookStore:
    """Webhooks; one instance per unit of work.

    :meth:`queuing` runs for every event recorded, so its answer is kept
    for the rest of the transaction (which holds the write lock, so no one
    else can change it); between transactions, in ``cache`` (see
    :class:`QueuingCache`), as long as the webhooks' generation has not
    moved. A write patches the org's list it changes instead of dropping
    it: reading and decoding every webhook of an org for the event that
    records the change made each create cost as much as the org has
    webhooks (60 ms at 3,000). The patched list is shared under the
    generation the write left, read inside this transaction: no other
    connection can read that generation before this one commits, and a
    rollback brings back the one before, so a list is only ever found
    under the state it was read or patched from. Every write to the
    ``webhooks`` table goes through :meth:`add` and :meth:`save`.
    """

    def __init__(
        self, conn: sqlite3.Connection, cache: QueuingCache | None = None
    ) -> None:
        self._conn = conn
        self._cache = cache
        self._queuing: dict[str, builtins.list[Webhook]] = {}

    def add(self, webhook: Webhook) -> None:
        known = self._known(webhook.orgcode)
        self._conn.execute(
            f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _webhook_row(webhook),
        )
        if known is not None and webhook.status != "disabled":
            # The newest row: last in creation order, as the read lists it.
            self._patched(webhook.orgcode, [*known, webhook])

    def save(self, webhook: Webhook) -> None:
        known = self._known(webhook.orgcode)
        row = _webhook_row(webhook)
        names = [name.strip() for name in _WEBHOOK_COLUMNS.split(",")][1:]
        assignments = ", ".join(f"{name} = ?" for name in names)
        cursor = self._conn.execute(
            f"UPDATE webhooks SET {assignments} WHERE webhook_id = ?",
            (*row[1:], row[0]),
        )
        if cursor.rowcount != 1:
            raise KeyError(f"webhook {webhook.webhook_id} does not exist")
        if known is None:
            return
        place = next(
            (n for n, w in enumerate(known) if w.webhook_id == webhook.webhook_id),
            None,
        )
        if place is not None:
            kept = [] if webhook.status == "disabled" else [webhook]
            self._patched(webhook.orgcode, [*known[:place], *kept, *known[place + 1 :]])
        elif webhook.status == "disabled":
            self._patched(webhook.orgcode, list(known))
        # Otherwise a disabled webhook came back: its place in creation
        # order is not known here, so the next read reads the org afresh.

    def _known(self, orgcode: str) -> builtins.list[Webhook] | None:
        """The org's queuing webhooks before a write, if held already
        (here or in the shared cache); the org is dropped until patched."""
        known = self._queuing.pop(orgcode, None)
        if known is None and self._cache is not None:
            known = self._cache.get(orgcode, self._generation())

        return known

    def _patched(self, orgcode: str, webhooks: builtins.list[Webhook]) -> None:
        self._queuing[orgcode] = webhooks
        if self._cache is not None:
            self._cache.put(orgcode, self._generation(), webhooks)

    def _generation(self) -> int:
        (generation,) = self._conn.execute(
            "SELECT generation FROM webhook_generation"
        ).fetchone()

        return int(generation)

    def get(self, orgcode: str, webhook_id: str) -> Webhook | None:
        row = self._conn.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks "
            "WHERE webhook_id = ? AND orgcode = ?",
            (webhook_id, orgcode),
        ).fetchone()

        return None if row is None else _webhook(row)

    def list(
        self, orgcode: str, status: str | None, after: str | None, limit: int
    ) -> builtins.list[Webhook]:
        clauses, params = ["orgcode = ?", "webhook_id > ?"], [orgcode, after or ""]
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        rows = self._conn.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE {' AND '.join(clauses)} "
            "ORDER BY webhook_id LIMIT ?",
            [*params, limit],
        ).fetchall()

        return [_webhook(row) for row in rows]

    def sealing_key_ids(self) -> builtins.set[str]:
        # Every webhook read (about 0.5 us each): asked only before a new
        # secret is sealed, which is rare.
        rows = self._conn.execute(
            "SELECT sealed_secret FROM webhooks WHERE status != 'disabled'"
        )
        found = (sealing_key_id(bytes(row[0])) for row in rows)

        return {key_id for key_id in found if key_id is not None}

    def queuing(self, orgcode: str) -> builtins.list[Webhook]:
        cached = self._queuing.get(orgcode)
        if cached is not None:
            return cached
        shared = self._cache
        generation = -1
        if shared is not None:
            generation = self._generation()
            cached = shared.get(orgcode, generation)
            if cached is not None:
                self._queuing[orgcode] = cached
                return cached

        rows = self._conn.execute(
            # In creation order, as the memory adapter lists them: the
            # deliveries of one event are numbered in that order.
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks "
            "WHERE orgcode = ? AND status != 'disabled' ORDER BY rowid",
            (orgcode,),
        ).fetchall()
        found = self._queuing[orgcode] = [_webhook(row) for row in rows]
        if shared is not None:
            shared.put(orgcode, generation, found)

        return found


_CLAIMABLE = (
    "FROM webhook_deliveries AS d"
    " WHERE d.webhook_id = {webhook} AND d.status = 'pending'"
    " AND d.next_attempt_at <= :at"
    " AND (d.lease_until IS NULL OR d.lease_until <= :at)"
    " AND (d.ordering_value IS NULL OR NOT EXISTS ("
    "  SELECT 1 FROM webhook_deliveries AS p"
    "  WHERE p.webhook_id = d.webhook_id"
    "  AND p.ordering_value = d.ordering_value"
    "  AND p.status = 'pending' AND p.seq < d.seq))"
    " ORDER BY d.next_attempt_at, d.seq"
)
"""A webhook's deliveries a claim may take now, in the order it takes them:
pending, due, not leased, and not behind a pending older change of their
key. ``{webhook}`` is filled in with the webhook's id (a column or a
parameter); ``:at`` is the claim's instant."""


class SQLiteDeliveryStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, delivery: Delivery) -> Delivery:
        row = _delivery_row(delivery)
        cursor = self._conn.execute(
            "INSERT INTO webhook_deliveries "
            "(delivery_id, webhook_id, orgcode, event_sequence, event_id, body, "
            "created_at, next_attempt_at, ordering_value, status, attempts, "
            "last_attempt_at, last_status, last_error, lease_owner, lease_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row[:14] + row[15:],
        )
        assert cursor.lastrowid is not None

        return attrs.evolve(delivery, seq=cursor.lastrowid)

    def get(self, delivery_id: str) -> Delivery | None:
        return self._one("delivery_id = ?", (delivery_id,))

    def find(self, webhook_id: str, event_sequence: int) -> Delivery | None:
        return self._one(
            "webhook_id = ? AND event_sequence = ?", (webhook_id, event_sequence)
        )

    def waits_behind(
        self, webhook_id: str, ordering_value: str, event_sequence: int
    ) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM webhook_deliveries WHERE webhook_id = ? "
            "AND ordering_value = ? AND status = 'pending' AND event_sequence < ? "
            "LIMIT 1",
            (webhook_id, ordering_value, event_sequence),
        ).fetchone()

        return row is not None

    def save(self, delivery: Delivery) -> None:
        cursor = self._conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = ?, status = ?, "
            "attempts = ?, last_attempt_at = ?, last_status = ?, last_error = ?, "
            "lease_owner = ?, lease_until = ? WHERE delivery_id = ?",
            (
                _micros(delivery.next_attempt_at),
                delivery.status,
                delivery.attempts,
                _text(delivery.last_attempt_at),
                delivery.last_status,
                delivery.last_error,
                delivery.lease_owner,
                _micros(delivery.lease_until),
                delivery.delivery_id,
            ),
        )
        if cursor.rowcount != 1:
            raise KeyError(f"delivery {delivery.delivery_id} does not exist")

    def claim(
        self,
        now: datetime,
        owner: str,
        lease_until: datetime,
        limit: int,
        skip: Collection[str] = (),
    ) -> builtins.list[Delivery]:
        at = _micros(now)
        # The webhooks with a delivery to send now, the longest waiting first,
        # each with its share of the batch: a failing one sends one at a time.
        # Only claimable deliveries count: webhooks whose due ones are all
        # leased, or wait behind an older change of their key, must not take
        # the places of webhooks that have one.
        # (MATERIALIZED: else SQLite runs the subquery again for the WHERE.)
        ready = self._conn.execute(
            "WITH waiting AS MATERIALIZED ("
            " SELECT w.webhook_id, w.failing_since IS NOT NULL AS failing,"
            "  (SELECT d.next_attempt_at"
            f" {_CLAIMABLE.format(webhook='w.webhook_id')} LIMIT 1) AS oldest"
            " FROM webhooks AS w WHERE w.status = 'active'"
            " AND (w.held_until IS NULL OR w.held_until <= :at)"
            " AND w.webhook_id NOT IN (SELECT value FROM json_each(:skip)))"
            " SELECT webhook_id, failing FROM waiting WHERE oldest IS NOT NULL"
            " ORDER BY oldest, webhook_id LIMIT :limit",
            {"at": at, "limit": limit, "skip": json.dumps(sorted(skip))},
        ).fetchall()
        if not ready:
            return []

        share = fair_share(limit, len(ready))
        queues = [
            [
                row[0]
                for row in self._conn.execute(
                    f"SELECT d.seq {_CLAIMABLE.format(webhook=':webhook')}"
                    " LIMIT :share",
                    {"webhook": webhook_id, "at": at, "share": 1 if failing else share},
                )
            ]
            for webhook_id, failing in ready
        ]
        order = {seq: n for n, seq in enumerate(in_turns(queues)[:limit])}
        if not order:
            return []

        marks = ", ".join("?" * len(order))
        rows = self._conn.execute(
            "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ? "
            f"WHERE seq IN ({marks}) RETURNING {_DELIVERY_COLUMNS}",
            (owner, _micros(lease_until), *order),
        ).fetchall()

        # RETURNING gives no order; the batch goes in turns.
        return sorted((_delivery(row) for row in rows), key=lambda d: order[d.seq])

    def add_attempt(self, attempt: DeliveryAttempt) -> None:
        self._conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, number, kind, started_at, "
            "duration_ms, status, error, response_excerpt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attempt.delivery_id,
                attempt.number,
                attempt.kind,
                format_utc(attempt.started_at),
                attempt.duration_ms,
                attempt.status,
                attempt.error,
                attempt.response_excerpt,
            ),
        )

    def attempt_counts(self, delivery_id: str) -> tuple[int, int]:
        total, dispatched = self._conn.execute(
            "SELECT count(*), coalesce(sum(kind = 'dispatch'), 0) "
            "FROM webhook_attempts WHERE delivery_id = ?",
            (delivery_id,),
        ).fetchone()

        return int(total), int(dispatched)

    def attempts(self, delivery_id: str) -> builtins.list[DeliveryAttempt]:
        rows = self._conn.execute(
            "SELECT delivery_id, number, kind, started_at, duration_ms, status, "
            "error, response_excerpt FROM webhook_attempts WHERE delivery_id = ? "
            "ORDER BY id",
            (delivery_id,),
        ).fetchall()

        return [
            DeliveryAttempt(
                delivery_id=row[0],
                number=row[1],
                kind=row[2],
                started_at=datetime.fromisoformat(row[3]),
                duration_ms=row[4],
                status=row[5],
                error=row[6],
                response_excerpt=bytes(row[7] or b""),
            )
            for row in rows
        ]

    def list(
        self, webhook_id: str, status: str | None, limit: int, after_seq: int = 0
    ) -> builtins.list[Delivery]:
        where, params = "webhook_id = ? AND seq > ?", [webhook_id, after_seq]
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        rows = self._conn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {where} "
            "ORDER BY seq LIMIT ?",
            [*params, limit],
        ).fetchall()

        return [_delivery(row) for row in rows]

    def _one(self, where: str, params: tuple[Any, ...]) -> Delivery | None:
        row = self._conn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {where}",
            params,
        ).fetchone()

        return None if row is None else _delivery(row)


# -- rows ---------------------------------------------------------------------


def _webhook_row(webhook: Webhook) -> tuple[Any, ...]:
    return (
        webhook.webhook_id,
        webhook.orgcode,
        webhook.endpoint_url,
        dumps([rule.to_wire() for rule in webhook.event_filters]).decode(),
        webhook.signing_algorithm,
        webhook.sealed_secret,
        webhook.secret_last4,
        format_utc(webhook.created_at),
        format_utc(webhook.updated_at),
        webhook.status,
        webhook.ordering_key,
        webhook.description,
        webhook.disabled_reason,
        webhook.revision,
        _text(webhook.failing_since),
        _micros(webhook.held_until),
    )


def _webhook(row: tuple[Any, ...]) -> Webhook:
    return Webhook(
        webhook_id=row[0],
        orgcode=row[1],
        endpoint_url=row[2],
        event_filters=tuple(SubscriptionFilter(**rule) for rule in loads(row[3])),
        signing_algorithm=row[4],
        sealed_secret=bytes(row[5]),
        secret_last4=row[6],
        created_at=datetime.fromisoformat(row[7]),
        updated_at=datetime.fromisoformat(row[8]),
        status=row[9],
        ordering_key=row[10],
        description=row[11],
        disabled_reason=row[12],
        revision=row[13],
        failing_since=_time(row[14]),
        held_until=None if row[15] is None else _from_micros(row[15]),
    )


def _delivery_row(delivery: Delivery) -> tuple[Any, ...]:
    return (
        delivery.delivery_id,
        delivery.webhook_id,
        delivery.orgcode,
        delivery.event_sequence,
        delivery.event_id,
        delivery.body,
        format_utc(delivery.created_at),
        _micros(delivery.next_attempt_at),
        delivery.ordering_value,
        delivery.status,
        delivery.attempts,
        _text(delivery.last_attempt_at),
        delivery.last_status,
        delivery.last_error,
        delivery.seq,
        delivery.lease_owner,
        _micros(delivery.lease_until),
    )


def _delivery(row: tuple[Any, ...]) -> Delivery:
    return Delivery(
        delivery_id=row[0],
        webhook_id=row[1],
        orgcode=row[2],
        event_sequence=row[3],
        event_id=row[4],
        body=bytes(row[5]),
        created_at=datetime.fromisoformat(row[6]),
        next_attempt_at=_from_micros(row[7]),
        ordering_value=row[8],
        status=row[9],
        attempts=row[10],
        last_attempt_at=_time(row[11]),
        last_status=row[12],
        last_error=row[13],
        seq=row[14],
        lease_owner=row[15],
        lease_until=None if row[16] is None else _from_micros(row[16]),
    )


def _micros(moment: datetime | None) -> int | None:
    if moment is None:
        return None

    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else format_utc(moment)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
