"""The dispatcher: retries, disabling, ordering, leases, replay, the guard."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

import ipm
from ipm import signing
from ipm.adapters.keyring import MemoryKeyring
from ipm.adapters.sqlite import events as sqlite_events
from ipm.adapters.transport import HttpTransport, OutboundRequest, TransportResult
from ipm.domain.errors import (
    InvalidRequest,
    StorageBusy,
    StorageClosed,
    StorageUnavailable,
)
from ipm.domain.netguard import NetworkPolicy
from ipm.domain.retry import RetryPolicy
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import Delivery, SubscriptionFilter, Webhook
from ipm.testing import FixedClock, LocalReceiver, ScriptedTransport
from ipm.testing.webhooks import (
    Received,
    answer,
    make_delivery,
    make_webhook,
    network_error,
)
from ipm.usecases import delivery as delivery_module
from ipm.usecases import replay as replay_module
from ipm.usecases.delivery import DeliveryReport, Dispatcher
from ipm.usecases.lanes import Lane, Ready, Schedule
from ipm.usecases.webhooks import CreateWebhook

ORG = "ACME01"
URL = "https://hooks.example.com/ipm"
NO_JITTER = RetryPolicy(jitter=0)


class Harness:
    """One application with a fixed clock and a scripted network."""

    subscribed: Webhook  # the webhook one_worker subscribed

    def __init__(self, app: ipm.Application, clock: FixedClock, net: Any) -> None:
        self.app, self.clock, self.net = app, clock, net

    def subscribe(self, url: str = URL, **fields: Any) -> tuple[Webhook, str]:
        fields.setdefault("event_filters", (SubscriptionFilter("pos"),))
        created = self.app.webhooks.create(ORG, CreateWebhook(url, **fields))
        return created.webhook, created.secret

    def publish(self, n: int, **fields: Any) -> None:
        event = {"service": "pos", "action": "sale.created", "payload": {"n": n}}
        self.app.publish(ORG, {**event, **fields})

    def webhook(self, webhook_id: str) -> Webhook:
        return self.app.webhooks.get(ORG, webhook_id)

    @classmethod
    def one_worker(cls, kind: str, tmp_path: Path, net: Any, count: int) -> Harness:
        """A harness whose dispatcher sends one at a time, with ``count``
        events published to one webhook (``subscribed``)."""
        clock = FixedClock()
        app = _open(
            kind, tmp_path, clock=clock, webhook_transport=net, delivery_workers=1
        )
        h = cls(app, clock, net)
        h.subscribed, _ = h.subscribe()
        for n in range(count):
            h.publish(n)
        return h

    def own_events(self, action: str) -> list[dict[str, Any]]:
        events = [e.to_wire() for e in self.app.events(ORG, service="ipm")]
        return [e for e in events if e["action"] == action]


def _open(kind: str, tmp_path: Path, **options: Any) -> ipm.Application:
    options.setdefault("allow_networks", ["127.0.0.0/8"])
    if kind == "memory":
        return ipm.open_memory(**options)

    return ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _harness(
    kind: str, tmp_path: Path, net: Any, retry: RetryPolicy = NO_JITTER
) -> Iterator[Harness]:
    clock = FixedClock()
    app = _open(kind, tmp_path, clock=clock, webhook_transport=net, retry_policy=retry)
    yield Harness(app, clock, net)
    app.close()


@pytest.fixture
def net() -> ScriptedTransport:
    return ScriptedTransport()


@pytest.fixture
def h(kind: str, tmp_path: Path, net: ScriptedTransport) -> Iterator[Harness]:
    yield from _harness(kind, tmp_path, net)


# -- retries -----------------------------------------------------------------


def test_a_retry_sends_the_same_id_and_body_freshly_signed(h: Harness) -> None:
    """500 then 200: the same id and bytes twice, each with its own signature."""
    h.net._script[URL] = [answer(500, b"oops"), answer(200)]
    webhook, secret = h.subscribe()
    h.publish(1)

    first = h.app.deliver_pending()
    early = h.app.deliver_pending()
    h.clock.advance(5)
    second = h.app.deliver_pending()

    assert (first.retrying, early.attempted, second.delivered) == (1, 0, 1)
    one, two = h.net.sent
    assert one.headers["webhook-id"] == two.headers["webhook-id"]
    assert one.body == two.body
    assert one.headers["webhook-timestamp"] != two.headers["webhook-timestamp"]
    for request in (one, two):
        signing.verify(secret, request.headers, request.body, now=h.clock)
    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = h.app.webhooks.attempts(ORG, delivery.delivery_id)
    assert [(a.number, a.status) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0].response_excerpt == b"oops"
    assert delivery.status == "delivered"


def test_the_last_failed_try_fails_the_delivery(
    kind: str, tmp_path: Path, net: ScriptedTransport
) -> None:
    """After max_attempts failures the delivery is failed and never sent again."""
    net._script[URL] = [TransportResult.failed("connection refused", 1.0)]
    policy = RetryPolicy(schedule=(1,), max_attempts=3, jitter=0, unanswered_hold=0)
    h = next(_harness(kind, tmp_path, net, policy))
    webhook, _ = h.subscribe()
    h.publish(1)

    for _ in range(5):
        h.app.deliver_pending()
        h.clock.advance(1)

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert len(net.sent) == 3
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert delivery.last_error == "connection refused"
    h.app.close()


@pytest.mark.parametrize("name", ["retry-after", "Retry-After", "RETRY-AFTER"])
@pytest.mark.parametrize(("hint", "waited"), [("120", 120), ("999999", 3600)])
def test_retry_after_is_honoured_within_bounds(
    h: Harness, name: str, hint: str, waited: int
) -> None:
    """A 429's Retry-After sets the next try, capped at max_retry_after.

    A transport that gives the header as it was spelled on the wire is
    read the same: the hint was once lost unless the name was lower case.
    """
    h.net._script[URL] = [answer(429, headers={name: hint}), answer(200)]
    webhook, _ = h.subscribe()
    h.publish(1)

    h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert delivery.next_attempt_at == h.clock() + timedelta(seconds=waited)


# -- disabling ---------------------------------------------------------------


def test_410_disables_the_webhook_and_holds_the_rest(h: Harness) -> None:
    """A 410 fails its delivery and disables the webhook; others wait, kept."""
    h.net._script[URL] = [answer(500), answer(410)]
    webhook, _ = h.subscribe()
    h.publish(1)
    h.app.deliver_pending()
    h.publish(2)

    report = h.app.deliver_pending()
    h.publish(3)
    h.clock.advance(3600)
    later = h.app.deliver_pending()

    current = h.webhook(webhook.webhook_id)
    assert (current.status, current.disabled_reason) == ("disabled", "gone_410")
    assert report.disabled == (webhook.webhook_id,)
    assert later.attempted == 0 and len(h.net.sent) == 2
    (event,) = h.own_events("webhook.disabled")
    assert event["payload"]["reason"] == "gone_410"
    assert event["payload"]["from"] == "active"
    deliveries = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert [d.status for d in deliveries] == ["pending", "failed"]


def test_after_a_410_the_rest_of_the_claim_is_held_not_sent(
    kind: str, tmp_path: Path
) -> None:
    """Regression: once the endpoint said 410, the dispatcher still sent it
    the rest of its claimed batch (up to 64), and each was failed for good;
    they are released untried and held by the disabled webhook, so
    re-activating sends them."""
    net = ScriptedTransport(default=answer(410))
    h = Harness.one_worker(kind, tmp_path, net, 5)
    app, webhook = h.app, h.subscribed

    report = h.app.deliver_pending()
    statuses = [d.status for d in h.app.webhooks.deliveries(ORG, webhook.webhook_id)]
    net._default = answer(200)
    current = h.webhook(webhook.webhook_id)
    h.app.webhooks.set_status(ORG, webhook.webhook_id, "active", current.revision)
    again = h.app.deliver_pending()
    app.close()

    assert (report.attempted, report.failed, report.released) == (1, 1, 4)
    assert len(net.sent) == 1 + 4
    assert sorted(statuses) == ["failed"] + ["pending"] * 4
    assert again.delivered == 4


def test_sustained_failure_disables_with_an_event(
    kind: str, tmp_path: Path, net: ScriptedTransport
) -> None:
    """An endpoint without a success for disable_after is disabled, saying why."""
    net._script[URL] = [answer(503)]
    policy = RetryPolicy(schedule=(60,), jitter=0, disable_after=timedelta(hours=1))
    h = next(_harness(kind, tmp_path, net, policy))
    webhook, _ = h.subscribe()

    for n in range(70):
        h.publish(n)
        h.app.deliver_pending()
        h.clock.advance(60)
        if h.webhook(webhook.webhook_id).status == "disabled":
            break

    current = h.webhook(webhook.webhook_id)
    (event,) = h.own_events("webhook.disabled")
    assert current.disabled_reason == "sustained_failure"
    assert event["payload"]["reason"] == "sustained_failure"
    assert "503" in event["payload"]["detail"]
    assert 59 <= n <= 61
    h.app.close()


def test_a_success_restarts_the_failure_clock(
    kind: str, tmp_path: Path, net: ScriptedTransport
) -> None:
    """One 2xx between failures keeps an endpoint from being disabled."""
    replies = iter([503] * 40 + [200] + [503] * 40)
    net._default = lambda request: answer(next(replies, 503))
    policy = RetryPolicy(schedule=(600,), jitter=0, disable_after=timedelta(hours=1))
    h = next(_harness(kind, tmp_path, net, policy))
    webhook, _ = h.subscribe()

    for n in range(80):
        h.publish(n)
        h.app.deliver_pending()
        h.clock.advance(60)

    assert h.webhook(webhook.webhook_id).status == "active"
    h.app.close()


def test_a_send_this_machine_could_not_make_spends_no_attempt(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors here, the request never left: the endpoint is
    not blamed (no attempt, no step toward disabling); the delivery is
    released untried and goes out once the machine can send again."""
    monkeypatch.setattr("ipm.usecases.delivery._SHORT_HERE_PAUSE", 0)
    short = TransportResult.failed(
        "network error (Too many open files) while connecting", 1.0, local=True
    )
    h.net._script[URL] = [short, answer(200)]
    webhook, _ = h.subscribe()
    h.publish(1)

    first = h.app.deliver_pending(max_batches=1)
    (waiting,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    tried_then = h.app.webhooks.attempts(ORG, waiting.delivery_id)
    second = h.app.deliver_pending()

    assert (first.attempted, first.delivered) == (0, 0)
    assert tried_then == []
    assert (waiting.status, waiting.attempts, waiting.lease_owner) == (
        "pending",
        0,
        None,
    )
    assert second.delivered == 1
    (attempt,) = h.app.webhooks.attempts(ORG, waiting.delivery_id)
    assert attempt.status == 200


def test_a_call_whose_sends_this_machine_cannot_make_ends(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Released untried and due again at once, the deliveries were claimed
    again and again: deliver_pending() (and ipm deliver --once) never
    returned while descriptors were short. The call now claims no more."""
    monkeypatch.setattr("ipm.usecases.delivery._SHORT_HERE_PAUSE", 0)
    h.net._default = TransportResult.failed(
        "network error (Too many open files) while connecting", 1.0, local=True
    )
    webhook, _ = h.subscribe()
    for n in range(5):
        h.publish(n)

    report = h.app.deliver_pending()

    assert report.attempted == 0
    assert len(h.net.sent) < 5  # the lane's sends not yet started were skipped
    deliveries = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert [d.attempts for d in deliveries] == [0] * 5
    assert {d.lease_owner for d in deliveries} == {None}


class _KeyFileUnreadable(MemoryKeyring):
    """A keyring whose reads fail for want of descriptors while told so."""

    short = False

    def get(self, key_id: str) -> bytes | None:
        if self.short:
            raise StorageUnavailable("the process has no file descriptors left")
        return super().get(key_id)


def test_a_key_file_this_machine_cannot_read_spends_no_attempt(
    kind: str,
    tmp_path: Path,
    net: ScriptedTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: recorded as 'the signing secret is unavailable', an
    attempt spent for each try while descriptors were short."""
    monkeypatch.setattr("ipm.usecases.delivery._SHORT_HERE_PAUSE", 0)
    keyring = _KeyFileUnreadable()
    app = _open(kind, tmp_path, webhook_transport=net, keyring=keyring)
    h = Harness(app, FixedClock(), net)
    webhook, _ = h.subscribe()
    h.publish(1)

    keyring.short = True
    first = app.deliver_pending()
    keyring.short = False
    second = app.deliver_pending()
    (delivery,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = app.webhooks.attempts(ORG, delivery.delivery_id)
    app.close()

    assert (first.attempted, second.delivered) == (0, 1)
    assert [a.status for a in attempts] == [200]
    assert len(net.sent) == 1


# -- holding and releasing ---------------------------------------------------


def test_pause_holds_and_resume_releases(h: Harness) -> None:
    """Paused deliveries wait; resumed, each goes out exactly once."""
    webhook, _ = h.subscribe()
    h.app.webhooks.set_status(ORG, webhook.webhook_id, "paused", "1")
    for n in range(3):
        h.publish(n)

    held = h.app.deliver_pending()
    h.app.webhooks.set_status(ORG, webhook.webhook_id, "active", "2")
    released = h.app.deliver_pending()
    h.clock.advance(10_000)
    after = h.app.deliver_pending()

    assert (held.attempted, released.delivered, after.attempted) == (0, 3, 0)
    assert len(set(h.net.ids())) == len(h.net.sent) == 3


# A database locked by another writer, and one whose disk is full (or at a
# file size limit): both pass, and sends in hand must outlast them.
STORE_FAULTS = [
    pytest.param(StorageBusy("the database stayed locked"), id="busy"),
    pytest.param(StorageUnavailable("the disk is full"), id="disk-full"),
]


@pytest.mark.parametrize("fault", STORE_FAULTS)
def test_a_busy_database_does_not_make_a_sent_batch_go_out_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    """Recording that meets a locked database (or a full disk) is tried
    again, not dropped."""
    h.subscribe()
    for n in range(3):
        h.publish(n)
    dispatcher = h.app.dispatcher
    record = dispatcher._record
    busy: list[int] = []

    def locked_twice(batch: Any) -> Any:
        if len(busy) < 2:
            busy.append(len(batch.sent))
            raise fault
        return record(batch)

    monkeypatch.setattr(dispatcher, "_record", locked_twice)
    first = h.app.deliver_pending()
    h.clock.advance(10_000)
    again = h.app.deliver_pending()

    assert busy == [3, 3]
    assert (first.delivered, again.attempted) == (3, 0)
    assert len(h.net.sent) == 3


def test_a_stop_bounds_the_wait_to_record_a_sent_batch(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a dispatcher told to stop while its disk was full kept
    waiting to record for a whole lease (2 min 20 s), past any supervisor's
    grace period. Once stopping it waits _STOP_RECORD_GRACE at most, then
    raises (the batch goes out again after its leases: at least once)."""
    from ipm.usecases import delivery as delivery_module

    monkeypatch.setattr(delivery_module, "_STOP_RECORD_GRACE", 0.5)
    h.subscribe()
    h.publish(1)
    stop = threading.Event()

    def full_disk(batch: Any) -> Any:
        stop.set()  # the signal arrives while the record waits
        raise StorageUnavailable("the disk is full")

    monkeypatch.setattr(h.app.dispatcher, "_record", full_disk)
    began = time.monotonic()
    with pytest.raises(StorageUnavailable):
        h.app.deliver_pending(stop=stop)

    assert time.monotonic() - began < 5
    assert len(h.net.sent) == 1


@pytest.mark.parametrize("fault", STORE_FAULTS)
def test_a_claim_that_meets_a_locked_database_keeps_the_sends_under_way(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    """A claim made while sends are under way meets a locked database: the
    call goes on, records those sends, and claims again once it is free.

    Regression: the StorageBusy left the call, the sent deliveries were
    never recorded (no attempt logged), and once their leases ran out they
    were all sent again.
    """
    locked = threading.Event()

    def waits_for_the_lock(request: OutboundRequest) -> TransportResult:
        locked.wait(10)
        return answer(204)

    net = ScriptedTransport(default=waits_for_the_lock)
    h = next(_harness(kind, tmp_path, net))
    webhook, _ = h.subscribe()
    h.publish(1)
    dispatcher = h.app.dispatcher
    claim = dispatcher._claim
    claims: list[str] = []

    def busy_second_time(limit: int, sending: frozenset[str]) -> Any:
        claims.append("claim")
        if len(claims) == 2:
            h.publish(2)  # due, but the database is "locked" now
            locked.set()
            raise fault
        return claim(limit, sending)

    monkeypatch.setattr(dispatcher, "_claim", busy_second_time)
    report = h.app.deliver_pending()
    h.clock.advance(10_000)
    again = h.app.deliver_pending()

    assert (report.attempted, report.delivered) == (2, 2)
    assert again.attempted == 0
    assert len(net.sent) == 2
    delivered = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert [len(h.app.webhooks.attempts(ORG, d.delivery_id)) for d in delivered] == [
        1,
        1,
    ]
    h.app.close()


def test_a_claim_that_meets_a_locked_database_with_nothing_in_hand_raises(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing sent, nothing lost: the caller hears the database is busy."""
    h.subscribe()
    h.publish(1)

    def busy(limit: int, sending: frozenset[str]) -> Any:
        raise StorageBusy("the database stayed locked")

    monkeypatch.setattr(h.app.dispatcher, "_claim", busy)

    with pytest.raises(StorageBusy):
        h.app.deliver_pending()
    assert h.net.sent == []


# -- an endpoint that does not answer ------------------------------------------

DEAD = "https://dead.example.com/ipm"


def test_an_endpoint_that_does_not_answer_holds_only_its_own_deliveries(
    h: Harness,
) -> None:
    """A dead endpoint costs one timeout; its other deliveries wait, untried.

    Regression: every delivery of a dead endpoint in a batch took its full
    timeout, so another org's webhook behind a backlog of them waited
    minutes a batch, hours in all.
    """
    h.net._script[DEAD] = [network_error("timeout after 10 s while waiting")]
    dead, _ = h.subscribe(DEAD)
    for n in range(20):
        h.publish(n)
    h.subscribe(event_filters=(SubscriptionFilter("stock"),))
    for n in range(3):
        h.publish(n, service="stock")

    report = h.app.deliver_pending()

    # Sends already under way when the first one failed still end: at most
    # one per worker, all within the same timeout.
    tried = [r.url for r in h.net.sent].count(DEAD)
    assert 1 <= tried <= h.app.dispatcher.workers
    assert [r.url for r in h.net.sent].count(URL) == 3
    assert (report.attempted, report.delivered) == (tried + 3, 3)
    assert (report.held, report.released) == (20 - tried, 0)
    waiting = h.app.webhooks.deliveries(ORG, dead.webhook_id, status="pending")
    assert sum(d.attempts for d in waiting) == tried
    untried = [d for d in waiting if d.attempts == 0]
    assert {(d.next_attempt_at, d.lease_owner) for d in untried} == {(h.clock(), None)}
    # Held until the unanswered delivery's own first retry (5 s), no later.
    assert h.webhook(dead.webhook_id).held_until == h.clock() + timedelta(seconds=5)


def test_deliveries_queued_during_a_hold_wait_for_its_end(
    kind: str, tmp_path: Path
) -> None:
    """A held webhook's new deliveries are not sent either until the hold ends.

    Regression: the hold moved only the deliveries due at that moment, so
    an endpoint with steady traffic cost a timeout per new event. The first
    hold ends with the first retry (5 s); later ones last unanswered_hold.
    """
    net = ScriptedTransport({DEAD: [network_error()]})
    clock = FixedClock()
    app = _open(
        kind,
        tmp_path,
        clock=clock,
        webhook_transport=net,
        retry_policy=NO_JITTER,
        delivery_workers=1,
    )
    h = Harness(app, clock, net)
    h.subscribe(DEAD)
    h.publish(1)
    app.deliver_pending()
    clock.advance(5)
    h.publish(2)
    retried = app.deliver_pending()

    quiet = []
    for n in range(3, 6):
        clock.advance(5)
        h.publish(n)
        quiet.append(app.deliver_pending().attempted)
    clock.advance(15)
    after = app.deliver_pending()

    # Failing, the webhook is offered one delivery a batch: its retry, then
    # (the hold over) the oldest of those queued meanwhile.
    assert (retried.attempted, retried.held) == (1, 0)
    assert quiet == [0, 0, 0]
    assert (after.attempted, after.held) == (1, 0)
    assert len(net.sent) == 3
    app.close()


def test_a_2xx_in_the_same_batch_means_no_hold(kind: str, tmp_path: Path) -> None:
    """An endpoint that answered 2xx in the batch is not held for a later miss."""
    net = ScriptedTransport({DEAD: [answer(200), network_error()]})
    clock = FixedClock()
    app = _open(kind, tmp_path, clock=clock, webhook_transport=net, delivery_workers=1)
    h = Harness(app, clock, net)
    dead, _ = h.subscribe(DEAD)
    h.publish(1)
    h.publish(2)

    report = app.deliver_pending()

    assert (report.delivered, report.retrying) == (1, 1)
    assert h.webhook(dead.webhook_id).held_until is None
    app.close()


def test_a_delivery_skipped_in_a_lane_that_got_a_2xx_is_not_held(
    kind: str, tmp_path: Path
) -> None:
    """200, then no answer: the lane's third delivery is skipped, but the
    webhook answered in that lane, so it is not held: the third is sent in
    the same call and DeliveryReport.held counts nothing."""
    net = ScriptedTransport({DEAD: [answer(200), network_error()]})
    clock = FixedClock()
    app = _open(kind, tmp_path, clock=clock, webhook_transport=net, delivery_workers=1)
    h = Harness(app, clock, net)
    h.subscribe(DEAD)
    for n in (1, 2, 3):
        h.publish(n)

    report = app.deliver_pending()
    app.close()

    assert (report.delivered, report.retrying, report.held) == (1, 2, 0)
    assert len(net.sent) == 3


def test_a_failure_that_costs_no_time_holds_nothing(h: Harness) -> None:
    """A DNS, TLS or guard refusal fails at once: every delivery is tried."""
    h.net._script[DEAD] = [network_error("dns: no such host")]
    dead, _ = h.subscribe(DEAD)
    for n in range(3):
        h.publish(n)

    report = h.app.deliver_pending()

    assert (report.attempted, report.held) == (3, 0)
    assert h.webhook(dead.webhook_id).held_until is None


def test_webhooks_take_turns_within_a_batch(kind: str, tmp_path: Path) -> None:
    """Each webhook's first delivery goes before any webhook's second."""
    net = ScriptedTransport()
    clock = FixedClock()
    app = _open(kind, tmp_path, clock=clock, webhook_transport=net, delivery_workers=1)
    h = Harness(app, clock, net)
    h.subscribe(DEAD)
    for n in range(3):
        h.publish(n)
    h.subscribe(event_filters=(SubscriptionFilter("stock"),))
    for n in range(3):
        h.publish(n, service="stock")

    app.deliver_pending()

    assert [r.url for r in net.sent] == [DEAD, URL] * 3
    app.close()


def test_held_deliveries_go_out_once_the_hold_ends(h: Harness) -> None:
    """After the hold, the endpoint is tried again; answering, it gets them all."""
    h.net._script[DEAD] = [network_error(), answer(200)]
    dead, _ = h.subscribe(DEAD)
    for n in range(5):
        h.publish(n)
    h.app.deliver_pending()

    early = h.app.deliver_pending()
    h.clock.advance(30)
    later = h.app.deliver_pending()

    assert early.attempted == 0
    assert (later.attempted, later.delivered, later.held) == (5, 5, 0)
    statuses = {d.status for d in h.app.webhooks.deliveries(ORG, dead.webhook_id)}
    assert statuses == {"delivered"}


def test_a_hold_of_zero_sends_every_delivery(kind: str, tmp_path: Path) -> None:
    """unanswered_hold=0 turns the hold off: each delivery is tried."""
    net = ScriptedTransport(default=network_error())
    policy = RetryPolicy(jitter=0, unanswered_hold=0)
    h = next(_harness(kind, tmp_path, net, policy))
    h.subscribe()
    for n in range(4):
        h.publish(n)

    report = h.app.deliver_pending()

    assert (report.attempted, report.retrying, report.held) == (4, 4, 0)
    h.app.close()


def test_a_stop_ends_the_batch_within_its_sends_and_releases_the_rest(
    kind: str, tmp_path: Path
) -> None:
    """Once stop is set no send starts; the rest are released, due, untried.

    Regression: ipm deliver stopped only after its whole batch, a timeout
    per delivery to a slow endpoint: over a minute after SIGTERM, longer
    than supervisors wait, and a SIGKILL then left the batch leased.
    """
    stop = threading.Event()

    def slow(request: OutboundRequest) -> TransportResult:
        stop.set()
        return answer(200)

    net = ScriptedTransport(default=slow)
    h = Harness.one_worker(kind, tmp_path, net, 5)
    app, webhook = h.app, h.subscribed

    stopped = app.deliver_pending(stop=stop)
    released = app.webhooks.deliveries(ORG, webhook.webhook_id, status="pending")
    rest = app.deliver_pending()

    assert (stopped.attempted, stopped.delivered, stopped.released) == (1, 1, 4)
    assert len(released) == 4
    assert {(d.lease_owner, d.attempts) for d in released} == {(None, 0)}
    assert rest.delivered == 4
    app.close()


@pytest.mark.parametrize("status", ["paused", "disabled"])
def test_a_pause_during_a_batch_holds_the_sends_not_yet_started(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """Regression: a webhook paused (or disabled) while a dispatcher sent
    its claim got the rest of the claim anyway, up to 64 sends: minutes of
    requests to an endpoint the operator had just stopped."""
    monkeypatch.setattr(delivery_module, "STATUS_RECHECK_SECONDS", 0.0)
    holder: list[Harness] = []

    def stopped_by_operator(request: OutboundRequest) -> TransportResult:
        if holder:  # during the first send only
            h = holder.pop()
            current = h.app.webhooks.get(ORG, h.subscribed.webhook_id)
            h.app.webhooks.set_status(ORG, current.webhook_id, status, current.revision)
        return answer(200)

    net = ScriptedTransport(default=stopped_by_operator)
    h = Harness.one_worker(kind, tmp_path, net, 5)
    holder.append(h)
    webhook_id = h.subscribed.webhook_id

    first = h.app.deliver_pending()
    held = h.app.deliver_pending()
    current = h.app.webhooks.get(ORG, webhook_id)
    h.app.webhooks.set_status(ORG, webhook_id, "active", current.revision)
    rest = h.app.deliver_pending()

    assert (first.attempted, first.delivered, first.released) == (1, 1, 4)
    assert held.attempted == 0
    assert (rest.attempted, rest.delivered) == (4, 4)
    assert len(net.sent) == 5
    h.app.close()


# -- ordering ----------------------------------------------------------------


def test_a_key_waits_for_its_previous_delivery(h: Harness) -> None:
    """With ordering_key, a failed head holds its key while other keys flow."""
    failed_once: set[str] = set()
    seen: list[tuple[str, int]] = []

    def reply(request: OutboundRequest) -> TransportResult:
        data = json.loads(request.body)["data"]
        key, n = data["logical_guid"], data["payload"]["n"]
        if key == "A" and n == 1 and "A" not in failed_once:
            failed_once.add("A")
            return answer(500)
        seen.append((key, n))
        return answer(200)

    h.net._default = reply
    h.subscribe(ordering_key="logical_guid")
    for n, key in enumerate("ABABA", start=1):
        h.publish(n, logical_guid=key)

    h.app.deliver_pending()
    during = list(seen)
    h.clock.advance(5)
    h.app.deliver_pending()

    assert during == [("B", 2), ("B", 4)]
    assert [n for key, n in seen if key == "A"] == [1, 3, 5]


SLOW_URL = "https://slow.example.com/ipm"


def slow_beside(
    kind: str, tmp_path: Path, net: ScriptedTransport, slow: int, **other: Any
) -> Harness:
    """Four workers on ``net``; a webhook on SLOW_URL (service ``slow``) with
    ``slow`` events queued, and another on URL subscribed with ``other``."""
    app = _open(kind, tmp_path, webhook_transport=net, delivery_workers=4)
    h = Harness(app, FixedClock(), net)
    h.subscribe(SLOW_URL, event_filters=(SubscriptionFilter("slow"),))
    h.subscribe(**other)
    for n in range(slow):
        app.publish(ORG, {"service": "slow", "action": "x.y", "payload": {"n": n}})

    return h


class SlowAndQuick:
    """A slow endpoint that answers once a quick one has had ``enough``
    requests (or after 10 s), and the order in which they answered."""

    def __init__(self, enough: int) -> None:
        self.events: list[str] = []
        self._enough = enough
        self._done = threading.Event()

    def slow(self, request: OutboundRequest) -> TransportResult:
        self._done.wait(10)
        self.events.append("slow")
        return answer(204)

    def quick(self, request: OutboundRequest) -> TransportResult:
        n = json.loads(request.body)["data"]["payload"]["n"]
        self.events.append(f"quick {n}")
        if sum(event != "slow" for event in self.events) == self._enough:
            self._done.set()
        return answer(204)


def test_a_slow_endpoint_holds_up_only_its_own_webhook(h: Harness) -> None:
    """While one endpoint takes its time, another webhook's changes of one
    record go out one after another, each recorded before the next is
    claimed: the dispatcher does not wait for the slowest send of a batch."""
    race = SlowAndQuick(enough=3)
    h.net._script[SLOW_URL] = [race.slow]
    h.net._default = race.quick
    h.subscribe(SLOW_URL, event_filters=(SubscriptionFilter("slow"),))
    h.subscribe(ordering_key="logical_guid")
    h.app.publish(ORG, {"service": "slow", "action": "x.y", "payload": {}})
    for n in (1, 2, 3):
        h.publish(n, logical_guid="order-1")

    report = h.app.deliver_pending()

    assert race.events == ["quick 1", "quick 2", "quick 3", "slow"]
    assert (report.attempted, report.delivered) == (4, 4)


def test_a_slow_endpoint_keeps_only_its_share_of_the_workers(
    kind: str, tmp_path: Path
) -> None:
    """Four workers, a slow endpoint and a quick one with four deliveries
    each: the slow one takes three workers, the quick one's four go out on
    the last one while the slow one's first is still waited for."""
    race = SlowAndQuick(enough=4)
    net = ScriptedTransport({SLOW_URL: [race.slow]}, default=race.quick)
    h = slow_beside(kind, tmp_path, net, slow=4)
    for n in range(4):
        h.publish(n)

    report = h.app.deliver_pending()
    h.app.close()

    assert race.events[:5] == [f"quick {n}" for n in range(4)] + ["slow"]
    assert (report.attempted, report.delivered) == (8, 8)


def test_a_slow_endpoint_s_full_batch_leaves_room_for_new_claims(
    kind: str, tmp_path: Path
) -> None:
    """A slow webhook claimed a whole batch on its own; changes of another
    webhook's record published meanwhile are claimed and sent, one after
    another, while the slow sends are still waited for: sends under way
    take no room in a batch."""
    quick_done = threading.Event()
    events: list[str] = []
    published: list[int] = []

    def slow(request: OutboundRequest) -> TransportResult:
        if not published:
            published.append(1)
            for n in (1, 2, 3):  # published once the slow batch is under way
                h.publish(n, logical_guid="order-1")
        quick_done.wait(10)
        events.append("slow")
        return answer(204)

    def quick(request: OutboundRequest) -> TransportResult:
        events.append(f"quick {json.loads(request.body)['data']['payload']['n']}")
        if len(events) == 3:
            quick_done.set()
        return answer(204)

    net = ScriptedTransport({SLOW_URL: [slow]}, default=quick)
    h = slow_beside(kind, tmp_path, net, slow=4, ordering_key="logical_guid")
    h.app.dispatcher.batch_size = 4

    h.app.deliver_pending()
    h.app.close()

    assert events[:4] == ["quick 1", "quick 2", "quick 3", "slow"]


def test_progress_hears_of_each_recorded_group(h: Harness) -> None:
    """progress= gets each recorded group's report; they add up to the
    call's own."""
    h.subscribe()
    h.subscribe("https://other.example.com/ipm")
    h.app.dispatcher.batch_size = 2
    for n in range(5):
        h.publish(n)
    heard: list[DeliveryReport] = []

    report = h.app.deliver_pending(progress=heard.append)

    assert len(heard) >= 5
    assert sum(heard, DeliveryReport()) == report
    assert (report.attempted, report.delivered) == (10, 10)


def test_a_call_that_fails_starts_no_further_send(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording fails (a host's progress callback raises, say): the call
    raises, and its workers start none of the claimed sends still waiting,
    which would otherwise go out unrecorded and be sent again later."""
    sent: list[str] = []

    def slow(request: OutboundRequest) -> TransportResult:
        sent.append("slow")
        time.sleep(0.2)
        return answer(204)

    h = slow_beside(kind, tmp_path, ScriptedTransport({SLOW_URL: [slow]}), slow=6)
    h.publish(1)

    def progress(report: DeliveryReport) -> None:
        raise RuntimeError("the host's callback failed")

    with pytest.raises(RuntimeError):
        h.app.deliver_pending(progress=progress)
    time.sleep(1.0)
    h.app.close()

    assert 1 <= sent.count("slow") <= 3


def test_a_send_whose_lease_would_run_out_is_not_started(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery that waited for a worker until its lease could end mid-send
    is released untried (another dispatcher may claim it by then), not
    sent with that lease; claimed again, it goes out once."""
    clock = FixedClock()
    app: ipm.Application

    def stalls(request: OutboundRequest) -> TransportResult:
        if len(net.sent) == 1:  # the first send takes nearly the whole lease
            clock.advance(app.dispatcher.lease.total_seconds() - 5)
        return answer(204)

    net = ScriptedTransport(default=stalls)
    app = _open(kind, tmp_path, clock=clock, webhook_transport=net, delivery_workers=1)
    h = Harness(app, clock, net)
    webhook, _ = h.subscribe()
    for n in range(3):
        h.publish(n)

    with caplog.at_level(logging.WARNING, logger="ipm.usecases.delivery"):
        report = app.deliver_pending()
    deliveries = app.webhooks.deliveries(ORG, webhook.webhook_id)
    app.close()

    released = [r for r in caplog.records if "released untried" in r.getMessage()]
    assert len(released) == 2
    assert (report.attempted, report.delivered) == (3, 3)
    assert [d.attempts for d in deliveries] == [1, 1, 1]
    assert len(net.sent) == 3


def test_a_lane_that_waited_too_long_goes_first() -> None:
    """A lane passed over for ``overdue`` seconds with nothing under way is
    served first, oldest first: newer lanes cannot pass it for ever."""

    def claimed(name: str, count: int) -> list[tuple[Delivery, Ready]]:
        webhook = make_webhook(1, webhook_id=name)
        ready = Ready(webhook, "", None)
        return [(make_delivery(webhook, n), ready) for n in range(count)]

    picks = {}
    for overdue in (3600.0, 0.0):
        schedule = Schedule(workers=8, overdue=overdue)
        schedule.open(claimed("old", 3))
        first = schedule.take()  # one of the old lane's sends, ended
        assert first is not None
        schedule.finish(first[0], 0.01)
        schedule.open(claimed("new", 1))
        taken = schedule.take()
        assert taken is not None
        picks[overdue] = taken[0].claimed[0][0].webhook_id

    assert picks == {3600.0: "new", 0.0: "old"}


def test_a_lone_quick_endpoint_keeps_every_worker(kind: str, tmp_path: Path) -> None:
    """The worker kept for other lanes goes to a lane whose sends are quick:
    alone, a quick endpoint gets all four workers at once."""
    lock = threading.Lock()
    under_way = [0, 0]  # now, most at once

    def quick(request: OutboundRequest) -> TransportResult:
        with lock:
            under_way[0] += 1
            under_way[1] = max(under_way)
        time.sleep(0.05)
        with lock:
            under_way[0] -= 1
        return answer(204)

    net = ScriptedTransport(default=quick)
    app = _open(kind, tmp_path, webhook_transport=net, delivery_workers=4)
    h = Harness(app, FixedClock(), net)
    h.subscribe()
    for n in range(40):
        h.publish(n)

    report = app.deliver_pending()
    app.close()

    assert report.delivered == 40
    assert under_way[1] == 4


def test_a_transport_answering_no_result_fails_the_attempt(h: Harness) -> None:
    """A host transport that returns something else than a TransportResult
    fails that attempt (retried later) instead of leaving the claim leased."""
    h.net._default = lambda request: None  # type: ignore[assignment,return-value]
    webhook, _ = h.subscribe()
    h.publish(1)

    report = h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    (attempt,) = h.app.webhooks.attempts(ORG, delivery.delivery_id)
    assert (report.attempted, report.retrying) == (1, 1)
    assert attempt.error == "internal: the transport failed"
    assert delivery.lease_owner is None


def test_a_transport_that_raises_is_logged_without_its_message(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the exception of a host's transport was logged whole,
    and its message held the endpoint's query token and a signature. The
    log names its type (and, at debug level, its frames) only."""

    token = "-".join(["s3cr3t", "t0ken"])  # not in the source the frames show

    def leaky(request: OutboundRequest) -> TransportResult:
        raise RuntimeError(f"cannot send to {request.url}?token={token}")

    h.net._default = leaky  # type: ignore[assignment]
    h.subscribe()
    h.publish(1)

    with caplog.at_level(logging.DEBUG, logger="ipm"):
        report = h.app.deliver_pending()

    assert report.retrying == 1
    assert "s3cr3t-t0ken" not in caplog.text
    assert "the transport raised RuntimeError" in caplog.text


def test_the_default_transport_keeps_a_connection_per_worker(
    kind: str, tmp_path: Path
) -> None:
    """Regression: four idle connections were kept per endpoint while eight
    workers sent to it, so every batch opened new ones. With as many kept
    as there are workers, a receiver sees at most that many connections."""
    with LocalReceiver() as receiver:
        app = _open(kind, tmp_path, delivery_workers=8)
        h = Harness(app, FixedClock(), None)
        h.subscribe(receiver.url())
        for round_ in range(5):
            for n in range(64):
                h.publish(round_ * 64 + n)
            assert app.deliver_pending().delivered == 64
        app.close()

        assert len(receiver.received) == 320
        assert receiver.connections <= 8


def test_a_webhook_known_slow_may_not_take_the_last_worker() -> None:
    """The last free worker goes to a webhook whose sends were quick, or to
    one with nothing under way not yet known to be slow; a skipped send
    says nothing of how quick a webhook is."""

    def lane_after(name: str, took: float | None) -> tuple[Schedule, Lane]:
        webhook = make_webhook(1, webhook_id=name)
        schedule = Schedule(workers=4, overdue=60.0)
        schedule.open(
            [(make_delivery(webhook, n), Ready(webhook, "", None)) for n in range(3)]
        )
        taken = schedule.take()
        assert taken is not None
        schedule.finish(taken[0], took)
        return schedule, taken[0]

    verdicts = {}
    for name, took in (("slow", 1.0), ("quick", 0.01), ("skipped", None)):
        schedule, lane = lane_after(name, took)
        verdicts[name] = schedule._may_take_the_last(lane)

    assert verdicts == {"slow": False, "quick": True, "skipped": True}


def test_unordered_webhooks_do_not_wait(h: Harness) -> None:
    """Without ordering_key a failing delivery holds nothing back."""
    h.net._script[URL] = [answer(500), answer(200)]
    h.subscribe()
    for n in range(3):
        h.publish(n, logical_guid="A")

    report = h.app.deliver_pending()

    assert (report.attempted, report.delivered) == (3, 2)


# -- leases ------------------------------------------------------------------


def _stall_past_the_lease(h: Harness, late: TransportResult) -> None:
    """Make the application's next send stall until its lease is over and
    another dispatcher (whose sends succeed) has delivered; then answer
    ``late``."""
    other = Dispatcher(
        storage=h.app.storage,
        recorder=h.app.recorder,
        clock=h.clock,
        ids=h.app.ids,
        secrets=h.app.webhooks.secrets,
        transport=ScriptedTransport(),
        policy=h.app.webhooks.policy,
    )

    def stall(request: OutboundRequest) -> TransportResult:
        h.clock.advance(h.app.dispatcher.lease.total_seconds() + 1)
        other.deliver_pending()
        return late

    h.net._default = stall


def test_a_dispatcher_that_lost_its_lease_changes_nothing(
    h: Harness,
) -> None:
    """A stalled sender's late answer is recorded but does not undo a success."""
    webhook, _ = h.subscribe()
    h.publish(1)
    _stall_past_the_lease(h, answer(500))
    h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = h.app.webhooks.attempts(ORG, delivery.delivery_id)
    assert delivery.status == "delivered"
    assert sorted(a.status or 0 for a in attempts) == [200, 500]


def test_a_stalled_dispatcher_s_unanswered_send_holds_nothing(h: Harness) -> None:
    """Regression: a dispatcher resumed after losing its lease still held the
    webhook for unanswered_hold (a healthy endpoint's next event waited 30 s),
    and its late attempt was logged but not counted in ``attempts``."""
    webhook, _ = h.subscribe()
    h.publish(1)
    _stall_past_the_lease(
        h, TransportResult.failed("timeout after 10 s while waiting", 10_000.0)
    )
    h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = h.app.webhooks.attempts(ORG, delivery.delivery_id)
    assert delivery.status == "delivered"
    assert (len(attempts), delivery.attempts) == (2, 2)
    assert h.webhook(webhook.webhook_id).held_until is None


def test_a_replay_recorded_after_a_dispatch_still_counts(h: Harness) -> None:
    """Regression: a replay sending a delivery while the dispatcher sent it,
    and recording after it, logged its attempt but left ``attempts`` one
    short ("attempts counts every try, replays included")."""
    webhook, _ = h.subscribe()
    h.publish(1)
    replay_sending, dispatched = threading.Event(), threading.Event()
    calls: list[str] = []
    replays: list[Any] = []

    def race(request: OutboundRequest) -> TransportResult:
        calls.append("send")
        if len(calls) == 1:  # the dispatcher's: a replay sends meanwhile
            thread = threading.Thread(
                target=lambda: replays.append(
                    h.app.dispatcher.replay(ORG, webhook.webhook_id)
                )
            )
            replays.append(thread)
            thread.start()
            assert replay_sending.wait(5)
        else:
            replay_sending.set()
            assert dispatched.wait(5)  # the dispatcher records first
        return answer(500)

    h.net._default = race
    h.app.deliver_pending()
    dispatched.set()
    replays[0].join(5)

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = h.app.webhooks.attempts(ORG, delivery.delivery_id)
    assert [a.kind for a in attempts] == ["dispatch", "replay"]
    assert delivery.attempts == 2
    assert delivery.status == "pending"


def test_two_dispatchers_never_send_a_delivery_twice(tmp_path: Path) -> None:
    """Two applications draining one SQLite file send each delivery once."""
    options: dict[str, Any] = {"allow_networks": ["127.0.0.0/8"]}
    with LocalReceiver() as receiver:
        first = ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)
        second = ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)
        for app in (first, second):
            app.dispatcher.batch_size = 8
        first.webhooks.create(
            ORG, CreateWebhook(receiver.url(), (SubscriptionFilter("pos"),))
        )
        first.publish_many(
            ORG, [{"service": "pos", "action": "sale.created"} for _ in range(200)]
        )

        threads = [threading.Thread(target=a.deliver_pending) for a in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        ids = [r.headers["webhook-id"] for r in receiver.received]
        first.close()
        second.close()

    assert len(ids) == len(set(ids)) == 200


# -- secrets and signatures --------------------------------------------------


def test_an_ed25519_webhook_is_signed_with_its_key(h: Harness) -> None:
    """Deliveries of an ed25519 webhook verify with the shown whpk_ key."""
    _, public = h.subscribe(signing_algorithm="ed25519")
    h.publish(1)

    h.app.deliver_pending()

    (request,) = h.net.sent
    assert request.headers["webhook-signature"].startswith("v1a,")
    signing.verify(public, request.headers, request.body, now=h.clock)


def test_a_secret_that_cannot_be_opened_is_not_sent(
    kind: str, tmp_path: Path, net: ScriptedTransport
) -> None:
    """Without its key a webhook cannot sign: the attempt fails, nothing is sent."""
    h = next(_harness(kind, tmp_path, net))
    webhook, _ = h.subscribe()
    h.publish(1)
    h.app.webhooks.secrets = h.app.dispatcher.secrets = type(h.app.webhooks.secrets)(
        MemoryKeyring()
    )

    h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert net.sent == []
    assert delivery.last_error is not None and "secret" in delivery.last_error
    h.app.close()


# -- the guard at send time ----------------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    kind: str, tmp_path: Path
) -> None:
    """A public-looking name that resolves to 127.0.0.1 is never connected to."""

    def resolver(host: str, port: int) -> list[tuple[Any, ...]]:
        return [(2, 1, 6, "", ("127.0.0.1", port))]

    transport = HttpTransport(policy=NetworkPolicy(), resolver=resolver)
    clock = FixedClock()
    app = _open(
        kind, tmp_path, allow_networks=[], clock=clock, webhook_transport=transport
    )
    h = Harness(app, clock, transport)
    webhook, _ = h.subscribe("https://rebind.example.com/hook")
    h.publish(1)

    report = app.deliver_pending()

    (delivery,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert report.retrying == 1
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("refused")
    app.close()


def test_a_narrowed_policy_refuses_a_stored_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dispatcher without the loopback allowance refuses an old loopback URL."""
    with LocalReceiver() as receiver:
        allowed = ipm.open_sqlite(tmp_path / "a.sqlite", allow_networks=["127.0.0.1"])
        allowed.webhooks.create(
            ORG, CreateWebhook(receiver.url(), (SubscriptionFilter("pos"),))
        )
        allowed.publish(ORG, {"service": "pos", "action": "sale.created"})
        allowed.close()
        strict = ipm.open_sqlite(tmp_path / "a.sqlite")

        with caplog.at_level(logging.INFO, logger="ipm.usecases.delivery"):
            report = strict.deliver_pending()
        strict.close()

        assert receiver.received == []
    assert report.retrying == 1
    refusals = [r for r in caplog.records if "refused:" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING]


def test_a_redirect_is_a_failure_and_is_not_followed() -> None:
    """A 302 towards a metadata address is recorded as a failure, nothing more."""

    def redirect(received: Received) -> tuple[int, dict[str, str], bytes]:
        return 302, {"location": "http://169.254.169.254/latest"}, b""

    with LocalReceiver(redirect) as receiver:
        app = ipm.open_memory(allow_networks=["127.0.0.0/8"])
        webhook = app.webhooks.create(
            ORG, CreateWebhook(receiver.url(), (SubscriptionFilter("pos"),))
        ).webhook
        app.publish(ORG, {"service": "pos", "action": "sale.created"})

        report = app.deliver_pending()

        (delivery,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
        app.close()
        assert len(receiver.received) == 1
    assert (report.retrying, delivery.last_status) == (1, 302)


def test_a_loopback_receiver_verifies_every_delivery() -> None:
    """An allowed 127.0.0.1 receiver gets signed deliveries the reference verifies."""
    with LocalReceiver() as receiver:
        app = ipm.open_memory(allow_networks=["127.0.0.0/8"])
        secret = app.webhooks.create(
            ORG, CreateWebhook(receiver.url(), (SubscriptionFilter("pos"),))
        ).secret
        for n in range(5):
            app.publish(
                ORG, {"service": "pos", "action": "sale.created", "payload": {"n": n}}
            )

        report = app.deliver_pending()
        app.close()

        verifier = standardwebhooks.Webhook(secret)
        payloads = [verifier.verify(r.body, r.headers) for r in receiver.received]
    assert report.delivered == 5
    assert sorted(p["data"]["payload"]["n"] for p in payloads) == list(range(5))


# -- replay ------------------------------------------------------------------


def test_replay_covers_events_from_before_the_subscription(h: Harness) -> None:
    """Replay delivers stored events that never had a delivery, in order."""
    for n in range(3):
        h.publish(n)
    webhook, _ = h.subscribe()

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered, outcome.failed) == (3, 3, 0)
    bodies = [json.loads(r.body)["data"]["payload"]["n"] for r in h.net.sent]
    assert bodies == [0, 1, 2]
    statuses = [d.status for d in h.app.webhooks.deliveries(ORG, webhook.webhook_id)]
    assert statuses == ["delivered"] * 3


@pytest.mark.parametrize(
    ("rule", "sent"),
    [
        (SubscriptionFilter("pos", action="sale.created"), [0, 4]),
        (SubscriptionFilter("pos", action_prefix="sale.created"), [0, 1, 4]),
        (SubscriptionFilter("pos", action_prefix="sale."), [0, 1, 2, 4]),
    ],
)
def test_replay_reads_only_what_its_one_filter_names(
    h: Harness, rule: SubscriptionFilter, sent: list[int]
) -> None:
    """Regression: replay decoded every event of the org to match it (four
    seconds for 200,000 events and a filter matching none); a webhook's one
    filter is now read by the storage, an exact action as a prefix of it."""
    actions = ["sale.created", "sale.created.v2", "sale.voided", "stock.moved"]
    for n, action in enumerate([*actions, "sale.created"]):
        h.publish(n, action=action)
    webhook, _ = h.subscribe(event_filters=(rule,))

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered) == (len(sent), len(sent))
    assert [json.loads(r.body)["data"]["payload"]["n"] for r in h.net.sent] == sent


def test_replay_decodes_only_the_events_its_filter_names(
    h: Harness, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events a replay's one filter does not name are never decoded."""
    if kind != "sqlite":
        pytest.skip("counts the SQLite adapter's decoding")
    for n in range(40):
        h.publish(n, action="stock.moved" if n % 10 else "sale.created")
    webhook, _ = h.subscribe(
        event_filters=(SubscriptionFilter("pos", action="sale.created"),)
    )
    decoded: list[object] = []
    real = sqlite_events._event
    monkeypatch.setattr(
        sqlite_events, "_event", lambda row: decoded.append(row) or real(row)
    )

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert outcome.considered == 4
    assert len(decoded) == 4


def test_replay_counts_failures_and_honours_its_window(h: Harness) -> None:
    """Replay in a window counts real failures: delivered + failed = considered."""
    webhook, _ = h.subscribe()
    for n in range(6):
        h.publish(n)
        h.clock.advance(60)
    h.net._script[URL] = [answer(200), answer(500), answer(200)]

    outcome = h.app.dispatcher.replay(
        ORG,
        webhook.webhook_id,
        since=h.clock() - timedelta(seconds=300),
        until=h.clock() - timedelta(seconds=120),
    )

    assert (outcome.considered, outcome.delivered, outcome.failed) == (3, 2, 1)
    sent = [json.loads(r.body)["data"]["payload"]["n"] for r in h.net.sent]
    assert sent == [1, 2, 3]


def test_a_replay_window_finer_than_a_microsecond_is_exact(h: Harness) -> None:
    """Regression: since and until with a seventh fraction digit were
    truncated, so since 10:00:00.0000001Z took in an event recorded at
    10:00:00Z and until 10:00:00.0000001Z left it out; they are rounded up
    now, as an export's window is."""
    webhook, _ = h.subscribe()
    recorded = format_utc(h.clock()).replace("Z", ".0000001Z")
    h.publish(1)

    after = h.app.dispatcher.replay(ORG, webhook.webhook_id, since=recorded)
    before = h.app.dispatcher.replay(ORG, webhook.webhook_id, until=recorded)

    assert (after.considered, before.considered) == (0, 1)


def test_failed_replays_spend_none_of_the_automatic_attempts(
    kind: str, tmp_path: Path
) -> None:
    """Three failed replays later, the dispatcher still has all its tries."""
    net = ScriptedTransport(default=answer(500))
    two_tries = RetryPolicy(jitter=0, max_attempts=2)
    h = next(_harness(kind, tmp_path, net, retry=two_tries))
    webhook, _ = h.subscribe()
    h.publish(1)
    for _ in range(3):
        h.app.dispatcher.replay(ORG, webhook.webhook_id)

    first = h.app.deliver_pending()
    h.clock.advance(3600)
    second = h.app.deliver_pending()

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    numbers = [a.number for a in h.app.webhooks.attempts(ORG, delivery.delivery_id)]
    assert (first.retrying, second.failed) == (1, 1)
    assert numbers == [1, 2, 3, 4, 5]
    assert (delivery.status, delivery.attempts) == ("failed", 5)
    h.app.close()


class _Killed(BaseException):
    """The process dying mid-send: nothing after it runs."""


def test_a_replay_killed_mid_send_leaves_nothing_for_the_queue(h: Harness) -> None:
    """A delivery made only for a replay is never claimed by the dispatcher.

    Regression: it was queued pending under the replay's lease, so after a
    crash the dispatcher sent it once the lease ran out, with every retry,
    possibly after a newer change of its record.
    """
    h.publish(1)
    webhook, _ = h.subscribe()

    def die(request: OutboundRequest) -> TransportResult:
        raise _Killed

    h.net._script[URL] = [die]
    with pytest.raises(_Killed):
        h.app.dispatcher.replay(ORG, webhook.webhook_id)
    h.clock.advance(3600)
    later = h.app.deliver_pending()

    assert later.attempted == 0
    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert delivery.status == "failed"


def test_a_replay_leaves_a_batch_s_lease_to_the_batch(h: Harness) -> None:
    """A delivery this very dispatcher's batch holds keeps its lease and state.

    Regression: replays leased under the dispatcher's own name, so a replay
    in the same process took a batch's lease for its own and settled the
    delivery under the batch.
    """
    webhook, _ = h.subscribe()
    h.publish(1)
    dispatcher = h.app.dispatcher
    with h.app.storage.unit_of_work() as uow:
        claimed = uow.deliveries.claim(
            h.clock(), dispatcher.owner, h.clock() + dispatcher.lease, 10
        )
        uow.commit()

    outcome = dispatcher.replay(ORG, webhook.webhook_id)

    (delivery,) = h.app.webhooks.deliveries(ORG, webhook.webhook_id)
    assert len(claimed) == 1 and outcome.delivered == 1
    assert (delivery.status, delivery.lease_owner) == ("pending", dispatcher.owner)


def test_a_replay_answer_keeps_the_webhooks_failure_clock(
    kind: str, tmp_path: Path
) -> None:
    """A replay's 2xx clears failing_since and its failure starts it.

    Regression: a replay's success left the clock running, so the next
    dispatch failure disabled the webhook for "no 2xx answer" since a time
    before that success.
    """
    net = ScriptedTransport(default=answer(200))
    policy = RetryPolicy(jitter=0, disable_after=timedelta(seconds=3))
    h = next(_harness(kind, tmp_path, net, policy))
    webhook, _ = h.subscribe()
    h.publish(1)
    net._script[URL] = [answer(500), answer(200), answer(500)]
    h.app.deliver_pending()
    failing = h.webhook(webhook.webhook_id).failing_since

    h.clock.advance(2.5)
    h.app.dispatcher.replay(ORG, webhook.webhook_id)
    cleared = h.webhook(webhook.webhook_id).failing_since
    h.clock.advance(1)
    h.app.dispatcher.replay(ORG, webhook.webhook_id)
    after_failure = h.webhook(webhook.webhook_id)

    assert failing is not None and cleared is None
    assert after_failure.status == "active"
    assert after_failure.failing_since == h.clock()
    h.app.close()


def test_a_410_during_replay_stops_it(h: Harness) -> None:
    """Replay stops at a 410: the webhook is disabled, the rest count as failed."""
    webhook, _ = h.subscribe()
    for n in range(4):
        h.publish(n)
    h.net._script[URL] = [answer(200), answer(410)]

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered, outcome.failed) == (4, 1, 3)
    assert len(h.net.sent) == 2
    assert h.webhook(webhook.webhook_id).status == "disabled"


@pytest.mark.parametrize("status", ["paused", "disabled"])
def test_a_webhook_paused_or_disabled_during_its_replay_stops_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """Regression: the status was checked once, before the first send, so
    an operator disabling a webhook while a long replay ran saw the rest
    of the window go to the endpoint all the same."""
    webhook, _ = h.subscribe()
    for n in range(4):
        h.publish(n)
    send = Dispatcher._send
    sends: list[int] = []

    def change_status_after_the_second(self: Dispatcher, *args: Any) -> Any:
        sent = send(self, *args)
        sends.append(1)
        if len(sends) == 2:
            current = h.webhook(webhook.webhook_id)
            h.app.webhooks.set_status(ORG, webhook.webhook_id, status, current.revision)
        return sent

    monkeypatch.setattr(Dispatcher, "_send", change_status_after_the_second)

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered, outcome.failed) == (4, 2, 2)
    assert len(h.net.sent) == 2
    [replayed] = h.own_events("webhook.replayed")
    assert (replayed["payload"]["delivered"], replayed["payload"]["failed"]) == (2, 2)


def test_a_replay_ended_by_a_storage_failure_still_leaves_its_trail(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a replay the database failed mid-way (busy past its
    timeout) had sent events and recorded no webhook.replayed event; the
    sends so far are recorded, the rest counted failed, and the failure is
    still the answer."""
    webhook, _ = h.subscribe()
    for n in range(4):
        h.publish(n)
    replay_one = Dispatcher._replay_one
    calls: list[int] = []

    def busy_on_the_second(self: Dispatcher, *args: Any) -> str:
        calls.append(1)
        if len(calls) == 2:
            raise StorageBusy("the database stayed locked")
        return replay_one(self, *args)

    monkeypatch.setattr(Dispatcher, "_replay_one", busy_on_the_second)

    with pytest.raises(StorageBusy):
        h.app.dispatcher.replay(ORG, webhook.webhook_id, audit={"actor": "ops"})

    (replayed,) = h.own_events("webhook.replayed")
    counts = {k: replayed["payload"][k] for k in ("considered", "delivered", "failed")}
    assert counts == {"considered": 4, "delivered": 1, "failed": 3}
    assert replayed["audit"]["actor"] == "ops"


def test_a_replay_counts_a_send_the_endpoint_took_though_its_record_failed(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint answered 2xx, then the database refused that attempt's
    record: the trail counts the send delivered (it reached the receiver),
    not failed."""
    webhook, _ = h.subscribe()
    for n in range(3):
        h.publish(n)
    real = replay_module.logged
    calls: list[int] = []

    def refused_second(uow: Any, attempt: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise StorageUnavailable("the disk is full")
        return real(uow, attempt)

    monkeypatch.setattr(replay_module, "logged", refused_second)

    with pytest.raises(StorageUnavailable):
        h.app.dispatcher.replay(ORG, webhook.webhook_id)

    (replayed,) = h.own_events("webhook.replayed")
    counts = {k: replayed["payload"][k] for k in ("considered", "delivered", "failed")}
    assert len(h.net.sent) == 2
    assert counts == {"considered": 3, "delivered": 2, "failed": 1}


def test_a_replay_whose_trail_cannot_be_recorded_raises_its_own_failure(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the storage takes nothing more, the replay's failure is raised
    (not the record's), and the lost trail is logged."""
    webhook, _ = h.subscribe()
    h.publish(1)

    def busy(self: Dispatcher, *args: Any) -> str:
        raise StorageBusy("the database stayed locked")

    record = Dispatcher._record_replay

    def closed_at_the_end(self: Dispatcher, *args: Any) -> None:
        if "webhook.replayed" in args:
            raise StorageClosed("closed")
        record(self, *args)

    monkeypatch.setattr(Dispatcher, "_replay_one", busy)
    monkeypatch.setattr(Dispatcher, "_record_replay", closed_at_the_end)

    with caplog.at_level(logging.WARNING), pytest.raises(StorageBusy):
        h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert len(h.own_events("webhook.replay_started")) == 1
    assert h.own_events("webhook.replayed") == []
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)


def test_a_replay_is_on_record_before_its_first_send(h: Harness) -> None:
    """Regression: the replay was recorded only once it ended, so a process
    killed mid-replay had resent events to a third party with no trail (no
    audit of who asked, or why). Its start is committed before any send."""
    seen_at_send: list[int] = []

    def reply(request: OutboundRequest) -> TransportResult:
        seen_at_send.append(len(h.own_events("webhook.replay_started")))
        return answer(200)

    webhook, _ = h.subscribe()
    h.publish(2)
    h.net._default = reply

    h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert seen_at_send and set(seen_at_send) == {1}


def test_a_replay_whose_start_cannot_be_recorded_sends_nothing(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook, _ = h.subscribe()
    h.publish(1)

    def closed(self: Dispatcher, *args: Any) -> None:
        raise StorageBusy("the database stayed locked")

    monkeypatch.setattr(Dispatcher, "_record_replay", closed)

    with pytest.raises(StorageBusy):
        h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert h.net.sent == []


def test_replay_keeps_a_keys_order(h: Harness) -> None:
    """Regression: replay once sent v2 of a record after v1 failed, reordering them."""

    def reply(request: OutboundRequest) -> TransportResult:
        n = json.loads(request.body)["data"]["payload"]["n"]
        return answer(500) if n == 1 else answer(200)

    h.net._default = reply
    webhook, _ = h.subscribe(ordering_key="logical_guid")
    h.publish(1, logical_guid="A")
    h.publish(2, logical_guid="A")
    h.publish(3, logical_guid="B")

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered, outcome.failed) == (3, 1, 2)
    replayed = [json.loads(r.body)["data"]["payload"]["n"] for r in h.net.sent]
    assert 2 not in replayed[replayed.index(1) :]


def test_replay_does_not_pass_a_change_waiting_outside_its_window(
    h: Harness,
) -> None:
    """A newer change is held while an older one of its key awaits a retry."""
    tries: list[int] = []

    def reply(request: OutboundRequest) -> TransportResult:
        n = json.loads(request.body)["data"]["payload"]["n"]
        tries.append(n)
        return answer(500) if tries == [1] else answer(200)

    h.net._default = reply
    webhook, _ = h.subscribe(ordering_key="logical_guid")
    h.publish(1, logical_guid="A")
    h.app.deliver_pending()
    h.clock.advance(1)
    h.publish(2, logical_guid="A")
    h.publish(3, logical_guid="B")
    since = h.clock()

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id, since=since)
    h.clock.advance(10_000)
    h.app.deliver_pending()

    assert (outcome.considered, outcome.delivered, outcome.failed) == (2, 1, 1)
    assert [n for n in tries if n != 3] == [1, 1, 2]


def test_replay_stops_at_its_time_budget(h: Harness) -> None:
    """A replay past its budget stops; what it did not send counts as failed."""
    webhook, _ = h.subscribe()
    for n in range(5):
        h.publish(n)
    h.app.dispatcher.replay_budget = 0

    outcome = h.app.dispatcher.replay(ORG, webhook.webhook_id)

    assert (outcome.considered, outcome.delivered, outcome.failed) == (5, 1, 4)
    assert len(h.net.sent) == 1


@pytest.mark.parametrize("count", [0, 1001])
def test_replay_bounds_its_count(h: Harness, count: int) -> None:
    """A replay of fewer than 1 or more than 1000 events is refused."""
    webhook, _ = h.subscribe()

    with pytest.raises(InvalidRequest):
        h.app.dispatcher.replay(ORG, webhook.webhook_id, max_events=count)


class _Keyring:
    """A host keyring that can be made to misbehave."""

    def __init__(self) -> None:
        self.key = bytes(range(32))
        self.broken: Exception | None = None

    def current(self) -> tuple[str, bytes]:
        return "k1", self.key

    def get(self, key_id: str) -> bytes | None:
        if self.broken is not None:
            raise self.broken
        return self.key if key_id == "k1" else None


def _broken_keyring(
    kind: str, tmp_path: Path, net: ScriptedTransport, failure: Exception
) -> tuple[ipm.Application, Webhook, _Keyring]:
    """An app with one webhook and one event queued for it, whose keyring
    then starts raising ``failure`` (until its ``broken`` is set to None)."""
    keyring = _Keyring()
    app = _open(kind, tmp_path, webhook_transport=net, keyring=keyring)
    webhook, _ = Harness(app, FixedClock(), net).subscribe()
    app.publish(ORG, {"service": "pos", "action": "sale.created", "payload": {}})
    keyring.broken = failure

    return app, webhook, keyring


def test_a_keyring_that_fails_spends_no_attempt_and_holds_up_no_batch(
    kind: str,
    tmp_path: Path,
    net: ScriptedTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regressions: a host keyring raising in get() left deliver_pending with
    its exception and every claimed delivery leased until expiry; then each
    try during a key service outage spent an attempt, so deliveries failed
    for good without a request sent. Nothing left the machine: released
    untried, they go out once the keyring answers."""
    monkeypatch.setattr("ipm.usecases.delivery._SHORT_HERE_PAUSE", 0)
    app, webhook, keyring = _broken_keyring(kind, tmp_path, net, OSError("down"))

    down = [app.deliver_pending() for _ in range(3)]
    (waiting,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
    keyring.broken = None
    up = app.deliver_pending()
    (delivery,) = app.webhooks.deliveries(ORG, webhook.webhook_id)
    attempts = app.webhooks.attempts(ORG, delivery.delivery_id)
    app.close()

    assert [(r.attempted, r.untried_here) for r in down] == [(0, 1)] * 3
    assert (waiting.status, waiting.attempts, waiting.lease_owner) == (
        "pending",
        0,
        None,
    )
    assert up.delivered == 1
    assert [a.status for a in attempts] == [200]
    assert len(net.sent) == 1


def test_a_replay_while_the_keyring_fails_is_refused_and_holds_nothing_against_it(
    kind: str, tmp_path: Path, net: ScriptedTransport
) -> None:
    """Regression: the replay recorded a failed attempt per event without a
    request sent, and those failures counted against the endpoint's health
    (a healthy webhook could be disabled for sustained failure)."""
    app, webhook, _ = _broken_keyring(kind, tmp_path, net, ConnectionRefusedError())

    with pytest.raises(StorageUnavailable, match="nothing was sent"):
        app.dispatcher.replay(ORG, webhook.webhook_id)
    after = app.webhooks.get(ORG, webhook.webhook_id)
    deliveries = app.webhooks.deliveries(ORG, webhook.webhook_id)
    replays = [e for e in app.events(ORG, service="ipm") if "replay" in e.new.action]
    app.close()

    assert net.sent == []
    assert (after.status, after.failing_since) == ("active", None)
    assert {d.attempts for d in deliveries} == {0}
    assert replays == []


def test_creating_a_webhook_while_the_keyring_is_down_is_a_503(
    kind: str, tmp_path: Path
) -> None:
    """Regression: a keyring whose current() raised (its key service down)
    made /webhook/create a 500 with a traceback; nothing can be sealed just
    now, as with a full disk, and nothing is stored."""

    class Down(_Keyring):
        def current(self) -> tuple[str, bytes]:
            raise ConnectionRefusedError("key service down")

    app = _open(kind, tmp_path, keyring=Down())

    with pytest.raises(StorageUnavailable, match="keyring failed"):
        app.webhooks.create(ORG, CreateWebhook(URL, (SubscriptionFilter("pos"),)))
    assert app.webhooks.list(ORG) == []
    app.close()


def test_a_keyring_answering_in_another_shape_is_not_an_outage(
    kind: str, tmp_path: Path
) -> None:
    """A current() that returns None is the host's bug, not something to
    try again later (it was a 503 "keyring failed")."""

    class Wrong(_Keyring):
        def current(self) -> tuple[str, bytes]:
            return None  # type: ignore[return-value]

    app = _open(kind, tmp_path, keyring=Wrong())

    with pytest.raises(TypeError):
        app.webhooks.create(ORG, CreateWebhook(URL, (SubscriptionFilter("pos"),)))
    app.close()


@pytest.mark.parametrize("key", [bytes(16), "k" * 32, bytes(33)])
def test_a_keyring_key_that_is_not_aes_256_is_refused(
    kind: str, tmp_path: Path, key: Any
) -> None:
    """A 16-byte key would quietly give AES-128; a str failed deep inside."""
    keyring = _Keyring()
    keyring.key = key
    app = _open(kind, tmp_path, keyring=keyring)

    with pytest.raises(TypeError, match="32 bytes"):
        app.webhooks.create(ORG, CreateWebhook(URL, (SubscriptionFilter("pos"),)))
    app.close()


def test_closing_the_application_records_the_sends_under_way(
    kind: str, tmp_path: Path
) -> None:
    """Regression: app.close() during deliver_pending dropped the outcomes of
    the requests already sent (no attempt logged, the deliveries pending),
    so they went out again once their leases ran out. Now the call starts
    no further send, records the ones under way, and close() waits for it."""
    sending = threading.Event()
    release = threading.Event()

    def slow(request: OutboundRequest) -> TransportResult:
        sending.set()
        release.wait(10)
        return answer(204)

    net = ScriptedTransport(default=slow)
    app = _open(kind, tmp_path, webhook_transport=net, delivery_workers=2)
    h = Harness(app, FixedClock(), net)
    webhook, _ = h.subscribe()
    for n in range(6):
        h.publish(n)
    reports: list[Any] = []
    call = threading.Thread(target=lambda: reports.append(app.deliver_pending()))
    call.start()
    sending.wait(10)
    threading.Timer(0.3, release.set).start()

    app.close()
    call.join(10)

    (report,) = reports
    assert report.attempted == len(net.sent) >= 1
    assert report.delivered == report.attempted
    again = _open(kind, tmp_path) if kind == "sqlite" else None
    if again is not None:
        delivered = again.webhooks.deliveries(
            ORG, webhook.webhook_id, status="delivered"
        )
        assert len(delivered) == len(net.sent)
        again.close()
    with pytest.raises(StorageClosed):
        app.deliver_pending()
