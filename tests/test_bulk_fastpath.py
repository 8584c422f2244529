"""The bulk fast path: proven-strict events and batched recording.

``Recorder.record_many`` must be indistinguishable from calling
``Recorder.record`` on each event in turn; ``proven_strict`` may skip
only the strict-JSON walk, and only for what the NDJSON reader accepted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipm
from ipm.domain.errors import EventIdConflict, InvalidRequest
from ipm.domain.events import Event, EventFilter, NewEvent
from ipm.domain.jsoncodec import strict_problems
from ipm.domain.ndjson import NdjsonReader
from ipm.testing import FixedClock
from ipm.usecases.cdc import Recorded, event_from_mapping
from tests.conftest import ORG

SCHEMA = {
    "type": "object",
    "required": ["total_minor"],
    "properties": {"total_minor": {"type": "integer"}},
}
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _ids(prefix: str) -> str:
    return f"{prefix}_minted"


def sale(event_id: str, total: Any = 100, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "service": "pos",
        "action": "sale.created",
        "occurred_at": "2026-03-01T10:00:00Z",
        "payload": {"total_minor": total},
        **fields,
    }


def _open(kind: str, folder: Path) -> ipm.Application:
    if kind == "memory":
        app = ipm.open_memory()
    else:
        folder.mkdir(exist_ok=True)
        app = ipm.open_sqlite(folder / "ipm.sqlite")
    app.register_event_type("pos", "sale.created", SCHEMA)

    return app


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(kind: str) -> Iterator[tuple[ipm.Application, ipm.Application]]:
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        first, second = _open(kind, Path(one)), _open(kind, Path(two))
        yield first, second
        first.close()
        second.close()


# -- proven_strict --------------------------------------------------------------


def test_proven_strict_keeps_every_other_check() -> None:
    """Field names, lengths, types, names and the time are still checked."""
    bad = [
        sale("e1", extra=1),
        sale("e" * 129),
        {**sale("e1"), "service": 7},
        {**sale("e1"), "action": "Not A Name"},
        {**sale("e1"), "op": "x"},
        {**sale("e1"), "occurred_at": "2026-03-01 10:00"},
        {**sale("e1"), "payload": [1]},
        {**sale("e1"), "audit": {"actor": "a" * 129}},
    ]

    for raw in bad:
        with pytest.raises(InvalidRequest):
            event_from_mapping(raw, _ids, FixedClock(T0), proven_strict=True)


def test_unproven_mapping_still_walks_the_values() -> None:
    """A host's mapping with a non-finite number is refused as before."""
    raw = sale("e1", total=float("nan"))

    with pytest.raises(InvalidRequest) as refused:
        event_from_mapping(raw, _ids, FixedClock(T0))

    assert refused.value.details[0].pointer == "/payload/total_minor"


def test_publish_refuses_what_only_the_walk_catches(kind: str) -> None:
    """``publish()`` keeps the full walk: a lone surrogate is refused."""
    with tempfile.TemporaryDirectory() as folder:
        app = _open(kind, Path(folder))

        with pytest.raises(InvalidRequest):
            app.publish(ORG, sale("e1", note="\ud800"))

        app.close()


def test_proven_strict_builds_the_same_event() -> None:
    """Skipping the walk changes nothing in the event built."""
    raw = sale(
        "e1", audit={"actor": "till-7", "source_refs": [{"kind": "t", "id": "7"}]}
    )

    fast = event_from_mapping(raw, _ids, FixedClock(T0), proven_strict=True)
    full = event_from_mapping(raw, _ids, FixedClock(T0))

    assert fast == full


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


def _line(value: Any) -> bytes:
    import json

    return json.dumps({"payload": value}, allow_nan=True).encode() + b"\n"


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_reader_accepts_only_what_the_walk_accepts(value: Any) -> None:
    """Whatever the reader accepts passes the strict walk (so it may be skipped)."""
    (line,) = NdjsonReader().read([_line(value)])

    if line.record is not None:
        assert strict_problems(line.record) == []


def test_reader_depth_limit_is_within_the_walk() -> None:
    """The deepest line the reader accepts is still shallow enough for the walk."""
    accepted = 0
    for depth in range(55, 70):
        line = b'{"payload":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}\n"
        (read,) = NdjsonReader().read([line])
        if read.record is not None:
            accepted = depth
            assert strict_problems(read.record) == []

    assert accepted > 0


# -- record_many ----------------------------------------------------------------


def _summary(outcome: Recorded | tuple[Event, bool] | Exception) -> Any:
    if isinstance(outcome, tuple):
        event, created = outcome
        return (event.sequence, event.content_hash) if created else "duplicate"
    if isinstance(outcome, Event):
        return (outcome.sequence, outcome.content_hash)
    if isinstance(outcome, Exception):
        return type(outcome).__name__

    return outcome


def _one_by_one(app: ipm.Application, news: list[NewEvent]) -> list[Any]:
    outcomes: list[Any] = []
    with app.storage.unit_of_work() as uow:
        for new in news:
            try:
                outcomes.append(_summary(app.recorder.record(uow, ORG, new)))
            except (EventIdConflict, InvalidRequest) as error:
                outcomes.append(_summary(error))
        uow.commit()

    return outcomes


def _batched(app: ipm.Application, news: list[NewEvent]) -> list[Any]:
    with app.storage.unit_of_work() as uow:
        outcomes = app.recorder.record_many(uow, ORG, news)
        uow.commit()

    return [_summary(outcome) for outcome in outcomes]


def _feed(app: ipm.Application) -> list[tuple[int, str, str]]:
    events = app.cdc.list(ORG, EventFilter(), 1000)

    return [(e.sequence, e.new.event_id, e.content_hash) for e in events]


LINE = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from([1, 2, "not a number"]),
    st.booleans(),
)


def _news(lines: list[tuple[str, Any, bool]]) -> list[NewEvent]:
    made = []
    for event_id, total, timed in lines:
        raw = sale(event_id, total)
        if not timed:
            del raw["occurred_at"]
        made.append(event_from_mapping(raw, _ids, FixedClock(T0)))

    return made


@pytest.mark.parametrize("storage_kind", ["memory", "sqlite"])
@settings(max_examples=25, deadline=None)
@given(
    stored=st.lists(LINE, max_size=3),
    batch=st.lists(LINE, max_size=10),
)
def test_record_many_matches_record_one_by_one(
    storage_kind: str,
    stored: list[tuple[str, Any, bool]],
    batch: list[tuple[str, Any, bool]],
) -> None:
    """Outcomes, sequences and the feed equal those of recording one by one."""
    before, after = _news(stored), _news(batch)

    with tempfile.TemporaryDirectory() as folder:
        one = _open(storage_kind, Path(folder, "one"))
        many = _open(storage_kind, Path(folder, "many"))
        for app in (one, many):
            _one_by_one(app, before)

        expected = _one_by_one(one, after)
        got = _batched(many, after)

        assert got == expected
        assert _feed(many) == _feed(one)
        one.close()
        many.close()


def test_record_many_feeds_the_sinks_in_order(
    pair: tuple[ipm.Application, ipm.Application],
) -> None:
    """Every created event reaches each sink once, in sequence order."""
    _, app = pair
    seen: list[int] = []
    app.recorder.sinks.append(lambda uow, event: seen.append(event.sequence))
    clock = FixedClock(T0)
    lines = [sale("x"), sale("y"), sale("x"), sale("z", total="bad"), sale("w")]
    news = [event_from_mapping(raw, _ids, clock) for raw in lines]

    with app.storage.unit_of_work() as uow:
        outcomes = app.recorder.record_many(uow, ORG, news)
        uow.commit()

    assert [_summary(o) for o in outcomes][2:4] == ["duplicate", "InvalidRequest"]
    assert seen == [1, 2, 3]
