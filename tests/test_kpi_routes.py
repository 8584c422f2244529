"""KPI snapshots through handle(): recording, revisions, events and queries."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import ipm
from ipm import schemas
from ipm.api.handlers import kpis as kpi_handlers
from ipm.domain.pagination import TokenScope
from ipm.domain.timeutil import format_utc
from tests.conftest import ORG, OTHER, Caller

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def stamp(t: datetime) -> str:
    return format_utc(t)


_HUNDREDS = object()


def hourly(n: int, value: Any = _HUNDREDS, **overrides: Any) -> dict[str, Any]:
    """The wire form of hourly snapshot ``n`` (hours after T0) of NET_SALES."""
    start = T0 + n * HOUR
    kpi = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "bucket_start": stamp(start),
        "bucket_end": stamp(start + HOUR),
        "value": 100 * n if value is _HUNDREDS else value,
    }
    kpi.update(overrides)

    return kpi


def record(call: Caller, kpi: dict[str, Any], **extra: Any) -> tuple[int, Any]:
    status, body = call("/kpi/record", {"kpi": kpi, **extra})
    if status == 200:
        assert schemas.validate("KpiRecordResponse", body["data"]) == []
        return status, body["data"]["kpi"]

    return status, body["error"]


def query(call: Caller, **body: Any) -> list[dict[str, Any]]:
    """Every row of a query, following next_token to the last page."""
    base = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": stamp(T0),
        "to_utc": stamp(T0 + 1000 * HOUR),
        **body,
    }
    rows: list[dict[str, Any]] = []
    token = None
    while True:
        status, answer = call("/kpi/query", {**base, "next_token": token})
        assert status == 200, answer
        assert schemas.validate("KpiQueryResponse", answer["data"]) == []
        rows += answer["data"]["series"]
        token = answer["data"]["next_token"]
        if token is None:
            return rows


def kpi_events(call: Caller) -> list[dict[str, Any]]:
    _, body = call(
        "/cdc/list", {"service": "ipm", "action_prefix": "kpi.", "limit": 256}
    )
    return [
        event for event in body["data"]["items"] if event["action"] == "kpi.recorded"
    ]


# -- recording ---------------------------------------------------------------


def test_a_new_snapshot_is_created_at_revision_one(call: Caller) -> None:
    """Recording a new key creates it, in scope org unless told otherwise."""
    status, kpi = record(call, hourly(3, 12.5))

    assert status == 200
    assert kpi["revision"] == "1"
    assert kpi["scope"] == "org"
    assert (kpi["bucket_start"], kpi["bucket_end"]) == (
        stamp(T0 + 3 * HOUR),
        stamp(T0 + 4 * HOUR),
    )
    assert kpi["value"] == 12.5
    assert kpi["kpi_id"]


def test_an_update_without_expected_revision_is_428(call: Caller) -> None:
    """Recording an existing key without expected_revision is refused with 428."""
    record(call, hourly(1))

    status, error = record(call, hourly(1, 7))

    assert status == 428
    assert error["code"] == "revision_required"
    assert error["details"][0]["pointer"] == "/expected_revision"


def test_a_stale_revision_is_409(call: Caller) -> None:
    """An update naming an older revision is refused with 409, nothing changes."""
    _, first = record(call, hourly(1))
    record(call, hourly(1, 7), expected_revision=first["revision"])

    status, error = record(call, hourly(1, 8), expected_revision=first["revision"])

    assert (status, error["code"]) == (409, "revision_mismatch")
    assert [row["value"] for row in query(call)] == [7]


def test_an_update_bumps_the_revision_and_keeps_the_identity(call: Caller) -> None:
    """A current revision updates the value; id and created_at stay."""
    _, first = record(call, hourly(1))

    status, second = record(call, hourly(1, 7), expected_revision=first["revision"])

    assert status == 200
    assert second["value"] == 7
    assert second["revision"] != first["revision"]
    assert (second["kpi_id"], second["created_at"]) == (
        first["kpi_id"],
        first["created_at"],
    )


def test_the_same_value_with_the_current_revision_changes_nothing(call: Caller) -> None:
    """Re-recording the same value is harmless: no new revision, no event."""
    _, first = record(call, hourly(1, 5))
    events_before = kpi_events(call)

    status, again = record(call, hourly(1, 5.0), expected_revision=first["revision"])

    assert status == 200
    assert again == first
    assert kpi_events(call) == events_before


def test_the_same_value_without_a_revision_is_still_428(call: Caller) -> None:
    """The revision rule does not look at the value: no revision, no update."""
    record(call, hourly(1, 5))

    status, error = record(call, hourly(1, 5))

    assert (status, error["code"]) == (428, "revision_required")


def test_a_revision_for_a_missing_snapshot_is_409(call: Caller) -> None:
    """expected_revision on a key that does not exist is stale by definition."""
    status, error = record(call, hourly(1), expected_revision="1")

    assert (status, error["code"]) == (409, "revision_mismatch")
    assert query(call) == []


def test_each_change_is_an_event_with_old_and_new_value(call: Caller) -> None:
    """kpi.recorded carries old and new value: op c on create, op u on update."""
    _, first = record(call, hourly(2, 10), reason="nightly load")
    record(call, hourly(2, None), expected_revision=first["revision"])

    created, updated = kpi_events(call)

    assert (created["op"], updated["op"]) == ("c", "u")
    assert (created["payload"]["old_value"], created["payload"]["new_value"]) == (
        None,
        10,
    )
    assert (updated["payload"]["old_value"], updated["payload"]["new_value"]) == (
        10,
        None,
    )
    assert created["logical_guid"] == first["kpi_id"]
    assert created["audit"]["reason"] == "nightly load"
    assert created["audit"]["actor"] == "ops@acme.example"
    assert updated["payload"]["revision"] == "2"
    assert schemas.validate("event.ipm.kpi.recorded", updated["payload"]) == []


def test_a_misaligned_window_names_the_aligned_values(call: Caller) -> None:
    """A start off the grid and a wrong end are one 400 naming both fixes."""
    kpi = hourly(
        0, bucket_start="2026-01-01T03:17:00Z", bucket_end="2026-01-01T03:30:00Z"
    )

    status, error = record(call, kpi)

    assert (status, error["code"]) == (400, "invalid_request")
    details = {d["pointer"]: d["message"] for d in error["details"]}
    assert details["/kpi/bucket_start"].endswith("2026-01-01T03:00:00Z")
    assert details["/kpi/bucket_end"].endswith("2026-01-01T04:00:00Z")


@pytest.mark.parametrize(
    ("bucket", "start", "end", "aligned"),
    [
        (
            "weekly",
            "2026-01-06T00:00:00Z",
            "2026-01-13T00:00:00Z",
            "2026-01-05T00:00:00Z",
        ),
        (
            "monthly",
            "2024-02-02T00:00:00Z",
            "2024-03-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
        ),
        (
            "daily",
            "2026-01-01T12:00:00Z",
            "2026-01-02T00:00:00Z",
            "2026-01-01T00:00:00Z",
        ),
    ],
)
def test_a_misaligned_start_of_each_bucket_is_refused(
    call: Caller, bucket: str, start: str, end: str, aligned: str
) -> None:
    """Weeks start on Monday, months on the 1st, days at midnight UTC."""
    kpi = hourly(0, bucket=bucket, bucket_start=start, bucket_end=end)

    status, error = record(call, kpi)

    assert status == 400
    assert {
        "pointer": "/kpi/bucket_start",
        "message": f"bucket_start must be aligned to the {bucket} grid: {aligned}",
    } in error["details"]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        ("2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"),
        ("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ],
)
def test_month_ends_are_accepted(call: Caller, start: str, end: str) -> None:
    """February ends after 29 days in a leap year, 28 otherwise; December rolls over."""
    status, kpi = record(
        call, hourly(0, bucket="monthly", bucket_start=start, bucket_end=end)
    )

    assert status == 200
    assert kpi["bucket_end"] == end


def test_a_wrong_month_end_is_refused(call: Caller) -> None:
    """A February 2025 that claims 29 days is told the real end."""
    kpi = hourly(
        0,
        bucket="monthly",
        bucket_start="2025-02-01T00:00:00Z",
        bucket_end="2025-03-02T00:00:00Z",
    )

    status, error = record(call, kpi)

    assert status == 400
    assert error["details"] == [
        {
            "pointer": "/kpi/bucket_end",
            "message": "bucket_end must be the start of the next monthly bucket: "
            "2025-03-01T00:00:00Z",
        }
    ]


def test_offsets_are_normalised_to_utc(call: Caller) -> None:
    """A start written with an offset is the same snapshot as its UTC spelling."""
    kpi = hourly(
        0,
        bucket_start="2026-01-01T02:00:00+02:00",
        bucket_end="2026-01-01T03:00:00+02:00",
    )

    _, created = record(call, kpi)
    status, _ = record(call, hourly(0, 1))

    assert created["bucket_start"] == "2026-01-01T00:00:00Z"
    assert status == 428


@pytest.mark.parametrize(
    "start",
    ["2026-01-01T00:00:00", "2026-01-01", "2026-01-01 00:00:00Z", "20260101T000000Z"],
)
def test_naive_and_loose_timestamps_are_refused(call: Caller, start: str) -> None:
    """A timestamp without a zone, or not RFC 3339, is a 400 at its pointer."""
    status, error = record(call, hourly(0, bucket_start=start))

    assert status == 400
    assert "/kpi/bucket_start" in [d["pointer"] for d in error["details"]]


@pytest.mark.parametrize(
    "code", ["net_sales", "NET-SALES", "1SALES", "NET_SALES\n", "A" * 65]
)
def test_malformed_kpi_codes_are_refused(call: Caller, code: str) -> None:
    """kpi_code must match ^[A-Z][A-Z0-9_]{0,63}$."""
    status, error = record(call, hourly(0, kpi_code=code))

    assert status == 400
    assert [d["pointer"] for d in error["details"]] == ["/kpi/kpi_code"]


def test_orgs_have_their_own_snapshots(
    app: ipm.Application, call: Caller, other_key: str
) -> None:
    """The same key in another org is another snapshot, invisible to the first."""
    other = Caller(app, other_key, OTHER)
    record(call, hourly(1, 1))

    status, theirs = record(other, hourly(1, 2))

    assert (status, theirs["revision"]) == (200, "1")
    assert [row["value"] for row in query(call)] == [1]
    assert [row["value"] for row in query(other)] == [2]


# -- querying ----------------------------------------------------------------


def test_query_returns_the_window_ordered_with_latest_revisions(call: Caller) -> None:
    """The series holds bucket_start in [from_utc, to_utc), in time order."""
    for n in (5, 1, 4, 2, 3, 0):
        record(call, hourly(n))
    _, two = record(call, hourly(2, 999), expected_revision="1")

    rows = query(call, from_utc=stamp(T0 + HOUR), to_utc=stamp(T0 + 4 * HOUR))

    assert [row["value"] for row in rows] == [100, 999, 300]
    assert rows[1] == two


def test_adjacent_windows_count_a_boundary_once(call: Caller) -> None:
    """Two windows that meet at an instant split the series with no overlap."""
    for n in range(6):
        record(call, hourly(n))
    middle = stamp(T0 + 3 * HOUR)

    left = query(call, to_utc=middle)
    right = query(call, from_utc=middle)

    assert [r["value"] for r in left] == [0, 100, 200]
    assert [r["value"] for r in right] == [300, 400, 500]


def test_bounds_finer_than_a_microsecond_hold_exactly_what_they_name(
    call: Caller,
) -> None:
    """Regression: the query truncated such bounds while a kpis export
    rounded them up, so the same window gave other rows: a to_utc of
    02:00:00.0000001Z left out the bucket at 02:00, a from_utc of it took
    that bucket in. [from, to) now holds exactly the instants it names."""
    for n in range(1, 4):
        record(call, hourly(n))
    just_after_two = "2026-01-01T02:00:00.0000001Z"

    up_to = query(call, from_utc=stamp(T0 + HOUR), to_utc=just_after_two)
    from_ = query(call, from_utc=just_after_two, to_utc=stamp(T0 + 4 * HOUR))

    assert [row["value"] for row in up_to] == [100, 200]
    assert [row["value"] for row in from_] == [300]


def test_from_after_to_is_400_and_an_empty_window_is_empty(call: Caller) -> None:
    """from_utc after to_utc is refused; from_utc equal to to_utc finds nothing."""
    record(call, hourly(0))
    body = {"kpi_code": "NET_SALES", "bucket": "hourly"}

    status, answer = call(
        "/kpi/query", {**body, "from_utc": stamp(T0 + HOUR), "to_utc": stamp(T0)}
    )
    same = query(call, from_utc=stamp(T0), to_utc=stamp(T0))

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert answer["error"]["details"][0]["pointer"] == "/to_utc"
    assert same == []


def test_pages_follow_each_other_without_gap_or_repeat(call: Caller) -> None:
    """Paging three at a time walks the series once, in order."""
    for n in range(10):
        record(call, hourly(n))

    rows = query(call, limit=3)

    assert [row["value"] for row in rows] == [100 * n for n in range(10)]


def test_a_snapshot_added_behind_the_cursor_is_not_repeated(call: Caller) -> None:
    """Keyset pages stay stable while earlier buckets are recorded."""
    for n in range(2, 8):
        record(call, hourly(n))
    body = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": stamp(T0),
        "to_utc": stamp(T0 + 10 * HOUR),
        "limit": 3,
    }
    _, first = call("/kpi/query", body)

    record(call, hourly(0))
    _, second = call("/kpi/query", {**body, "next_token": first["data"]["next_token"]})

    values = [r["value"] for r in first["data"]["series"] + second["data"]["series"]]
    assert values == [200, 300, 400, 500, 600, 700]


def _first_page_of_four(call: Caller) -> tuple[dict[str, Any], dict[str, Any]]:
    """Four hourly snapshots; the query of two a page, and its first answer."""
    for n in range(4):
        record(call, hourly(n))
    body = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": stamp(T0),
        "to_utc": stamp(T0 + 10 * HOUR),
        "limit": 2,
    }
    _, first = call("/kpi/query", body)

    return body, first


def test_a_token_reused_with_other_filters_is_refused(call: Caller) -> None:
    """A page token is bound to the query it was issued for."""
    body, first = _first_page_of_four(call)

    status, answer = call(
        "/kpi/query",
        {**body, "scope": "store:1", "next_token": first["data"]["next_token"]},
    )

    assert (status, answer["error"]["code"]) == (400, "invalid_token")


def test_a_token_follows_the_instants_not_how_they_are_written(
    call: Caller,
) -> None:
    """The next page may spell the same window with another offset, and
    the default scope by name: it is the same query."""
    body, first = _first_page_of_four(call)
    respelled = {
        **body,
        "from_utc": (T0 + 5 * HOUR).isoformat().replace("+00:00", "+05:00"),
        "to_utc": (T0 + 10 * HOUR).isoformat(timespec="microseconds"),
        "scope": "org",
        "next_token": first["data"]["next_token"],
    }

    status, second = call("/kpi/query", respelled)

    assert status == 200
    values = [r["value"] for r in first["data"]["series"] + second["data"]["series"]]
    assert values == [0, 100, 200, 300]


def test_a_token_bound_as_before_still_pages_on(call: Caller) -> None:
    """A token issued before tokens were bound to instants (a query with
    ipm's own spelling and no scope, the usual case) is taken after an
    upgrade: the default scope is bound as absent, as it was then."""
    body, _ = _first_page_of_four(call)
    filters = {
        name: body.get(name)
        for name in ("kpi_code", "bucket", "from_utc", "to_utc", "scope", "rollup")
    }
    scope = TokenScope(call.org or "", "/kpi/query", filters)
    token = call.app.tokens.issue(scope, [stamp(T0 + HOUR)])

    status, second = call("/kpi/query", {**body, "next_token": token})

    assert status == 200
    assert [r["value"] for r in second["data"]["series"]] == [200, 300]


@pytest.mark.parametrize(
    "scope",
    [
        "store:S1\n",
        "store\x00S1",
        "store\u2028S1",
        " store:S1",
        "S1\u00a0",
        "store:S1\u200b",
        "store:\u202eS1",
        "store:E\u0301",
        "store:S014\u200d",
        "\u200cstore:S014",
        "store:\u200cS014",
    ],
)
def test_scopes_that_would_look_like_others_are_refused(
    call: Caller, scope: str
) -> None:
    """A control character, a line break or white space at an end would make
    a scope print like another one: a 400 at its pointer, nothing stored."""
    status, error = record(call, hourly(0, scope=scope))

    assert status == 400
    assert [d["pointer"] for d in error["details"]] == ["/kpi/scope"]
    assert kpi_events(call) == []


def test_a_refused_scope_is_said_in_words(call: Caller) -> None:
    """The 400 says the rule, not the schema's pattern."""
    status, error = record(call, hourly(0, scope="store:S1 "))

    assert status == 400
    assert [d["message"] for d in error["details"]] == [
        "must not hold control, format or line-break characters (a zero-width "
        "joiner only after a character that is neither ASCII nor a space), nor "
        "begin or end with white space"
    ]


def test_a_scope_recorded_before_the_rule_can_still_be_read(tmp_path: Path) -> None:
    """Regression: a scope recorded before the rule (a trailing space) could
    no longer be queried: a 400, its series unreadable. Reads take any
    scope a store may hold; recording a new one keeps the rule."""
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        key = app.create_api_key("ops@acme.example", [ORG])
        caller = Caller(app, key, ORG)
        assert record(caller, hourly(0, 7, scope="store:S1"))[0] == 200
        with sqlite3.connect(tmp_path / "ipm.sqlite") as conn:
            conn.execute("UPDATE kpis SET scope = 'store:S1 '")
        conn.close()

        found = query(caller, scope="store:S1 ")
        refused, _ = record(caller, hourly(1, scope="store:S1 "))

    assert [(r["scope"], r["value"]) for r in found] == [("store:S1 ", 7)]
    assert refused == 400


def test_scopes_may_hold_inner_spaces_and_any_script(call: Caller) -> None:
    """Free text otherwise: an inner space, accents, CJK, emoji joined by a
    zero-width joiner, a Persian word with its zero-width non-joiner."""
    scopes = [
        "store 14",
        "Zürich 北",
        "\U0001f469\u200d\U0001f4bb",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
    ]
    for n, scope in enumerate(scopes):
        assert record(call, hourly(n, scope=scope))[0] == 200
        assert [r["scope"] for r in query(call, scope=scope)] == [scope]


def test_query_reads_one_scope(call: Caller) -> None:
    """scope narrows the series and defaults to org."""
    record(call, hourly(0, 1))
    record(call, hourly(0, 2, scope="store:S014"))

    assert [r["value"] for r in query(call)] == [1]
    assert [r["value"] for r in query(call, scope="store:S014")] == [2]


# -- rollups -----------------------------------------------------------------


def fill_two_days(call: Caller) -> None:
    """48 hourly values: hour n of the first two days holds n; hour 5 is null."""
    for n in range(48):
        record(call, hourly(n, None if n == 5 else n))


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("sum", [sum(range(24)) - 5, sum(range(24, 48))]),
        ("min", [0, 24]),
        ("max", [23, 47]),
        ("avg", [(sum(range(24)) - 5) / 23, sum(range(24, 48)) / 24]),
        ("last", [23, 47]),
    ],
)
def test_rollup_folds_hours_into_days(
    call: Caller, function: str, expected: list[Any]
) -> None:
    """Each day of the rollup folds its hours; a null hour is skipped."""
    fill_two_days(call)

    rows = query(
        call,
        bucket="daily",
        to_utc=stamp(T0 + 48 * HOUR),
        rollup={"function": function, "from_bucket": "hourly"},
    )

    assert [r["value"] for r in rows] == pytest.approx(expected)
    assert [r["bucket_start"] for r in rows] == [
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    ]
    assert {r["bucket"] for r in rows} == {"daily"}


@pytest.mark.parametrize(
    ("values", "function", "expected"),
    [
        (["9" * 4300, "9" * 4300], "sum", None),
        (["9" * 4300, "9" * 4300], "max", int("9" * 4300)),
        (
            [1.7976931348623157e308, 1.7976931348623157e308],
            "avg",
            1.7976931348623157e308,
        ),
        ([1.7976931348623157e308, 1.7976931348623157e308], "sum", None),
    ],
)
def test_a_rollup_beyond_what_json_can_write_is_null(
    call: Caller, values: list[Any], function: str, expected: Any
) -> None:
    """A sum too long to write is null, and a finite mean is never lost.

    Regression: two accepted snapshots of 4,300 nines summed to a number
    Python will not write as text, and every page over that day was a 500;
    two of the largest floats averaged to null as their sum overflowed.
    """
    for hour, value in enumerate(values):
        number = int(value) if isinstance(value, str) else value
        record(call, hourly(hour, number))

    rows = query(
        call,
        bucket="daily",
        rollup={"function": function, "from_bucket": "hourly"},
    )

    assert [r["value"] for r in rows] == [expected]


def test_rollup_pages_and_covers_whole_days(call: Caller) -> None:
    """Rollup rows page one at a time; a day starting in the window counts whole."""
    fill_two_days(call)

    rows = query(
        call,
        bucket="daily",
        from_utc="2025-12-31T12:00:00Z",
        to_utc="2026-01-02T06:00:00Z",
        limit=1,
        rollup={"function": "max", "from_bucket": "hourly"},
    )

    assert [(r["bucket_start"], r["value"]) for r in rows] == [
        ("2026-01-01T00:00:00Z", 23),
        ("2026-01-02T00:00:00Z", 47),
    ]


def test_a_rollup_page_reads_a_bounded_number_of_sources(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a page of 256 monthly rows from hourly snapshots read
    190,000 of them (2-3 s). Past a bound on the sources read, a page ends
    after its next row, with a token; following it gives every row once."""
    monkeypatch.setattr(kpi_handlers, "ROLLUP_SOURCES_PER_PAGE", 30)
    fill_two_days(call)
    pages: list[int] = []
    body: dict[str, Any] = {
        "kpi_code": "NET_SALES",
        "bucket": "daily",
        "from_utc": "2026-01-01T00:00:00Z",
        "to_utc": "2026-01-03T00:00:00Z",
        "rollup": {"function": "max", "from_bucket": "hourly"},
    }
    rows: list[dict[str, Any]] = []
    while True:
        status, answer = call("/kpi/query", body)
        assert status == 200, answer
        rows += answer["data"]["series"]
        pages.append(len(answer["data"]["series"]))
        if answer["data"]["next_token"] is None:
            break
        body["next_token"] = answer["data"]["next_token"]

    assert [(r["bucket_start"], r["value"]) for r in rows] == [
        ("2026-01-01T00:00:00Z", 23),
        ("2026-01-02T00:00:00Z", 47),
    ]
    assert pages[0] == 1


def test_a_rollup_row_changes_revision_when_a_source_changes(call: Caller) -> None:
    """A rolled-up row's revision moves with any of its source snapshots."""
    fill_two_days(call)
    spec = {"bucket": "daily", "rollup": {"function": "sum", "from_bucket": "hourly"}}
    before = query(call, **spec)

    record(call, hourly(30, 0), expected_revision="1")
    after = query(call, **spec)

    assert after[0] == before[0]
    assert after[1]["revision"] != before[1]["revision"]
    assert after[1]["kpi_id"] == before[1]["kpi_id"]


@pytest.mark.parametrize(
    ("bucket", "source"),
    [("hourly", "hourly"), ("daily", "weekly"), ("monthly", "weekly")],
)
def test_rollups_that_do_not_nest_are_refused(
    call: Caller, bucket: str, source: str
) -> None:
    """A rollup must go to a coarser bucket that the finer one nests in."""
    status, answer = call(
        "/kpi/query",
        {
            "kpi_code": "NET_SALES",
            "bucket": bucket,
            "from_utc": stamp(T0),
            "to_utc": stamp(T0 + HOUR),
            "rollup": {"function": "sum", "from_bucket": source},
        },
    )

    assert status == 400
    assert answer["error"]["details"][0]["pointer"] == "/rollup/from_bucket"


# -- the local time zone ----------------------------------------------------

DST_ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe")


@pytest.fixture(params=DST_ZONES)
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process's local zone set to a zone with DST."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    offset = ZoneInfo(request.param).utcoffset(datetime(2026, 7, 1))
    assert offset is not None
    assert time.localtime(time.mktime((2026, 7, 1, 0, 0, 0, 0, 0, -1))).tm_gmtoff == (
        offset.total_seconds()
    )

    yield request.param

    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_record_and_query_ignore_the_local_zone_across_dst(
    local_zone: str, call: Caller
) -> None:
    """Across every 2026 DST change, hours and days stay on the UTC grid."""
    zone = ZoneInfo(local_zone)
    changes = [
        day
        for day in (T0 + timedelta(days=d) for d in range(365))
        if (day + timedelta(days=1)).astimezone(zone).utcoffset()
        != day.astimezone(zone).utcoffset()
    ]
    assert len(changes) == 2

    for day in changes:
        local_midnight = day.astimezone(zone)
        for h in range(48):
            start = day + h * HOUR
            kpi = hourly(
                0,
                1,
                bucket_start=start.astimezone(zone).isoformat(),
                bucket_end=(start + HOUR).astimezone(zone).isoformat(),
            )
            status, _ = record(call, kpi)
            assert status == 200
        rows = query(
            call,
            bucket="daily",
            from_utc=local_midnight.isoformat(),
            to_utc=(day + timedelta(days=2)).isoformat(),
            rollup={"function": "sum", "from_bucket": "hourly"},
        )
        assert [(r["bucket_start"], r["value"]) for r in rows] == [
            (stamp(day), 24),
            (stamp(day + timedelta(days=1)), 24),
        ]
