"""The in-memory KPI repository: snapshots by key, series kept sorted.

Each series (org, code, scope, bucket) keeps a sorted list of its bucket
starts beside a dict of snapshots, so a window is two binary searches and
a slice. Alerts are kept by their key, with an index by id.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ipm.domain.alerts import Alert
from ipm.domain.errors import Conflict
from ipm.domain.kpi import Kpi
from ipm.domain.kpi_grid import Bucket

if TYPE_CHECKING:
    from ipm.adapters.memory.core import UndoLog

SeriesKey = tuple[str, str, str, str]


class MemoryKpiRepository:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._starts: dict[SeriesKey, list[datetime]] = {}
        self._snapshots: dict[tuple[SeriesKey, datetime], Kpi] = {}
        self._alerts: dict[tuple[str, str], Alert] = {}
        self._alert_keys: dict[tuple[str, str], str] = {}

    # -- snapshots ---------------------------------------------------------

    def get(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        bucket_start: datetime,
    ) -> Kpi | None:
        return self._snapshots.get(((orgcode, kpi_code, scope, bucket), bucket_start))

    def add(self, orgcode: str, kpi: Kpi) -> None:
        if not self.add_new(orgcode, kpi):
            raise Conflict(f"KPI snapshot {kpi.kpi_code} already exists")

    def add_new(self, orgcode: str, kpi: Kpi) -> bool:
        series, key = _keys(orgcode, kpi)
        if key in self._snapshots:
            return False

        starts = self._starts.setdefault(series, [])
        bisect.insort(starts, kpi.bucket_start)
        self._snapshots[key] = kpi
        self._undo.push(lambda: self._remove(series, kpi.bucket_start))

        return True

    def update(self, orgcode: str, kpi: Kpi) -> None:
        _, key = _keys(orgcode, kpi)
        old = self._snapshots[key]
        self._snapshots[key] = kpi
        self._undo.push(lambda: self._snapshots.__setitem__(key, old))

    def series(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[Kpi]:
        series = (orgcode, kpi_code, scope, bucket)
        starts = self._starts.get(series, [])
        lo = bisect.bisect_left(starts, window[0])
        hi = min(bisect.bisect_left(starts, window[1]), lo + max(limit, 0))

        return [self._snapshots[(series, start)] for start in starts[lo:hi]]

    def series_wire(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[dict[str, Any]]:
        found = self.series(orgcode, kpi_code, scope, bucket, window, limit)

        return [kpi.to_wire() for kpi in found]

    def _remove(self, series: SeriesKey, start: datetime) -> None:
        starts = self._starts[series]
        del starts[bisect.bisect_left(starts, start)]
        del self._snapshots[(series, start)]

    # -- alerts ------------------------------------------------------------

    def get_alert(self, orgcode: str, alert_id: str) -> Alert | None:
        key = self._alert_keys.get((orgcode, alert_id))

        return None if key is None else self._alerts[(orgcode, key)]

    def alert_by_key(self, orgcode: str, alert_key: str) -> Alert | None:
        return self._alerts.get((orgcode, alert_key))

    def add_alert(self, orgcode: str, alert: Alert) -> None:
        key = (orgcode, alert.alert_key)
        if key in self._alerts:
            raise Conflict("an alert with this key already exists")

        self._alerts[key] = alert
        self._alert_keys[(orgcode, alert.alert_id)] = alert.alert_key
        self._undo.push(lambda: self._drop_alert(orgcode, alert))

    def update_alert(self, orgcode: str, alert: Alert) -> None:
        key = (orgcode, alert.alert_key)
        old = self._alerts[key]
        self._alerts[key] = alert
        self._undo.push(lambda: self._alerts.__setitem__(key, old))

    def alerts_due(self, now: datetime, limit: int) -> list[tuple[str, Alert]]:
        due = [
            (orgcode, alert)
            for (orgcode, _), alert in self._alerts.items()
            if alert.due(now)
        ]
        due.sort(key=lambda pair: (pair[1].created_at, pair[1].alert_id))

        return due[: max(limit, 0)]

    def _drop_alert(self, orgcode: str, alert: Alert) -> None:
        del self._alerts[(orgcode, alert.alert_key)]
        del self._alert_keys[(orgcode, alert.alert_id)]


def _keys(orgcode: str, kpi: Kpi) -> tuple[SeriesKey, tuple[SeriesKey, datetime]]:
    series = (orgcode, kpi.kpi_code, kpi.scope, kpi.bucket)

    return series, (series, kpi.bucket_start)
