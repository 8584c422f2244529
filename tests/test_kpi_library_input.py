"""The KPI use cases called directly refuse what the wire refuses, storing nothing.

Hosts skip the JSON Schemas when they call ``app.kpis`` themselves; each
test here pins a value that the route refuses and a direct call once
accepted, stored, or answered with a raw driver error.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipm
from ipm.adapters.notifier import MemoryNotifier
from ipm.domain.alerts import AlertNotification, EmitAlert, Threshold
from ipm.domain.errors import InvalidRequest
from ipm.domain.kpi import RecordKpi, check_scope, snapshot_from_wire
from ipm.domain.kpi_series import SeriesQuery
from ipm.schemas._fragments import SCOPE_PATTERN
from ipm.testing import FixedClock
from tests.conftest import open_app

ORG = "ACME01"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
BAD_ORGCODES = ["a b/c", "", "A" * 200, None, 5]


class Crash(BaseException):
    """Stands for a sender that dies while it notifies."""


class CrashingNotifier(MemoryNotifier):
    crash = True

    def notify(self, notification: AlertNotification) -> None:
        if self.crash:
            raise Crash()
        super().notify(notification)


@pytest.fixture
def notifier() -> CrashingNotifier:
    return CrashingNotifier()


@pytest.fixture(params=["memory", "sqlite"])
def app(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    notifier: CrashingNotifier,
    clock: FixedClock,
) -> Iterator[ipm.Application]:
    with open_app(request.param, tmp_path, notifier=notifier, clock=clock) as app:
        yield app


def snapshot(value: int = 1, **overrides: Any) -> RecordKpi:
    fields: dict[str, Any] = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "bucket_start": T0,
        "value": value,
    }
    fields.update(overrides)

    return RecordKpi(**fields)


def alert(notify: bool = True) -> EmitAlert:
    return EmitAlert("NET_SALES", "daily", T0, 150, Threshold("gt", 100), notify=notify)


def query(**overrides: Any) -> SeriesQuery:
    fields: dict[str, Any] = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": T0,
        "to_utc": T0 + DAY,
    }
    fields.update(overrides)

    return SeriesQuery(**fields)


def pointers(error: pytest.ExceptionInfo[InvalidRequest]) -> set[str]:
    return {problem.pointer for problem in error.value.details}


def nothing_written(app: ipm.Application, orgcode: Any = ORG) -> bool:
    """No event at all, and no snapshot under ``orgcode`` (read past the checks)."""
    with app.storage.unit_of_work(write=False) as uow:
        events = uow.events.last_sequence()
        kpi = uow.kpis.get(orgcode, "NET_SALES", "org", "hourly", T0)

    return events == 0 and kpi is None


# -- org codes ---------------------------------------------------------------


@pytest.mark.parametrize("orgcode", BAD_ORGCODES)
def test_record_refuses_a_malformed_orgcode_and_stores_nothing(
    app: ipm.Application, orgcode: Any
) -> None:
    """A malformed org code is a 400-style refusal; no snapshot, no event."""
    with pytest.raises(InvalidRequest) as error:
        app.kpis.record(orgcode, snapshot())

    assert pointers(error) == {"/orgcode"}
    assert nothing_written(app, orgcode)


@pytest.mark.parametrize("orgcode", BAD_ORGCODES)
def test_emit_alert_refuses_a_malformed_orgcode_and_sends_nothing(
    app: ipm.Application, notifier: CrashingNotifier, orgcode: Any
) -> None:
    """An alert under a malformed org code is refused, not stored nor notified."""
    with pytest.raises(InvalidRequest) as error:
        app.kpis.emit_alert(orgcode, alert())

    assert pointers(error) == {"/orgcode"}
    assert nothing_written(app, orgcode)
    assert notifier.attempts == 0


def _record_in(app: ipm.Application, orgcode: Any) -> object:
    with app.storage.unit_of_work() as uow:
        return app.kpis.record_in(uow, orgcode, snapshot())


def _predict_in(app: ipm.Application, orgcode: Any) -> object:
    with app.storage.unit_of_work() as uow:
        return app.kpis.predict_in(uow, orgcode, snapshot())


ENTRIES: dict[str, Callable[[ipm.Application, Any], object]] = {
    "record_in": _record_in,
    "predict_in": _predict_in,
    "series": lambda app, org: app.kpis.series(org, query()),
    "series_wire": lambda app, org: app.kpis.series_wire(org, query()),
    "get_alert": lambda app, org: app.kpis.get_alert(org, "alr_x"),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("orgcode", ["a b/c", None])
def test_every_entry_point_checks_its_orgcode(
    app: ipm.Application, entry: str, orgcode: Any
) -> None:
    """Reads and the bulk path refuse a malformed org code as record does."""
    with pytest.raises(InvalidRequest) as error:
        ENTRIES[entry](app, orgcode)

    assert pointers(error) == {"/orgcode"}
    assert nothing_written(app, orgcode)


# -- series queries ----------------------------------------------------------

NAIVE = datetime(2026, 1, 2)

QUERY_FAULTS: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    # (wire body override, library override, pointer both refuse at)
    ({"bucket": "yearly"}, {"bucket": "yearly"}, "/bucket"),
    ({"kpi_code": "net"}, {"kpi_code": "net"}, "/kpi_code"),
    ({"to_utc": "2025-12-31T00:00:00Z"}, {"to_utc": T0 - DAY}, "/to_utc"),
    ({"from_utc": "2026-01-02T00:00:00"}, {"from_utc": NAIVE}, "/from_utc"),
    ({"scope": ""}, {"scope": ""}, "/scope"),
    (
        {"bucket": "daily", "rollup": {"function": "median", "from_bucket": "hourly"}},
        {"bucket": "daily", "rollup": "median", "from_bucket": "hourly"},
        "/rollup/function",
    ),
    (
        {"bucket": "daily", "rollup": {"function": "sum"}},
        {"bucket": "daily", "rollup": "sum"},
        "/rollup/from_bucket",
    ),
    (
        {"bucket": "daily", "rollup": {"from_bucket": "hourly"}},
        {"bucket": "daily", "from_bucket": "hourly"},
        "/rollup/function",
    ),
    (
        {"rollup": {"function": "sum", "from_bucket": "daily"}},
        {"rollup": "sum", "from_bucket": "daily"},
        "/rollup/from_bucket",
    ),
    (
        {"bucket": "monthly", "rollup": {"function": "sum", "from_bucket": "weekly"}},
        {"bucket": "monthly", "rollup": "sum", "from_bucket": "weekly"},
        "/rollup/from_bucket",
    ),
]


@pytest.mark.parametrize(("wire", "library", "pointer"), QUERY_FAULTS)
def test_a_query_the_route_refuses_is_refused_when_built_at_the_same_pointer(
    wire: dict[str, Any], library: dict[str, Any], pointer: str
) -> None:
    """SeriesQuery refuses what POST /kpi/query refuses, at the same pointer."""
    app = ipm.open_memory()
    key = app.create_api_key("ops@acme.example", [ORG])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
    body = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "from_utc": "2026-01-01T00:00:00Z",
        "to_utc": "2026-01-02T00:00:00Z",
        **wire,
    }

    response = app.handle("POST", "/kpi/query", headers, json.dumps(body).encode())
    with pytest.raises(InvalidRequest) as error:
        query(**library)

    assert response.status == 400
    details = json.loads(response.body)["error"]["details"]
    assert {d["pointer"] for d in details} == {pointer}
    assert pointers(error) == {pointer}


def test_the_route_keeps_its_message_for_an_inverted_window() -> None:
    """The wire's message for to_utc before from_utc is the library's too."""
    with pytest.raises(InvalidRequest) as error:
        query(to_utc=T0 - DAY)

    assert [p.message for p in error.value.details] == [
        "to_utc must not be before from_utc"
    ]


def test_a_query_reports_every_fault_at_once() -> None:
    """Several wrong fields give one refusal naming each of them."""
    with pytest.raises(InvalidRequest) as error:
        query(
            kpi_code="net",
            bucket="yearly",
            from_utc="2026-01-01",
            scope="",
            rollup="median",
        )

    assert pointers(error) == {
        "/kpi_code",
        "/bucket",
        "/from_utc",
        "/scope",
        "/rollup/function",
        "/rollup/from_bucket",
    }


def test_a_query_keeps_its_instants_in_utc() -> None:
    """An aware window in another zone is held in UTC, as the wire parses it."""
    plus_two = timezone(timedelta(hours=2))

    built = query(from_utc=T0.astimezone(plus_two))

    assert built.from_utc == T0 and built.from_utc.tzinfo is UTC


def test_instants_may_be_given_as_rfc3339_text() -> None:
    """A snapshot and a query take the wire's text as well as datetimes."""
    text = "2026-03-02T01:00:00+01:00"

    built = query(from_utc=text, to_utc="2026-03-03T00:00:00Z")
    recorded = snapshot(bucket_start=text)

    assert built.from_utc == datetime(2026, 3, 2, tzinfo=UTC)
    assert recorded.bucket_start == datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-03-02T00:00:00", "2026-03-02T00:30:00Z", "x"])
def test_text_that_is_no_grid_instant_is_refused_at_its_pointer(text: str) -> None:
    """Zoneless, off-grid or no time at all: an InvalidRequest at bucket_start."""
    with pytest.raises(InvalidRequest) as error:
        snapshot(bucket_start=text)

    assert pointers(error) == {"/kpi/bucket_start"}


@settings(max_examples=60, deadline=None)
@given(
    lo=st.datetimes(timezones=st.just(UTC)),
    hi=st.datetimes(timezones=st.just(UTC)),
)
def test_a_window_builds_exactly_when_it_is_not_inverted(
    lo: datetime, hi: datetime
) -> None:
    """Any aware window builds if from_utc <= to_utc and is refused otherwise."""
    try:
        query(from_utc=lo, to_utc=hi)
    except InvalidRequest as error:
        refused = {p.pointer for p in error.details}
    else:
        refused = set()

    assert refused == (set() if lo <= hi else {"/to_utc"})


@pytest.mark.parametrize(
    "after", [NAIVE, "2026-01-01T00:00:00", 20260101, datetime.max.replace(tzinfo=UTC)]
)
@pytest.mark.parametrize("method", ["series", "series_wire"])
def test_series_refuses_an_after_that_is_no_aware_grid_instant(
    app: ipm.Application, method: str, after: Any
) -> None:
    """A naive, zoneless, numeric or off-grid ``after`` is refused, not a TypeError."""
    read = getattr(app.kpis, method)

    with pytest.raises(InvalidRequest) as error:
        read(ORG, query(), after=after)

    assert pointers(error) == {"/after"}


@pytest.mark.parametrize("limit", ["5", 0, -1, 10**30, True, 2.0, None])
@pytest.mark.parametrize("method", ["series", "series_wire"])
def test_series_refuses_a_limit_out_of_range_on_every_store(
    app: ipm.Application, method: str, limit: Any
) -> None:
    """Memory and SQLite agree: a limit that is no int in 1..10,000 is refused."""
    app.kpis.record(ORG, snapshot())
    read = getattr(app.kpis, method)

    with pytest.raises(InvalidRequest) as error:
        read(ORG, query(), limit=limit)

    assert pointers(error) == {"/limit"}
    assert len(read(ORG, query(), limit=10_000)) == 1


# -- alerts ------------------------------------------------------------------


@pytest.mark.parametrize("notify", ["no", "", 1, 0, None])
def test_notify_must_be_a_bool(notify: Any) -> None:
    """notify="no" is refused instead of counting as true and paging someone."""
    with pytest.raises(InvalidRequest) as error:
        EmitAlert("NET_SALES", "daily", T0, 150, Threshold("gt", 100), notify=notify)

    assert pointers(error) == {"/notify"}


def test_a_threshold_is_a_number_and_a_rule_an_object() -> None:
    """true as a threshold is refused; a mapping for the rule is a TypeError."""
    with pytest.raises(InvalidRequest) as error:
        Threshold("gt", True)
    rule: Any = {"comparator": "gt", "value": 0}
    with pytest.raises(TypeError):
        EmitAlert("NET_SALES", "daily", T0, 1, rule)

    assert pointers(error) == {"/alert/threshold/value"}


@pytest.mark.parametrize("limit", ["5", 0, -1, 10**30, True, 2.0])
def test_resend_pending_refuses_a_bad_limit_and_claims_nothing(
    app: ipm.Application,
    notifier: CrashingNotifier,
    clock: FixedClock,
    limit: Any,
) -> None:
    """A bad limit is refused on both stores; the pending alert stays due."""
    with pytest.raises(Crash):
        app.kpis.emit_alert(ORG, alert())
    notifier.crash = False
    clock.advance(61)

    with pytest.raises(InvalidRequest) as error:
        app.kpis.resend_pending(limit=limit)
    settled = app.kpis.resend_pending(limit=5)

    assert pointers(error) == {"/limit"}
    assert settled == 1 and len(notifier.sent) == 1


def test_emit_alert_wants_an_emit_alert(app: ipm.Application) -> None:
    """A plain mapping instead of an EmitAlert is a TypeError before any write."""
    wire = {"kpi_code": "NET_SALES", "value": 1}

    with pytest.raises(TypeError):
        app.kpis.emit_alert(ORG, wire)  # type: ignore[arg-type]

    assert nothing_written(app)


# -- snapshots ---------------------------------------------------------------


@pytest.mark.parametrize("revision", [5, "", "r" * 129, b"1"])
def test_record_refuses_a_malformed_expected_revision(
    app: ipm.Application, revision: Any
) -> None:
    """An expected_revision the schema refuses is a 400, not a 409 or a write."""
    with pytest.raises(InvalidRequest) as error:
        app.kpis.record(ORG, snapshot(), expected_revision=revision)

    assert pointers(error) == {"/expected_revision"}
    assert nothing_written(app)


def test_record_wants_a_record_kpi(app: ipm.Application) -> None:
    """A plain mapping instead of a RecordKpi is a TypeError before any write."""
    wire = {"kpi_code": "NET_SALES", "bucket": "hourly", "value": 1}

    with pytest.raises(TypeError):
        app.kpis.record(ORG, wire)  # type: ignore[arg-type]

    assert nothing_written(app)


def test_a_scope_with_a_lone_surrogate_is_refused() -> None:
    """Strict JSON cannot carry a lone surrogate, so a direct call cannot either."""
    with pytest.raises(InvalidRequest) as snapshot_error:
        snapshot(scope="north\ud800")
    with pytest.raises(InvalidRequest) as alert_error:
        EmitAlert("N", "daily", T0, 1, Threshold("gt", 0), scope="\udfff")

    assert pointers(snapshot_error) == {"/kpi/scope"}
    assert pointers(alert_error) == {"/alert/scope"}
    assert snapshot(scope="Zürich 北").scope == "Zürich 北"


@settings(max_examples=300)
@given(
    st.text(
        st.sampled_from(
            "ab \n\t\x00\x7f\x85\xa0\u1680\u2003\u2028\u2029\u3000\ufeff"
            "\u202e\u00ad\u180e北é\u200c\u200d"
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_schemas_scope_pattern_says_what_check_scope_does(scope: str) -> None:
    """The published pattern (read by ECMA-262 and Python alike) and the
    domain rule accept the same scopes of the Basic Multilingual Plane in
    NFC (the two rules a pattern cannot say are the server's alone)."""
    try:
        check_scope(scope)
        accepted = True
    except InvalidRequest:
        accepted = False

    assert (re.search(SCOPE_PATTERN, scope) is not None) == accepted


@pytest.mark.parametrize(
    ("scope", "kept"),
    [
        ("store:\u0d24\u0d43\u0d36\u0d4d\u0d36\u0d42\u0d30\u0d4d\u200d", True),
        ("\u0dc1\u0dca\u200d\u0dbb\u0dd3 \u0dbd\u0d82\u0d9a\u0dcf", True),
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", True),
        ("\U0001f469\u200d\U0001f4bb", True),
        ("\U0001f3f3\ufe0f\u200d\U0001f308", True),
        ("\U0001f469\U0001f3fd\u200d\U0001f4bb", True),
        ("\u09b0\u200d\u09cd\u09af\u09be\u09ac", True),
        ("\U0001f642\u200d\u2194\ufe0f", True),
        ("store:^\u200d^", False),
        ("store:S014\u200d", False),
        ("\u200cstore", False),
        ("\u200d", False),
        ("API\u200c\u0647\u0627", False),
    ],
    ids=[
        "malayalam-chillu",
        "sinhala-sri",
        "persian",
        "technologist",
        "rainbow-flag",
        "skin-tone",
        "bengali-ra-phalaa",
        "head-shaking",
        "after-ascii-symbol",
        "trailing",
        "leading",
        "alone",
        "after-latin",
    ],
)
def test_a_zero_width_joiner_stays_only_where_writing_needs_it(
    scope: str, kept: bool
) -> None:
    """Regression: joiners were refused where real text needs them (a
    Malayalam chillu ends a word with one, Bengali puts one before a
    virama, an emoji sequence may join an arrow), and let through after
    ASCII symbols. A joiner must follow a character that is neither ASCII
    nor a space nor a joiner; what it joins is not judged (that needs data
    Python lacks), so one between two CJK letters still passes."""
    if kept:
        assert check_scope(scope) == scope
    else:
        with pytest.raises(InvalidRequest) as refused:
            check_scope(scope)
        assert "joiner" in refused.value.details[0].message
    assert check_scope("store:\u5317\u200d\u4eac")  # not judged: documented


def test_the_server_alone_refuses_text_not_in_nfc_and_astral_format_characters() -> (
    None
):
    """What the pattern cannot say: É as E and a combining accent prints as
    É, a language tag is invisible; both are refused, the pattern lets
    them through (a schema check is necessary, not sufficient)."""
    for scope in ("store:E\u0301", "store:S1\U000e0020"):
        assert re.search(SCOPE_PATTERN, scope) is not None
        with pytest.raises(InvalidRequest):
            check_scope(scope)
    assert check_scope("store:\u00c9") == "store:\u00c9"


@pytest.mark.parametrize(
    "name", ["kpi_code", "bucket", "bucket_start", "bucket_end", "value"]
)
def test_a_missing_field_of_a_snapshot_is_said_to_be_missing(name: str) -> None:
    """Regression: a KPI import line without bucket_end (or kpi_code,
    bucket, bucket_start) was told the field "must be an RFC 3339
    timestamp", as if it had one in the wrong form."""
    wire = {
        "kpi_code": "NET_SALES",
        "bucket": "hourly",
        "bucket_start": "2026-01-01T00:00:00Z",
        "bucket_end": "2026-01-01T01:00:00Z",
        "value": 1,
    }
    del wire[name]

    with pytest.raises(InvalidRequest) as error:
        snapshot_from_wire(wire)

    assert [(p.pointer, p.message) for p in error.value.details] == [
        (f"/kpi/{name}", f"{name} is required")
    ]


@pytest.mark.parametrize("hours", [5, -5])
def test_a_bucket_start_beyond_utc_is_refused_at_its_pointer(hours: int) -> None:
    """Year 1 at +05:00 (or 9999 at -05:00) is an InvalidRequest, not ValueError."""
    zone = timezone(timedelta(hours=hours))
    edge = datetime(1, 1, 1, tzinfo=zone) if hours > 0 else datetime.max
    start = edge.replace(minute=0, second=0, microsecond=0, tzinfo=zone)

    with pytest.raises(InvalidRequest) as error:
        snapshot(bucket_start=start)

    assert pointers(error) == {"/kpi/bucket_start"}


def test_a_good_direct_record_still_creates_then_updates(app: ipm.Application) -> None:
    """The checks let a well-formed call through, revision and all."""
    first = app.kpis.record(ORG, snapshot(1))

    second = app.kpis.record(ORG, snapshot(2), expected_revision=first.revision)

    assert (first.value, second.value) == (1, 2)
    assert second.revision != first.revision


@pytest.fixture
def no_int_limit() -> Iterator[None]:
    """The interpreter's limit on integer text lifted, as a host may do."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)


def test_the_digit_bound_is_ipm_s_not_the_interpreter_s(
    app: ipm.Application, no_int_limit: None
) -> None:
    """Regression: with the limit lifted, 10**5000 was stored, and every
    process with the default limit then failed to read the series (500)."""
    with pytest.raises(InvalidRequest, match="value"):
        app.kpis.record(ORG, snapshot(10**5000))
    with pytest.raises(InvalidRequest):
        app.publish(
            ORG, {"service": "pos", "action": "a.b", "payload": {"n": 10**4300}}
        )
    kept = app.kpis.record(ORG, snapshot(10**4300 - 1))

    assert kept.value == 10**4300 - 1
    assert app.events(ORG, service="pos") == []


def test_an_import_line_past_the_digit_bound_fails_whatever_the_interpreter(
    no_int_limit: None,
) -> None:
    from ipm.domain.ndjson import LineError, parse_record

    refused = parse_record(b'{"n": ' + b"9" * 4301 + b"}")
    kept = parse_record(b'{"n": -' + b"9" * 4300 + b"}")

    assert isinstance(refused, LineError) and refused.code == "number_out_of_range"
    assert kept == {"n": -(10**4300 - 1)}


def test_a_threshold_of_another_type_is_a_plain_type_error() -> None:
    """Regression: a mapping for the rule raised attrs' TypeError, whose
    message was a tuple of attrs internals; it names what was given now."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rule: Any = {"comparator": "gt", "value": 0}

    with pytest.raises(TypeError) as caught:
        EmitAlert("NET_SALES", "hourly", start, 1, rule)

    assert str(caught.value).startswith(
        "EmitAlert.threshold must be a Threshold, not dict"
    )


@pytest.mark.parametrize("value", ["1", None, True, b"5", [], {}, 1 + 2j])
def test_a_threshold_that_is_no_number_is_told_to_be_one(value: Any) -> None:
    """The message said "a number or null", but a threshold is never null."""
    with pytest.raises(InvalidRequest) as caught:
        Threshold("gt", value)

    assert caught.value.details[0].message == "value must be a number"


class _Float64(float):
    """A float subclass whose repr is not a bare number, as numpy's is."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)!r})"


class _Level(enum.IntEnum):
    HIGH = 100


def test_numbers_of_subclasses_are_kept_as_plain_numbers(app: ipm.Application) -> None:
    """Regression: a float subclass whose repr is no number (numpy's
    float64) passed the threshold check and then made emit_alert raise
    decimal.InvalidOperation when keying it. Values and thresholds of int
    or float subclasses are kept as the plain number they stand for."""
    start = datetime(2026, 1, 1, tzinfo=UTC)

    kpi = app.kpis.record(ORG, RecordKpi("NET_SALES", "hourly", start, _Float64(3.5)))
    alert = app.kpis.emit_alert(
        ORG,
        EmitAlert(
            "NET_SALES", "hourly", start, _Level.HIGH, Threshold("gt", _Float64(5.5))
        ),
    )

    assert (type(kpi.value), kpi.value) == (float, 3.5)
    assert (type(alert.value), alert.value) == (int, 100)
    assert (type(alert.threshold.value), alert.fired) == (float, True)


class _Code(str):
    """A str subclass, as a host's own string type is."""


class _Names(enum.StrEnum):
    SALES = "NET_SALES"
    DAILY = "daily"
    STORE = "store:lyon"


def test_texts_of_subclasses_are_kept_as_plain_text(app: ipm.Application) -> None:
    """Regression: a str subclass as kpi_code made record and emit_alert
    raise a bare ValueError from the compiled pattern engine, and a StrEnum
    member came back as the member. They are kept as the plain str."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    threshold = Threshold("gt", 5)

    kpi = app.kpis.record(
        ORG, RecordKpi(_Code("NET_SALES"), "hourly", start, 3, scope=_Code("org"))
    )
    fired = app.kpis.emit_alert(
        ORG,
        EmitAlert(_Names.SALES, _Names.DAILY, start, 9, threshold, _Names.STORE),
    )

    assert [type(kpi.kpi_code), type(kpi.scope)] == [str, str]
    assert [type(fired.kpi_code), type(fired.bucket), type(fired.scope)] == [str] * 3
    assert (fired.kpi_code, fired.scope) == ("NET_SALES", "store:lyon")
    assert fired.fired


def test_a_typed_query_refuses_a_start_past_the_last_instant(
    app: ipm.Application,
) -> None:
    """Regression: the converter left such text as it was and the check
    read it without its rounding, so the query held a str and series()
    raised a bare TypeError; it is refused as POST /kpi/query refuses it."""
    past = "9999-12-31T23:59:59.9999999Z"

    with pytest.raises(InvalidRequest) as refused:
        SeriesQuery("NET_SALES", "monthly", past, past)
    open_end = SeriesQuery("NET_SALES", "monthly", "2026-01-01T00:00:00Z", past)

    assert [p.pointer for p in refused.value.details] == ["/from_utc"]
    assert app.kpis.series(ORG, open_end) == []
