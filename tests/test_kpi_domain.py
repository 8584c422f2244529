"""The pure KPI rules: the UTC bucket grid, wire timestamps, alerts, rollups."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ipm.domain import kpi, kpi_grid, kpi_series
from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.kpi import (
    COMPARATORS,
    alert_key,
    check_comparator,
    check_kpi_code,
    fires,
)
from ipm.domain.kpi_grid import (
    BUCKETS,
    GRID_MAX,
    bucket_end,
    bucket_range,
    bucket_start,
    check_bucket,
    check_window,
    next_bucket,
)
from ipm.domain.kpi_series import ROLLUPS, RollupRow, check_rollup, rollup
from ipm.domain.timeutil import format_utc, parse_utc

# Zones chosen for their awkward rules: US DST, a 30-minute DST shift and a
# +10:30 base offset, and a zone that sits on UTC half of the year.
LOCAL_ZONES = ("UTC", "America/New_York", "Australia/Lord_Howe", "Europe/London")
TZ_SAFE = settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def offset_zones() -> st.SearchStrategy[timezone]:
    minutes = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)

    return minutes.map(lambda m: timezone(timedelta(minutes=m)))


# Aware instants anywhere on the grid, written in UTC, a fixed offset or a
# zone with DST; the margins keep every conversion to UTC on the grid.
instants = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 11, 29),
    timezones=st.one_of(st.just(UTC), offset_zones(), st.timezones()),
)
buckets = st.sampled_from(BUCKETS)


@pytest.fixture(params=LOCAL_ZONES)
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    # Make sure the switch took: the process's local offset is now the zone's.
    offset = ZoneInfo(request.param).utcoffset(datetime(1970, 1, 1))
    assert offset is not None
    assert time.localtime(0).tm_gmtoff == offset.total_seconds()

    yield request.param

    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


# -- the bucket grid ---------------------------------------------------------


@TZ_SAFE
@given(t=instants, bucket=buckets)
def test_an_instant_lies_in_its_bucket(
    local_zone: str, t: datetime, bucket: kpi_grid.Bucket
) -> None:
    """Every instant lies in [start, end) of its bucket, whatever the local zone."""
    start = bucket_start(bucket, t)
    end = bucket_end(bucket, start)

    assert start <= t < end
    assert start.utcoffset() == timedelta(0)
    assert bucket_start(bucket, start) == start


@TZ_SAFE
@given(t=instants, bucket=buckets)
def test_consecutive_buckets_tile_time(
    local_zone: str, t: datetime, bucket: kpi_grid.Bucket
) -> None:
    """A bucket ends where the next starts, with no gap and no overlap."""
    start = bucket_start(bucket, t)

    end = bucket_end(bucket, start)
    # The last bucket's end is the grid's end, where no bucket starts
    # (hypothesis found 9999-11, whose month ends there).
    assume(end < kpi_grid.GRID_MAX)

    assert next_bucket(bucket, start) == end
    assert bucket_start(bucket, end) == end
    assert bucket_start(bucket, end - timedelta(microseconds=1)) == start


@TZ_SAFE
@given(t=instants, bucket=buckets)
def test_a_boundary_belongs_to_exactly_one_bucket(
    local_zone: str, t: datetime, bucket: kpi_grid.Bucket
) -> None:
    """An instant on a boundary starts the later bucket and is outside the earlier."""
    boundary = bucket_end(bucket, t)
    # The last bucket's end is the grid's end, where no bucket starts.
    assume(boundary < kpi_grid.GRID_MAX)
    before = bucket_start(bucket, boundary - timedelta(microseconds=1))

    owner = bucket_start(bucket, boundary)

    assert owner == boundary
    assert not before <= boundary < bucket_end(bucket, before)


@TZ_SAFE
@given(t=instants)
def test_weeks_start_on_monday_midnight_utc(local_zone: str, t: datetime) -> None:
    """A weekly bucket starts on a Monday at 00:00 UTC and lasts seven days."""
    start = bucket_start("weekly", t)

    assert (start.weekday(), start.hour, start.minute, start.second) == (0, 0, 0, 0)
    assert bucket_end("weekly", start) - start == timedelta(days=7)


@pytest.mark.parametrize(
    ("inside", "start", "end"),
    [
        (utc(2024, 2, 29, 23, 59), utc(2024, 2, 1), utc(2024, 3, 1)),
        (utc(2025, 2, 28, 12), utc(2025, 2, 1), utc(2025, 3, 1)),
        (utc(2000, 2, 29), utc(2000, 2, 1), utc(2000, 3, 1)),
        (utc(2025, 12, 31, 23, 59, 59), utc(2025, 12, 1), utc(2026, 1, 1)),
        (utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1)),
    ],
)
def test_months_end_on_the_right_day(
    local_zone: str, inside: datetime, start: datetime, end: datetime
) -> None:
    """Months end on the 1st of the next, across leap years and New Year."""
    assert bucket_start("monthly", inside) == start
    assert bucket_end("monthly", start) == end


def test_february_lengths_follow_the_leap_rule() -> None:
    """February has 29 days in 2024 and 2000, 28 in 2025 and 1900."""
    lengths = {
        year: bucket_end("monthly", utc(year, 2, 1)) - utc(year, 2, 1)
        for year in (2024, 2000, 2025, 1900)
    }

    assert lengths == {
        2024: timedelta(days=29),
        2000: timedelta(days=29),
        2025: timedelta(days=28),
        1900: timedelta(days=28),
    }


@pytest.mark.parametrize(
    ("bucket", "t", "start"),
    [
        # 06:30 UTC is 01:30 in New York on its spring-forward day.
        ("daily", utc(2026, 3, 8, 6, 30), utc(2026, 3, 8)),
        # 23:30 UTC on a Sunday is Monday morning in Lord Howe.
        ("weekly", utc(2026, 1, 4, 23, 30), utc(2025, 12, 29)),
        ("hourly", utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 1)),
        ("monthly", utc(2026, 3, 31, 23), utc(2026, 3, 1)),
    ],
)
def test_local_clock_changes_do_not_move_the_grid(
    local_zone: str, bucket: kpi_grid.Bucket, t: datetime, start: datetime
) -> None:
    """Instants near local DST changes fall in the same UTC bucket in every zone."""
    assert bucket_start(bucket, t) == start


def test_an_instant_with_an_offset_is_bucketed_by_its_utc_time() -> None:
    """01:00+02:00 on 2 January lies in the daily bucket of 1 January UTC."""
    t = datetime(2026, 1, 2, 1, tzinfo=timezone(timedelta(hours=2)))

    assert bucket_start("daily", t) == utc(2026, 1, 1)


def test_naive_and_off_grid_instants_are_refused() -> None:
    """A naive datetime or one past the grid is a programming error."""
    with pytest.raises(ValueError, match="naive"):
        bucket_start("daily", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="outside the bucket grid"):
        bucket_start("daily", GRID_MAX)
    with pytest.raises(ValueError, match="unknown bucket"):
        bucket_start("yearly", utc(2026, 1, 1))  # type: ignore[arg-type]


@settings(max_examples=60)
@given(t=instants, bucket=buckets, width=st.integers(min_value=0, max_value=40))
def test_bucket_range_lists_the_aligned_starts_in_the_window(
    t: datetime, bucket: kpi_grid.Bucket, width: int
) -> None:
    """bucket_range yields consecutive aligned starts inside [from, to)."""
    to = t + timedelta(hours=width * 7)

    starts = list(bucket_range(bucket, t, to))

    assert all(t <= s < to for s in starts)
    assert all(bucket_start(bucket, s) == s for s in starts)
    assert all(bucket_end(bucket, a) == b for a, b in pairwise(starts))
    if starts:
        assert bucket_start(bucket, starts[0] - timedelta(microseconds=1)) < t
        assert bucket_end(bucket, starts[-1]) >= to


def test_bucket_range_is_empty_for_an_empty_window_and_stops_at_the_grid_end() -> None:
    """An empty or inverted window yields nothing; the grid's end bounds a range."""
    assert list(bucket_range("daily", utc(2026, 1, 2), utc(2026, 1, 1))) == []
    assert list(bucket_range("daily", utc(2026, 1, 1, 1), utc(2026, 1, 2))) == []

    tail = list(bucket_range("monthly", utc(9999, 10, 1), utc(9999, 12, 31)))

    assert tail == [utc(9999, 10, 1), utc(9999, 11, 1)]


# -- wire timestamps ---------------------------------------------------------


@TZ_SAFE
@given(t=instants)
def test_format_then_parse_gives_back_the_instant(local_zone: str, t: datetime) -> None:
    """parse_utc(format_utc(t)) is t, in UTC, in every local zone."""
    text = format_utc(t)

    back = parse_utc(text, "/t")

    assert back == t.astimezone(UTC)  # == across zones is unreliable (PEP 495)
    assert back.tzinfo is UTC
    assert text.endswith("Z") and len(text) in (20, 27)


@settings(max_examples=60)
@given(t=instants, zone=offset_zones())
def test_offsets_are_normalised_to_utc(t: datetime, zone: timezone) -> None:
    """A timestamp written with any offset parses to the same UTC instant."""
    text = t.astimezone(zone).isoformat()

    parsed = parse_utc(text, "/t")

    assert parsed == t.astimezone(UTC)
    assert format_utc(parsed) == format_utc(t)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01t05:30:00z", "2026-01-01T05:30:00Z"),
        ("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00Z"),
        ("2025-12-31T19:00:00-05:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00-00:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.500000Z"),
        ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00.1234569Z", "2026-01-01T00:00:00.123456Z"),
        ("0099-01-01T00:00:00Z", "0099-01-01T00:00:00Z"),
    ],
)
def test_rfc3339_timestamps_parse_to_utc(text: str, expected: str) -> None:
    """RFC 3339 text in any accepted spelling formats back as canonical UTC."""
    assert format_utc(parse_utc(text, "/kpi/bucket_start")) == expected


def test_a_naive_timestamp_is_refused_at_its_pointer() -> None:
    """A timestamp without Z or an offset is a 400 at the field's pointer."""
    with pytest.raises(InvalidRequest) as caught:
        parse_utc("2026-01-01T00:00:00", "/kpi/bucket_start")

    assert caught.value.status == 400
    assert caught.value.details == (
        Problem(
            "/kpi/bucket_start",
            "bucket_start needs a time zone, Z or an offset, such as "
            "2026-01-01T00:00:00Z",
        ),
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-01-01",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00Z",
        "20260101T000000Z",
        "2026-W01-1T00:00:00Z",
        "2026-01-01T00:00:00+0200",
        "2026-01-01T00:00:00+02",
        "2026-01-01T00:00:00Z\n",
        " 2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.Z",
        "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # full-width digits
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-12-31T23:59:60Z",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T00:00:00+01:60",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_malformed_timestamps_are_refused(text: str) -> None:
    """Anything but a real RFC 3339 instant is a 400, never another exception."""
    with pytest.raises(InvalidRequest) as caught:
        parse_utc(text, "/to_utc")

    assert [p.pointer for p in caught.value.details] == ["/to_utc"]
    assert caught.value.message.startswith("to_utc ")


@settings(max_examples=300)
@given(
    t=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)
    )
)
def test_the_canonical_shortcut_reads_what_the_full_parser_reads(t: datetime) -> None:
    """A whole-second Z timestamp parses as its +00:00 spelling (the full path)."""
    text = t.replace(microsecond=0).isoformat() + "Z"

    quick = parse_utc(text, "/t")
    full = parse_utc(text[:-1] + "+00:00", "/t")

    assert quick == full
    assert quick.tzinfo is UTC
    assert format_utc(quick) == text


def test_a_non_string_timestamp_is_refused() -> None:
    """A number where a timestamp belongs is a 400, not a TypeError."""
    with pytest.raises(InvalidRequest):
        parse_utc(1767225600, "/from_utc")  # type: ignore[arg-type]


def test_format_refuses_a_naive_datetime() -> None:
    """format_utc will not guess the zone of a naive datetime."""
    with pytest.raises(ValueError, match="naive"):
        format_utc(datetime(2026, 1, 1))


# -- request checks ----------------------------------------------------------


@pytest.mark.parametrize("bucket", BUCKETS)
def test_an_aligned_window_passes(bucket: kpi_grid.Bucket) -> None:
    """Exactly one bucket of the grid passes check_window."""
    start = bucket_start(bucket, utc(2026, 5, 13, 7, 45))

    check_window(bucket, start, bucket_end(bucket, start))


def test_an_aligned_start_in_a_repeated_local_hour_passes() -> None:
    """Regression: == across zones is False in a repeated hour (PEP 495)."""
    start = datetime(2028, 11, 5, 1, tzinfo=ZoneInfo("America/Halifax"))

    check_window("hourly", start, utc(2028, 11, 5, 5))

    assert alert_key("O", "K", "org", "hourly", start, "gt", 1) == key(
        orgcode="O", kpi_code="K", bucket_start=utc(2028, 11, 5, 4), threshold_value=1
    )


def test_a_misaligned_start_names_the_aligned_values() -> None:
    """A start off the grid is a 400 naming the aligned start and its end."""
    with pytest.raises(InvalidRequest) as caught:
        check_window("hourly", utc(2026, 1, 1, 3, 15), utc(2026, 1, 1, 4, 15))

    assert caught.value.details == (
        Problem(
            "/kpi/bucket_end",
            "bucket_end must be the start of the next hourly bucket: "
            "2026-01-01T04:00:00Z",
        ),
        Problem(
            "/kpi/bucket_start",
            "bucket_start must be aligned to the hourly grid: 2026-01-01T03:00:00Z",
        ),
    )
    assert "2026-01-01T03:00:00Z" in caught.value.message


def test_a_wrong_end_alone_is_reported_under_the_given_prefix() -> None:
    """An aligned start with a wrong end yields one Problem, at the prefix given."""
    with pytest.raises(InvalidRequest) as caught:
        check_window("weekly", utc(2025, 12, 29), utc(2026, 1, 1), "/alert")

    assert caught.value.details == (
        Problem(
            "/alert/bucket_end",
            "bucket_end must be the start of the next weekly bucket: "
            "2026-01-05T00:00:00Z",
        ),
    )


def test_a_start_past_the_grid_is_a_400() -> None:
    """A bucket_start at the grid's end is refused, not a crash."""
    with pytest.raises(InvalidRequest, match="before 9999-12-01T00:00:00Z"):
        check_window("monthly", utc(9999, 12, 1), utc(9999, 12, 31))


@pytest.mark.parametrize("code", ["CODE1", "NET_SALES", "A", "A" * 64, "X_1_"])
def test_valid_kpi_codes_pass(code: str) -> None:
    """Upper-case codes of 1-64 characters starting with a letter pass."""
    assert check_kpi_code(code) == code


@pytest.mark.parametrize(
    "code",
    ["", "net_sales", "1CODE", "_CODE", "A" * 65, "NET-SALES", "CODE1\n", "CÖDE"],
)
def test_invalid_kpi_codes_are_refused(code: str) -> None:
    """A code outside KPI_CODE_PATTERN is a 400 at /kpi/kpi_code."""
    with pytest.raises(InvalidRequest) as caught:
        check_kpi_code(code)

    assert caught.value.details[0].pointer == "/kpi/kpi_code"


def test_bucket_and_comparator_names_are_checked() -> None:
    """Known names pass through; anything else is a 400 listing the choices."""
    assert [check_bucket(b) for b in BUCKETS] == list(BUCKETS)
    assert [check_comparator(c) for c in COMPARATORS] == list(COMPARATORS)

    with pytest.raises(InvalidRequest, match="hourly, daily, weekly, monthly"):
        check_bucket("yearly")
    with pytest.raises(InvalidRequest, match="gt, gte, lt, lte, eq, ne"):
        check_comparator(">")


# -- alerts ------------------------------------------------------------------

TRUTH = {
    # (value vs threshold): gt, gte, lt, lte, eq, ne
    "below": (False, False, True, True, False, True),
    "equal": (False, True, False, True, True, False),
    "above": (True, True, False, False, False, True),
}


@pytest.mark.parametrize(
    ("value", "threshold", "relation"),
    [
        (1, 2, "below"),
        (2, 2, "equal"),
        (3, 2, "above"),
        (2.0, 2, "equal"),
        (Decimal("2.00"), 2.0, "equal"),
        (Decimal("0.1"), 0.1, "below"),  # exact: the float 0.1 is a bit above
        (10**20, 1e20, "equal"),
        (10**20 + 1, 1e20, "above"),
        (-math.inf, 0, "below"),
    ],
)
def test_fires_follows_the_truth_table(
    value: kpi.Number, threshold: kpi.Number, relation: str
) -> None:
    """Each comparator fires exactly when its relation holds, compared exactly."""
    outcome = tuple(fires(value, c, threshold) for c in COMPARATORS)

    assert outcome == TRUTH[relation]


@pytest.mark.parametrize(
    ("value", "threshold"),
    [
        (None, 1),
        (math.nan, 1),
        (Decimal("NaN"), 1),
        (Decimal("sNaN"), 1),
        (1, math.nan),
        (1, Decimal("NaN")),
    ],
)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_missing_or_nan_never_fires(
    value: kpi.Number | None, threshold: kpi.Number, comparator: kpi.Comparator
) -> None:
    """A None or NaN value, or a NaN threshold, fires under no comparator."""
    assert fires(value, comparator, threshold) is False


def test_fires_refuses_bools_and_unknown_comparators() -> None:
    """True is not a number on the wire, and an unknown comparator is a bug."""
    with pytest.raises(TypeError):
        fires(True, "eq", 1)
    with pytest.raises(ValueError, match="unknown comparator"):
        fires(1, "between", 1)  # type: ignore[arg-type]


numbers = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.decimals(allow_nan=False)
)


@settings(max_examples=100)
@given(value=numbers, threshold=numbers)
def test_comparators_agree_with_each_other(
    value: kpi.Number, threshold: kpi.Number
) -> None:
    """Exactly one of lt, eq, gt fires; gte, lte and ne follow from them."""
    lt, eq, gt = (fires(value, c, threshold) for c in ("lt", "eq", "gt"))

    assert [lt, eq, gt].count(True) == 1
    assert fires(value, "gte", threshold) == (gt or eq)
    assert fires(value, "lte", threshold) == (lt or eq)
    assert fires(value, "ne", threshold) == (not eq)


KEY: dict[str, object] = {
    "orgcode": "ORG1",
    "kpi_code": "NET_SALES",
    "scope": "org",
    "bucket": "hourly",
    "bucket_start": utc(2026, 1, 1),
    "comparator": "gt",
    "threshold_value": 100,
}
OTHER: dict[str, object] = {
    "orgcode": "ORG2",
    "kpi_code": "GROSS",
    "scope": "store",
    "bucket": "daily",
    "bucket_start": utc(2026, 1, 2),
    "comparator": "lte",
    "threshold_value": 101,
}


def key(**changes: object) -> str:
    return alert_key(**{**KEY, **changes})  # type: ignore[arg-type]


def test_alert_key_is_pinned() -> None:
    """The key is the SHA-256 of the documented canonical form, byte for byte."""
    canonical = (
        b'["ipm.kpi.alert/1","ORG1","NET_SALES","org","hourly",'
        b'"2026-01-01T00:00:00Z","gt","1e2"]'
    )

    assert key() == hashlib.sha256(canonical).hexdigest()
    assert key() == "27b0a1c5387bf04a692eb476a7e2c59998194ddf88180818e22b5fe3b274403a"


@pytest.mark.parametrize(
    "threshold", [100, 100.0, Decimal("100"), Decimal("100.000"), Decimal("1E+2")]
)
def test_numerically_equal_thresholds_share_a_key(threshold: kpi.Number) -> None:
    """1, 1.0 and Decimal("1.00") name the same rule, so they share a key."""
    assert key(threshold_value=threshold) == key()


def test_a_float_threshold_keys_as_its_shortest_decimal() -> None:
    """0.1 and Decimal("0.1") share a key; 0.1 and 0.10000000000000002 do not."""
    tenth = key(threshold_value=0.1)

    assert tenth == key(threshold_value=Decimal("0.1"))
    assert tenth != key(threshold_value=0.10000000000000002)
    assert key(threshold_value=0.0) == key(threshold_value=-0.0)


@pytest.mark.parametrize("part", sorted(KEY))
def test_every_part_of_the_alert_changes_the_key(part: str) -> None:
    """Changing any one part of the alert gives a different key."""
    assert key(**{part: OTHER[part]}) != key()


def test_alert_key_ignores_how_the_start_is_written() -> None:
    """The same instant written with an offset gives the same key."""
    plus_two = utc(2026, 1, 1).astimezone(timezone(timedelta(hours=2)))

    assert key(bucket_start=plus_two) == key()


def test_alert_key_refuses_a_misaligned_start() -> None:
    """A start that does not begin its bucket is a programming error."""
    with pytest.raises(ValueError, match="not aligned"):
        key(bucket_start=utc(2026, 1, 1, 0, 30))


@pytest.mark.parametrize(
    ("number", "canonical"),
    [
        (0, "0"),
        (Decimal("-0.00"), "0"),
        (1500, "15e2"),
        (1.5, "15e-1"),
        (-2.50, "-25e-1"),
        (1e300, "1e300"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
    ],
)
def test_canonical_number_spelling(number: kpi.Number, canonical: str) -> None:
    """Numbers spell as trimmed digits and an exponent."""
    assert kpi.canonical_number(number) == canonical


# -- rollups -----------------------------------------------------------------

HOURS = [(utc(2026, 1, 1, h), v) for h, v in enumerate([5, 1, 7, 3])] + [
    (utc(2026, 1, 2, 0), 10),
    (utc(2026, 1, 2, 1), 20),
]


@pytest.mark.parametrize(
    ("fn", "first", "second"),
    [
        ("sum", 16, 30),
        ("min", 1, 10),
        ("max", 7, 20),
        ("avg", 4.0, 15.0),
        ("last", 3, 20),
    ],
)
def test_each_rollup_folds_its_window(
    fn: kpi_series.Rollup, first: kpi.Number, second: kpi.Number
) -> None:
    """Hours fold into days with the chosen function, one row per day."""
    rows = rollup(reversed(HOURS), "hourly", "daily", fn)

    assert rows == [
        RollupRow(utc(2026, 1, 1), utc(2026, 1, 2), first, 4),
        RollupRow(utc(2026, 1, 2), utc(2026, 1, 3), second, 2),
    ]


def test_missing_values_are_skipped_and_not_counted() -> None:
    """None and NaN points are left out; a window left empty yields no row."""
    points: list[tuple[datetime, kpi.Number | None]] = [
        (utc(2026, 1, 1, 0), 4),
        (utc(2026, 1, 1, 1), None),
        (utc(2026, 1, 1, 2), math.nan),
        (utc(2026, 1, 2, 0), None),
    ]

    rows = rollup(points, "hourly", "daily", "last")

    assert rows == [RollupRow(utc(2026, 1, 1), utc(2026, 1, 2), 4, 1)]


def test_decimal_sums_are_exact_and_mix_with_floats() -> None:
    """Decimal windows sum exactly; a float in them counts as its shortest decimal."""
    points: list[tuple[datetime, kpi.Number]] = [
        (utc(2026, 1, 1), Decimal("0.10")),
        (utc(2026, 1, 2), 0.2),
        (utc(2026, 1, 3), 1),
    ]

    (row,) = rollup(points, "daily", "monthly", "sum")
    (mean,) = rollup(points, "daily", "monthly", "avg")

    assert row.value == Decimal("1.30")
    assert mean.value == Decimal("0." + "4" + "3" * 33)  # 34 digits
    assert row.source_count == 3


def test_sums_beyond_float_range_give_infinity() -> None:
    """Regression: math.fsum's OverflowError becomes inf instead of escaping."""
    huge: list[tuple[datetime, kpi.Number]] = [
        (utc(2026, 1, 1, 0), -1.7976931348623157e308),
        (utc(2026, 1, 1, 1), -1e292),
    ]
    giant_ints: list[tuple[datetime, kpi.Number]] = [
        (utc(2026, 1, 1, 0), 10**400),
        (utc(2026, 1, 1, 1), 1.5),
    ]

    (total,) = rollup(huge, "hourly", "daily", "sum")
    (mixed,) = rollup(giant_ints, "hourly", "daily", "avg")

    assert total.value == -math.inf
    assert mixed.value == math.inf


def test_big_integers_beside_a_float_keep_their_low_bits() -> None:
    """Regression: 2**53 + 1 was turned into a float before the sum, so the
    day summed to 2**53 instead of 2**53 + 2 (and averaged a unit low)."""
    points: list[tuple[datetime, kpi.Number]] = [
        (utc(2026, 1, 1, 0), 2**53 + 1),
        (utc(2026, 1, 1, 1), 1.0),
    ]

    (total,) = rollup(points, "hourly", "daily", "sum")
    (mean,) = rollup(points, "hourly", "daily", "avg")

    assert total.value == 9007199254740994.0
    assert mean.value == 4503599627370497.0


@pytest.mark.parametrize(
    ("values", "exact"),
    [
        ([2**1024 + 3, -(2**1024), 0.5], 3.5),
        ([10**400 + 1, -(10**400), 0.5], 1.5),
        ([10**400, 1.5, -(10**400), 2**53 + 1], 9007199254740994.0),
        ([-(10**400), 2**53 + 1, 10**400, 1.5], 9007199254740994.0),
    ],
)
def test_integers_past_float_range_still_sum_exactly(
    values: list[kpi.Number], exact: float
) -> None:
    """Regression: the fallback added in 100-digit decimal, rounding at each
    step: off by 10**208, and dependent on the order of the values."""
    points = [(utc(2026, 1, 1, hour), value) for hour, value in enumerate(values)]

    (total,) = rollup(points, "hourly", "daily", "sum")

    assert total.value == exact


@given(
    st.lists(
        st.one_of(
            st.integers(min_value=-(2**300), max_value=2**300),
            # Past float range: the exact sum may still be small.
            st.integers(min_value=2**1023, max_value=2**1100).flatmap(
                lambda big: st.sampled_from([big, -big])
            ),
            st.floats(allow_nan=False, allow_infinity=False, width=64),
        ),
        min_size=1,
        max_size=12,
    ).filter(lambda values: any(isinstance(v, float) for v in values))
)
def test_a_float_window_sums_to_its_exact_sum_rounded_once(
    values: list[int | float],
) -> None:
    """Ints and floats together: the float nearest the exact sum."""
    points: list[tuple[datetime, kpi.Number]] = [
        (utc(2026, 1, 1, hour), value) for hour, value in enumerate(values)
    ]
    exact = sum(Fraction(value) for value in values)
    try:
        expected = float(exact)
    except OverflowError:
        expected = math.inf if exact > 0 else -math.inf

    (total,) = rollup(points, "hourly", "daily", "sum")

    assert total.value == expected


def test_days_roll_up_into_weeks_that_start_on_monday() -> None:
    """Daily points from Sunday to Monday fall into two weeks."""
    points = [(utc(2026, 1, 4), 1), (utc(2026, 1, 5), 2), (utc(2026, 1, 11), 3)]

    rows = rollup(points, "daily", "weekly", "sum")

    assert [(r.start, r.value) for r in rows] == [
        (utc(2025, 12, 29), 1),
        (utc(2026, 1, 5), 5),
    ]


hourly_points = st.dictionaries(
    st.integers(min_value=0, max_value=24 * 120).map(
        lambda h: utc(2024, 1, 1) + timedelta(hours=h)
    ),
    st.integers(min_value=-(10**6), max_value=10**6),
    max_size=60,
)


@settings(max_examples=60)
@given(points=hourly_points, target=st.sampled_from(("daily", "weekly", "monthly")))
def test_rollups_conserve_counts_and_totals(
    points: dict[datetime, int], target: kpi_grid.Bucket
) -> None:
    """Counts and sums add up to the input; min <= avg <= max in every window."""
    series = list(points.items())

    rows = {fn: rollup(series, "hourly", target, fn) for fn in ROLLUPS}

    assert sum(r.source_count for r in rows["sum"]) == len(series)
    assert sum(r.value for r in rows["sum"]) == sum(points.values())
    assert [r.start for r in rows["sum"]] == sorted({r.start for r in rows["sum"]})
    for low, mean, high in zip(rows["min"], rows["avg"], rows["max"], strict=True):
        assert low.value <= mean.value <= high.value
    for row in rows["last"]:
        latest = max(t for t in points if row.start <= t < row.end)
        assert row.value == points[latest]


@pytest.mark.parametrize(
    ("source", "target", "reason"),
    [
        ("daily", "daily", "must be finer"),
        ("daily", "hourly", "must be finer"),
        ("monthly", "weekly", "must be finer"),
        ("weekly", "monthly", "weeks do not nest in months"),
    ],
)
def test_rollups_that_do_not_nest_are_refused(
    source: kpi_grid.Bucket, target: kpi_grid.Bucket, reason: str
) -> None:
    """Rolling up to a finer, equal or non-nesting bucket is a 400."""
    with pytest.raises(InvalidRequest, match=reason):
        check_rollup(source, target)
    with pytest.raises(InvalidRequest, match=reason):
        rollup([], source, target, "sum")


def test_an_unknown_rollup_function_is_refused() -> None:
    """Only the functions in ROLLUPS exist."""
    with pytest.raises(InvalidRequest, match="sum, min, max, avg, last"):
        rollup([], "hourly", "daily", "median")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "points",
    [
        [(utc(2026, 1, 1, 0, 30), 1)],
        [(utc(2026, 1, 1), 1), (utc(2026, 1, 1), 2)],
    ],
)
def test_misaligned_or_repeated_points_are_a_bug(
    points: list[tuple[datetime, int]],
) -> None:
    """Storage keeps one aligned snapshot per bucket, so anything else is a bug."""
    with pytest.raises(ValueError, match="misaligned or repeated"):
        rollup(points, "hourly", "daily", "sum")
