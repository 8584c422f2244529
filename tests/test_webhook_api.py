"""The /webhook routes through handle(), on memory and SQLite."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

import ipm
from ipm import schemas
from ipm.testing import LocalReceiver
from tests.conftest import ORG, OTHER, Caller

HOOK = "https://hooks.example.com/ipm"


def _create(call: Caller, **fields: Any) -> dict[str, Any]:
    body = {"endpoint_url": HOOK, "event_filters": [{"service": "pos"}], **fields}
    status, answer = call("/webhook/create", body)

    assert status == 200, answer
    return dict(answer["data"])


def _set_status(
    call: Caller, webhook_id: str, status: str, revision: str | None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"webhook_id": webhook_id, "status": status}
    if revision is not None:
        body["expected_revision"] = revision

    return call("/webhook/status/set", body)


def _own_events(app: ipm.Application, action: str) -> list[dict[str, Any]]:
    events = [e.to_wire() for e in app.events(ORG, service="ipm")]
    return [e for e in events if e["action"] == action]


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as running:
        yield running


# -- create, get, list -------------------------------------------------------


def test_the_secret_is_shown_once(call: Caller) -> None:
    """Create answers the whsec_ secret; get shows only its last four characters."""
    created = _create(call, description="ERP feed")

    status, got = call("/webhook/get", {"webhook_id": created["webhook_id"]})

    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    assert status == 200
    assert "secret" not in got["data"]["webhook"]
    assert got["data"]["webhook"]["secret_last4"] == secret[-4:]
    assert created["status"] == "active" and created["revision"]


def test_responses_match_their_schemas(call: Caller) -> None:
    """Every webhook route answers data valid against its response schema."""
    created = _create(call, ordering_key="logical_guid")
    webhook_id = created["webhook_id"]

    answers = {
        "WebhookCreateResponse": created,
        "WebhookGetResponse": call("/webhook/get", {"webhook_id": webhook_id})[1],
        "WebhookListResponse": call("/webhook/list", {})[1],
        "WebhookStatusSetResponse": _set_status(
            call, webhook_id, "paused", created["revision"]
        )[1],
    }
    _set_status(call, webhook_id, "active", "2")
    answers["WebhookReplayResponse"] = call(
        "/webhook/replay", {"webhook_id": webhook_id}
    )[1]

    for name, answer in answers.items():
        data = answer.get("data", answer)
        assert schemas.validate(name, data) == [], name


def test_the_create_specimen_is_accepted_as_documented(call: Caller) -> None:
    """The shipped WebhookCreateRequest specimen creates what its response shows."""
    request = schemas.specimen("WebhookCreateRequest")
    documented = schemas.specimen("WebhookCreateResponse")

    status, answer = call("/webhook/create", request)

    assert status == 200, answer
    made = answer["data"]
    for field in ("endpoint_url", "event_filters", "secret", "secret_last4"):
        assert made[field] == documented[field]
    assert made["ordering_key"] == documented["ordering_key"]


def test_a_caller_secret_is_kept(call: Caller) -> None:
    """A valid whsec_ secret supplied by the caller is the one used."""
    secret = "whsec_" + base64.b64encode(bytes(range(24))).decode()

    created = _create(call, secret=secret)

    assert created["secret"] == secret
    assert created["secret_last4"] == secret[-4:]


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
    ],
)
def test_a_bad_secret_is_refused_without_being_echoed(
    call: Caller, secret: str
) -> None:
    """A secret that is not strict base64 of 24-64 bytes is a 400 not quoting it."""
    status, answer = call(
        "/webhook/create",
        {"endpoint_url": HOOK, "event_filters": [{"service": "pos"}], "secret": secret},
    )

    assert status == 400
    assert answer["error"]["details"][0]["pointer"] == "/secret"
    assert secret[6:] not in json.dumps(answer)


def test_an_ed25519_webhook_shows_its_public_key(call: Caller) -> None:
    """An ed25519 webhook answers the whpk_ key its receiver verifies with."""
    created = _create(call, signing_algorithm="ed25519")

    assert created["secret"].startswith("whpk_")
    assert created["signing_algorithm"] == "ed25519"
    assert created["secret_last4"] == created["secret"][-4:]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"endpoint_url": "https://10.1.2.3/x"}, "/endpoint_url"),
        ({"endpoint_url": "http://hooks.example.com/x"}, "/endpoint_url"),
        ({"endpoint_url": "https://[::ffff:169.254.169.254]/"}, "/endpoint_url"),
        ({"event_filters": []}, "/event_filters"),
        ({"event_filters": [{"service": "POS"}]}, "/event_filters/0/service"),
        ({"event_filters": [{"service": "pos", "action_prefix": "Sale"}]}, None),
    ],
)
def test_bad_subscriptions_are_refused(
    call: Caller, body: dict[str, Any], pointer: str | None
) -> None:
    """A refused URL or malformed filters are a 400 pointing at the field."""
    request = {"endpoint_url": HOOK, "event_filters": [{"service": "pos"}], **body}

    status, answer = call("/webhook/create", request)

    assert status == 400
    assert answer["error"]["code"] == "invalid_request"
    pointers = [d["pointer"] for d in answer["error"]["details"]]
    assert pointer is None or pointer in pointers


def test_a_description_read_back_as_null_can_be_sent_again(call: Caller) -> None:
    """The Webhook shows no description as null; create takes it so too."""
    first = _create(call)
    again = _create(call, description=first["description"])

    assert first["description"] is again["description"] is None


def test_a_filter_of_the_wrong_kind_gets_one_detail(call: Caller) -> None:
    """Regression: a bare string filter was also told it combined action and
    action_prefix, which it cannot; both together are still refused."""
    both = {"service": "pos", "action": "sale.created", "action_prefix": "sale."}
    request = {"endpoint_url": HOOK, "event_filters": ["pos", both]}

    status, answer = call("/webhook/create", request)

    assert status == 400
    assert answer["error"]["details"] == [
        {"pointer": "/event_filters/0", "message": "must be an object"},
        {
            "pointer": "/event_filters/1",
            "message": "must not combine action and action_prefix",
        },
    ]


def test_list_pages_and_filters_by_status(call: Caller) -> None:
    """Listing pages through every webhook in creation order, by status."""
    ids = [_create(call)["webhook_id"] for _ in range(5)]
    _set_status(call, ids[1], "paused", "1")

    first = call("/webhook/list", {"limit": 3})[1]["data"]
    second = call("/webhook/list", {"limit": 3, "next_token": first["next_token"]})
    paused = call("/webhook/list", {"status": "paused"})[1]["data"]

    listed = [w["webhook_id"] for w in first["items"] + second[1]["data"]["items"]]
    assert listed == ids
    assert second[1]["data"]["next_token"] is None
    assert [w["webhook_id"] for w in paused["items"]] == [ids[1]]


def test_another_orgs_webhook_is_not_found(
    app: ipm.Application, call: Caller, other_key: str
) -> None:
    """Another org's webhook answers exactly like a missing one."""
    created = _create(call)
    outsider = Caller(app, other_key, OTHER)

    status, foreign = outsider("/webhook/get", {"webhook_id": created["webhook_id"]})
    _, missing = outsider("/webhook/get", {"webhook_id": "wh_nope"})

    assert status == 404
    assert foreign["error"] == missing["error"]


# -- status ------------------------------------------------------------------


def test_status_changes_need_the_current_revision(
    app: ipm.Application, call: Caller
) -> None:
    """No revision is 428, a stale one 409; neither changes anything."""
    created = _create(call)
    webhook_id = created["webhook_id"]
    _set_status(call, webhook_id, "paused", created["revision"])

    missing = _set_status(call, webhook_id, "active", None)
    stale = _set_status(call, webhook_id, "disabled", created["revision"])

    assert missing[0] == 428
    assert missing[1]["error"]["code"] == "revision_required"
    assert stale[0] == 409
    assert stale[1]["error"]["code"] == "revision_mismatch"
    webhook = call("/webhook/get", {"webhook_id": webhook_id})[1]["data"]["webhook"]
    assert webhook["status"] == "paused" and webhook["revision"] == "2"
    assert len(_own_events(app, "webhook.status_changed")) == 1


def test_an_illegal_move_is_an_invalid_transition(call: Caller) -> None:
    """Moving to the status a webhook already has is refused by its lifecycle."""
    created = _create(call)

    status, answer = _set_status(call, created["webhook_id"], "active", "1")

    assert status == 409
    assert answer["error"]["code"] == "invalid_transition"


def test_every_change_is_a_cdc_event(app: ipm.Application, call: Caller) -> None:
    """Creation and each status change are recorded with their audit trail."""
    created = call(
        "/webhook/create",
        {
            "request_context": {"orgcode": ORG, "actor": "ops@acme.example"},
            "reason": "connect ERP",
            "endpoint_url": HOOK,
            "event_filters": [{"service": "pos"}],
        },
    )[1]["data"]
    call(
        "/webhook/status/set",
        {
            "webhook_id": created["webhook_id"],
            "status": "disabled",
            "expected_revision": "1",
            "reason": "ERP retired",
        },
    )

    (made,) = _own_events(app, "webhook.created")
    (changed,) = _own_events(app, "webhook.status_changed")

    assert made["logical_guid"] == created["webhook_id"]
    assert made["audit"]["reason"] == "connect ERP"
    assert created["secret"] not in json.dumps(made)
    assert changed["payload"] == {
        "webhook_id": created["webhook_id"],
        "from": "active",
        "to": "disabled",
        "reason": "ERP retired",
        "revision": "2",
    }
    webhook = call("/webhook/get", {"webhook_id": created["webhook_id"]})[1]
    assert webhook["data"]["webhook"]["disabled_reason"] == "manual"


def test_a_webhook_on_ipm_events_gets_its_own_creation_first(
    app: ipm.Application, call: Caller
) -> None:
    """Its webhook.created is recorded in the transaction that stores it."""
    created = _create(call, event_filters=[{"service": "ipm"}])

    (first, *_) = app.webhooks.deliveries(ORG, created["webhook_id"])
    (made,) = _own_events(app, "webhook.created")

    assert first.event_sequence == made["sequence"]
    assert made["logical_guid"] == created["webhook_id"]


# -- secrets at rest -----------------------------------------------------------


def test_no_secret_reaches_the_database_file(tmp_path: Path) -> None:
    """The database files hold no secret, in text or in raw bytes."""
    db = tmp_path / "ipm.sqlite"
    app = ipm.open_sqlite(db, allow_networks=["127.0.0.0/8"])
    call = Caller(app, app.create_api_key("ops", [ORG]), ORG)
    created = [_create(call) for _ in range(3)]
    created.append(_create(call, signing_algorithm="ed25519"))
    private_keys = [
        app.webhooks.secrets.open(w.sealed_secret, f"ipm/webhook/{ORG}/{w.webhook_id}")
        for w in app.webhooks.list(ORG)
    ]
    while_open = _database_bytes(tmp_path)
    app.close()

    stored = while_open + _database_bytes(tmp_path)
    for secret in [c["secret"] for c in created] + private_keys:
        body = secret.split("_", 1)[1]
        assert secret.encode() not in stored
        assert body.encode() not in stored
        assert base64.b64decode(body) not in stored
    assert (tmp_path / "ipm.sqlite.key").exists()


def _database_bytes(folder: Path) -> bytes:
    """The database file with its WAL and shared-memory files, not the key file."""
    files = [p for p in folder.glob("ipm.sqlite*") if not p.name.endswith(".key")]
    return b"".join(p.read_bytes() for p in files)


# -- delivery through the routes ---------------------------------------------


def test_pause_holds_and_resume_delivers_each_event_once(
    app: ipm.Application, call: Caller, receiver: LocalReceiver
) -> None:
    """Pause, publish three events, resume: all three arrive exactly once."""
    created = _create(call, endpoint_url=receiver.url())
    webhook_id = created["webhook_id"]
    _set_status(call, webhook_id, "paused", created["revision"])

    for n in range(3):
        app.publish(
            ORG, {"service": "pos", "action": "sale.created", "payload": {"n": n}}
        )
    held = app.deliver_pending()
    arrived_while_paused = len(receiver.received)
    _set_status(call, webhook_id, "active", "2")
    released = app.deliver_pending()
    again = app.deliver_pending()

    assert held.attempted == 0 and arrived_while_paused == 0
    assert released.delivered == 3 and again.attempted == 0
    verifier = standardwebhooks.Webhook(created["secret"])
    bodies = [verifier.verify(r.body, r.headers) for r in receiver.received]
    assert sorted(b["data"]["payload"]["n"] for b in bodies) == [0, 1, 2]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 3


def test_replay_answers_real_outcomes(
    app: ipm.Application, call: Caller, receiver: LocalReceiver
) -> None:
    """Replay sends each matching event again and counts what really happened."""
    created = _create(call, endpoint_url=receiver.url())
    for n in range(4):
        app.publish(
            ORG, {"service": "pos", "action": "sale.created", "payload": {"n": n}}
        )
    app.publish(ORG, {"service": "orders", "action": "order.placed"})
    app.deliver_pending()

    status, answer = call(
        "/webhook/replay", {"webhook_id": created["webhook_id"], "max_events": 3}
    )

    assert status == 200
    assert answer["data"] == {
        "webhook_id": created["webhook_id"],
        "considered": 3,
        "delivered": 3,
        "failed": 0,
    }
    queued = app.webhooks.deliveries(ORG, created["webhook_id"])
    replay_ids = [r.headers["webhook-id"] for r in receiver.received[4:]]
    assert replay_ids == [d.delivery_id for d in queued[:3]]
    assert [r.body for r in receiver.received[4:]] == [d.body for d in queued[:3]]


def test_a_replay_is_a_cdc_event_with_its_audit(
    app: ipm.Application, call: Caller, receiver: LocalReceiver
) -> None:
    """Regression: a replay's request_context, reason and source_refs were
    accepted and dropped; who resent what to a third party is now recorded
    as ``webhook.replay_started`` before the first send, then
    ``webhook.replayed`` with the outcome, both with the audit."""
    created = _create(call, endpoint_url=receiver.url())
    for n in range(2):
        app.publish(
            ORG, {"service": "pos", "action": "sale.created", "payload": {"n": n}}
        )

    status, answer = call(
        "/webhook/replay",
        {
            "request_context": {"orgcode": ORG, "actor": "ops@acme.example"},
            "reason": "receiver lost a day",
            "source_refs": [{"kind": "ticket", "id": "T-77"}],
            "webhook_id": created["webhook_id"],
            "since": "2026-01-01T00:00:00Z",
        },
    )

    assert status == 200, answer
    (started,) = _own_events(app, "webhook.replay_started")
    (replayed,) = _own_events(app, "webhook.replayed")
    assert (started["op"], replayed["op"]) == ("c", "u")
    assert started["sequence"] < replayed["sequence"]
    assert replayed["logical_guid"] == replayed["payload"]["replay_id"]
    assert started["logical_guid"] == replayed["logical_guid"]
    assert started["payload"] == {
        key: replayed["payload"][key]
        for key in ("replay_id", "webhook_id", "since", "until", "max_events")
    } | {"considered": 2}
    assert started["audit"] == replayed["audit"]
    assert replayed["payload"] == {
        "replay_id": replayed["payload"]["replay_id"],
        "webhook_id": created["webhook_id"],
        "since": "2026-01-01T00:00:00Z",
        "until": None,
        "max_events": 100,
        "considered": 2,
        "delivered": 2,
        "failed": 0,
    }
    assert answer["data"]["delivered"] == 2
    assert replayed["audit"]["actor"] == "ops@acme.example"
    assert replayed["audit"]["reason"] == "receiver lost a day"
    assert replayed["audit"]["source_refs"] == [{"kind": "ticket", "id": "T-77"}]


@pytest.mark.parametrize("status", ["paused", "disabled"])
def test_replaying_a_stopped_webhook_is_refused(call: Caller, status: str) -> None:
    """Replay of a paused or disabled webhook is a 409 that says why."""
    created = _create(call)
    _set_status(call, created["webhook_id"], status, "1")

    code, answer = call("/webhook/replay", {"webhook_id": created["webhook_id"]})

    assert code == 409
    assert status in answer["error"]["message"]


def test_an_inverted_replay_window_is_refused(call: Caller) -> None:
    """A replay whose until comes before its since is a 400, as a KPI query's."""
    created = _create(call)
    window = {"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}

    code, answer = call(
        "/webhook/replay", {"webhook_id": created["webhook_id"], **window}
    )

    assert code == 400
    assert answer["error"]["details"][0]["pointer"] == "/until"


def test_replaying_a_paused_webhook_is_a_409_naming_the_field(call: Caller) -> None:
    """Regression: the 409 said why in its message only, details empty,
    where every refusal names what it is about."""
    created = _create(call)
    _set_status(call, created["webhook_id"], "paused", created["revision"])

    status, answer = call("/webhook/replay", {"webhook_id": created["webhook_id"]})

    assert status == 409
    assert answer["error"]["code"] == "conflict"
    assert answer["error"]["details"] == [
        {"pointer": "/webhook_id", "message": "is paused, not active"}
    ]
