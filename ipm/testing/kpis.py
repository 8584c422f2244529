"""The KPI storage contract: snapshots, series windows and alerts.

An adapter proves itself by subclassing :class:`KpiStorageContract` and
providing a ``storage`` fixture, exactly as for
:class:`~ipm.testing.storage.StorageContract`.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipm.domain.alerts import Alert, NotificationState, Threshold
from ipm.domain.errors import Conflict
from ipm.domain.kpi import Kpi, Value
from ipm.ports import Storage
from ipm.testing.storage import NEAR_ORGS

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

# Every value kind a snapshot may hold, including ints beyond 64 bits.
values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
)


def snapshot(n: int = 0, **overrides: Any) -> Kpi:
    """Snapshot number ``n`` of the NET_SALES hourly series of scope org."""
    fields: dict[str, Any] = {
        "kpi_id": f"kpi-{n}",
        "kpi_code": "NET_SALES",
        "scope": "org",
        "bucket": "hourly",
        "bucket_start": T0 + n * HOUR,
        "value": 100 * n,
        "revision": "1",
        "created_at": T0 + timedelta(seconds=n, microseconds=5),
        "updated_at": T0 + timedelta(seconds=n, microseconds=5),
    }
    fields.update(overrides)

    return Kpi(**fields)


def alert(n: int = 0, **overrides: Any) -> Alert:
    """Alert number ``n``, fired, its notification pending."""
    fields: dict[str, Any] = {
        "alert_id": f"alr-{n}",
        "alert_key": f"{n:064x}",
        "kpi_code": "NET_SALES",
        "scope": "store:S1",
        "bucket": "daily",
        "bucket_start": T0 + timedelta(days=n),
        "value": 150.5,
        "threshold": Threshold("gt", 100),
        "fired": True,
        "notification": NotificationState("pending"),
        "created_at": T0 + timedelta(seconds=n),
        "updated_at": T0 + timedelta(seconds=n),
    }
    fields.update(overrides)

    return Alert(**fields)


def _add(storage: Storage, orgcode: str, kpis: list[Kpi]) -> None:
    with storage.unit_of_work() as uow:
        for kpi in kpis:
            uow.kpis.add(orgcode, kpi)
        uow.commit()


def _series(
    storage: Storage,
    orgcode: str,
    lo: datetime,
    hi: datetime,
    limit: int = 1000,
    **key: Any,
) -> list[Kpi]:
    where = {"kpi_code": "NET_SALES", "scope": "org", "bucket": "hourly", **key}
    with storage.unit_of_work(write=False) as uow:
        return uow.kpis.series(
            orgcode,
            where["kpi_code"],
            where["scope"],
            where["bucket"],
            (lo, hi),
            limit,
        )


def _get(storage: Storage, orgcode: str, kpi: Kpi) -> Kpi | None:
    with storage.unit_of_work(write=False) as uow:
        return uow.kpis.get(
            orgcode, kpi.kpi_code, kpi.scope, kpi.bucket, kpi.bucket_start
        )


class KpiStorageContract:
    """Behaviour every storage must show for KPI snapshots and alerts."""

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("provide a storage fixture")

    # -- snapshots ---------------------------------------------------------

    def test_snapshot_reads_back_unchanged(self, storage: Storage) -> None:
        """An added snapshot reads back field for field."""
        original = snapshot(1, value=1.0, scope="store:S014")

        _add(storage, "ACME", [original])

        assert _get(storage, "ACME", original) == original

    @settings(
        max_examples=40,
        deadline=None,
        # One contract, many adapter classes: each is its own executor.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(value=values)
    def test_every_value_kind_round_trips(self, storage: Storage, value: Value) -> None:
        """None, ints of any size and floats read back with their type."""
        original = snapshot(1, kpi_id="kpi-rt", value=value)
        with storage.unit_of_work() as uow:
            uow.kpis.add("RT", original)
            stored = uow.kpis.get("RT", "NET_SALES", "org", "hourly", T0 + HOUR)
            # Rolled back: every example starts from an empty store.

        assert stored == original
        assert type(stored.value) is type(value)

    def test_update_replaces_value_revision_and_time(self, storage: Storage) -> None:
        """An update stores the new value, revision and updated_at only."""
        first = snapshot(1)
        _add(storage, "ACME", [first])
        later = attrs.evolve(
            first, value=None, revision="2", updated_at=T0 + timedelta(days=1)
        )

        with storage.unit_of_work() as uow:
            uow.kpis.update("ACME", later)
            uow.commit()

        assert _get(storage, "ACME", first) == later

    def test_a_taken_key_is_a_conflict(self, storage: Storage) -> None:
        """Adding a second snapshot under the same key raises Conflict."""
        _add(storage, "ACME", [snapshot(1)])

        with pytest.raises(Conflict), storage.unit_of_work() as uow:
            uow.kpis.add("ACME", snapshot(1, kpi_id="kpi-other"))

        assert _get(storage, "ACME", snapshot(1)) == snapshot(1)

    def test_add_new_stores_only_a_free_key(self, storage: Storage) -> None:
        """add_new stores a snapshot under a free key and leaves a taken one."""
        with storage.unit_of_work() as uow:
            first = uow.kpis.add_new("ACME", snapshot(1))
            second = uow.kpis.add_new("ACME", snapshot(1, kpi_id="kpi-other", value=9))
            other_org = uow.kpis.add_new("OTHER", snapshot(1, kpi_id="kpi-other"))
            uow.commit()

        assert (first, second, other_org) == (True, False, True)
        assert _get(storage, "ACME", snapshot(1)) == snapshot(1)

    def test_rollback_leaves_no_snapshot(self, storage: Storage) -> None:
        """Snapshots added or changed in a unit of work without commit vanish."""
        _add(storage, "ACME", [snapshot(1)])

        with storage.unit_of_work() as uow:
            uow.kpis.add("ACME", snapshot(2))
            uow.kpis.update("ACME", snapshot(1, value=7, revision="2"))

        assert _get(storage, "ACME", snapshot(2)) is None
        assert _get(storage, "ACME", snapshot(1)) == snapshot(1)
        assert _series(storage, "ACME", T0, T0 + 10 * HOUR) == [snapshot(1)]

    def test_series_is_ordered_and_half_open(self, storage: Storage) -> None:
        """A window returns the starts in [lo, hi) in time order, whatever the
        order they were added in."""
        _add(storage, "ACME", [snapshot(n) for n in (5, 1, 3, 2, 4, 0)])

        found = _series(storage, "ACME", T0 + HOUR, T0 + 4 * HOUR)

        assert [k.kpi_id for k in found] == ["kpi-1", "kpi-2", "kpi-3"]

    def test_series_bounds_between_buckets(self, storage: Storage) -> None:
        """Bounds with a fraction of a second include exactly the later starts."""
        _add(storage, "ACME", [snapshot(n) for n in range(4)])
        lo = T0 + HOUR - timedelta(microseconds=1)
        hi = T0 + 3 * HOUR + timedelta(microseconds=1)

        found = _series(storage, "ACME", lo, hi)
        after_one = _series(storage, "ACME", T0 + HOUR + timedelta(microseconds=1), hi)

        assert [k.kpi_id for k in found] == ["kpi-1", "kpi-2", "kpi-3"]
        assert [k.kpi_id for k in after_one] == ["kpi-2", "kpi-3"]

    def test_series_wire_is_series_in_wire_form(self, storage: Storage) -> None:
        """series_wire gives what series gives, each row as its to_wire()."""
        kinds = [None, 2**70, -3, 0.1, 1.0]
        _add(storage, "ACME", [snapshot(n, value=v) for n, v in enumerate(kinds)])
        _add(storage, "ACME", [snapshot(0, kpi_id="m", bucket="monthly")])
        window = (T0, T0 + 40 * 24 * HOUR)

        with storage.unit_of_work(write=False) as uow:
            for bucket in ("hourly", "monthly"):
                rows = uow.kpis.series("ACME", "NET_SALES", "org", bucket, window, 9)
                wire = uow.kpis.series_wire(
                    "ACME", "NET_SALES", "org", bucket, window, 9
                )
                assert wire == [kpi.to_wire() for kpi in rows]
                assert [type(w["value"]) for w in wire] == [type(k.value) for k in rows]

    def test_series_honours_limit(self, storage: Storage) -> None:
        """A limited window returns its first snapshots."""
        _add(storage, "ACME", [snapshot(n) for n in range(10)])

        found = _series(storage, "ACME", T0 + 2 * HOUR, T0 + 10 * HOUR, limit=3)

        assert [k.kpi_id for k in found] == ["kpi-2", "kpi-3", "kpi-4"]

    def test_series_keeps_orgs_codes_scopes_and_buckets_apart(
        self, storage: Storage
    ) -> None:
        """A series holds only its own org, code, scope and bucket."""
        day = T0 + timedelta(days=1)
        _add(storage, "ACME", [snapshot(1)])
        _add(storage, "OTHER", [snapshot(1, kpi_id="o")])
        _add(storage, "ACME", [snapshot(1, kpi_id="c", kpi_code="UNITS")])
        _add(storage, "ACME", [snapshot(1, kpi_id="s", scope="store:1")])
        _add(
            storage, "ACME", [snapshot(1, kpi_id="d", bucket="daily", bucket_start=day)]
        )

        def ids(org: str = "ACME", **key: Any) -> list[str]:
            found = _series(storage, org, T0, T0 + timedelta(days=2), **key)
            return [k.kpi_id for k in found]

        assert ids() == ["kpi-1"]
        assert ids("OTHER") == ["o"]
        assert ids(kpi_code="UNITS") == ["c"]
        assert ids(scope="store:1") == ["s"]
        assert ids(bucket="daily") == ["d"]

    def test_series_reads_a_long_window_in_order(self, storage: Storage) -> None:
        """Ten thousand snapshots added newest first read back oldest first."""
        _add(storage, "ACME", [snapshot(n) for n in reversed(range(10_000))])

        found = _series(storage, "ACME", T0, T0 + 20_000 * HOUR, limit=20_000)

        assert [k.bucket_start for k in found] == [T0 + n * HOUR for n in range(10_000)]

    def test_concurrent_writers_each_add_their_snapshots(
        self, storage: Storage
    ) -> None:
        """Four threads adding to one series lose nothing and clash nowhere."""
        barrier = threading.Barrier(4)

        def writer(w: int) -> None:
            barrier.wait()
            for n in range(w, 400, 4):
                _add(storage, "ACME", [snapshot(n)])

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        found = _series(storage, "ACME", T0, T0 + 400 * HOUR)
        assert [k.kpi_id for k in found] == [f"kpi-{n}" for n in range(400)]

    # -- alerts ------------------------------------------------------------

    def test_alert_reads_back_by_id_and_by_key(self, storage: Storage) -> None:
        """An added alert reads back unchanged by its id and by its key."""
        original = alert(1, value=None, threshold=Threshold("eq", 2**70))

        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("ACME", original)
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.kpis.get_alert("ACME", "alr-1") == original
            assert uow.kpis.alert_by_key("ACME", original.alert_key) == original
            assert uow.kpis.get_alert("OTHER", "alr-1") is None
            assert uow.kpis.alert_by_key("OTHER", original.alert_key) is None

    def test_kpi_lookups_stay_in_their_org(self, storage: Storage) -> None:
        """The same key in two orgs is two snapshots and two alerts, each
        read back by its own org, in series too; an org with none (see
        NEAR_ORGS) reads none."""
        _add(storage, "ACME", [snapshot(1, value=1)])
        _add(storage, "OTHER", [snapshot(1, kpi_id="kpi-o", value=2)])
        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("ACME", alert(1, value=1.0))
            uow.kpis.add_alert("OTHER", alert(1, alert_id="alr-o", value=2.0))
            uow.commit()
        key = alert(1).alert_key

        def value(found: Kpi | Alert | None) -> object:
            return None if found is None else found.value

        one = snapshot(1)
        series = (one.kpi_code, one.scope, one.bucket, (T0, T0 + 2 * HOUR), 10)
        owners = [("ACME", 1), ("OTHER", 2), *((org, None) for org in NEAR_ORGS)]
        with storage.unit_of_work(write=False) as uow:
            for org, own in owners:
                got = uow.kpis.get(org, one.kpi_code, one.scope, one.bucket, T0 + HOUR)
                assert value(got) == own
                assert value(uow.kpis.alert_by_key(org, key)) == own
                in_series = [own] if own is not None else []
                assert [k.value for k in uow.kpis.series(org, *series)] == in_series
                wire = uow.kpis.series_wire(org, *series)
                assert [row["value"] for row in wire] == in_series
            assert uow.kpis.get_alert("OTHER", "alr-1") is None
            for org in NEAR_ORGS:
                assert uow.kpis.get_alert(org, "alr-1") is None

    def test_an_alert_key_is_taken_once_per_org(self, storage: Storage) -> None:
        """A second alert with the same key is a Conflict; another org may use it."""
        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("ACME", alert(1))
            uow.commit()

        with pytest.raises(Conflict), storage.unit_of_work() as uow:
            uow.kpis.add_alert("ACME", alert(1, alert_id="alr-dup"))
        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("OTHER", alert(1, alert_id="alr-other"))
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.kpis.get_alert("ACME", "alr-dup") is None
            assert uow.kpis.get_alert("OTHER", "alr-other") is not None

    def test_alert_update_and_rollback(self, storage: Storage) -> None:
        """An alert update commits whole, and a rolled-back one leaves no trace."""
        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("ACME", alert(1))
            uow.commit()
        sent = alert(1, notification=NotificationState("sent", 2, "first try failed"))
        lost = alert(1, fired=False, notification=None)

        with storage.unit_of_work() as uow:
            uow.kpis.update_alert("ACME", sent)
            uow.commit()
        with storage.unit_of_work() as uow:
            uow.kpis.update_alert("ACME", lost)
            uow.kpis.add_alert("ACME", alert(2))

        with storage.unit_of_work(write=False) as uow:
            assert uow.kpis.get_alert("ACME", "alr-1") == sent
            assert uow.kpis.get_alert("ACME", "alr-2") is None

    def test_due_alerts_are_pending_unclaimed_and_oldest_first(
        self, storage: Storage
    ) -> None:
        """alerts_due lists pending notifications free at ``now``, oldest first."""
        now = T0 + timedelta(hours=1)
        claimed = NotificationState("pending", claimed_until=now + timedelta(1))
        expired = NotificationState("pending", claimed_until=now - timedelta(1))
        with storage.unit_of_work() as uow:
            uow.kpis.add_alert("B", alert(3))
            uow.kpis.add_alert("A", alert(1, notification=expired))
            uow.kpis.add_alert("A", alert(2, notification=claimed))
            uow.kpis.add_alert("A", alert(4, notification=NotificationState("sent", 1)))
            uow.kpis.add_alert("A", alert(5, notification=None, fired=False))
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            due = uow.kpis.alerts_due(now, 10)
            first = uow.kpis.alerts_due(now, 1)

        assert [(org, a.alert_id) for org, a in due] == [("A", "alr-1"), ("B", "alr-3")]
        assert [a.alert_id for _, a in first] == ["alr-1"]
