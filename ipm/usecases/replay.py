"""Replay: a webhook's stored events sent again, now, one by one.

``/webhook/replay`` answers synchronously with what really happened. Each
event goes out with the id and body of its delivery (queued for the
replay if it never had one), through the dispatcher's own send and
record steps, under a lease of its own name so the dispatcher's batches
keep off it. The replay is recorded as ipm's own ``webhook.replayed``
event with the caller's audit, also when it ends early on a failure, as
far as the storage still takes it. See docs/webhooks.md (Replay).
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from ipm.domain.errors import (
    Conflict,
    NotFound,
    Problem,
    StorageUnavailable,
    type_name,
)
from ipm.domain.events import AuditLike, Event, check_orgcode
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import (
    AttemptKind,
    Delivery,
    DeliveryAttempt,
    DisableReason,
    ReplayOutcome,
    Verdict,
    Webhook,
    replay_window,
)
from ipm.ports import Clock, Ids, Storage, UnitOfWork
from ipm.schemas import check_arguments
from ipm.usecases.cdc import Recorder, checked_audit
from ipm.usecases.lanes import Ready, Sent, count_only, logged
from ipm.usecases.webhooks import replay_events

log = logging.getLogger(__name__)


class Replaying:
    """The replay half of :class:`ipm.usecases.delivery.Dispatcher`, which
    provides what is declared here."""

    storage: Storage
    recorder: Recorder
    clock: Clock
    ids: Ids
    lease: timedelta
    replay_budget: float

    if TYPE_CHECKING:

        def _prepare(self, webhook: Webhook) -> Ready: ...

        def _send(
            self, delivery: Delivery, ready: Ready, kind: AttemptKind
        ) -> Sent | None: ...

        def _update_health(
            self,
            uow: UnitOfWork,
            delivery: Delivery,
            attempt: DeliveryAttempt,
            verdict: Verdict,
            now: datetime,
        ) -> bool: ...

        def _disable(
            self,
            uow: UnitOfWork,
            webhook: Webhook,
            reason: DisableReason,
            detail: str,
            now: datetime,
        ) -> bool: ...

    def replay(
        self,
        orgcode: str,
        webhook_id: str,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        max_events: int = 100,
        audit: AuditLike | None = None,
    ) -> ReplayOutcome:
        """Send the stored events a webhook matches again, now, one by one.

        Events are taken in sequence order, recorded in ``[since, until)``,
        at most ``max_events``. Each is sent once, with the id and body of
        its delivery (queued now if it never had one). The answer counts
        real outcomes; after a 410 the webhook is disabled and the events
        not yet sent count as failed, as they do when someone else pauses
        or disables the webhook while the replay runs. The replay is
        recorded as ipm's own ``webhook.replayed`` event, with ``audit``
        (who asked, and why).
        """
        check_orgcode(orgcode)
        # The wire's own bounds: an integer from 1 to MAX_REPLAY (5.0 is
        # one there too, so it is here), never True.
        check_arguments("WebhookReplay", webhook_id=webhook_id, max_events=max_events)
        max_events = int(max_events)
        since, until = replay_window(since, until)
        if audit is not None:
            audit = checked_audit(audit)  # refused before anything is sent

        with self.storage.unit_of_work(write=False) as uow:
            webhook = uow.webhooks.get(orgcode, webhook_id)
            if webhook is None:
                raise NotFound("webhook")
            if webhook.status != "active":
                raise Conflict(
                    f"webhook is {webhook.status}: set it active before replaying",
                    [Problem("/webhook_id", f"is {webhook.status}, not active")],
                )
            events = replay_events(uow, webhook, since, until, max_events)

        ready = self._prepare(webhook)
        if ready.local:
            # The secret cannot be read on this machine just now (the
            # keyring is down, no descriptors): nothing would leave it, so
            # nothing is sent, recorded or held against the endpoint.
            raise StorageUnavailable(
                f"the webhook's secret cannot be read just now ({ready.refusal}); "
                "nothing was sent, try again later"
            )
        # A replay leases under its own name: this dispatcher's batches (in
        # another thread, say) must not take its leases for theirs.
        owner = self.ids("rpl")
        deadline = time.monotonic() + self.replay_budget
        blocked: set[str | None] = set()
        delivered = failed = 0
        # Whether the send under way reached its endpoint, not yet recorded.
        landed = [False]
        asked = {
            "replay_id": owner,
            "webhook_id": webhook_id,
            "since": None if since is None else format_utc(since),
            "until": None if until is None else format_utc(until),
            "max_events": max_events,
        }
        record = functools.partial(self._record_replay, orgcode, owner, asked, audit)
        # Recorded before the first send, so a resend to a third party has
        # its trail (who, why, which window) even if this process dies
        # before the outcome is recorded; nothing is sent if it cannot be.
        record("webhook.replay_started", {"considered": len(events)})
        try:
            for event in events:
                key = webhook.ordering_value(event)
                if webhook.ordering_key is not None and key in blocked:
                    # An earlier change of this record failed in this
                    # replay: sending a later one now would reorder them.
                    failed += 1
                    continue

                try:
                    verdict = self._replay_one(ready, event, key, owner, landed)
                except _Stopped as stopped:
                    # Paused or disabled by someone else meanwhile: an
                    # operator cutting an endpoint off must be obeyed at
                    # once, not after the rest of the window.
                    log.info(
                        "replay %s of webhook %s stopped: the webhook is now %s",
                        owner,
                        webhook_id,
                        stopped.status,
                    )
                    failed = len(events) - delivered
                    break
                if verdict == "success":
                    delivered += 1
                else:
                    failed += 1
                    blocked.add(key)
                if verdict == "disabled" or time.monotonic() > deadline:
                    # Disabled (gone, or failing too long), or out of time:
                    # the rest were not delivered.
                    failed = len(events) - delivered
                    break
        except BaseException:
            # Events may have gone out before the failure (a database that
            # stayed locked, say): their trail is kept if the storage still
            # takes it, the rest counted failed; the failure is the answer.
            delivered += landed[0]
            cut = ReplayOutcome(webhook_id, len(events), delivered, 0)
            try:
                cut = attrs.evolve(cut, failed=len(events) - delivered)
                record("webhook.replayed", cut.counts())
            except Exception as error:
                log.warning(
                    "replay %s of webhook %s ended early and could not be "
                    "recorded either (%s)",
                    owner,
                    webhook_id,
                    type_name(error),
                )
            raise

        outcome = ReplayOutcome(webhook_id, len(events), delivered, failed)
        record("webhook.replayed", outcome.counts())

        return outcome

    def _record_replay(
        self,
        orgcode: str,
        owner: str,
        asked: dict[str, Any],
        audit: AuditLike | None,
        action: str,
        counts: dict[str, int],
    ) -> None:
        """The replay's own event: ``webhook.replay_started`` (op c) before
        the first send, ``webhook.replayed`` (op u) with the outcome."""
        with self.storage.unit_of_work() as uow:
            self.recorder.record_own(
                uow,
                orgcode,
                action,
                {**asked, **counts},
                op="c" if action == "webhook.replay_started" else "u",
                logical_guid=owner,
                audit=audit,
            )
            uow.commit()

    def _replay_one(
        self,
        ready: Ready,
        event: Event,
        key: str | None,
        owner: str,
        landed: list[bool],
    ) -> str:
        """Send ``event`` again and record it; its verdict. ``landed`` is
        set once the endpoint took it (2xx): if recording then fails, the
        replay's trail still counts it delivered."""
        webhook = ready.webhook
        taken = self._replay_delivery(webhook, event, key, owner)
        if taken is None:
            return "held"
        delivery = taken
        sent = self._send(delivery, ready, "replay")
        assert sent is not None, "a replay's send is always an attempt"
        verdict: str = sent.attempt.verdict
        landed[0] = verdict == "success"

        with self.storage.unit_of_work() as uow:
            now = self.clock()
            attempt, _ = logged(uow, sent.attempt)
            current = uow.deliveries.get(delivery.delivery_id)
            assert current is not None
            # A delivery another dispatcher holds is its business: only the
            # attempt is recorded here.
            if current.final or current.lease_owner == owner:
                uow.deliveries.save(current.after_replay(attempt))
            else:
                count_only(uow, current, attempt)
            if verdict == "gone":
                self._disable_gone(uow, webhook)
                verdict = "disabled"
            else:
                # A replay's answer says as much about the endpoint's health
                # as a dispatch's: a 2xx clears the failure clock.
                health: Verdict = "delivered" if verdict == "success" else "failed"
                if self._update_health(uow, current, attempt, health, now):
                    verdict = "disabled"
            uow.commit()
        landed[0] = False  # recorded: counted by its verdict

        return verdict

    def _disable_gone(self, uow: UnitOfWork, webhook: Webhook) -> None:
        current = uow.webhooks.get(webhook.orgcode, webhook.webhook_id)
        if current is not None and current.status != "disabled":
            detail = "the endpoint answered 410 Gone to a replay"
            self._disable(uow, current, "gone_410", detail, self.clock())

    def _replay_delivery(
        self, webhook: Webhook, event: Event, key: str | None, owner: str
    ) -> Delivery | None:
        """The event's delivery to this webhook, leased to us if it is free.

        ``None`` when an earlier change of the same record (``key``) still
        waits to be delivered, outside this replay's window or leased to a
        dispatcher: sending this one now would put it before that one.
        Raises :class:`_Stopped` once the webhook is no longer active (paused
        or disabled since the replay began): nothing more is sent.
        A delivery made only for this replay is stored ``failed`` from the
        start, and a success settles it: the queue never claims it, so a
        replay killed mid-send leaves no stray delivery for the dispatcher
        to send later, perhaps after a newer change of its record.
        """
        now = self.clock()
        until = now + self.lease
        with self.storage.unit_of_work() as uow:
            current = uow.webhooks.get(webhook.orgcode, webhook.webhook_id)
            if current is None or current.status != "active":
                raise _Stopped("gone" if current is None else current.status)
            if key is not None and uow.deliveries.waits_behind(
                webhook.webhook_id, key, event.sequence
            ):
                return None
            existing = uow.deliveries.find(webhook.webhook_id, event.sequence)
            if existing is None:
                queued = Delivery.queue(self.ids("msg"), webhook, event)
                delivery = uow.deliveries.add(attrs.evolve(queued, status="failed"))
                uow.commit()
                return delivery

            free = existing.lease_until is None or existing.lease_until <= now
            if existing.final or not free:
                return existing

            delivery = attrs.evolve(existing, lease_owner=owner, lease_until=until)
            uow.deliveries.save(delivery)
            uow.commit()

        return delivery


class _Stopped(Exception):
    """The webhook left ``active`` while its replay ran."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status
