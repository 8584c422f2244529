"""The memory adapters answer as SQLite does: hosts test on one and run on
the other. Regressions found by a differential run of both."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

import ipm
from ipm.domain.webhooks import SubscriptionFilter
from ipm.testing import FixedClock
from ipm.usecases.webhooks import CreateWebhook
from tests.conftest import ORG, open_app


def test_editing_a_payload_after_publishing_or_reading_changes_nothing_stored(
    app: ipm.Application,
) -> None:
    """Regression (memory): the stored event shared the host's payload, the
    dict publish() returned and the Event a reader got, so editing any of
    them changed the feed, unlike SQLite."""
    payload: dict[str, Any] = {"lines": [{"sku": "A", "qty": 1}]}
    app.publish(
        ORG, {"event_id": "a", "service": "pos", "action": "x", "payload": payload}
    )
    returned = app.publish(
        ORG, {"event_id": "b", "service": "pos", "action": "x", "payload": {"n": [1]}}
    )

    payload["lines"][0]["qty"] = 999
    returned["payload"]["n"].append(2)
    app.events(ORG, service="pos")[0].new.payload["lines"].append("reader")

    assert [e.new.payload for e in app.events(ORG, service="pos")] == [
        {"lines": [{"sku": "A", "qty": 1}]},
        {"n": [1]},
    ]


def test_editing_a_job_read_changes_nothing_stored(app: ipm.Application) -> None:
    """Regression (memory): an export's filters were the stored dict, so
    editing them on a job read changed what the export wrote."""
    app.publish(ORG, {"event_id": "a", "service": "pos", "action": "x"})
    app.publish(ORG, {"event_id": "c", "service": "shop", "action": "x"})
    job = app.bulk.create_export(ORG, filters={"service": "pos"})

    read = app.bulk.get(ORG, job.job_id)
    assert read.filters is not None
    read.filters["service"] = "shop"  # type: ignore[index]
    done = app.bulk.run(ORG, job.job_id)

    exported = b"".join(app.bulk.download(ORG, job.job_id)).splitlines()
    assert done.filters == {"service": "pos"}
    assert [json.loads(line)["event_id"] for line in exported] == ["a"]


def test_deliveries_of_one_event_are_numbered_in_webhook_creation_order(
    app: ipm.Application,
) -> None:
    """Regression: SQLite listed the queuing webhooks by its status index
    (active before paused), memory in creation order; one event's delivery
    ids then differed between the adapters."""
    made = [
        app.webhooks.create(
            ORG, CreateWebhook("https://hooks.example/x", (SubscriptionFilter("pos"),))
        ).webhook
        for _ in range(2)
    ]
    first = made[0]
    app.webhooks.set_status(ORG, first.webhook_id, "paused", first.revision)

    app.publish(ORG, {"event_id": "a", "service": "pos", "action": "x"})

    queued = [app.webhooks.deliveries(ORG, w.webhook_id)[0] for w in made]
    assert queued[0].seq < queued[1].seq


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_host_clock_in_another_zone_is_told_in_utc(
    storage: str, tmp_path: Path
) -> None:
    """Regression: with a clock answering +05:00, memory handed back
    recorded_at in +05:00 and SQLite in UTC (the same instant)."""
    zone = timezone(timedelta(hours=5))
    app = open_app(
        storage, tmp_path, clock=lambda: datetime(2026, 3, 1, 15, 0, 0, 5, tzinfo=zone)
    )
    app.publish(ORG, {"event_id": "a", "service": "pos", "action": "x"})

    (event,) = app.events(ORG)
    app.close()

    assert event.recorded_at == datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=UTC)
    assert event.recorded_at.tzinfo is UTC


def test_app_clock_still_offers_the_host_clock_s_own_methods() -> None:
    """The app tells a host clock in UTC through a wrapper; FixedClock's
    advance() is still there through app.clock."""
    clock = FixedClock()
    app = ipm.open_memory(clock=clock)

    app.clock.advance(60)  # type: ignore[attr-defined]

    assert clock() == FixedClock()() + timedelta(seconds=60)
    app.close()


def test_a_clock_that_turns_naive_is_refused_not_read_as_local_time() -> None:
    """Regression: a clock aware when the app opened and naive later was
    read as the machine's local time, hours off, silently."""
    times = [datetime(2026, 3, 1, 10, tzinfo=UTC)]
    app = ipm.open_memory(clock=lambda: times[0])
    times[0] = datetime(2026, 3, 1, 10)

    with pytest.raises(TypeError, match="aware"):
        app.clock()
    app.close()


class _NoOffset(tzinfo):
    """A zone that does not know its offset: Python counts its times naive."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None


def test_a_clock_that_turns_to_a_zone_without_offset_is_refused() -> None:
    """Regression: only tzinfo None was refused later, so a time whose zone
    has no offset was read as the machine's local time."""
    times = [datetime(2026, 3, 1, 10, tzinfo=UTC)]
    app = ipm.open_memory(clock=lambda: times[0])
    times[0] = datetime(2026, 3, 1, 10, tzinfo=_NoOffset())

    with pytest.raises(TypeError, match="aware"):
        app.clock()
    app.close()


def test_a_request_whose_clock_fails_is_a_500_in_the_envelope() -> None:
    """Regression: handle() raised, because its 500 answer read the same
    failing clock for the envelope's timestamp."""
    times = [datetime(2026, 3, 1, 10, tzinfo=UTC)]
    app = ipm.open_memory(clock=lambda: times[0])
    times[0] = datetime(2026, 3, 1, 10)

    response = app.handle("GET", "/stat", {}, b"")

    assert response.status == 500
    assert json.loads(response.body)["error"]["code"] == "internal"
    app.close()


def test_a_fixed_clock_refuses_a_naive_start() -> None:
    """advance() would read a naive start as the machine's local time."""
    with pytest.raises(ValueError, match="aware"):
        FixedClock(datetime(2026, 3, 8, 1, 30))
    with pytest.raises(TypeError, match="datetime"):
        FixedClock("2026-01-01")  # type: ignore[arg-type]


def test_a_fixed_clock_in_a_zone_with_daylight_saving_moves_by_elapsed_time() -> None:
    """Regression: advance() added to the wall-clock time, so across the
    spring change an hour's advance stood still."""
    try:
        berlin = ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database here")
    clock = FixedClock(datetime(2026, 3, 29, 1, 30, tzinfo=berlin))
    seen = []
    for _ in range(3):
        seen.append(clock().astimezone(UTC).hour)
        clock.advance(3600)

    assert seen == [0, 1, 2]
