"""The fast lane of an events import agrees with the slow path, line by line.

The lane may only make a good line cheaper: whatever it admits, the slow
path (``event_from_mapping`` and the catalog) builds the very same event
from; whatever it cannot prove, the slow path decides. An import with the
lane stores the same rows, reports and actions as one without it.
"""

from __future__ import annotations

import gc
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipm
from ipm.domain.events import EventFilter, NewEvent
from ipm.domain.jsoncodec import dumps, loads
from ipm.domain.timeutil import format_utc
from ipm.testing import FixedClock
from ipm.usecases.bulk_import import EventLines, Refusal, collection_paused
from ipm.usecases.cdc import EVENT_FIELDS, Recorder, catalog_generation
from ipm.usecases.event_lane import EXPORT_ONLY_FIELDS, EventLane, envelope_schema
from tests.conftest import ORG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gen_bulk_file import SALE_SCHEMA, event, generate


def _ids(prefix: str) -> str:
    return f"{prefix}_minted"


VOID_SCHEMA = {
    "$defs": {"store": {"type": "string", "pattern": "^[A-Z]{2}-[A-Z]{3}-[0-9]{2}$"}},
    "type": "object",
    "required": ["store_code"],
    "properties": {"store_code": {"$ref": "#/$defs/store"}},
}
"""A schema that refers within itself: the catalog keeps checking those."""


def _open_memory() -> ipm.Application:
    app = ipm.open_memory()
    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    app.register_event_type("pos", "sale.voided", VOID_SCHEMA)

    return app


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return _open_memory().recorder


def _lines(recorder: Recorder, *, lane: bool) -> EventLines:
    return EventLines(recorder, _ids, FixedClock(), lane=lane)


def _same(fast: NewEvent | Refusal, slow: NewEvent | Refusal) -> None:
    assert type(fast) is type(slow)
    assert fast == slow
    if isinstance(fast, NewEvent) and isinstance(slow, NewEvent):
        assert fast.occurred_at_given == slow.occurred_at_given
        assert fast.occurred_at.tzinfo is slow.occurred_at.tzinfo
        assert format_utc(fast.occurred_at) == format_utc(slow.occurred_at)
        assert fast.wire_time == slow.wire_time == format_utc(slow.occurred_at)
        assert fast.content_hash() == slow.content_hash()
        assert fast.audit.to_wire() == slow.audit.to_wire()


# -- generated lines, valid and invalid -----------------------------------------

NAMES = st.sampled_from(
    ["pos", "sale.created", "a", "x" * 64, "x" * 65, "Pos", "_x", "ipm", "pos\n", ""]
)
TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["", "a", "é", "\U0001f600", "x" * 64, "x" * 65, "x" * 128]),
    st.sampled_from(["x" * 129, "x" * 127 + "\U0001f600", "x" * 128 + "é"]),
    st.integers(0, 3),
    st.just(["a"]),
)
TIMES = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:00:00.123456Z",
            "2026-03-01T10:00:00.000000Z",
            "2026-03-01T10:00:00.5Z",
            "2026-03-01T10:00:00+02:00",
            "2026-03-01t10:00:00z",
            "2026-02-29T10:00:00Z",
            "2024-02-29T23:59:59Z",
            "2026-12-31T23:59:60Z",
            "2026-06-30T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-03-01T24:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-03-01 10:00:00Z",
            "2026-03-01T10:00Z",
            "2026-03-01",
            "20260301T100000Z",
            "2026-03-01T10:00:00Z\n",
            "",
        ]
    ),
    st.none(),
    st.integers(0, 2),
)
REFS = st.lists(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["t", 1, "", "k" * 65]),
            "id": st.sampled_from(["7", None, "", "i" * 257]),
        },
        optional={"extra": st.just(1)},
    ),
    max_size=3,
) | st.sampled_from(
    [None, [], {}, "x", [{"kind": "t"}], [{"kind": "t", "id": "7"}] * 33]
)
AUDITS = st.one_of(
    st.sampled_from([None, {}, [], 0, False, "", "x", [1]]),
    st.fixed_dictionaries(
        {},
        optional={
            "actor": TEXTS,
            "context_source": TEXTS,
            "reason": st.sampled_from(["r", "r" * 1024, "r" * 1025]) | TEXTS,
            "source_refs": REFS,
            "note": st.just("kept out"),
        },
    ),
)
PAYLOADS = st.one_of(
    st.builds(lambda n: event(random.Random(n), n)["payload"], st.integers(0, 9)),
    st.sampled_from([{}, {"total_minor": -1}, [], None, "x", {"lines": []}]),
    st.dictionaries(
        st.text(max_size=4),
        st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=4)
        | st.none(),
        max_size=3,
    ),
)
SALE_CHANGES = st.sampled_from(
    [
        ("till", 0),
        ("till", 99),
        ("till", 100),
        ("till", "1"),
        ("till", 1.0),
        ("till", True),
        ("store_code", "FR-PAR-1"),
        ("store_code", "fr-par-01"),
        ("store_code", "FR-PAR-01\n"),
        ("currency", "USD"),
        ("currency", None),
        ("lines", []),
        ("lines", [{"sku": "SKU-000001", "qty": 1, "price_minor": 1}] * 51),
        ("lines", [{"qty": 1, "price_minor": 1}]),
        ("lines", [{"sku": "SKU-000001", "qty": 0, "price_minor": 1}]),
        ("lines", [{"sku": "SKU-000001", "qty": 1, "price_minor": 1, "x": 1}]),
        ("paid_at", "2026-02-30T00:00:00Z"),
        ("paid_at", "2026-12-31T23:59:60Z"),
        ("paid_at", "2026-12-31T22:59:60Z"),
        ("paid_at", "2026-03-01T10:00:00+01:00"),
        ("paid_at", "soon"),
        ("loyalty_id", 1),
        ("cashier", "c" * 32),
        ("cashier", "c" * 33),
        ("x", 1),
        ("total_minor", None),
    ]
)


@st.composite
def sale_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A sale payload with a few fields changed, within the schema or not."""
    payload: dict[str, Any] = event(random.Random(draw(st.integers(0, 99))), 0)[
        "payload"
    ]
    for name, value in draw(st.lists(SALE_CHANGES, max_size=2)):
        if value is None and draw(st.booleans()):
            payload.pop(name, None)
        else:
            payload[name] = value

    return payload


FIELDS = {
    "event_id": TEXTS,
    "logical_guid": TEXTS,
    "channel_code": TEXTS,
    "service": NAMES | st.sampled_from(["pos", "orders", 7, None]),
    "action": NAMES
    | st.sampled_from(["sale.created", "sale.voided", "order.placed", None]),
    "op": st.sampled_from(["c", "u", "d", "x", None, 1, "C"]),
    "occurred_at": TIMES,
    "payload": PAYLOADS | sale_payloads(),
    "audit": AUDITS,
    "sequence": st.integers(0, 9),
    "orgcode": st.sampled_from(["ACME01", "x"]),
    "recorded_at": st.just("2026-01-01T00:00:00Z"),
    "colour": st.just("red"),
}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A good event line of the benchmark file, with a few fields changed."""
    base = event(random.Random(draw(st.integers(0, 99))), draw(st.integers(0, 10**6)))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            base.pop(name, None)
        else:
            base[name] = draw(FIELDS[name])

    # What the reader hands over: plain JSON data, big integers exact.
    parsed: dict[str, Any] = loads(dumps(base))

    return parsed


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(records())
def test_the_lane_builds_what_the_slow_path_builds(
    recorder: Recorder, record: dict[str, Any]
) -> None:
    """An admitted line gives the very event the slow path gives; the verdict
    of a line is the same with the lane as without it."""
    lane = EventLane(recorder.catalog)

    admitted = lane.admit(record)
    with_lane = _lines(recorder, lane=True).check(record)
    without = _lines(recorder, lane=False).check(record)

    if admitted is not None:
        _same(admitted, without)
    _same(with_lane, without)


def test_ordinary_lines_take_the_lane(recorder: Recorder) -> None:
    """Every good line of the benchmark file is admitted (a performance guard)."""
    lane = EventLane(recorder.catalog)
    rng = random.Random(3)

    records = [orjson.loads(orjson.dumps(event(rng, n))) for n in range(200)]
    records += [{**r, "event_id": None} for r in records[:5]]

    assert all(lane.admit(record) is not None for record in records)


def test_a_line_the_lane_cannot_prove_still_gets_its_refusal(
    recorder: Recorder,
) -> None:
    """The slow path explains a line the lane leaves alone."""
    record = orjson.loads(orjson.dumps(event(random.Random(1), 0)))
    record["occurred_at"] = "2026-02-30T10:00:00Z"

    assert EventLane(recorder.catalog).admit(record) is None
    refusal = _lines(recorder, lane=True).check(record)

    assert isinstance(refusal, Refusal)
    assert refusal.pointer == "/occurred_at"


def test_a_line_with_a_huge_integer_gives_the_same_event(recorder: Recorder) -> None:
    """An integer beyond 64 bits (kept exact by the reader) is kept exact on
    either path."""
    record = orjson.loads(orjson.dumps(event(random.Random(1), 8)))
    record["payload"]["items"] = 2**70

    slow = _lines(recorder, lane=False).check(record)
    fast = EventLane(recorder.catalog).admit(record)

    assert isinstance(slow, NewEvent)
    assert fast is not None
    _same(fast, slow)
    assert fast.payload["items"] == 2**70


def test_the_envelope_names_every_event_field() -> None:
    """The envelope schema covers exactly the fields an event line may have."""
    properties = envelope_schema()["properties"]

    assert set(properties) == EVENT_FIELDS | set(EXPORT_ONLY_FIELDS)


# -- the catalog is checked once a slice, unless it changed ----------------------


def test_a_schema_registered_during_a_slice_is_still_enforced(tmp_path: Path) -> None:
    """Payloads checked before a registration are checked again in the write."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    generation = catalog_generation(app.catalog)
    good = orjson.loads(orjson.dumps(event(random.Random(1), 0)))
    bad = {**good, "event_id": "evt-bad", "payload": {"store_code": "nope"}}
    news = [_lines(app.recorder, lane=True).check(r) for r in (good, bad)]
    assert all(isinstance(new, NewEvent) for new in news)

    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    with app.storage.unit_of_work() as uow:
        outcomes = app.recorder.record_many(uow, ORG, news, checked_at=generation)  # type: ignore[arg-type]
        uow.commit()

    assert catalog_generation(app.catalog) != generation
    assert type(outcomes[1]).__name__ == "InvalidRequest"
    app.close()


def test_re_registering_a_schema_differently_is_refused() -> None:
    """Re-registering the same type leaves the generation; a new schema is refused."""
    app = ipm.open_memory()
    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    generation = catalog_generation(app.catalog)

    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    with pytest.raises(ipm.IpmError):
        app.register_event_type("pos", "sale.created", {"type": "object"})

    assert catalog_generation(app.catalog) == generation


def test_any_change_to_an_entry_moves_the_generation() -> None:
    """A new description counts as a change: the generation never misses one."""
    app = ipm.open_memory()
    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    generation = catalog_generation(app.catalog)

    app.register_event_type(
        "pos", "sale.created", SALE_SCHEMA, description="A sale at a till."
    )

    assert catalog_generation(app.catalog) > generation


# -- whole imports, with and without the lane ------------------------------------


def _import(tmp_path: Path, data: bytes, name: str) -> dict[str, Any]:
    app = ipm.open_sqlite(tmp_path / f"{name}.sqlite", clock=FixedClock())
    app.register_event_type("pos", "sale.created", SALE_SCHEMA)
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, [data])
    job = app.bulk.commit(ORG, job.job_id, job.revision)
    job = app.bulk.run(ORG, job.job_id, max_lines=300)
    # ipm's own job events carry job ids: only the imported ones compare.
    rows = [
        {k: v for k, v in orjson.loads(wire).items() if k != "recorded_at"}
        for _, wire in app.cdc.feed(ORG, EventFilter(), 10_000)
    ]
    rows = [row for row in rows if row["service"] != "ipm"]
    report = b"".join(app.bulk.report(ORG, job.job_id))
    results = b"".join(app.bulk.results(ORG, job.job_id))
    app.close()

    return {
        "counters": job.counters,
        "rows": rows,
        "report": report,
        "results": results,
    }


def test_an_import_stores_the_same_with_and_without_the_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows, counters, report and actions are those of the slow path alone."""
    path = tmp_path / "retail.ndjson"
    generate(path, 1200, 40)
    data = path.read_bytes()
    # Lines the lane leaves alone: other times, offsets, missing ids, audits.
    data += b"".join(
        orjson.dumps({**event(random.Random(n), n + 5000), **extra}) + b"\n"
        for n, extra in enumerate(
            [
                {"occurred_at": "2026-03-01T12:00:00+02:00"},
                {"occurred_at": "2026-03-01T10:00:00.000000Z"},
                {"event_id": None},
                {"audit": {"actor": "a", "source_refs": [{"kind": "k", "id": "1"}]}},
                {"audit": {}},
                {"payload": {"store_code": "nope"}, "action": "sale.created"},
            ]
        )
    )

    with_lane = _import(tmp_path, data, "lane")
    monkeypatch.setattr(EventLane, "admit", lambda self, record, audit=None: None)
    without = _import(tmp_path, data, "slow")

    assert with_lane == without
    assert with_lane["counters"].failed > 40


# -- the collector pause ---------------------------------------------------------


def test_the_collector_is_paused_for_nested_slices_and_back_after() -> None:
    """Nested pauses share one; the collector runs again after the last."""
    assert gc.isenabled()

    with collection_paused():
        with collection_paused():
            inner = gc.isenabled()
        between = gc.isenabled()

    assert (inner, between, gc.isenabled()) == (False, False, True)


def test_a_collector_the_host_disabled_stays_disabled() -> None:
    """A pause never turns on a collector the host turned off."""
    gc.disable()
    try:
        with collection_paused():
            pass

        assert not gc.isenabled()
    finally:
        gc.enable()
