"""Direct calls of the application's own methods meet the wire's rules."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import ipm
from ipm.domain.errors import InvalidRequest
from ipm.domain.events import Audit
from ipm.domain.kpi import RecordKpi
from ipm.usecases.cdc import MAX_PAYLOAD_BYTES
from tests.conftest import ORG, Caller


def test_one_org_code_given_alone_binds_that_org(app: ipm.Application) -> None:
    """create_api_key("me", "ACME01") binds ACME01, never A, C, M, E, 0 and 1."""
    key = app.create_api_key("me", ORG)

    status, _ = Caller(app, key, ORG)("/cdc/list", {})
    (listed,) = app.list_api_keys()

    assert status == 200
    assert listed["orgs"] == [ORG]


@pytest.mark.parametrize(
    ("actor", "orgs"),
    [
        ("line\nbreak", [ORG]),
        ("nul\x00", [ORG]),
        (5, [ORG]),
        ("me", [None]),
        ("me", [5]),
        ("me", [f"ORG{n}" for n in range(1001)]),
    ],
)
def test_a_key_for_a_strange_actor_or_org_is_refused(
    app: ipm.Application, actor: Any, orgs: list[Any]
) -> None:
    """Actors are printable text; orgs are org codes, at most a thousand."""
    with pytest.raises(InvalidRequest):
        app.create_api_key(actor, orgs)

    assert app.list_api_keys() == []


def test_a_whole_key_revokes_itself(app: ipm.Application) -> None:
    """Revoking with the whole key instead of its id still revokes it."""
    key = app.create_api_key("me", [ORG])

    assert app.revoke_api_key(key) is True
    assert app.list_api_keys() == []
    assert Caller(app, key, ORG)("/cdc/list", {})[0] == 401


@pytest.mark.parametrize(
    ("arguments", "pointer"),
    [
        ({"op": "z"}, "/op"),
        ({"description": 5}, "/description"),
        ({"schema": None}, "/schema"),
        ({"schema": "abc"}, "/schema"),
        ({"service": None}, "/service"),
        # NaN was served as null: the schema integrators read was not the
        # one applied; beside a 65-bit integer, /openapi.json was a 500.
        ({"schema": {"enum": [float("nan")]}}, "/schema/enum/0"),
        (
            {"schema": {"maximum": 2**64, "not": {"const": float("nan")}}},
            "/schema/not/const",
        ),
        ({"schema": {"type": "object", 5: 1}}, "/schema"),
    ],
)
def test_register_event_type_refuses_what_the_catalog_could_not_serve(
    app: ipm.Application, arguments: dict[str, Any], pointer: str
) -> None:
    """A bad op, description or schema is refused; the catalog is unchanged."""
    given: dict[str, Any] = {
        "service": "pos",
        "action": "sale.created",
        "schema": {"type": "object"},
        **arguments,
    }
    before = app.catalog.generation

    with pytest.raises(InvalidRequest) as refused:
        app.register_event_type(**given)

    assert pointer in {p.pointer for p in refused.value.details}
    assert app.catalog.generation == before
    assert app.handle("GET", "/openapi.json", {}, b"").status == 200


@pytest.mark.parametrize(
    "arguments", [{"limit": 0}, {"limit": -1}, {"limit": True}, {"colour": "red"}]
)
def test_reading_events_refuses_what_it_cannot_answer(
    app: ipm.Application, arguments: dict[str, Any]
) -> None:
    """Both storages refuse the same limits and unknown filters alike."""
    with pytest.raises(InvalidRequest):
        app.events(ORG, **arguments)
    with pytest.raises(InvalidRequest):
        app.events("not an org")


def test_a_trailing_newline_never_passes_for_a_name(app: ipm.Application) -> None:
    """Codes and names are whole matches: "ACME01\\n" is not ACME01."""
    with pytest.raises(InvalidRequest):
        app.publish(ORG + "\n", {"service": "pos", "action": "sale.created"})
    with pytest.raises(InvalidRequest):
        app.publish(ORG, {"service": "pos\n", "action": "sale.created"})
    with pytest.raises(InvalidRequest):
        app.create_api_key("me", [ORG + "\n"])
    with pytest.raises(InvalidRequest):
        app.bulk.create_import(ORG + "\n")

    assert app.events(ORG) == []


# -- what no request could carry is refused by name, on both storages ----------

LONE = "\ud800"


def _refusal(call: Any) -> list[str]:
    with pytest.raises(InvalidRequest) as refused:
        call()
    return [p.pointer for p in refused.value.details]


def test_a_lone_surrogate_in_an_audit_is_refused_before_anything_is_stored(
    app: ipm.Application,
) -> None:
    """An Audit holding a lone surrogate would poison the feed: it is a 400."""
    poisoned = Audit(reason="why" + LONE)

    pointers = _refusal(lambda: app.bulk.create_import(ORG, audit=poisoned))

    assert pointers == ["/audit/reason"]
    assert app.events(ORG) == []
    assert Caller(app, app.create_api_key("me", [ORG]), ORG)("/cdc/list")[0] == 200


@pytest.mark.parametrize(
    "call",
    [
        lambda app: app.bulk.create_import(ORG, filename="f" + LONE),
        lambda app: app.bulk.create_export(ORG, filters={"action_prefix": "s" + LONE}),
        lambda app: app.register_event_type(
            "pos", "sale.created", {"type": "object"}, description="d" + LONE
        ),
        lambda app: app.publish(
            ORG,
            {
                "service": "pos",
                "action": "sale.created",
                "occurred_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
            },
        ),
        lambda app: app.bulk.create_export(
            ORG,
            filters={
                "to_utc": datetime(
                    9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))
                )
            },
        ),
        lambda app: app.kpis.record(
            ORG,
            RecordKpi("NET_SALES", "daily", datetime(2026, 1, 1, tzinfo=UTC), 10**5000),
        ),
        lambda app: app.events(ORG, after_sequence=2**63),
        lambda app: app.events(ORG, service="pos" + LONE),
        lambda app: app.events(ORG, until_sequence="5"),
        lambda app: app.events(ORG, recorded_from=datetime(2026, 1, 1)),
    ],
)
def test_values_no_request_could_carry_are_refused_not_raised(
    app: ipm.Application, call: Any
) -> None:
    """Lone surrogates, times beyond UTC's range and huge integers are 400s."""
    assert _refusal(lambda: call(app))
    assert [e for e in app.events(ORG) if e.new.service != "ipm"] == []


def test_reading_with_an_id_no_record_could_have_finds_nothing(
    app: ipm.Application,
) -> None:
    """A lone surrogate in an id is refused or not found, on both storages."""
    with pytest.raises(InvalidRequest):
        app.bulk.get(ORG, "job_" + LONE)
    with pytest.raises(InvalidRequest):
        app.webhooks.get(ORG, "wh_" + LONE)
    with pytest.raises(InvalidRequest):
        app.webhooks.attempts(ORG, "msg_" + LONE)

    assert app.kpis.get_alert(ORG, "alt_" + LONE) is None
    assert app.revoke_api_key("k" + LONE) is False


@pytest.mark.parametrize(
    "arguments",
    [
        {
            "recorded_from": datetime(
                1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))
            )
        },
        {
            "recorded_before": datetime(
                9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))
            )
        },
    ],
)
def test_event_time_filters_beyond_utc_are_refused(
    app: ipm.Application, arguments: dict[str, Any]
) -> None:
    """Both storages refuse a time filter that has no UTC instant."""
    with pytest.raises(InvalidRequest):
        app.events(ORG, **arguments)


@pytest.mark.parametrize(
    "call",
    [
        lambda app: app.deliver_pending(stop=True),
        lambda app: app.deliver_pending(progress=5),
        lambda app: app.publish_many(ORG, None),
        lambda app: app.publish_many(ORG, {"service": "pos", "action": "a.b"}),
        lambda app: app.bulk.run(ORG, "job_x", progress=5),
        # A mapping would grant its keys whatever their values.
        lambda app: app.create_api_key("me", {ORG: False}),
    ],
)
def test_a_wrong_kind_of_argument_is_a_type_error_up_front(
    app: ipm.Application, call: Any
) -> None:
    """Regression: stop=True was an AttributeError deep in the dispatcher,
    progress=5 failed only after sends or a slice were recorded, and
    publish_many(ORG, None) said only that None is not iterable."""
    with pytest.raises(TypeError, match="must be"):
        call(app)


def test_a_closed_or_foreign_thread_host_connection_is_a_value_error(
    tmp_path: Any,
) -> None:
    """Regression: such a connection raised sqlite3.ProgrammingError, which
    the docs did not name; it is a ValueError, nothing stored."""
    import sqlite3
    import threading

    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db) as app:
        closed = sqlite3.connect(db)
        closed.close()
        made: list[sqlite3.Connection] = []
        thread = threading.Thread(target=lambda: made.append(sqlite3.connect(db)))
        thread.start()
        thread.join()
        event = {"service": "pos", "action": "sale.created", "payload": {}}

        for connection in (closed, made[0]):
            with pytest.raises(ValueError, match="cannot be used here"):
                app.publish(ORG, event, connection=connection)

        assert app.events(ORG) == []


def test_publish_returns_the_event_as_stored_not_the_hosts_objects(
    app: ipm.Application,
) -> None:
    """Regression: the first publish returned the host's tuple, enum member
    and its very nested dict; a retry of it returned lists and ints, so the
    two answers differed. Both are now the plain JSON /cdc/list shows."""

    class Colour(enum.IntEnum):
        RED = 1

    nested = {"k": 1}
    event = {
        "service": "pos",
        "action": "sale.created",
        "event_id": "sale-1",
        "payload": {"pair": (1, 2), "colour": Colour.RED, "nested": nested},
    }

    first = app.publish(ORG, event)
    nested["k"] = 2
    again = app.publish(
        ORG, event | {"payload": event["payload"] | {"nested": {"k": 1}}}
    )

    assert first == again
    assert first["payload"] == {"pair": [1, 2], "colour": 1, "nested": {"k": 1}}
    assert type(first["payload"]["colour"]) is int
    assert first == app.events(ORG)[0].to_wire()


def test_a_payload_is_measured_as_it_is_stored(app: ipm.Application) -> None:
    """Regression: a str-subclass key made orjson refuse the payload, so it
    was measured as the standard library wrote it (1e-05) but stored as
    orjson writes the plain form (0.00001): 699,047 bytes were stored
    under the 524,288-byte cap."""

    class Key(enum.StrEnum):
        A = "a"

    count = (MAX_PAYLOAD_BYTES - 8) // 6
    event = {"service": "pos", "action": "sale.created", "event_id": "big"}

    with pytest.raises(InvalidRequest, match="too large"):
        app.publish(ORG, event | {"payload": {Key.A: [1e-5] * count}})
    assert app.events(ORG) == []
