"""In-memory webhooks, deliveries and attempts.

Deliveries are claimed exactly as the SQLite adapter claims them: due,
pending, not leased, of an active webhook, and for an ordered webhook only
the oldest pending delivery of each key.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from ipm.domain.webhooks import (
    Delivery,
    DeliveryAttempt,
    Webhook,
    fair_share,
    in_turns,
    sealing_key_id,
)

if TYPE_CHECKING:
    from ipm.adapters.memory.core import UndoLog


class MemoryWebhookStore:
    def __init__(self, undo: UndoLog) -> None:
        self._undo = undo
        self._webhooks: dict[str, Webhook] = {}

    def add(self, webhook: Webhook) -> None:
        if webhook.webhook_id in self._webhooks:
            raise KeyError(f"webhook {webhook.webhook_id} exists")
        self._put(webhook)

    def save(self, webhook: Webhook) -> None:
        if webhook.webhook_id not in self._webhooks:
            raise KeyError(f"webhook {webhook.webhook_id} does not exist")
        self._put(webhook)

    def get(self, orgcode: str, webhook_id: str) -> Webhook | None:
        webhook = self._webhooks.get(webhook_id)
        if webhook is None or webhook.orgcode != orgcode:
            return None

        return webhook

    def list(
        self, orgcode: str, status: str | None, after: str | None, limit: int
    ) -> builtins.list[Webhook]:
        chosen = sorted(
            (
                w
                for w in self._webhooks.values()
                if w.orgcode == orgcode
                and status in (None, w.status)
                and (after is None or w.webhook_id > after)
            ),
            key=lambda w: w.webhook_id,
        )

        return chosen[:limit]

    def queuing(self, orgcode: str) -> builtins.list[Webhook]:
        return [w for w in self._webhooks.values() if w.orgcode == orgcode and w.queues]

    def sealing_key_ids(self) -> builtins.set[str]:
        found = (
            sealing_key_id(w.sealed_secret)
            for w in self._webhooks.values()
            if w.status != "disabled"
        )

        return {key_id for key_id in found if key_id is not None}

    def failing(self, webhook_id: str) -> bool:
        webhook = self._webhooks.get(webhook_id)
        return webhook is not None and webhook.failing_since is not None

    def sends_at(self, webhook_id: str, now: datetime) -> bool:
        """Whether the webhook's deliveries may go out at ``now``."""
        webhook = self._webhooks.get(webhook_id)
        return (
            webhook is not None
            and webhook.status == "active"
            and (webhook.held_until is None or webhook.held_until <= now)
        )

    def _put(self, webhook: Webhook) -> None:
        old = self._webhooks.get(webhook.webhook_id)
        self._webhooks[webhook.webhook_id] = webhook
        self._undo.push(lambda: self._restore(webhook.webhook_id, old))

    def _restore(self, webhook_id: str, old: Webhook | None) -> None:
        if old is None:
            self._webhooks.pop(webhook_id, None)
        else:
            self._webhooks[webhook_id] = old


class MemoryDeliveryStore:
    def __init__(self, undo: UndoLog, webhooks: MemoryWebhookStore) -> None:
        self._undo = undo
        self._webhooks = webhooks
        self._last_seq = 0
        self._by_id: dict[str, Delivery] = {}
        self._by_event: dict[tuple[str, int], str] = {}
        self._pending: dict[str, Delivery] = {}
        self._attempts: dict[str, builtins.list[DeliveryAttempt]] = {}

    def add(self, delivery: Delivery) -> Delivery:
        event_key = (delivery.webhook_id, delivery.event_sequence)
        if delivery.delivery_id in self._by_id or event_key in self._by_event:
            raise KeyError(f"delivery {delivery.delivery_id} exists")

        self._last_seq += 1
        stored = attrs.evolve(delivery, seq=self._last_seq)
        self._by_event[event_key] = stored.delivery_id
        self._put(stored)
        self._undo.push(lambda: self._forget(stored, event_key))

        return stored

    def get(self, delivery_id: str) -> Delivery | None:
        return self._by_id.get(delivery_id)

    def find(self, webhook_id: str, event_sequence: int) -> Delivery | None:
        delivery_id = self._by_event.get((webhook_id, event_sequence))
        return None if delivery_id is None else self._by_id[delivery_id]

    def waits_behind(
        self, webhook_id: str, ordering_value: str, event_sequence: int
    ) -> bool:
        return any(
            d.webhook_id == webhook_id
            and d.ordering_value == ordering_value
            and d.event_sequence < event_sequence
            for d in self._pending.values()
        )

    def save(self, delivery: Delivery) -> None:
        old = self._by_id.get(delivery.delivery_id)
        if old is None:
            raise KeyError(f"delivery {delivery.delivery_id} does not exist")

        self._replace(old, attrs.evolve(delivery, seq=old.seq))

    def claim(
        self,
        now: datetime,
        owner: str,
        lease_until: datetime,
        limit: int,
        skip: Collection[str] = (),
    ) -> builtins.list[Delivery]:
        queues: dict[str, builtins.list[Delivery]] = {}
        for delivery in self._claimable(now):
            if delivery.next_attempt_at <= now and delivery.webhook_id not in skip:
                queues.setdefault(delivery.webhook_id, []).append(delivery)
        for queue in queues.values():
            queue.sort(key=lambda d: (d.next_attempt_at, d.seq))
        # The webhooks with a delivery to send now, the longest waiting
        # first, each with its share of the batch: a failing one sends one
        # at a time.
        ready = sorted(queues, key=lambda w: (queues[w][0].next_attempt_at, w))
        ready = ready[:limit]
        share = fair_share(limit, len(ready))
        lines = []
        for webhook_id in ready:
            failing = self._webhooks.failing(webhook_id)
            lines.append(queues[webhook_id][: 1 if failing else share])

        claimed = []
        for delivery in in_turns(lines)[:limit]:
            leased = attrs.evolve(delivery, lease_owner=owner, lease_until=lease_until)
            self._replace(delivery, leased)
            claimed.append(leased)

        return claimed

    def add_attempt(self, attempt: DeliveryAttempt) -> None:
        attempts = self._attempts.setdefault(attempt.delivery_id, [])
        attempts.append(attempt)
        self._undo.push(lambda: _drop_last(attempts))

    def attempts(self, delivery_id: str) -> builtins.list[DeliveryAttempt]:
        return list(self._attempts.get(delivery_id, ()))

    def attempt_counts(self, delivery_id: str) -> tuple[int, int]:
        logged = self._attempts.get(delivery_id, ())

        return len(logged), sum(a.kind == "dispatch" for a in logged)

    def list(
        self, webhook_id: str, status: str | None, limit: int, after_seq: int = 0
    ) -> builtins.list[Delivery]:
        chosen = sorted(
            (
                d
                for d in self._by_id.values()
                if d.webhook_id == webhook_id
                and status in (None, d.status)
                and d.seq > after_seq
            ),
            key=lambda d: d.seq,
        )

        return chosen[:limit]

    def _claimable(self, now: datetime) -> builtins.list[Delivery]:
        """Pending deliveries of active webhooks that may go out now.

        Walking in queue order, the first pending delivery of an ordering
        key is its head; every later one of that key waits behind it,
        whether the head is due, leased or neither.
        """
        heads_seen: set[tuple[str, str]] = set()
        found = []
        for delivery in sorted(self._pending.values(), key=lambda d: d.seq):
            if delivery.ordering_value is not None:
                key = (delivery.webhook_id, delivery.ordering_value)
                if key in heads_seen:
                    continue
                heads_seen.add(key)
            if not self._webhooks.sends_at(delivery.webhook_id, now):
                continue
            if delivery.lease_until is not None and delivery.lease_until > now:
                continue
            found.append(delivery)

        return found

    def _replace(self, old: Delivery, new: Delivery) -> None:
        self._put(new)
        self._undo.push(lambda: self._put(old))

    def _put(self, delivery: Delivery) -> None:
        self._by_id[delivery.delivery_id] = delivery
        if delivery.final:
            self._pending.pop(delivery.delivery_id, None)
        else:
            self._pending[delivery.delivery_id] = delivery

    def _forget(self, delivery: Delivery, event_key: tuple[str, int]) -> None:
        self._by_id.pop(delivery.delivery_id, None)
        self._pending.pop(delivery.delivery_id, None)
        self._by_event.pop(event_key, None)
        self._last_seq -= 1


def _drop_last(attempts: builtins.list[DeliveryAttempt]) -> None:
    attempts.pop()
