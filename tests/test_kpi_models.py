"""The KPI snapshot, query and alert models: pure rules, no storage."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.domain import kpi, kpi_grid, kpi_series
from ipm.domain.alerts import (
    Alert,
    EmitAlert,
    NotificationState,
    Threshold,
    alert_from_wire,
)
from ipm.domain.errors import InvalidRequest, RevisionMismatch, RevisionRequired
from ipm.domain.kpi import Kpi, RecordKpi, record, snapshot_from_wire
from ipm.domain.kpi_series import SeriesQuery, query_from_wire, rollup, rollup_series
from ipm.domain.timeutil import format_utc

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
WIRE = {
    "kpi_code": "NET_SALES",
    "bucket": "hourly",
    "bucket_start": "2026-01-01T00:00:00Z",
    "bucket_end": "2026-01-01T01:00:00Z",
    "value": 12,
}


def pointers(error: InvalidRequest) -> list[str]:
    return sorted(problem.pointer for problem in error.details)


def _verdict(parse: Any, raw: dict[str, Any]) -> Any:
    try:
        return parse(raw)
    except InvalidRequest as error:
        return [(p.pointer, p.message) for p in error.details]


_STARTS = st.sampled_from(
    [
        "2026-01-01T00:00:00Z",
        "2026-01-05T00:00:00+00:00",
        "2026-01-01T00:30:00Z",
        "2026-02-01T00:00:00+01:00",
        "2026-01-01T00:00:00",
        "9999-12-31T23:00:00Z",
        "nope",
    ]
)


@settings(max_examples=300)
@given(
    code=st.sampled_from(["NET_SALES", "net", ""]),
    bucket=st.sampled_from(["hourly", "daily", "weekly", "monthly", "yearly"]),
    start=_STARTS,
    end=_STARTS | st.sampled_from(["2026-01-01T01:00:00Z", "2026-01-02T00:00:00Z"]),
    value=st.sampled_from([1, 1.5, None, "x", True, float("nan")]),
    scope=st.sampled_from(["org", "", None]),
)
def test_the_quick_snapshot_parse_agrees_with_the_full_report(
    code: str, bucket: str, start: str, end: str, value: Any, scope: str | None
) -> None:
    """The fast path of snapshot_from_wire gives what the full check gives."""
    raw = {"kpi_code": code, "bucket": bucket, "bucket_start": start}
    raw |= {"bucket_end": end, "value": value}
    if scope is not None:
        raw["scope"] = scope

    quick = _verdict(snapshot_from_wire, raw)
    full = _verdict(lambda r: kpi._snapshot_reporting_all(r, "/kpi"), raw)

    assert quick == full


def stored(n: int, value: kpi.Value = 0, **overrides: Any) -> Kpi:
    fields: dict[str, Any] = {
        "kpi_id": f"kpi-{n}",
        "kpi_code": "NET_SALES",
        "scope": "org",
        "bucket": "hourly",
        "bucket_start": T0 + n * HOUR,
        "value": value,
        "revision": "1",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)

    return Kpi(**fields)


# -- wire timestamps ---------------------------------------------------------


@given(
    t=st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.just(UTC),
    )
)
def test_format_utc_fast_path_writes_the_wire_format(t: datetime) -> None:
    """The UTC fast path writes the wire format for every UTC instant."""
    fraction = f".{t.microsecond:06d}" if t.microsecond else ""
    expected = f"{t.year:04d}-{t:%m-%dT%H:%M:%S}{fraction}Z"

    assert format_utc(t) == expected


def test_format_utc_converts_other_zones() -> None:
    """A datetime in another zone is written in UTC."""
    t = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))

    assert format_utc(t) == "2026-01-01T00:00:00Z"


# -- snapshots from the wire -------------------------------------------------


def test_a_wire_snapshot_is_parsed_and_normalised() -> None:
    """Offsets become UTC and scope defaults to org."""
    raw = {
        **WIRE,
        "bucket_start": "2026-01-01T01:00:00+01:00",
        "bucket_end": "2026-01-01T02:00:00+01:00",
    }

    snapshot = snapshot_from_wire(raw)

    assert snapshot == RecordKpi("NET_SALES", "hourly", T0, 12, "org")
    assert snapshot.bucket_end == T0 + HOUR


def test_every_fault_of_a_wire_snapshot_is_reported() -> None:
    """Code, scope, value and window faults come back together, each at its pointer."""
    raw = {
        "kpi_code": "net",
        "scope": "",
        "bucket": "hourly",
        "bucket_start": "2026-01-01T00:10:00Z",
        "bucket_end": "2026-01-01T00:20:00Z",
        "value": True,
    }

    with pytest.raises(InvalidRequest) as caught:
        snapshot_from_wire(raw)

    assert pointers(caught.value) == [
        "/kpi/bucket_end",
        "/kpi/bucket_start",
        "/kpi/kpi_code",
        "/kpi/scope",
        "/kpi/value",
    ]


def test_a_missing_value_is_not_a_null_value() -> None:
    """value may be null, but it must be there."""
    raw = {key: value for key, value in WIRE.items() if key != "value"}

    with pytest.raises(InvalidRequest) as caught:
        snapshot_from_wire(raw)

    assert pointers(caught.value) == ["/kpi/value"]
    assert snapshot_from_wire({**WIRE, "value": None}).value is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "12", [1]])
def test_values_json_cannot_carry_back_are_refused(value: Any) -> None:
    """NaN, the infinities and non-numbers are refused."""
    with pytest.raises(InvalidRequest) as caught:
        snapshot_from_wire({**WIRE, "value": value})

    assert pointers(caught.value) == ["/kpi/value"]


def test_a_typed_snapshot_is_checked_too() -> None:
    """RecordKpi refuses a naive or misaligned start wherever it is built."""
    with pytest.raises(InvalidRequest, match="aligned to the daily grid"):
        RecordKpi("NET_SALES", "daily", T0 + HOUR, 1)
    with pytest.raises(InvalidRequest, match="needs a time zone"):
        RecordKpi("NET_SALES", "daily", datetime(2026, 1, 1), 1)
    # Past the grid, said as the wire says it (it said "must be aware").
    with pytest.raises(InvalidRequest, match="must be before 9999-12-01T00:00:00Z"):
        RecordKpi("NET_SALES", "monthly", datetime(9999, 12, 1, tzinfo=UTC), 1)


# -- the revision rules ------------------------------------------------------


def ids() -> str:
    return "kpi-new"


def test_a_new_key_is_created_without_a_revision() -> None:
    """No current snapshot and no revision: created at revision 1."""
    kpi_, outcome = record(None, RecordKpi("A", "hourly", T0, 5), new_id=ids, now=T0)

    assert outcome == "created"
    assert (kpi_.kpi_id, kpi_.revision, kpi_.value) == ("kpi-new", "1", 5)


def test_a_revision_for_a_new_key_is_stale() -> None:
    """Naming a revision for a key that does not exist is a mismatch."""
    with pytest.raises(RevisionMismatch):
        record(
            None,
            RecordKpi("A", "hourly", T0, 5),
            new_id=ids,
            now=T0,
            expected_revision="1",
        )


@given(
    old=st.one_of(st.none(), st.integers(-5, 5)),
    new=st.one_of(st.none(), st.integers(-5, 5)),
    expected=st.sampled_from([None, "1", "2"]),
    upsert=st.booleans(),
)
@settings(max_examples=200)
def test_revision_rules_hold_for_any_update(
    old: int | None, new: int | None, expected: str | None, upsert: bool
) -> None:
    """An existing key changes only with the current revision (or upsert without
    one); an equal value never makes a new revision."""
    current = stored(0, old, revision="2")
    snapshot = RecordKpi("NET_SALES", "hourly", T0, new)
    later = T0 + HOUR

    try:
        result, outcome = record(
            current,
            snapshot,
            new_id=ids,
            now=later,
            expected_revision=expected,
            upsert=upsert,
        )
    except RevisionRequired:
        assert expected is None and not upsert
        return
    except RevisionMismatch:
        assert expected == "1"
        return

    assert expected == "2" or (expected is None and upsert)
    if old == new:
        assert (outcome, result) == ("unchanged", current)
    else:
        assert outcome == "updated"
        assert (result.value, result.revision, result.updated_at) == (new, "3", later)
        assert (result.kpi_id, result.created_at) == (
            current.kpi_id,
            current.created_at,
        )


def test_numerically_equal_values_are_unchanged() -> None:
    """1 and 1.0 are the same reading."""
    _, outcome = record(
        stored(0, 1),
        RecordKpi("NET_SALES", "hourly", T0, 1.0),
        new_id=ids,
        now=T0,
        expected_revision="1",
    )

    assert outcome == "unchanged"


# -- queries -----------------------------------------------------------------


def test_a_query_is_parsed_with_its_rollup() -> None:
    """query_from_wire normalises the window and keeps the rollup."""
    raw = {
        "kpi_code": "NET_SALES",
        "bucket": "daily",
        "from_utc": "2026-01-01T01:00:00+01:00",
        "to_utc": "2026-01-03T00:00:00Z",
        "rollup": {"function": "avg", "from_bucket": "hourly"},
    }

    query = query_from_wire(raw)

    assert query == SeriesQuery(
        "NET_SALES", "daily", T0, T0 + timedelta(days=2), "org", "avg", "hourly"
    )
    assert query.source_bucket == "hourly"


def test_every_fault_of_a_query_is_reported() -> None:
    """A reversed window and an impossible rollup are refused together."""
    raw = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": "2026-01-02T00:00:00Z",
        "to_utc": "2026-01-01T00:00:00Z",
        "rollup": {"function": "median", "from_bucket": "daily"},
    }

    with pytest.raises(InvalidRequest) as caught:
        query_from_wire(raw)

    assert pointers(caught.value) == [
        "/rollup/from_bucket",
        "/rollup/function",
        "/to_utc",
    ]


def test_a_rollup_reads_whole_coarse_buckets_after_the_cursor() -> None:
    """The source window starts at the first coarse bucket in the window, after
    the last row returned, and ends at a coarse boundary."""
    query = SeriesQuery(
        "A", "daily", T0 + HOUR, T0 + timedelta(days=3, hours=1), "org", "sum", "hourly"
    )

    assert query.source_window(None) == (T0 + timedelta(days=1), T0 + timedelta(days=4))
    assert query.source_window(T0 + timedelta(days=1)) == (
        T0 + timedelta(days=2),
        T0 + timedelta(days=4),
    )


hourly_values = st.lists(
    st.one_of(st.none(), st.integers(-1000, 1000), st.floats(-1e6, 1e6)),
    max_size=24 * 9,
)


@given(
    values=hourly_values,
    fn=st.sampled_from(kpi_series.ROLLUPS),
    target=st.sampled_from(["daily", "weekly", "monthly"]),
)
@settings(max_examples=60)
def test_streamed_rollups_equal_the_whole_series_rollup(
    values: list[kpi.Value], fn: kpi_series.Rollup, target: kpi_grid.Bucket
) -> None:
    """Folding window by window as rows stream in gives what rollup() gives at once."""
    start = datetime(2026, 2, 25, tzinfo=UTC)
    snapshots = [
        stored(n, v, bucket_start=start + n * HOUR) for n, v in enumerate(values)
    ]
    query = SeriesQuery(
        "NET_SALES", target, start, start + timedelta(days=30), "org", fn, "hourly"
    )

    streamed = list(rollup_series(query, snapshots))
    whole = rollup([(s.bucket_start, s.value) for s in snapshots], "hourly", target, fn)

    assert [(r.bucket_start, r.value) for r in streamed] == [
        (w.start, w.value) for w in whole
    ]
    assert all(r.bucket == target for r in streamed)


# -- alerts ------------------------------------------------------------------

ALERT = {
    "kpi_code": "NET_SALES",
    "value": 150,
    "threshold": {"comparator": "gt", "value": 100},
    "bucket": "daily",
    "bucket_start": "2026-01-01T00:00:00Z",
    "bucket_end": "2026-01-02T00:00:00Z",
}


def test_an_alert_request_is_parsed_and_keyed() -> None:
    """The key is alert_key of org, code, scope, bucket, start and threshold."""
    ask = alert_from_wire(ALERT, notify=True)

    assert ask == EmitAlert(
        "NET_SALES", "daily", T0, 150, Threshold("gt", 100), "org", True
    )
    assert ask.fires
    assert ask.key("ACME") == kpi.alert_key(
        "ACME", "NET_SALES", "org", "daily", T0, "gt", 100
    )


def test_every_fault_of_an_alert_request_is_reported() -> None:
    """Threshold and window faults come back together at /alert pointers."""
    raw = {
        **ALERT,
        "threshold": {"comparator": "about", "value": None},
        "bucket_start": "2026-01-01T05:00:00Z",
    }

    with pytest.raises(InvalidRequest) as caught:
        alert_from_wire(raw)

    assert pointers(caught.value) == [
        "/alert/bucket_start",
        "/alert/threshold/comparator",
        "/alert/threshold/value",
    ]


def test_a_nan_value_is_an_unknown_value() -> None:
    """NaN (possible through the typed API) never fires and is kept as null."""
    ask = EmitAlert("NET_SALES", "daily", T0, math.nan, Threshold("ne", 1))

    assert ask.value is None
    assert not ask.fires


def emitted(value: kpi.Value, notify: bool = True) -> Alert:
    ask = EmitAlert(
        "NET_SALES", "daily", T0, value, Threshold("gt", 100), notify=notify
    )
    return Alert.emit("alr-1", ask.key("ACME"), ask, T0)


def test_notification_starts_from_what_was_asked() -> None:
    """Fired and asked: pending; fired, not asked: not_requested; not fired: none."""
    assert emitted(150).notification == NotificationState("pending")
    assert emitted(150, notify=False).notification == NotificationState("not_requested")
    assert emitted(50).notification is None


def test_only_a_first_firing_changes_a_stored_alert() -> None:
    """A later evaluation fires a quiet alert once; nothing else changes it."""
    quiet = emitted(50)
    later = T0 + HOUR
    ask = EmitAlert("NET_SALES", "daily", T0, 170, Threshold("gt", 100), notify=True)

    fired = quiet.again(ask, later)

    assert fired is not None
    assert (fired.fired, fired.value, fired.updated_at) == (True, 170, later)
    assert fired.notification == NotificationState("pending")
    assert fired.again(attrs.evolve(ask, value=500), later) is None
    assert quiet.again(attrs.evolve(ask, value=10), later) is None


def test_a_claimed_notification_is_not_due_until_the_claim_runs_out() -> None:
    """A claim hides a pending notification until it expires."""
    alert = emitted(150).claimed(T0 + timedelta(seconds=60))

    assert not alert.due(T0 + timedelta(seconds=59))
    assert alert.due(T0 + timedelta(seconds=60))
    assert not emitted(150, notify=False).due(T0)


def test_settling_counts_every_attempt() -> None:
    """sent and undeliverable add their attempts and drop the claim."""
    claimed = emitted(150).claimed(T0 + HOUR)

    sent = claimed.sent(2, T0)
    failed = claimed.undeliverable(3, "down", T0)

    assert sent.notification == NotificationState("sent", 2)
    assert failed.notification == NotificationState("failed", 3, "down")
    assert failed.failed_payload() == {
        "alert_id": "alr-1",
        "kpi_code": "NET_SALES",
        "attempts": 3,
        "error": "down",
    }
