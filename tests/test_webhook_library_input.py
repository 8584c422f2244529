"""Direct calls of the webhook use cases refuse what the wire refuses.

Hosts may skip the HTTP routes and call ``app.webhooks`` and
``app.dispatcher`` themselves; each case here is a value a route's request
schema refuses, and the library must refuse it too, before writing.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ipm
from ipm.domain.errors import InvalidRequest
from ipm.domain.events import ORGCODE_PATTERN
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import SubscriptionFilter, Webhook
from ipm.testing import ScriptedTransport
from ipm.usecases.delivery import Dispatcher
from ipm.usecases.webhooks import MAX_LIST_LIMIT, CreateWebhook
from tests.conftest import ORG, Caller, open_app

URL = "https://hooks.example.com/ipm"
POS = (SubscriptionFilter("pos"),)
BAD_ORGCODES = ["a b/c", "", None, "A" * 200]


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    # A scripted network: nothing here may leave the machine.
    transport = ScriptedTransport()
    with open_app(request.param, tmp_path, webhook_transport=transport) as app:
        yield app


def _subscribe(app: ipm.Application, **fields: Any) -> Webhook:
    return app.webhooks.create(ORG, CreateWebhook(URL, POS, **fields)).webhook


def _publish(app: ipm.Application) -> None:
    app.publish(ORG, {"service": "pos", "action": "sale.created", "payload": {}})


def _stored_webhooks(app: ipm.Application, orgcodes: list[Any]) -> int:
    """Every webhook row, whatever org it was stored under."""
    path = getattr(app.storage, "path", None)
    if path is not None:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM webhooks").fetchone()[0])

    with app.storage.unit_of_work(write=False) as uow:
        return sum(len(uow.webhooks.list(org, None, None, 1000)) for org in orgcodes)


def _pointers(error: pytest.ExceptionInfo[InvalidRequest]) -> list[str]:
    return [problem.pointer for problem in error.value.details]


# -- org codes ---------------------------------------------------------------


@pytest.mark.parametrize("orgcode", BAD_ORGCODES)
def test_create_refuses_a_malformed_orgcode_and_stores_nothing(
    app: ipm.Application, orgcode: Any
) -> None:
    """A malformed org code is a 400 at /orgcode; no webhook row is written."""
    command = CreateWebhook(URL, POS)

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.create(orgcode, command)

    assert _pointers(error) == ["/orgcode"]
    assert _stored_webhooks(app, [ORG, *BAD_ORGCODES]) == 0


ENTRY_POINTS: dict[str, Callable[[ipm.Application, Any, str], object]] = {
    "get": lambda app, org, wid: app.webhooks.get(org, wid),
    "list": lambda app, org, wid: app.webhooks.list(org),
    "set_status": lambda app, org, wid: app.webhooks.set_status(
        org, wid, "paused", "1"
    ),
    "deliveries": lambda app, org, wid: app.webhooks.deliveries(org, wid),
    "attempts": lambda app, org, wid: app.webhooks.attempts(org, "msg_1"),
    "replay": lambda app, org, wid: app.dispatcher.replay(org, wid),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("orgcode", ["a b/c", None])
def test_every_entry_point_checks_its_orgcode(
    app: ipm.Application, entry: str, orgcode: Any
) -> None:
    """Each webhook use case refuses a malformed org code with a 400."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        ENTRY_POINTS[entry](app, orgcode, webhook.webhook_id)

    assert _pointers(error) == ["/orgcode"]
    assert app.webhooks.get(ORG, webhook.webhook_id) == webhook


@settings(max_examples=40, deadline=None)
@given(orgcode=st.text(max_size=70))
@example(orgcode="0\n")  # re's $ matches before a final newline: fullmatch
def test_create_stores_only_under_a_well_formed_orgcode(orgcode: str) -> None:
    """Any text is either a well-formed org code kept as is, or refused."""
    with ipm.open_memory(webhook_transport=ScriptedTransport()) as app:
        try:
            created = app.webhooks.create(orgcode, CreateWebhook(URL, POS))
        except InvalidRequest:
            assert not ORGCODE_PATTERN.fullmatch(orgcode)
            assert _stored_webhooks(app, [orgcode]) == 0
        else:
            assert ORGCODE_PATTERN.fullmatch(orgcode)
            assert created.webhook.orgcode == orgcode


# -- create ------------------------------------------------------------------


def test_an_empty_secret_is_refused_not_replaced(app: ipm.Application) -> None:
    """secret="" is a 400 at /secret, not a request for a generated secret."""
    command = CreateWebhook(URL, POS, secret="")

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.create(ORG, command)

    assert _pointers(error) == ["/secret"]
    assert _stored_webhooks(app, [ORG]) == 0


def test_a_create_command_of_another_type_is_a_type_error(app: ipm.Application) -> None:
    """The wire's dict where a CreateWebhook belongs is named, not an AttributeError."""
    command: Any = {"endpoint_url": URL, "event_filters": [{"service": "pos"}]}

    with pytest.raises(TypeError, match="CreateWebhook"):
        app.webhooks.create(ORG, command)

    assert _stored_webhooks(app, [ORG]) == 0


CREATE_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "upper-case scheme": (
        {"endpoint_url": "HTTPS://hooks.example.com/"},
        "/endpoint_url",
    ),
    "not a URI": ({"endpoint_url": "https://hooks.example.com/{x}"}, "/endpoint_url"),
    "URL not a string": (
        {"endpoint_url": b"https://hooks.example.com/"},
        "/endpoint_url",
    ),
    "description a list": ({"description": ["ERP"]}, "/description"),
    "description too long": ({"description": "x" * 257}, "/description"),
    "unknown algorithm": ({"signing_algorithm": "md5"}, "/signing_algorithm"),
    "unknown ordering key": ({"ordering_key": "price"}, "/ordering_key"),
    "no filters": ({"event_filters": ()}, "/event_filters"),
    "a dict for a filter": (
        {"event_filters": ({"service": "pos"},)},
        "/event_filters/0",
    ),
    "a filter's service not a string": (
        {"event_filters": (SubscriptionFilter(5),)},  # type: ignore[arg-type]
        "/event_filters/0/service",
    ),
    "a secret with ed25519": (
        {"signing_algorithm": "ed25519", "secret": "whsec_" + "A" * 44},
        "/secret",
    ),
}


@pytest.mark.parametrize("case", CREATE_REFUSALS)
def test_create_refuses_what_the_wire_refuses(app: ipm.Application, case: str) -> None:
    """A field the create route's schema refuses is a 400 naming it; nothing is kept."""
    fields, pointer = CREATE_REFUSALS[case]
    command = CreateWebhook(**{"endpoint_url": URL, "event_filters": POS, **fields})

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.create(ORG, command)

    assert pointer in _pointers(error)
    assert _stored_webhooks(app, [ORG]) == 0


# -- lists and statuses ------------------------------------------------------


def test_list_refuses_an_unknown_status_naming_the_known_ones(
    app: ipm.Application,
) -> None:
    """status="bogus" is a 400 listing active, paused and disabled, not []."""
    _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.list(ORG, status="bogus")

    (problem,) = error.value.details
    assert problem.pointer == "/status"
    assert all(name in problem.message for name in ("active", "paused", "disabled"))


def test_deliveries_refuse_an_unknown_status_naming_the_known_ones(
    app: ipm.Application,
) -> None:
    """status="bogus" is a 400 listing pending, delivered and failed, not []."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.deliveries(ORG, webhook.webhook_id, status="bogus")

    (problem,) = error.value.details
    assert problem.pointer == "/status"
    assert all(name in problem.message for name in ("pending", "delivered", "failed"))


def test_set_status_refuses_an_unknown_status_and_changes_nothing(
    app: ipm.Application,
) -> None:
    """An unknown target status is a 400 (not a 409 transition); the webhook stays."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        app.webhooks.set_status(ORG, webhook.webhook_id, "bogus", webhook.revision)

    assert type(error.value) is InvalidRequest
    assert _pointers(error) == ["/status"]
    assert app.webhooks.get(ORG, webhook.webhook_id) == webhook


@pytest.mark.parametrize(
    ("limit", "count"),
    [(0, 1), (-1, 1), (2, 2), (2.0, 2), (10**30, 3), (MAX_LIST_LIMIT + 1, 3)],
)
def test_limits_are_clamped_alike_on_every_storage(
    app: ipm.Application, limit: Any, count: int
) -> None:
    """0 and negatives give one row, a huge limit gives all: on memory and SQLite."""
    webhook = _subscribe(app)
    _subscribe(app)
    _subscribe(app)
    for _ in range(3):
        _publish(app)

    listed = app.webhooks.list(ORG, limit=limit)
    queued = app.webhooks.deliveries(ORG, webhook.webhook_id, limit=limit)

    assert len(listed) == count
    assert len(queued) == count


@pytest.mark.parametrize("limit", ["5", True, 2.5, None, float("inf")])
def test_a_limit_that_is_not_an_integer_is_refused(
    app: ipm.Application, limit: Any
) -> None:
    """A limit the wire would not call an integer is a 400 at /limit."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as listed:
        app.webhooks.list(ORG, limit=limit)
    with pytest.raises(InvalidRequest) as queued:
        app.webhooks.deliveries(ORG, webhook.webhook_id, limit=limit)

    assert _pointers(listed) == _pointers(queued) == ["/limit"]


@pytest.mark.parametrize("webhook_id", ["", "x" * 129, None, 7])
def test_a_malformed_webhook_id_is_a_400_not_a_404(
    app: ipm.Application, webhook_id: Any
) -> None:
    """An id no request could carry is refused as the wire refuses it."""
    with pytest.raises(InvalidRequest) as error:
        app.webhooks.get(ORG, webhook_id)

    assert _pointers(error) == ["/webhook_id"]


# -- replay ------------------------------------------------------------------


def test_replay_refuses_an_inverted_window(app: ipm.Application) -> None:
    """since after until is a 400 at /until from the use case itself."""
    webhook = _subscribe(app)
    since = datetime(2026, 1, 2, tzinfo=UTC)

    with pytest.raises(InvalidRequest) as error:
        app.dispatcher.replay(
            ORG, webhook.webhook_id, since=since, until=since - timedelta(days=1)
        )

    assert error.value.message == "until must not be before since"
    assert _pointers(error) == ["/until"]


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize(
    "moment", [datetime(2026, 1, 1), "2026-01-01T00:00:00", "yesterday", 1767225600]
)
def test_replay_refuses_a_moment_without_a_zone_or_not_a_time(
    app: ipm.Application, field: str, moment: Any
) -> None:
    """A naive time, zoneless or other text, or a number is a 400, not a TypeError."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        app.dispatcher.replay(ORG, webhook.webhook_id, **{field: moment})

    assert _pointers(error) == [f"/{field}"]


def test_replay_takes_a_window_in_any_offset(app: ipm.Application) -> None:
    """An aware window in another offset selects the same events as in UTC."""
    webhook = _subscribe(app)
    _publish(app)
    plus_two = timezone(timedelta(hours=2))
    since = datetime.now(UTC).astimezone(plus_two) - timedelta(hours=1)

    outcome = app.dispatcher.replay(ORG, webhook.webhook_id, since=since)

    assert (outcome.considered, outcome.delivered) == (1, 1)


def test_replay_takes_a_window_as_rfc3339_text(app: ipm.Application) -> None:
    """since and until may be given as the wire gives them, RFC 3339 text."""
    webhook = _subscribe(app)
    _publish(app)
    since = format_utc(datetime.now(UTC) - timedelta(hours=1))

    outcome = app.dispatcher.replay(ORG, webhook.webhook_id, since=since)
    none = app.dispatcher.replay(
        ORG, webhook.webhook_id, until="2000-01-01T02:00:00+02:00"
    )

    assert (outcome.considered, outcome.delivered) == (1, 1)
    assert none.considered == 0


@pytest.mark.parametrize("max_events", [True, 0, 1001, 5.5, "5", 10**30])
def test_replay_refuses_a_count_outside_the_wire_bounds(
    app: ipm.Application, max_events: Any
) -> None:
    """max_events must be an integer from 1 to 1000, never a bool or a string."""
    webhook = _subscribe(app)

    with pytest.raises(InvalidRequest) as error:
        app.dispatcher.replay(ORG, webhook.webhook_id, max_events=max_events)

    assert _pointers(error) == ["/max_events"]


def test_replay_counts_like_the_wire(app: ipm.Application) -> None:
    """5.0 is an integer on the wire, so a direct call and a request both take it."""
    webhook = _subscribe(app)
    for _ in range(7):
        _publish(app)
    call = Caller(app, app.create_api_key("ops@acme.example", [ORG]), ORG)
    five: Any = 5.0

    direct = app.dispatcher.replay(ORG, webhook.webhook_id, max_events=five)
    status, wire = call(
        "/webhook/replay", {"webhook_id": webhook.webhook_id, "max_events": five}
    )

    assert direct.considered == 5
    assert (status, wire["data"]["considered"]) == (200, 5)


# -- the dispatcher ----------------------------------------------------------


@pytest.mark.parametrize("max_batches", ["1", 0, -1, True, 1.0])
def test_deliver_pending_refuses_a_bad_batch_count_before_sending(
    app: ipm.Application, max_batches: Any
) -> None:
    """max_batches must be None or an int >= 1; a refused call sends nothing."""
    webhook = _subscribe(app)
    _publish(app)

    with pytest.raises(InvalidRequest) as error:
        app.dispatcher.deliver_pending(max_batches=max_batches)

    (delivery,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert _pointers(error) == ["/max_batches"]
    assert (delivery.status, delivery.attempts) == ("pending", 0)


@pytest.mark.parametrize(
    ("setting", "value", "raised"),
    [
        ("batch_size", "64", TypeError),
        ("batch_size", 0, ValueError),
        ("batch_size", 10**30, ValueError),
        ("workers", True, TypeError),
        ("workers", 0, ValueError),
        ("timeout", "10", TypeError),
        ("timeout", 0, ValueError),
        ("timeout", float("nan"), ValueError),
        ("timeout", float("inf"), ValueError),
        ("replay_budget", -1, ValueError),
    ],
)
def test_a_dispatcher_refuses_settings_it_cannot_run_with(
    app: ipm.Application, setting: str, value: Any, raised: type[Exception]
) -> None:
    """Counts and durations are checked when the dispatcher is built."""
    used = app.dispatcher

    with pytest.raises(raised, match=setting):
        Dispatcher(
            storage=used.storage,
            recorder=used.recorder,
            clock=used.clock,
            ids=used.ids,
            secrets=used.secrets,
            transport=ScriptedTransport(),
            policy=used.policy,
            **{setting: value},
        )


def test_open_refuses_a_worker_count_that_is_not_an_int() -> None:
    """delivery_workers="8" fails when the application opens, not at first send."""
    with pytest.raises(TypeError, match="delivery_workers"):
        ipm.open_memory(delivery_workers="8")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"delivery_timeout": 0}, "delivery_timeout"),
        ({"delivery_workers": 0}, "delivery_workers"),
        ({"busy_timeout": 3}, "busy_timeout: an option of open_sqlite only"),
        ({"busy_timeout": 3, "bogus": 1}, "unknown option(s) for ipm: bogus; busy"),
        ({"keyring": object()}, "keyring lacks current(), get()"),
    ],
)
def test_open_names_the_option_as_the_host_wrote_it(
    options: dict[str, Any], words: str
) -> None:
    """A refused option is named as it was passed, not as ipm calls it inside."""
    with pytest.raises((TypeError, ValueError), match=re.escape(words)):
        ipm.open_memory(**options)
