"""KPIs: record snapshots, read series, emit alerts and notify.

Theory of operation. Every write follows the house pattern: one unit of
work loads the snapshot or alert, the domain applies the rules
(:func:`ipm.domain.kpi.record`, :class:`ipm.domain.alerts.Alert`), the
result is saved and ipm's own event is recorded in the same transaction.
Nothing happens when nothing changes: re-recording the same value or
re-emitting the same alert writes no row and records no event.

Notifications are I/O with a host's inbox, so they never run inside a
transaction. An alert that needs one is stored ``pending`` and claimed in
the transaction that stores it; the notifier is called after the commit,
up to ``notify_attempts`` times; a second transaction settles the outcome,
``sent`` or ``failed`` (with a ``kpi.alert.notification_failed`` event).
The alert is stored before any attempt, so a failing or crashing notifier
never loses it; a claim that runs out (the sender died) makes the
notification due again for :meth:`Kpis.resend_pending` or for a retried
call of the same alert.

Hosts call these methods directly, past the wire's JSON Schemas, so each
entry checks what the schema would: the org code, the revision and the
limits here; snapshots, alerts and queries check themselves when built.
A fault is an :class:`InvalidRequest` raised before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs

from ipm.domain.alerts import Alert, AlertNotification, EmitAlert
from ipm.domain.errors import type_name
from ipm.domain.events import AuditLike, check_orgcode
from ipm.domain.jsoncodec import is_unicode
from ipm.domain.kpi import Kpi, Outcome, RecordKpi, record, recorded_payload
from ipm.domain.kpi_series import SeriesQuery, check_after, rollup_series
from ipm.domain.settings import check_command
from ipm.domain.timeutil import refused
from ipm.ports import Clock, Ids, Notifier, Storage, UnitOfWork
from ipm.usecases.cdc import Recorder

log = logging.getLogger(__name__)

NOTIFY_ATTEMPTS = 3
CLAIM_FOR = timedelta(seconds=60)
_SOURCE_PAGE = 1024
"""Source snapshots read per step while a rollup folds a window."""
MAX_DIRECT_LIMIT = 10_000
"""The most rows one direct call reads or notifications it sends."""
REVISION_MAX_LENGTH = 128


@attrs.define
class Kpis:
    storage: Storage
    recorder: Recorder
    clock: Clock
    ids: Ids
    notifier: Notifier
    notify_attempts: int = NOTIFY_ATTEMPTS
    claim_for: timedelta = CLAIM_FOR

    # -- snapshots ---------------------------------------------------------

    def record(
        self,
        orgcode: str,
        snapshot: RecordKpi,
        *,
        expected_revision: str | None = None,
        audit: AuditLike | None = None,
    ) -> Kpi:
        """Create or update one snapshot (see :func:`ipm.domain.kpi.record`)."""
        _check_record(orgcode, snapshot, expected_revision)
        with self.storage.unit_of_work() as uow:
            kpi, _ = self._record_in(
                uow, orgcode, snapshot, audit, expected_revision, upsert=False
            )
            uow.commit()

        return kpi

    def record_in(
        self,
        uow: UnitOfWork,
        orgcode: str,
        snapshot: RecordKpi,
        audit: AuditLike | None = None,
        *,
        expected_revision: str | None = None,
        upsert: bool = False,
    ) -> tuple[Kpi, Outcome]:
        """Record one snapshot inside the caller's unit of work; no commit.

        Returns the snapshot as stored and ``"created"``, ``"updated"`` or
        ``"unchanged"``. With ``upsert`` an existing snapshot is replaced
        without ``expected_revision`` (what a bulk load wants); revision
        errors are raised as for the route, before anything is written.
        """
        _check_record(orgcode, snapshot, expected_revision)

        return self._record_in(
            uow, orgcode, snapshot, audit, expected_revision, upsert=upsert
        )

    def _record_in(
        self,
        uow: UnitOfWork,
        orgcode: str,
        snapshot: RecordKpi,
        audit: AuditLike | None,
        expected_revision: str | None,
        *,
        upsert: bool,
    ) -> tuple[Kpi, Outcome]:
        now = self.clock()
        if expected_revision is None:
            # Most records are new snapshots: try the insert first and look
            # the key up only when it is taken (one statement fewer).
            fresh, _ = record(None, snapshot, new_id=lambda: self.ids("kpi"), now=now)
            if uow.kpis.add_new(orgcode, fresh):
                self._recorded(uow, orgcode, fresh, None, audit)
                return fresh, "created"

        current = self._current(uow, orgcode, snapshot)
        kpi, outcome = record(
            current,
            snapshot,
            new_id=lambda: self.ids("kpi"),
            now=now,
            expected_revision=expected_revision,
            upsert=upsert,
        )
        if outcome == "unchanged":
            return kpi, outcome

        if current is None:
            uow.kpis.add(orgcode, kpi)
        else:
            uow.kpis.update(orgcode, kpi)
        self._recorded(uow, orgcode, kpi, current, audit)

        return kpi, outcome

    def _recorded(
        self,
        uow: UnitOfWork,
        orgcode: str,
        kpi: Kpi,
        current: Kpi | None,
        audit: AuditLike | None,
    ) -> None:
        self.recorder.record_own(
            uow,
            orgcode,
            "kpi.recorded",
            recorded_payload(kpi, None if current is None else current.value),
            op="c" if current is None else "u",
            logical_guid=kpi.kpi_id,
            audit=audit,
            occurred_at=kpi.updated_at,
        )

    def _current(
        self, uow: UnitOfWork, orgcode: str, snapshot: RecordKpi
    ) -> Kpi | None:
        return uow.kpis.get(
            orgcode,
            snapshot.kpi_code,
            snapshot.scope,
            snapshot.bucket,
            snapshot.bucket_start,
        )

    def predict_in(
        self,
        uow: UnitOfWork,
        orgcode: str,
        snapshot: RecordKpi,
        *,
        expected_revision: str | None = None,
        upsert: bool = False,
    ) -> Outcome:
        """What :meth:`record_in` would answer, writing nothing.

        For validate-only imports: the same revision errors are raised.
        """
        _check_record(orgcode, snapshot, expected_revision)
        current = self._current(uow, orgcode, snapshot)
        _, outcome = record(
            current,
            snapshot,
            new_id=lambda: "",
            now=self.clock(),
            expected_revision=expected_revision,
            upsert=upsert,
        )

        return outcome

    def series(
        self,
        orgcode: str,
        query: SeriesQuery,
        *,
        after: datetime | None = None,
        limit: int = 256,
    ) -> list[Kpi]:
        """Up to ``limit`` rows of the series, after the row starting ``after``.

        ``limit`` is 1 to :data:`MAX_DIRECT_LIMIT`; ``after`` is aware.
        """
        after = _check_series(orgcode, query, after, limit)
        with self.storage.unit_of_work(write=False) as uow:
            if query.rollup is None:
                return uow.kpis.series(
                    orgcode,
                    query.kpi_code,
                    query.scope,
                    query.bucket,
                    query.source_window(after),
                    limit,
                )

        return self._rolled(orgcode, query, after, limit)

    def _rolled(
        self,
        orgcode: str,
        query: SeriesQuery,
        after: datetime | None,
        limit: int,
        stopped: list[datetime] | None = None,
        budget: int | None = None,
    ) -> list[Kpi]:
        with self.storage.unit_of_work(write=False) as uow:
            read = [0]
            sources = self._sources(uow, orgcode, query, after, read)
            rows: list[Kpi] = []
            for row in rollup_series(query, sources):
                rows.append(row)
                if len(rows) >= limit:
                    break
                if budget is not None and read[0] >= budget:
                    if stopped is not None:
                        stopped.append(row.bucket_start)
                    break

            return rows

    def series_wire(
        self,
        orgcode: str,
        query: SeriesQuery,
        *,
        after: datetime | None = None,
        limit: int = 256,
        stopped: list[datetime] | None = None,
        sources: int | None = None,
    ) -> list[dict[str, Any]]:
        """As :meth:`series`, each row in its wire form (``/kpi/query``).

        With ``sources``, a rollup reads about that many source snapshots
        at most: once past it, the rows end after the next one, whose
        start is appended to ``stopped`` (a page goes on from there).
        """
        after = _check_series(orgcode, query, after, limit)
        if query.rollup is not None:
            rows = self._rolled(orgcode, query, after, limit, stopped, sources)
            return [kpi.to_wire() for kpi in rows]

        with self.storage.unit_of_work(write=False) as uow:
            return uow.kpis.series_wire(
                orgcode,
                query.kpi_code,
                query.scope,
                query.bucket,
                query.source_window(after),
                limit,
            )

    def _sources(
        self,
        uow: UnitOfWork,
        orgcode: str,
        query: SeriesQuery,
        after: datetime | None,
        read: list[int],
    ) -> Iterator[Kpi]:
        # Read the finer snapshots page by page, only as far as the rollup
        # needs: a page of coarse rows stops the reading. ``read`` counts.
        lo, hi = query.source_window(after)
        while lo < hi:
            page = uow.kpis.series(
                orgcode,
                query.kpi_code,
                query.scope,
                query.source_bucket,
                (lo, hi),
                _SOURCE_PAGE,
            )
            read[0] += len(page)
            yield from page
            if len(page) < _SOURCE_PAGE:
                return
            lo = page[-1].bucket_start + timedelta(microseconds=1)

    # -- alerts ------------------------------------------------------------

    def emit_alert(
        self, orgcode: str, ask: EmitAlert, *, audit: AuditLike | None = None
    ) -> Alert:
        """Store (once) the alert for this rule and bucket, then notify if due.

        A retried call returns the stored alert; it sends a notification
        only if the first call left one pending and its claim ran out.
        """
        check_orgcode(orgcode)
        check_command(ask, EmitAlert)

        now = self.clock()
        with self.storage.unit_of_work() as uow:
            alert = self._store_alert(uow, orgcode, ask, now, audit)
            claimed = alert.due(now)
            if claimed:
                alert = alert.claimed(now + self.claim_for)
                uow.kpis.update_alert(orgcode, alert)
            uow.commit()

        if claimed:
            alert = self._deliver(orgcode, alert)

        return alert

    def get_alert(self, orgcode: str, alert_id: str) -> Alert | None:
        check_orgcode(orgcode)
        if not isinstance(alert_id, str) or not is_unicode(alert_id):
            return None  # no alert has such an id
        with self.storage.unit_of_work(write=False) as uow:
            return uow.kpis.get_alert(orgcode, alert_id)

    def resend_pending(self, *, limit: int = 100) -> int:
        """Send notifications whose sender died; return how many were settled.

        ``limit`` (1 to :data:`MAX_DIRECT_LIMIT`) bounds the alerts claimed.
        """
        _check_limit(limit)
        now = self.clock()
        with self.storage.unit_of_work() as uow:
            claimed = [
                (orgcode, alert.claimed(now + self.claim_for))
                for orgcode, alert in uow.kpis.alerts_due(now, limit)
            ]
            for orgcode, alert in claimed:
                uow.kpis.update_alert(orgcode, alert)
            uow.commit()

        for orgcode, alert in claimed:
            self._deliver(orgcode, alert)

        return len(claimed)

    def _store_alert(
        self,
        uow: UnitOfWork,
        orgcode: str,
        ask: EmitAlert,
        now: datetime,
        audit: AuditLike | None,
    ) -> Alert:
        key = ask.key(orgcode)
        stored = uow.kpis.alert_by_key(orgcode, key)
        if stored is None:
            alert = Alert.emit(self.ids("alr"), key, ask, now)
            uow.kpis.add_alert(orgcode, alert)
        else:
            again = stored.again(ask, now)
            if again is None:
                return stored
            alert = again
            uow.kpis.update_alert(orgcode, alert)

        self.recorder.record_own(
            uow,
            orgcode,
            "kpi.alert.emitted",
            alert.emitted_payload(),
            op="c" if stored is None else "u",
            logical_guid=alert.alert_id,
            audit=audit,
            # The alert's own instant, as its notification event carries it.
            occurred_at=alert.updated_at,
        )

        return alert

    def _deliver(self, orgcode: str, alert: Alert) -> Alert:
        """Call the notifier up to ``notify_attempts`` times, then settle."""
        error = ""
        for attempt in range(1, self.notify_attempts + 1):
            try:
                self.notifier.notify(AlertNotification(orgcode, alert, attempt))
            except Exception as exc:  # the host's notifier may fail in any way
                error = _failure(exc)
                log.warning(
                    "notifying alert %s failed (attempt %d of %d): %s",
                    alert.alert_id,
                    attempt,
                    self.notify_attempts,
                    error.partition(":")[0],
                )
            else:
                return self._settle(orgcode, alert, attempt, None)

        return self._settle(orgcode, alert, self.notify_attempts, error)

    def _settle(
        self, orgcode: str, claimed: Alert, attempts: int, error: str | None
    ) -> Alert:
        """Store how the notification went: sent, or failed for good."""
        with self.storage.unit_of_work() as uow:
            current = uow.kpis.get_alert(orgcode, claimed.alert_id)
            if current is None or current.notification != claimed.notification:
                # Our claim ran out and another sender took over: theirs counts.
                return current or claimed

            now = self.clock()
            if error is None:
                settled = current.sent(attempts, now)
            else:
                settled = current.undeliverable(attempts, error, now)
                self.recorder.record_own(
                    uow,
                    orgcode,
                    "kpi.alert.notification_failed",
                    settled.failed_payload(),
                    op="u",
                    logical_guid=settled.alert_id,
                    occurred_at=settled.updated_at,
                )
            uow.kpis.update_alert(orgcode, settled)
            uow.commit()

        return settled


# -- checks of a direct call -------------------------------------------------


def _check_record(
    orgcode: str, snapshot: RecordKpi, expected_revision: str | None
) -> None:
    # The hot path of every record: two type tests and one regex match.
    check_orgcode(orgcode)
    check_command(snapshot, RecordKpi)
    if expected_revision is not None and not (
        isinstance(expected_revision, str)
        and 0 < len(expected_revision) <= REVISION_MAX_LENGTH
    ):
        raise refused(
            "/expected_revision",
            f"must be a string of 1-{REVISION_MAX_LENGTH} characters",
        )


def _check_series(
    orgcode: str, query: SeriesQuery, after: object, limit: object
) -> datetime | None:
    check_orgcode(orgcode)
    check_command(query, SeriesQuery)
    _check_limit(limit)

    return check_after(after)


def _check_limit(limit: object) -> None:
    # The wire clamps its page size; a direct call says what it means, so a
    # value out of range is refused rather than quietly changed.
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_DIRECT_LIMIT
    ):
        raise refused("/limit", f"must be an integer from 1 to {MAX_DIRECT_LIMIT}")


def _failure(exc: Exception) -> str:
    """``Type: message`` of a host's exception, whatever reading it does
    (a ``__str__`` that raises, a name that is no plain text)."""
    kind = type_name(exc)
    try:
        said = str.__str__(str(exc))
    except Exception:
        said = "(its message could not be read)"

    return f"{kind}: {said}"
