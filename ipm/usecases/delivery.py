"""The dispatcher: sends queued webhook deliveries and records what happened.

Theory of operation. :meth:`Dispatcher.deliver_pending` repeats three
steps until nothing is due:

1. **Claim** (one write unit of work, so under SQLite's ``BEGIN
   IMMEDIATE`` lock): lease a batch of due deliveries of active webhooks
   to this dispatcher until ``lease_until``. A leased delivery is invisible
   to every other dispatcher, in this process or another, so nothing is
   sent twice while its sender lives. For an ordered webhook only the
   oldest pending delivery of each key can be claimed.
2. **Send** (no transaction open): sign each delivery afresh (new
   timestamp, same ``webhook-id`` and body) and send it through the
   ``Transport``, several at once on a small thread pool.
3. **Record** (one write unit of work): store every attempt, move each
   delivery on (delivered, retry later, failed), and keep each webhook's
   health; a 410 or a long run of failures disables the webhook with a CDC
   event. An outcome is applied only if this dispatcher still holds the
   lease; if it lost it (it stalled past ``lease_until`` and another took
   over) the attempt is kept as history but changes nothing.

A dispatcher that dies between claim and record leaves its leases to
expire; the deliveries are then sent again (at least once, never lost),
and receivers dedupe on ``webhook-id``.

Arguments are checked once per call (and settings once, when the
dispatcher is built), never per delivery: the send loop stays as it was.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import cast

import attrs

from ipm import signing
from ipm.domain.errors import (
    InvalidRequest,
    IpmError,
    Problem,
    StorageBusy,
    StorageClosed,
    StorageUnavailable,
    type_name,
)
from ipm.domain.events import Audit
from ipm.domain.netguard import NetworkPolicy, UnsafeUrl
from ipm.domain.retry import RetryPolicy, parse_retry_after
from ipm.domain.settings import check_seconds, check_whole
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import (
    AttemptKind,
    Delivery,
    DeliveryAttempt,
    DisableReason,
    Verdict,
    Webhook,
    check_endpoint,
)
from ipm.ports import (
    Clock,
    Ids,
    OutboundRequest,
    Storage,
    Transport,
    TransportResult,
    UnitOfWork,
)
from ipm.usecases.cdc import Recorder
from ipm.usecases.lanes import (
    ASK_AGAIN,
    RESERVE_FROM,
    Batch,
    DeliveryReport,
    Lane,
    Ready,
    Schedule,
    Sent,
    Stopping,
    count_only,
    logged,
)
from ipm.usecases.replay import Replaying
from ipm.usecases.telling import Sometimes, held_back
from ipm.usecases.webhooks import (
    KeyringFailed,
    SecretBox,
    SecretUnavailable,
    secret_context,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_REPLAY",
    "MAX_TIMEOUT",
    "MAX_WORKERS",
    "DeliveryReport",
    "Dispatcher",
    "check_dispatcher_settings",
]

log = logging.getLogger(__name__)

_SYSTEM = Audit(actor="ipm", context_source="dispatcher")
MAX_REPLAY = 1000
MAX_BATCH_SIZE = 10_000
MAX_WORKERS = 1024
MAX_TIMEOUT = 3600.0


class Dispatcher(Replaying):
    """Sends due deliveries; safe to run in several threads or processes.

    Replays (:meth:`replay`) are in :mod:`ipm.usecases.replay`."""

    def __init__(
        self,
        *,
        storage: Storage,
        recorder: Recorder,
        clock: Clock,
        ids: Ids,
        secrets: SecretBox,
        transport: Transport | Callable[[], Transport],
        policy: NetworkPolicy,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        batch_size: int = 64,
        workers: int = 8,
        rand: Callable[[], float] = random.random,
        replay_budget: float = 60.0,
    ) -> None:
        check_dispatcher_settings(
            batch_size=batch_size,
            workers=workers,
            timeout=timeout,
            replay_budget=replay_budget,
        )
        self.storage = storage
        # A replay answers synchronously; past this many seconds it stops
        # and counts what it did not send as failed.
        self.replay_budget = replay_budget
        self.recorder = recorder
        self.clock = clock
        self.ids = ids
        self.secrets = secrets
        # A factory defers building the default transport (its TLS context
        # costs tens of milliseconds) until something is sent.
        self._transport: Transport | None = None
        self._make_transport: Callable[[], Transport] | None = None
        # A class is a factory too (its send is unbound): it is built.
        if hasattr(transport, "send") and not isinstance(transport, type):
            self._transport = cast(Transport, transport)
        else:
            self._make_transport = transport
        self.policy = policy
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.batch_size = batch_size
        self.workers = workers
        self.rand = rand
        self.owner = ids("dsp")
        self._short_here = Sometimes(10.0)  # how often a shortage is logged
        self._broken_transport = Sometimes(60.0)
        self._record_waits = Sometimes(60.0)
        self._transport_closed = False
        # A batch's sends run workers at a time (one fewer when one is kept
        # for other lanes), each bounded by timeout; a lane waits at most
        # a timeout before it goes first (see Schedule).
        lanes = self.workers - 1 if self.workers >= RESERVE_FROM else self.workers
        rounds = math.ceil(batch_size / lanes) + 1
        self.lease = timedelta(seconds=timeout * rounds + 30)
        self._transport_lock = threading.Lock()
        # close() stops the calls under way and waits for them to record
        # what they sent (see close).
        self._closing = threading.Event()
        self._calls = 0
        self._calls_ended = threading.Condition()

    @property
    def transport(self) -> Transport:
        """The transport, built on first use when given as a factory.

        A factory that raises, or makes something without ``send``, raises
        here each time (nothing is kept, so a fixed set-up is picked up).
        """
        if self._transport is None:
            with self._transport_lock:
                if self._transport is None:
                    assert self._make_transport is not None
                    built = self._make_transport()
                    if not callable(getattr(built, "send", None)):
                        raise _NoSend(
                            "webhook_transport made a "
                            f"{type(built).__name__!r}, which has no send(request)"
                        )
                    self._transport = built

        return self._transport

    # -- dispatching ----------------------------------------------------------

    def deliver_pending(
        self,
        *,
        max_batches: int | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[DeliveryReport], object] | None = None,
    ) -> DeliveryReport:
        """Send every delivery that is due now; return what came of them.

        Each claim (a batch) is split into lanes, one per webhook. A lane
        is recorded as soon as its own sends have ended, and the next claim
        does not wait for the slowest endpoint: it fills the room the ended
        lanes left, passing over the webhooks still being sent to.

        ``max_batches`` (an int of at least 1) stops claiming after that
        many batches even if more are due; ``None`` sends until none is.
        Once ``stop`` is set, no further send starts: the sends under way
        end and are recorded, and the other claimed deliveries are released
        at once (untried, still due) rather than left leased.
        ``progress``, when given, is called with the report of each group
        of lanes as it is recorded (a long call under steady load then
        still says what it does).
        """
        if max_batches is not None and (
            type(max_batches) is not int or max_batches < 1
        ):
            raise InvalidRequest(
                "max_batches must be None or an integer of at least 1",
                [Problem("/max_batches", "must be null or an integer >= 1")],
            )
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise TypeError("stop must be a threading.Event (or have is_set())")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")

        if self._closing.is_set():
            raise StorageClosed("the dispatcher was closed")

        schedule = Schedule(self.workers, overdue=self.timeout)
        # Workers of its own for each call (threads start as sends come):
        # two calls in two threads of one application would otherwise
        # queue each other's worker loops behind their own.
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ipm-deliver")
        stopping = Stopping(stop, self._closing)
        with self._calls_ended:
            self._calls += 1
        try:
            report = self._dispatch(schedule, pool, max_batches, stopping, progress)
        finally:
            # Leaving early (an error, an interrupt): the workers start no
            # further send of this call; its leases run out as after a crash.
            schedule.close()
            pool.shutdown(wait=False)
            with self._calls_ended:
                self._calls -= 1
                self._calls_ended.notify_all()

        if report.attempted:
            log.debug("dispatcher %s: %s", self.owner, report)
        return report

    def _dispatch(
        self,
        schedule: Schedule,
        pool: ThreadPoolExecutor,
        max_batches: int | None,
        stop: Stopping,
        progress: Callable[[DeliveryReport], object] | None,
    ) -> DeliveryReport:
        """Claim, send and record until nothing is due (see deliver_pending)."""
        report = DeliveryReport()
        loops: set[Future[None]] = set()
        batches = 0
        found_none_at: float | None = None  # when a claim last came back empty
        short_here = False
        while True:
            if not short_here and self._may_claim(
                schedule, batches, max_batches, found_none_at, stop
            ):
                room = self.batch_size - schedule.waiting()
                claimed = self._claim_unless_busy(room, schedule)
                if claimed:
                    batches += 1
                    found_none_at = None
                    for _ in range(schedule.open(claimed)):
                        loops.add(pool.submit(self._work, schedule, stop))
                else:
                    found_none_at = time.monotonic()
            if not schedule.lanes:
                return report

            schedule.lane_ended.wait(ASK_AGAIN)
            schedule.lane_ended.clear()
            for loop in [loop for loop in loops if loop.done()]:
                loops.discard(loop)
                loop.result()  # a send that raised raises here
            ended = schedule.pop_ended()
            short = [lane for lane in ended if lane.short_here]
            if short:
                # This machine is short of descriptors or memory: claiming
                # again at once would release the same deliveries again and
                # again; the call ends and its caller comes back later.
                short_here = True
                untried = sum(o is None for lane in short for o in lane.outcomes)
                report += DeliveryReport(untried_here=untried)
            if ended:
                recorded = self._record_sent(Batch.of(ended), stop)
                report += recorded
                found_none_at = None  # keys freed, retries due: ask again
                if progress is not None and recorded != DeliveryReport():
                    progress(recorded)

    def close(self) -> None:
        """Stop the calls under way, let them record, then close the transport.

        Each call starts no further send; the sends under way end (each
        within the timeout) and are recorded, so closing the application
        right after does not drop outcomes whose requests went out (they
        would be sent again, unlogged). Waits a timeout and a few seconds
        at most; a call still running then is left to its leases.
        """
        self._closing.set()
        deadline = time.monotonic() + self.timeout + _CLOSE_GRACE
        with self._calls_ended:
            while self._calls:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "closing with %d delivery call(s) still recording", self._calls
                    )
                    break
                self._calls_ended.wait(left)
        if self._transport_closed:
            return  # a transport whose close raised is not asked again
        self._transport_closed = True
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    def _may_claim(
        self,
        schedule: Schedule,
        batches: int,
        max_batches: int | None,
        found_none_at: float | None,
        stop: Stopping,
    ) -> bool:
        """Whether to claim now: not stopping, below max_batches, room left
        in the batch, and not just after a claim that found nothing."""
        if stop.is_set():
            return False
        if max_batches is not None and batches >= max_batches:
            return False
        if schedule.waiting() >= self.batch_size:
            return False

        return found_none_at is None or time.monotonic() - found_none_at >= ASK_AGAIN

    def _claim_unless_busy(
        self, limit: int, schedule: Schedule
    ) -> list[tuple[Delivery, Ready]]:
        """A claim; none while another writer holds the database, if sends
        of this call are under way or waiting to be recorded.

        Raising then would drop their outcomes: the receivers got them, but
        no attempt would be logged and the leases would send them again.
        The loop records them (waiting out the lock, see _record_sent) and
        claims again later. With nothing of its own in hand, the call
        raises, as before: nothing is lost.
        """
        try:
            return self._claim(limit, frozenset(schedule.lanes))
        except (StorageBusy, StorageUnavailable) as exc:
            if not schedule.lanes:
                raise
            log.warning(
                "dispatcher %s: no new claim until the database takes writes "
                "again (%s)",
                self.owner,
                exc.message,
            )
            return []

    def _claim(
        self, limit: int, sending: frozenset[str]
    ) -> list[tuple[Delivery, Ready]]:
        now = self.clock()
        with self.storage.unit_of_work() as uow:
            deliveries = uow.deliveries.claim(
                now, self.owner, now + self.lease, limit, skip=sending
            )
            webhooks = _webhooks_of(uow, deliveries)
            uow.commit()

        ready = {w.webhook_id: self._prepare(w) for w in webhooks.values()}
        return [(d, ready[d.webhook_id]) for d in deliveries]

    def _prepare(self, webhook: Webhook) -> Ready:
        """Open the webhook's secret and check its endpoint, once per batch."""
        refusal = None
        try:
            # The policy may have narrowed since the webhook was stored.
            check_endpoint(webhook.endpoint_url, self.policy)
        except UnsafeUrl as exc:
            refusal = f"refused: {exc.reason}"

        context = secret_context(webhook.orgcode, webhook.webhook_id)
        try:
            secret = self.secrets.open(webhook.sealed_secret, context)
        except StorageUnavailable as exc:
            # The key file could not be read for want of descriptors (say):
            # this machine's shortage, not the webhook's, so no attempt.
            return Ready(webhook, "", exc.message, local=True)
        except KeyringFailed as exc:
            # The host's key service is down: nothing left this machine, so
            # no attempt is spent (a lost key, below, never comes back).
            return Ready(webhook, "", str(exc), local=True)
        except SecretUnavailable as exc:
            log.error("webhook %s cannot sign: %s", webhook.webhook_id, exc)
            secret, refusal = "", "internal: the signing secret is unavailable"

        return Ready(webhook, secret, refusal)

    def _work(self, schedule: Schedule, stop: Stopping) -> None:
        """A worker's loop: the sends the schedule gives it, one at a time."""
        while (taken := schedule.take()) is not None:
            lane, index = taken
            began = time.monotonic()
            outcome = None
            try:
                delivery, ready = lane.claimed[index]
                outcome = self._send_in_lane(lane, delivery, ready, stop)
                lane.outcomes[index] = outcome
            finally:
                took = None if outcome is None else time.monotonic() - began
                schedule.finish(lane, took)

    def _send_in_lane(
        self,
        lane: Lane,
        delivery: Delivery,
        ready: Ready,
        stop: Stopping,
    ) -> Sent | None:
        """One send, or None when skipped: the endpoint left another request
        of the lane unanswered (without that, one dead endpoint's share held
        every worker for a timeout per delivery) or answered 410 Gone (the
        rest would only be failed for good, where the disabled webhook now
        holds them), or the webhook was paused or disabled since the claim,
        or ``stop`` is set."""
        if lane.unanswered or lane.gone or lane.short_here or stop.is_set():
            return None
        if lane.stopped or not self._still_active(lane, ready.webhook):
            lane.stopped = True
            return None
        if self._lease_ends_first(delivery):
            return None
        sent = self._send(delivery, ready, "dispatch")
        if sent is None:
            lane.short_here = True
            return None
        if self.retry.unanswered_hold > 0 and _unanswered(sent.attempt):
            lane.unanswered = True
        if sent.attempt.verdict == "gone":
            lane.gone = True

        return sent

    def _still_active(self, lane: Lane, webhook: Webhook) -> bool:
        """Whether the webhook is still active, read again once a lane has
        sent for ``STATUS_RECHECK_SECONDS`` since it last looked: an
        operator's pause or disable then holds the sends of a claim not yet
        started (a claim of 64 sends to a slow endpoint lasts minutes)."""
        now = time.monotonic()
        if now - lane.status_read_at < STATUS_RECHECK_SECONDS:
            return True

        lane.status_read_at = now
        try:
            with self.storage.unit_of_work(write=False) as uow:
                current = uow.webhooks.get(webhook.orgcode, webhook.webhook_id)
        except IpmError:
            return True  # not known just now: the claim stands, as it was made
        return current is not None and current.status == "active"

    def _lease_ends_first(self, delivery: Delivery) -> bool:
        """Whether the lease could run out before a send started now ends.

        Another dispatcher may claim the delivery once it has: such a send
        is not started (the delivery is released untried), so no delivery
        goes out twice because it waited too long for a worker.
        """
        if delivery.lease_until is None:
            return False
        ends = self.clock() + timedelta(seconds=self.timeout + 1)
        if ends < delivery.lease_until:
            return False

        log.warning(
            "delivery %s waited too long for a worker: released untried",
            delivery.delivery_id,
        )
        return True

    def _send(self, delivery: Delivery, ready: Ready, kind: AttemptKind) -> Sent | None:
        """The send and its attempt; None when the request never left this
        machine for want of something here (a dispatch only: it is released
        untried, after a pause so the shortage is not hammered)."""
        started = self.clock()
        result = self._exchange(delivery, ready, started)
        if result.local and kind == "dispatch":
            held = self._short_here.due()
            if held is not None:
                log.warning(
                    "delivery %s not sent, for want of something on this "
                    "machine (%s): released untried, no more claims in this "
                    "call%s",
                    delivery.delivery_id,
                    result.error,
                    held_back(held),
                )
            time.sleep(_SHORT_HERE_PAUSE)
            return None
        retry_after = None
        if result.status in (429, 503):
            retry_after = parse_retry_after(result.headers.get("retry-after"), started)

        attempt = delivery.attempt(
            delivery.attempts + 1,
            kind,
            started,
            duration_ms=result.duration_ms,
            status=result.status,
            error=result.error,
            response=result.body_excerpt,
        )
        return Sent(delivery, attempt, retry_after)

    def _exchange(
        self, delivery: Delivery, ready: Ready, now: datetime
    ) -> TransportResult:
        if ready.refusal is not None:
            return TransportResult.failed(ready.refusal, 0, local=ready.local)
        try:
            transport = self.transport
        except Exception as exc:
            # The host's set-up, not the endpoint: nothing left this
            # machine, so no attempt is spent (see _send).
            # Named by its type only, as a failing send is (see below),
            # unless ipm wrote the message itself.
            said = str(exc) if isinstance(exc, _NoSend) else type_name(exc)
            if self._broken_transport.due() is not None:
                log.error("the webhook transport could not be built: %s", said)
                log.debug("%s", "".join(traceback.format_tb(exc.__traceback__)))
            reason = f"the webhook transport could not be built ({said})"
            return TransportResult.failed(reason, 0, local=True)

        try:
            headers = signing.sign_headers(
                ready.secret, delivery.delivery_id, now, delivery.body
            )
            headers["content-type"] = "application/json"
            url = ready.webhook.endpoint_url
            request = OutboundRequest(url, headers, delivery.body, self.timeout)
            result = transport.send(request)
        except Exception as exc:
            # A broken transport must not take the batch's other outcomes
            # down. Its message may hold the URL's query or a header (a
            # host's transport says what it likes): the log names the type,
            # and at debug level the frames, never the message.
            log.error(
                "sending delivery %s failed: the transport raised %s",
                delivery.delivery_id,
                type_name(exc),
            )
            log.debug("%s", "".join(traceback.format_tb(exc.__traceback__)))
            return TransportResult.failed("internal: the transport failed", 0)
        if not isinstance(result, TransportResult):
            log.error(
                "the transport answered delivery %s with %s, not a TransportResult",
                delivery.delivery_id,
                type_name(result),
            )
            return TransportResult.failed("internal: the transport failed", 0)

        return result

    def _record_sent(self, batch: Batch, stop: Stopping) -> DeliveryReport:
        """:meth:`_record`, waiting out a database that cannot take it yet.

        The requests went out already: giving up here would let the leases
        expire and send the whole batch again. So a busy database (a writer
        holding the lock past the busy timeout) or an unavailable one (a
        full disk, a file size limit) is tried again, with a growing pause,
        for up to one lease more, or :data:`_STOP_RECORD_GRACE` once
        ``stop`` is set (a stopping process must end in a supervisor's
        grace period); only then is the error raised (and the batch is
        sent again later: at least once, never lost).
        """
        give_up = time.monotonic() + self.lease.total_seconds()
        pause = _FIRST_BUSY_PAUSE
        while True:
            try:
                return self._record(batch)
            except (StorageBusy, StorageUnavailable) as exc:
                if stop.is_set():
                    give_up = min(give_up, time.monotonic() + _STOP_RECORD_GRACE)
                if time.monotonic() + pause >= give_up:
                    log.error(
                        "dispatcher %s: %d deliveries were sent but could not "
                        "be recorded (%s); they go out again once their "
                        "leases end",
                        self.owner,
                        len(batch.sent),
                        exc.message,
                    )
                    raise
                held = self._record_waits.due()
                if held is not None:
                    log.warning(
                        "dispatcher %s: %d sent deliveries wait to be recorded "
                        "(%s); trying again%s",
                        self.owner,
                        len(batch.sent),
                        exc.message,
                        held_back(held),
                    )
                if stop.is_set():
                    time.sleep(pause)  # the grace above bounds the tries
                else:
                    stop.wait(pause)  # a stop meanwhile sets that bound
                pause = min(pause * 2, _LAST_BUSY_PAUSE)

    def _record(self, batch: Batch) -> DeliveryReport:
        counts = {"delivered": 0, "retry": 0, "failed": 0, "gone": 0}
        disabled: list[str] = []
        # When each held webhook's unanswered delivery is tried again, and
        # which webhooks answered 2xx in this batch (they are not held).
        next_try: dict[str, datetime] = {}
        answered: set[str] = set()
        # The webhooks with a request unanswered whose delivery is still
        # this dispatcher's: a stalled one's late news holds nothing.
        unanswered: set[str] = set()
        with self.storage.unit_of_work() as uow:
            now = self.clock()
            for item in batch.sent:
                attempt, tries = logged(uow, item.attempt)
                current = uow.deliveries.get(item.delivery.delivery_id)
                if current is None or current.lease_owner != self.owner:
                    log.warning("lost the lease on %s", item.delivery.delivery_id)
                    if current is not None:
                        count_only(uow, current, attempt)
                    continue
                if item.delivery.webhook_id in batch.unanswered and _unanswered(
                    attempt
                ):
                    unanswered.add(item.delivery.webhook_id)

                updated, verdict = current.after_attempt(
                    attempt,
                    now,
                    self.retry,
                    retry_after=item.retry_after,
                    rand=self.rand(),
                    tries=tries,
                )
                uow.deliveries.save(updated)
                counts[verdict] += 1
                if verdict == "delivered":
                    answered.add(updated.webhook_id)
                if verdict == "retry" and updated.webhook_id in unanswered:
                    due, webhook_id = updated.next_attempt_at, updated.webhook_id
                    next_try[webhook_id] = min(next_try.get(webhook_id, due), due)
                if verdict != "delivered":
                    # Why, for the operator watching `ipm deliver`: the status
                    # or the transport's reason, never the body or the URL.
                    # A refusal by the network policy is a setting to fix,
                    # not a receiver having a bad minute: say it louder.
                    refused = (attempt.error or "").startswith("refused:")
                    log.log(
                        logging.WARNING if refused else logging.INFO,
                        "delivery %s (webhook %s), attempt %d: %s -> %s",
                        attempt.delivery_id,
                        updated.webhook_id,
                        attempt.number,
                        attempt.error or f"HTTP {attempt.status}",
                        verdict,
                    )
                if self._update_health(uow, updated, attempt, verdict, now):
                    disabled.append(updated.webhook_id)
            held, released = self._release_skipped(
                uow, batch, now, next_try, unanswered - answered
            )
            uow.commit()

        return DeliveryReport(
            attempted=len(batch.sent),
            delivered=counts["delivered"],
            retrying=counts["retry"],
            failed=counts["failed"] + counts["gone"],
            disabled=tuple(disabled),
            held=held,
            released=released,
        )

    def _release_skipped(
        self,
        uow: UnitOfWork,
        batch: Batch,
        now: datetime,
        next_try: dict[str, datetime],
        holding: set[str],
    ) -> tuple[int, int]:
        """Release the deliveries the batch did not send (untried, still due),
        and hold each webhook of ``holding`` (its endpoint did not answer a
        delivery this dispatcher still leased, and no other send to it
        answered 2xx): the queue then
        claims none of its deliveries, those queued meanwhile included. The
        hold lasts ``unanswered_hold``, or less when the unanswered delivery
        is due again sooner (the retry schedule's first steps stay as they
        are: that try ends the hold). The numbers of skipped deliveries of
        held webhooks, and of the others released (a 410, a stop, a lease
        that would end first) but not those this machine could not send
        (counted where they were left)."""
        longest = now + timedelta(seconds=self.retry.unanswered_hold)
        held = released = 0
        orgs = {s.delivery.webhook_id: s.delivery.orgcode for s in batch.sent}
        for delivery in batch.skipped:
            orgs[delivery.webhook_id] = delivery.orgcode
            current = uow.deliveries.get(delivery.delivery_id)
            if current is None or current.lease_owner != self.owner:
                continue
            unleased = attrs.evolve(current, lease_owner=None, lease_until=None)
            uow.deliveries.save(unleased)
            webhook_id = current.webhook_id
            if webhook_id in holding:
                held += 1
            elif webhook_id not in batch.short_here:
                released += 1
        for webhook_id in sorted(holding):
            webhook = uow.webhooks.get(orgs[webhook_id], webhook_id)
            if webhook is None or webhook.status != "active":
                continue
            until = min(longest, next_try.get(webhook_id, longest))
            uow.webhooks.save(attrs.evolve(webhook, held_until=until))
            log.info(
                "webhook %s did not answer: its deliveries wait until %s",
                webhook_id,
                format_utc(until),
            )

        return held, released

    def _update_health(
        self,
        uow: UnitOfWork,
        delivery: Delivery,
        attempt: DeliveryAttempt,
        verdict: Verdict,
        now: datetime,
    ) -> bool:
        """Keep the webhook's failure clock; True if it was disabled now."""
        webhook = uow.webhooks.get(delivery.orgcode, delivery.webhook_id)
        if webhook is None or webhook.status == "disabled":
            return False

        if verdict == "gone":
            detail = "the endpoint answered 410 Gone"
            return self._disable(uow, webhook, "gone_410", detail, now)
        if verdict == "delivered":
            healthy = webhook.after_success()
            if healthy is not webhook:
                uow.webhooks.save(healthy)
            return False

        failing = webhook.after_failure(now)
        if failing.failing_too_long(now, self.retry.disable_after):
            assert failing.failing_since is not None
            detail = (
                f"no 2xx answer since {format_utc(failing.failing_since)} "
                f"(last: {attempt.status or attempt.error})"
            )
            return self._disable(uow, failing, "sustained_failure", detail, now)
        if failing is not webhook:
            uow.webhooks.save(failing)

        return False

    def _disable(
        self,
        uow: UnitOfWork,
        webhook: Webhook,
        reason: DisableReason,
        detail: str,
        now: datetime,
    ) -> bool:
        disabled = webhook.disable(reason, now)
        uow.webhooks.save(disabled)
        self.recorder.record_own(
            uow,
            webhook.orgcode,
            "webhook.disabled",
            {
                "webhook_id": webhook.webhook_id,
                "reason": reason,
                "from": webhook.status,
                "detail": detail[:1024],
                "revision": disabled.revision,
            },
            logical_guid=webhook.webhook_id,
            audit=attrs.evolve(_SYSTEM, reason=reason),
        )
        log.warning("webhook %s disabled: %s", webhook.webhook_id, reason)

        return True


_UNANSWERED = ("timeout ", "connection ")
"""How the transport's errors begin when a request got no answer at all. A
refusal by ipm's own guard, a missing key, DNS, TLS or a malformed answer
fail at once and cost no timeout: they hold nothing."""


class _NoSend(TypeError):
    """A transport factory made something without ``send``: ipm's own
    message, which names the type made and nothing of the host's."""


STATUS_RECHECK_SECONDS = 0.25
"""How often a lane reads its webhook's status again while it sends."""


def _unanswered(attempt: DeliveryAttempt) -> bool:
    return attempt.status is None and (attempt.error or "").startswith(_UNANSWERED)


def check_dispatcher_settings(
    *,
    batch_size: int = 64,
    workers: int = 8,
    timeout: float = 10.0,
    replay_budget: float = 60.0,
) -> None:
    """Refuse settings a dispatcher cannot run with, before it is built."""
    check_whole("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    check_whole("workers", workers, 1, MAX_WORKERS)
    check_seconds("timeout", timeout, most=MAX_TIMEOUT)
    check_seconds("replay_budget", replay_budget, zero=True, infinite=True)


def _webhooks_of(uow: UnitOfWork, deliveries: list[Delivery]) -> dict[str, Webhook]:
    webhooks: dict[str, Webhook] = {}
    for delivery in deliveries:
        if delivery.webhook_id not in webhooks:
            webhook = uow.webhooks.get(delivery.orgcode, delivery.webhook_id)
            assert webhook is not None, "a delivery outlived its webhook"
            webhooks[delivery.webhook_id] = webhook

    return webhooks


_SHORT_HERE_PAUSE = 0.5
"""Seconds a worker waits after a send this machine could not make."""

_CLOSE_GRACE = 5.0
"""Seconds close() waits, past a send's timeout, for calls to record."""

_STOP_RECORD_GRACE = 30.0
"""Seconds a stopping call still tries to record what it sent while the
database cannot take it (a busy timeout's worth)."""

# Pauses between tries to record a sent batch while the database is busy.
_FIRST_BUSY_PAUSE = 0.05
_LAST_BUSY_PAUSE = 2.0
