"""The SQLite KPI repository: the ``kpis`` and ``kpi_alerts`` tables.

A snapshot's primary key is its identity, (org, code, scope, bucket,
bucket_start), and the table is clustered on it (``WITHOUT ROWID``), so a
series window is one range scan in ``bucket_start`` order. Bucket starts
are stored as ``format_utc`` text, which sorts as time does because a
bucket start never has a fraction. A snapshot's other columns hold its
wire text, so a page of a series is served without building datetimes;
alert instants, which are compared, have a fixed six-digit fraction.

Values keep their JSON type: the value columns are declared BLOB, whose
affinity converts nothing, so an int stays an int and 1.0 stays a float.
Integers beyond 64 bits, which SQLite cannot hold, are stored as their
decimal text and read back as ints.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ipm.domain.alerts import Alert, NotificationState, Threshold
from ipm.domain.errors import Conflict
from ipm.domain.kpi import Kpi, Value
from ipm.domain.kpi_grid import GRID_MAX, Bucket, aligned_end
from ipm.domain.timeutil import format_utc

_INT64 = range(-(2**63), 2**63)
_KPI_NAMES = (
    "kpi_id",
    "kpi_code",
    "scope",
    "bucket",
    "bucket_start",
    "bucket_end",
    "value",
    "revision",
    "created_at",
    "updated_at",
)
_KPI_COLUMNS = ", ".join(_KPI_NAMES)
_ALERT_NAMES = (
    "alert_id",
    "alert_key",
    "kpi_code",
    "scope",
    "bucket",
    "bucket_start",
    "value",
    "comparator",
    "threshold",
    "fired",
    "notice_status",
    "notice_attempts",
    "notice_error",
    "claimed_until",
    "created_at",
    "updated_at",
)
_ALERT_COLUMNS = ", ".join(_ALERT_NAMES)


def create_kpi_tables(db: sqlite_utils.Database) -> None:
    _create_kpis(db, "kpis")
    db.table("kpi_alerts").create(
        {
            "alert_id": str,
            "orgcode": str,
            "alert_key": str,
            "kpi_code": str,
            "scope": str,
            "bucket": str,
            "bucket_start": str,
            "value": bytes,
            "comparator": str,
            "threshold": bytes,
            "fired": int,
            "notice_status": str,
            "notice_attempts": int,
            "notice_error": str,
            "claimed_until": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="alert_id",
        not_null={"orgcode", "alert_key", "kpi_code", "fired", "created_at"},
    )
    alerts = db.table("kpi_alerts")
    alerts.create_index(["orgcode", "alert_key"], unique=True)
    alerts.create_index(["notice_status", "created_at"])


def _create_kpis(db: sqlite_utils.Database, name: str) -> None:
    # Raw DDL because sqlite-utils cannot say WITHOUT ROWID. Keyed by the
    # snapshot's identity, the table is its own index: one b-tree to write
    # per snapshot, and a series window is one contiguous range of it.
    db.execute(
        f"""
        CREATE TABLE {name} (
            orgcode TEXT NOT NULL,
            kpi_code TEXT NOT NULL,
            scope TEXT NOT NULL,
            bucket TEXT NOT NULL,
            bucket_start TEXT NOT NULL,
            bucket_end TEXT NOT NULL,
            kpi_id TEXT NOT NULL,
            value BLOB,
            revision TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (orgcode, kpi_code, scope, bucket, bucket_start)
        ) WITHOUT ROWID
        """
    )


def cluster_kpis(db: sqlite_utils.Database) -> None:
    """Rebuild a ``kpis`` table of the first KPI schema in today's form.

    The first form (a rowid table without ``bucket_end``, instants with a
    fixed six-digit fraction) was replaced in place, so a file made by
    that version passed ``0005_kpis`` with it and could not read or write
    a snapshot afterwards. Its rows are copied with their end worked out
    from the bucket and their instants written as the wire writes them;
    a file with today's table is left alone.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(kpis)").fetchall()}
    if "bucket_end" in columns:
        return

    _create_kpis(db, "kpis_clustered")
    rows = db.execute(
        "SELECT orgcode, kpi_code, scope, bucket, bucket_start, kpi_id, value, "
        "revision, created_at, updated_at FROM kpis"
    )
    db.conn.executemany(
        "INSERT INTO kpis_clustered (orgcode, kpi_code, scope, bucket, "
        "bucket_start, bucket_end, kpi_id, value, revision, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (_clustered(row) for row in rows),
    )
    db.execute("DROP TABLE kpis")
    db.execute("ALTER TABLE kpis_clustered RENAME TO kpis")


def _clustered(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A first-form row as today's: its end added, its instants rewritten."""
    *key, start, kpi_id, value, revision, created, updated = row
    end = aligned_end(key[3], datetime.fromisoformat(start))

    return (
        *key,
        start,
        format_utc(end),
        kpi_id,
        value,
        revision,
        format_utc(datetime.fromisoformat(created)),
        format_utc(datetime.fromisoformat(updated)),
    )


class SQLiteKpiRepository:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # -- snapshots ---------------------------------------------------------

    def get(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        bucket_start: datetime,
    ) -> Kpi | None:
        row = self._conn.execute(
            f"SELECT {_KPI_COLUMNS} FROM kpis WHERE orgcode = ? AND kpi_code = ? "
            "AND scope = ? AND bucket = ? AND bucket_start = ?",
            (orgcode, kpi_code, scope, bucket, format_utc(bucket_start)),
        ).fetchone()

        return None if row is None else _kpi(row)

    def add(self, orgcode: str, kpi: Kpi) -> None:
        if not self.add_new(orgcode, kpi):
            raise Conflict(f"KPI snapshot {kpi.kpi_code} already exists")

    def add_new(self, orgcode: str, kpi: Kpi) -> bool:
        wire = kpi.to_wire()
        cursor = self._conn.execute(
            f"INSERT INTO kpis (orgcode, {_KPI_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
            "(orgcode, kpi_code, scope, bucket, bucket_start) DO NOTHING",
            (orgcode, *(_to_sql(wire[name]) for name in _KPI_NAMES)),
        )

        return cursor.rowcount == 1

    def update(self, orgcode: str, kpi: Kpi) -> None:
        self._conn.execute(
            "UPDATE kpis SET value = ?, revision = ?, updated_at = ? "
            "WHERE orgcode = ? AND kpi_code = ? AND scope = ? AND bucket = ? "
            "AND bucket_start = ?",
            (
                _to_sql(kpi.value),
                kpi.revision,
                format_utc(kpi.updated_at),
                orgcode,
                kpi.kpi_code,
                kpi.scope,
                kpi.bucket,
                format_utc(kpi.bucket_start),
            ),
        )

    def series(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[Kpi]:
        rows = self._window(orgcode, kpi_code, scope, bucket, window, limit)

        return [_kpi(row) for row in rows]

    def series_wire(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[dict[str, Any]]:
        # The columns hold the wire text already: no datetime is built.
        rows = self._window(orgcode, kpi_code, scope, bucket, window, limit)

        return [
            {**dict(zip(_KPI_NAMES, row, strict=True)), "value": _from_sql(row[6])}
            for row in rows
        ]

    def _window(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[tuple[Any, ...]]:
        lo, hi = window
        rows: list[tuple[Any, ...]] = self._conn.execute(
            f"SELECT {_KPI_COLUMNS} FROM kpis WHERE orgcode = ? AND kpi_code = ? "
            "AND scope = ? AND bucket = ? AND bucket_start >= ? AND bucket_start < ? "
            "ORDER BY bucket_start LIMIT ?",
            (orgcode, kpi_code, scope, bucket, _bound(lo), _bound(hi), limit),
        ).fetchall()

        return rows

    # -- alerts ------------------------------------------------------------

    def get_alert(self, orgcode: str, alert_id: str) -> Alert | None:
        return self._one_alert("orgcode = ? AND alert_id = ?", (orgcode, alert_id))

    def alert_by_key(self, orgcode: str, alert_key: str) -> Alert | None:
        return self._one_alert("orgcode = ? AND alert_key = ?", (orgcode, alert_key))

    def add_alert(self, orgcode: str, alert: Alert) -> None:
        names = ", ".join(f":{name}" for name in _ALERT_NAMES)
        try:
            self._conn.execute(
                f"INSERT INTO kpi_alerts (orgcode, {_ALERT_COLUMNS}) "
                f"VALUES (:orgcode, {names})",
                {"orgcode": orgcode, **_alert_row(alert)},
            )
        except sqlite3.IntegrityError as error:
            raise Conflict("an alert with this key already exists") from error

    def update_alert(self, orgcode: str, alert: Alert) -> None:
        self._conn.execute(
            "UPDATE kpi_alerts SET value = :value, fired = :fired, "
            "notice_status = :notice_status, notice_attempts = :notice_attempts, "
            "notice_error = :notice_error, claimed_until = :claimed_until, "
            "updated_at = :updated_at "
            "WHERE orgcode = :orgcode AND alert_id = :alert_id",
            {"orgcode": orgcode, **_alert_row(alert)},
        )

    def alerts_due(self, now: datetime, limit: int) -> list[tuple[str, Alert]]:
        rows = self._conn.execute(
            f"SELECT orgcode, {_ALERT_COLUMNS} FROM kpi_alerts "
            "WHERE notice_status = 'pending' "
            "AND (claimed_until IS NULL OR claimed_until <= ?) "
            "ORDER BY created_at, alert_id LIMIT ?",
            (_stamp(now), limit),
        ).fetchall()

        return [(row[0], _alert(row[1:])) for row in rows]

    def _one_alert(self, where: str, params: tuple[str, str]) -> Alert | None:
        row = self._conn.execute(
            f"SELECT {_ALERT_COLUMNS} FROM kpi_alerts WHERE {where}", params
        ).fetchone()

        return None if row is None else _alert(row)


# -- rows --------------------------------------------------------------------


def _kpi(row: tuple[Any, ...]) -> Kpi:
    return Kpi(
        kpi_id=row[0],
        kpi_code=row[1],
        scope=row[2],
        bucket=row[3],
        bucket_start=datetime.fromisoformat(row[4]),
        value=_from_sql(row[6]),
        revision=row[7],
        created_at=datetime.fromisoformat(row[8]),
        updated_at=datetime.fromisoformat(row[9]),
    )


def _alert_row(alert: Alert) -> dict[str, Any]:
    notice = alert.notification
    claimed = notice.claimed_until if notice else None

    return {
        "alert_id": alert.alert_id,
        "alert_key": alert.alert_key,
        "kpi_code": alert.kpi_code,
        "scope": alert.scope,
        "bucket": alert.bucket,
        "bucket_start": format_utc(alert.bucket_start),
        "value": _to_sql(alert.value),
        "comparator": alert.threshold.comparator,
        "threshold": _to_sql(alert.threshold.value),
        "fired": int(alert.fired),
        "notice_status": notice.status if notice else None,
        "notice_attempts": notice.attempts if notice else 0,
        "notice_error": notice.error if notice else None,
        "claimed_until": None if claimed is None else _stamp(claimed),
        "created_at": _stamp(alert.created_at),
        "updated_at": _stamp(alert.updated_at),
    }


def _alert(row: tuple[Any, ...]) -> Alert:
    notice = None
    if row[10] is not None:
        claimed = None if row[13] is None else datetime.fromisoformat(row[13])
        notice = NotificationState(row[10], row[11], row[12], claimed)

    return Alert(
        alert_id=row[0],
        alert_key=row[1],
        kpi_code=row[2],
        scope=row[3],
        bucket=row[4],
        bucket_start=datetime.fromisoformat(row[5]),
        value=_from_sql(row[6]),
        threshold=Threshold(row[7], _from_sql(row[8])),
        fired=bool(row[9]),
        notification=notice,
        created_at=datetime.fromisoformat(row[14]),
        updated_at=datetime.fromisoformat(row[15]),
    )


def _to_sql(value: Value) -> int | float | str | None:
    if isinstance(value, int) and value not in _INT64:
        return str(value)

    return value


def _from_sql(value: Any) -> Any:
    return int(value) if isinstance(value, str) else value


def _stamp(t: datetime) -> str:
    """A fixed-width UTC instant, so that text order is time order."""
    u = t.astimezone(UTC)

    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:"
        f"{u.second:02d}.{u.microsecond:06d}Z"
    )


def _bound(t: datetime) -> str:
    """A window bound as comparable text, rounded up to a whole second.

    Stored starts are whole seconds, so ``start >= t`` and ``start < t``
    hold exactly when they hold for ``t`` rounded up; rounding also keeps
    a fraction out of the text, where it would sort before the plain second.
    Past the grid's end every start compares the same with GRID_MAX (and
    rounding up the last second of year 9999 would overflow).
    """
    if t >= GRID_MAX:
        return format_utc(GRID_MAX)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)

    return format_utc(t)
