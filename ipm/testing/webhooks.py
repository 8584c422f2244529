"""Webhook test support: the storage contract and plausible records.

:class:`WebhookStorageContract` is what every storage adapter must show
for webhooks, deliveries and attempts; subclass it with a ``storage``
fixture, as for :class:`~ipm.testing.StorageContract`. The network
stand-ins (:class:`ScriptedTransport`, :class:`LocalReceiver`) live in
:mod:`ipm.testing.network`, which needs no pytest, and are re-exported
here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from ipm.domain.events import Event
from ipm.domain.webhooks import (
    AttemptKind,
    Delivery,
    DeliveryAttempt,
    SubscriptionFilter,
    Webhook,
)
from ipm.ports import Storage
from ipm.testing.network import (
    Answer,
    LocalReceiver,
    Received,
    Reply,
    ScriptedTransport,
    answer,
    network_error,
)
from ipm.testing.storage import NEAR_ORGS, T0, new_event

__all__ = [
    "Answer",
    "LocalReceiver",
    "Received",
    "Reply",
    "ScriptedTransport",
    "WebhookStorageContract",
    "answer",
    "make_delivery",
    "make_webhook",
    "network_error",
    "stored_event",
]


def make_webhook(n: int, orgcode: str = "ACME", **overrides: Any) -> Webhook:
    """A plausible webhook numbered ``n`` (its secret is not a real one)."""
    fields: dict[str, Any] = {
        "webhook_id": f"wh_{n:04d}",
        "orgcode": orgcode,
        "endpoint_url": f"https://hooks.example.com/{n}",
        "event_filters": (SubscriptionFilter("pos", action_prefix="sale."),),
        "signing_algorithm": "hmac-sha256",
        "sealed_secret": b"\x01sealed" + bytes([n % 256]),
        "secret_last4": "AbC=",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)

    return Webhook(**fields)


def stored_event(n: int, orgcode: str = "ACME", **overrides: Any) -> Event:
    """An event as if stored with sequence ``n``."""
    new = new_event(n, **overrides)
    return Event(sequence=n, orgcode=orgcode, recorded_at=T0, content_hash="", new=new)


def make_delivery(
    webhook: Webhook, n: int, *, due: datetime = T0, key: str | None = None
) -> Delivery:
    queued = Delivery.queue(f"msg_{webhook.webhook_id}_{n}", webhook, stored_event(n))
    return attrs.evolve(queued, next_attempt_at=due, ordering_value=key)


class WebhookStorageContract:
    """Behaviour every storage adapter must show for webhooks and deliveries."""

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("provide a storage fixture")

    # -- helpers ---------------------------------------------------------------

    def _add_webhooks(self, storage: Storage, *webhooks: Webhook) -> None:
        with storage.unit_of_work() as uow:
            for webhook in webhooks:
                uow.webhooks.add(webhook)
            uow.commit()

    def _queue(self, storage: Storage, *deliveries: Delivery) -> list[Delivery]:
        with storage.unit_of_work() as uow:
            stored = [uow.deliveries.add(d) for d in deliveries]
            uow.commit()

        return stored

    def _claim(
        self, storage: Storage, now: datetime, owner: str = "d1", limit: int = 100
    ) -> list[Delivery]:
        with storage.unit_of_work() as uow:
            claimed = uow.deliveries.claim(
                now, owner, now + timedelta(seconds=60), limit
            )
            uow.commit()

        return claimed

    def _ids(self, deliveries: Iterable[Delivery]) -> list[str]:
        return [d.delivery_id for d in deliveries]

    # -- webhooks -------------------------------------------------------------

    def test_webhook_reads_back_unchanged(self, storage: Storage) -> None:
        """A stored webhook reads back field for field, in its own org only."""
        webhook = make_webhook(
            1,
            event_filters=(
                SubscriptionFilter("pos"),
                SubscriptionFilter("ipm", action="bulk.job.finished"),
            ),
            ordering_key="logical_guid",
            description="ERP feed — café",
            failing_since=T0 + timedelta(microseconds=7),
        )

        self._add_webhooks(storage, webhook)
        with storage.unit_of_work(write=False) as uow:
            found = uow.webhooks.get("ACME", webhook.webhook_id)
            foreign = uow.webhooks.get("OTHER", webhook.webhook_id)

        assert found == webhook
        assert foreign is None
        assert "sealed" not in repr(found)

    def test_save_replaces_a_webhook(self, storage: Storage) -> None:
        """Saving a webhook replaces the stored one; an unknown id is a KeyError."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        changed = webhook.move_to("paused", T0 + timedelta(seconds=1))

        with storage.unit_of_work() as uow:
            uow.webhooks.save(changed)
            uow.commit()
        with storage.unit_of_work() as uow, pytest.raises(KeyError):
            uow.webhooks.save(make_webhook(2))

        with storage.unit_of_work(write=False) as uow:
            assert uow.webhooks.get("ACME", webhook.webhook_id) == changed

    def test_webhook_lookups_stay_in_their_org(self, storage: Storage) -> None:
        """Each org reads its own webhooks only, by id, in lists and for
        queuing; an org with none (see NEAR_ORGS) reads none."""
        acme, other = make_webhook(1), make_webhook(2, orgcode="OTHER")
        self._add_webhooks(storage, acme, other)

        with storage.unit_of_work(write=False) as uow:
            for org, own, foreign in (("ACME", acme, other), ("OTHER", other, acme)):
                assert uow.webhooks.list(org, None, None, 10) == [own]
                assert uow.webhooks.queuing(org) == [own]
                assert uow.webhooks.get(org, own.webhook_id) == own
                assert uow.webhooks.get(org, foreign.webhook_id) is None
            for org in NEAR_ORGS:
                assert uow.webhooks.list(org, None, None, 10) == []
                assert uow.webhooks.queuing(org) == []
                assert uow.webhooks.get(org, acme.webhook_id) is None

    def test_list_pages_by_id_and_filters_status(self, storage: Storage) -> None:
        """Listing is in id order, after a given id, by status, per org."""
        webhooks = [make_webhook(n) for n in (3, 1, 2)]
        paused = webhooks[1].move_to("paused", T0)
        self._add_webhooks(storage, *webhooks, make_webhook(9, orgcode="OTHER"))
        with storage.unit_of_work() as uow:
            uow.webhooks.save(paused)
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            every = uow.webhooks.list("ACME", None, None, 10)
            later = uow.webhooks.list("ACME", None, "wh_0001", 1)
            only_paused = uow.webhooks.list("ACME", "paused", None, 10)

        assert [w.webhook_id for w in every] == ["wh_0001", "wh_0002", "wh_0003"]
        assert [w.webhook_id for w in later] == ["wh_0002"]
        assert only_paused == [paused]

    def test_queuing_leaves_out_disabled_webhooks(self, storage: Storage) -> None:
        """Active and paused webhooks take new deliveries; disabled ones do not."""
        active, paused, disabled = make_webhook(1), make_webhook(2), make_webhook(3)
        self._add_webhooks(storage, active, paused, disabled, make_webhook(4, "OTHER"))
        with storage.unit_of_work() as uow:
            uow.webhooks.save(paused.move_to("paused", T0))
            uow.webhooks.save(disabled.move_to("disabled", T0))
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            ids = sorted(w.webhook_id for w in uow.webhooks.queuing("ACME"))

        assert ids == ["wh_0001", "wh_0002"]

    def test_sealing_key_ids_are_those_of_every_org_s_webhooks_not_disabled(
        self, storage: Storage
    ) -> None:
        """What a new secret's keyring is checked against: the keys that
        sealed every org's webhooks but the disabled ones."""
        ours, paused, gone = (
            make_webhook(n, sealed_secret=b"\x01\x02k" + bytes([48 + n]) + b"\0")
            for n in (1, 2, 3)
        )
        theirs = make_webhook(4, "OTHER", sealed_secret=b"\x01\x02k4\0")
        again = make_webhook(5, sealed_secret=b"\x01\x02k1\xff")
        self._add_webhooks(storage, ours, paused, gone, theirs, again)
        with storage.unit_of_work() as uow:
            uow.webhooks.save(paused.move_to("paused", T0))
            uow.webhooks.save(gone.move_to("disabled", T0))
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            found = uow.webhooks.sealing_key_ids()

        assert found == {"k1", "k2", "k4"}

    def test_queuing_sees_changes_made_in_the_same_transaction(
        self, storage: Storage
    ) -> None:
        """A webhook added or disabled in a unit of work counts at once in it."""
        first = make_webhook(1)
        self._add_webhooks(storage, first)

        with storage.unit_of_work() as uow:
            before = [w.webhook_id for w in uow.webhooks.queuing("ACME")]
            uow.webhooks.add(make_webhook(2))
            added = sorted(w.webhook_id for w in uow.webhooks.queuing("ACME"))
            uow.webhooks.save(first.move_to("disabled", T0))
            disabled = [w.webhook_id for w in uow.webhooks.queuing("ACME")]

        assert before == ["wh_0001"]
        assert added == ["wh_0001", "wh_0002"]
        assert disabled == ["wh_0002"]

    # -- deliveries -----------------------------------------------------------

    def test_delivery_reads_back_with_its_exact_bytes(self, storage: Storage) -> None:
        """A delivery keeps its body byte for byte and gets a queue position."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        odd = attrs.evolve(make_delivery(webhook, 1), body=b"\xff\x00{\r\n}\xe9")

        first, second = self._queue(storage, odd, make_delivery(webhook, 2))
        with storage.unit_of_work(write=False) as uow:
            by_id = uow.deliveries.get(first.delivery_id)
            by_event = uow.deliveries.find(webhook.webhook_id, 1)
            absent = uow.deliveries.find(webhook.webhook_id, 99)

        assert first.seq < second.seq
        assert by_id == by_event == first
        assert by_id is not None and by_id.body == b"\xff\x00{\r\n}\xe9"
        assert absent is None

    def test_claim_takes_due_deliveries_of_active_webhooks(
        self, storage: Storage
    ) -> None:
        """Only pending, due deliveries of active webhooks are claimed, in order."""
        active, paused = make_webhook(1), make_webhook(2)
        self._add_webhooks(storage, active, paused)
        with storage.unit_of_work() as uow:
            uow.webhooks.save(paused.move_to("paused", T0))
            uow.commit()
        later = T0 + timedelta(seconds=30)
        self._queue(
            storage,
            make_delivery(active, 1, due=T0 + timedelta(seconds=5)),
            make_delivery(active, 2, due=T0),
            make_delivery(active, 3, due=later),
            make_delivery(paused, 4, due=T0),
        )

        claimed = self._claim(storage, T0 + timedelta(seconds=10), owner="d1")

        assert self._ids(claimed) == ["msg_wh_0001_2", "msg_wh_0001_1"]
        assert {d.lease_owner for d in claimed} == {"d1"}

    def test_a_lease_hides_a_delivery_until_it_expires(self, storage: Storage) -> None:
        """A claimed delivery is not claimed again until its lease runs out."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        self._queue(storage, make_delivery(webhook, 1))

        first = self._claim(storage, T0, owner="d1")
        during = self._claim(storage, T0 + timedelta(seconds=59), owner="d2")
        after = self._claim(storage, T0 + timedelta(seconds=60), owner="d2")

        assert self._ids(first) == self._ids(after) == ["msg_wh_0001_1"]
        assert during == []
        assert after[0].lease_owner == "d2"

    def test_claim_honours_its_limit(self, storage: Storage) -> None:
        """A claim leases at most ``limit`` deliveries, oldest first."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        self._queue(storage, *(make_delivery(webhook, n) for n in range(1, 6)))

        claimed = self._claim(storage, T0, limit=2)
        rest = self._claim(storage, T0, owner="d2", limit=10)

        assert self._ids(claimed) == ["msg_wh_0001_1", "msg_wh_0001_2"]
        assert len(rest) == 3

    def test_a_held_webhook_s_deliveries_wait_for_the_hold_to_end(
        self, storage: Storage
    ) -> None:
        """Nothing of a webhook held until T is claimed before T; others are."""
        held, other = make_webhook(1), make_webhook(2)
        until = T0 + timedelta(seconds=30)
        self._add_webhooks(storage, attrs.evolve(held, held_until=until), other)
        self._queue(storage, make_delivery(held, 1), make_delivery(other, 2))

        during = self._claim(storage, T0 + timedelta(seconds=29), owner="d1")
        after = self._claim(storage, until, owner="d2")

        assert self._ids(during) == ["msg_wh_0002_2"]
        assert self._ids(after) == ["msg_wh_0001_1"]

    def test_webhooks_share_a_claim_in_turns(self, storage: Storage) -> None:
        """A webhook with a long backlog does not fill the batch: every webhook
        with a delivery due gets its turn, the longest waiting first."""
        busy, quiet = make_webhook(1), make_webhook(2)
        self._add_webhooks(storage, busy, quiet)
        self._queue(
            storage,
            *(make_delivery(busy, n) for n in range(1, 9)),
            make_delivery(quiet, 9, due=T0 + timedelta(seconds=1)),
        )

        claimed = self._claim(storage, T0 + timedelta(seconds=5), limit=4)

        assert self._ids(claimed) == [
            "msg_wh_0001_1",
            "msg_wh_0002_9",
            "msg_wh_0001_2",
        ]

    def test_a_failing_webhook_is_offered_one_delivery_a_claim(
        self, storage: Storage
    ) -> None:
        """Until it answers again, a failing webhook sends one at a time."""
        failing = attrs.evolve(make_webhook(1), failing_since=T0)
        self._add_webhooks(storage, failing)
        self._queue(storage, *(make_delivery(failing, n) for n in range(1, 4)))

        first = self._claim(storage, T0, owner="d1")
        second = self._claim(storage, T0, owner="d2")

        assert self._ids(first) == ["msg_wh_0001_1"]
        assert self._ids(second) == ["msg_wh_0001_2"]

    def test_webhooks_with_nothing_to_send_leave_the_batch_to_others(
        self, storage: Storage
    ) -> None:
        """More webhooks than the batch has room for: those whose due
        deliveries are all leased, or wait behind an older change of their
        key, are passed over, and a webhook with one to send gets it."""
        leased, ordered, free = make_webhook(1), make_webhook(2), make_webhook(3)
        self._add_webhooks(storage, leased, ordered, free)
        retrying = T0 + timedelta(minutes=5)
        self._queue(
            storage,
            make_delivery(leased, 1),
            make_delivery(ordered, 2, due=retrying, key="order-1"),
            make_delivery(ordered, 3, key="order-1"),
            make_delivery(free, 4, due=T0 + timedelta(seconds=2)),
        )
        self._claim(storage, T0, owner="d1", limit=1)

        claimed = self._claim(storage, T0 + timedelta(seconds=5), "d2", limit=2)

        assert self._ids(claimed) == ["msg_wh_0003_4"]

    def test_a_claim_passes_over_the_webhooks_it_is_told_to_skip(
        self, storage: Storage
    ) -> None:
        """Webhooks a dispatcher is still sending to are left out of its
        next claim; the batch goes to the others."""
        sending, other = make_webhook(1), make_webhook(2)
        self._add_webhooks(storage, sending, other)
        self._queue(storage, make_delivery(sending, 1), make_delivery(other, 2))

        with storage.unit_of_work() as uow:
            until = T0 + timedelta(seconds=60)
            claimed = uow.deliveries.claim(T0, "d1", until, 10, skip={"wh_0001"})
            uow.commit()

        assert self._ids(claimed) == ["msg_wh_0002_2"]
        assert self._ids(self._claim(storage, T0, "d2")) == ["msg_wh_0001_1"]

    def test_held_until_reads_back(self, storage: Storage) -> None:
        """A webhook's hold is stored and read back to the microsecond."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        held = attrs.evolve(webhook, held_until=T0 + timedelta(microseconds=7))

        with storage.unit_of_work() as uow:
            uow.webhooks.save(held)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            stored = uow.webhooks.get(webhook.orgcode, webhook.webhook_id)

        assert stored == held

    def test_an_ordering_key_goes_one_delivery_at_a_time(
        self, storage: Storage
    ) -> None:
        """Only the oldest pending delivery of a key is claimable; others flow."""
        webhook = make_webhook(1, ordering_key="logical_guid")
        self._add_webhooks(storage, webhook)
        a1, a2, b1, free = self._queue(
            storage,
            make_delivery(webhook, 1, key="A"),
            make_delivery(webhook, 2, key="A"),
            make_delivery(webhook, 3, key="B"),
            make_delivery(webhook, 4, key=None),
        )

        first = self._claim(storage, T0)
        blocked = self._claim(storage, T0, owner="d2")
        with storage.unit_of_work() as uow:
            uow.deliveries.save(attrs.evolve(a1, status="delivered"))
            uow.commit()
        released = self._claim(storage, T0, owner="d2")

        assert self._ids(first) == self._ids([a1, b1, free])
        assert blocked == []
        assert self._ids(released) == self._ids([a2])

    def test_a_head_not_yet_due_holds_its_key(self, storage: Storage) -> None:
        """A key's later deliveries wait while its head waits for a retry."""
        webhook = make_webhook(1, ordering_key="logical_guid")
        self._add_webhooks(storage, webhook)
        retry_at = T0 + timedelta(seconds=5)
        self._queue(
            storage,
            make_delivery(webhook, 1, key="A", due=retry_at),
            make_delivery(webhook, 2, key="A"),
        )

        now = self._claim(storage, T0)
        later = self._claim(storage, retry_at)

        assert now == []
        assert self._ids(later) == ["msg_wh_0001_1"]

    def test_waits_behind_sees_a_key_s_earlier_pending_delivery(
        self, storage: Storage
    ) -> None:
        """Only a pending delivery of the same key and an earlier event counts."""
        webhook = make_webhook(1, ordering_key="logical_guid")
        self._add_webhooks(storage, webhook)
        a1, _, _ = self._queue(
            storage,
            make_delivery(webhook, 1, key="A"),
            make_delivery(webhook, 3, key="A"),
            make_delivery(webhook, 2, key="B"),
        )

        with storage.unit_of_work(write=False) as uow:
            before = [
                uow.deliveries.waits_behind("wh_0001", key, sequence)
                for key, sequence in (("A", 3), ("A", 1), ("B", 2), ("B", 9))
            ]
        with storage.unit_of_work() as uow:
            uow.deliveries.save(attrs.evolve(a1, status="delivered"))
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            after = uow.deliveries.waits_behind("wh_0001", "A", 3)
            other = uow.deliveries.waits_behind("wh_0002", "A", 3)

        assert before == [True, False, False, True]
        assert (after, other) == (False, False)

    def test_final_deliveries_are_never_claimed(self, storage: Storage) -> None:
        """Delivered and failed deliveries stay out of every claim."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        done, failed = self._queue(
            storage, make_delivery(webhook, 1), make_delivery(webhook, 2)
        )
        with storage.unit_of_work() as uow:
            uow.deliveries.save(attrs.evolve(done, status="delivered"))
            uow.deliveries.save(attrs.evolve(failed, status="failed"))
            uow.commit()

        assert self._claim(storage, T0 + timedelta(days=1)) == []
        with storage.unit_of_work(write=False) as uow:
            statuses = [d.status for d in uow.deliveries.list("wh_0001", None, 10)]
            delivered = uow.deliveries.list("wh_0001", "delivered", 10)
        assert statuses == ["delivered", "failed"]
        assert self._ids(delivered) == [done.delivery_id]

    def test_deliveries_page_on_from_a_queue_position(self, storage: Storage) -> None:
        """after_seq starts a page after the last delivery of the one before."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        queued = self._queue(storage, *(make_delivery(webhook, n) for n in range(1, 6)))

        with storage.unit_of_work(write=False) as uow:
            first = uow.deliveries.list("wh_0001", None, 2)
            second = uow.deliveries.list("wh_0001", None, 2, after_seq=first[-1].seq)
            rest = uow.deliveries.list("wh_0001", None, 9, after_seq=second[-1].seq)

        pages = self._ids(first) + self._ids(second) + self._ids(rest)
        assert pages == self._ids(list(queued))

    def test_attempts_read_back_in_order(self, storage: Storage) -> None:
        """Every attempt is kept with its status, timing, error and excerpt."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        (delivery,) = self._queue(storage, make_delivery(webhook, 1))
        attempts = [
            DeliveryAttempt(
                delivery.delivery_id, 1, "dispatch", T0, 12.5, 503, None, b"busy"
            ),
            DeliveryAttempt(
                delivery.delivery_id, 2, "dispatch", T0, 3.0, None, "reset", b""
            ),
            DeliveryAttempt(delivery.delivery_id, 3, "replay", T0, 1.0, 204, None, b""),
        ]

        with storage.unit_of_work() as uow:
            for attempt in attempts:
                uow.deliveries.add_attempt(attempt)
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.deliveries.attempts(delivery.delivery_id) == attempts
            assert uow.deliveries.attempts("msg_unknown") == []

    def test_attempt_counts_tell_the_dispatchers_tries_apart(
        self, storage: Storage
    ) -> None:
        """Counts are every attempt logged and those of kind dispatch."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        (delivery,) = self._queue(storage, make_delivery(webhook, 1))
        kinds: tuple[AttemptKind, ...] = (
            "dispatch",
            "replay",
            "dispatch",
            "replay",
            "replay",
        )

        with storage.unit_of_work() as uow:
            for number, kind in enumerate(kinds, start=1):
                uow.deliveries.add_attempt(
                    DeliveryAttempt(
                        delivery.delivery_id, number, kind, T0, 1.0, 500, None
                    )
                )
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.deliveries.attempt_counts(delivery.delivery_id) == (5, 2)
            assert uow.deliveries.attempt_counts("msg_unknown") == (0, 0)

    def test_rollback_leaves_no_delivery_or_attempt(self, storage: Storage) -> None:
        """A unit of work left without commit queues and records nothing."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)

        with storage.unit_of_work() as uow:
            queued = uow.deliveries.add(make_delivery(webhook, 1))
            uow.deliveries.add_attempt(
                DeliveryAttempt(queued.delivery_id, 1, "dispatch", T0, 1.0, 200, None)
            )
            uow.webhooks.add(make_webhook(2))

        with storage.unit_of_work(write=False) as uow:
            assert uow.deliveries.get(queued.delivery_id) is None
            assert uow.deliveries.attempts(queued.delivery_id) == []
            assert uow.webhooks.get("ACME", "wh_0002") is None
        assert self._ids(self._queue(storage, make_delivery(webhook, 1))) == [
            queued.delivery_id
        ]

    def test_concurrent_claims_never_overlap(self, storage: Storage) -> None:
        """Four threads claiming in small batches lease every delivery once."""
        webhook = make_webhook(1)
        self._add_webhooks(storage, webhook)
        self._queue(storage, *(make_delivery(webhook, n) for n in range(1, 201)))
        taken: dict[str, list[str]] = {}
        barrier = threading.Barrier(4)

        def worker(owner: str) -> None:
            mine: list[str] = []
            barrier.wait()
            while batch := self._claim(storage, T0, owner=owner, limit=7):
                mine += self._ids(batch)
                if len(mine) > 200:
                    break  # more than were queued: claimed again, so fail
            taken[owner] = mine

        threads = [threading.Thread(target=worker, args=(f"d{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        every = [delivery_id for ids in taken.values() for delivery_id in ids]
        assert len(every) == len(set(every)) == 200
