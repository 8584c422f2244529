"""How one dispatcher call sends: its lanes, and which send a worker takes.

A claim is split into lanes, one per webhook (:class:`Lane`); a
:class:`Schedule` hands the lanes' sends to the call's workers, and the
ended lanes become one :class:`Batch` to record, whose counts add up to
the call's :class:`DeliveryReport`; :class:`Stopping` says when the call
is to stop. See
:meth:`ipm.usecases.delivery.Dispatcher.deliver_pending` and
docs/webhook-delivery.md (Lanes, Workers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs

from ipm.domain.tallies import summed
from ipm.domain.webhooks import Delivery, DeliveryAttempt, Webhook
from ipm.ports import UnitOfWork

RESERVE_FROM = 4
"""From this many workers on, the last free one is kept for a webhook with
nothing under way (with fewer, keeping one would cost a lone webhook too
large a share of them)."""

ASK_AGAIN = 0.25
"""While sends are under way and the last claim found nothing, the
dispatcher claims again after this many seconds: a delivery falling due
meanwhile waits this long at most, not for the slowest send under way."""


@attrs.frozen
class Ready:
    """A webhook as a batch sends to it: its secret open, its URL checked."""

    webhook: Webhook
    secret: str = attrs.field(repr=False)
    refusal: str | None
    # The refusal is this machine's shortage (the key file unreadable for
    # want of descriptors, the host's keyring down): the delivery is
    # released, no attempt spent, and a replay is refused before it starts.
    local: bool = False


@attrs.frozen
class Sent:
    delivery: Delivery
    attempt: DeliveryAttempt
    retry_after: float | None


@attrs.frozen
class Batch:
    """Sends once ended: what went out, and what was held back."""

    sent: list[Sent]
    skipped: list[Delivery] = attrs.Factory(list)
    unanswered: frozenset[str] = frozenset()
    short_here: frozenset[str] = frozenset()
    """Webhooks whose lane this machine could not serve: their skipped
    deliveries are counted as ``DeliveryReport.untried_here``."""

    @classmethod
    def of(cls, lanes: list[Lane]) -> Batch:
        """The ended lanes as one batch, recorded in one transaction."""
        sent, skipped, unanswered, short_here = [], [], set(), set()
        for lane in lanes:
            for (delivery, _), outcome in zip(lane.claimed, lane.outcomes, strict=True):
                if outcome is None:
                    skipped.append(delivery)
                else:
                    sent.append(outcome)
            if lane.unanswered:
                unanswered.add(lane.webhook_id)
            if lane.short_here:
                short_here.add(lane.webhook_id)

        return cls(sent, skipped, frozenset(unanswered), frozenset(short_here))


@attrs.define
class Lane:
    """One webhook's share of a claim, from its first send to its record.

    Its sends are recorded together once all have ended, and the webhook
    is not claimed again meanwhile.
    """

    webhook_id: str
    order: int
    # time.monotonic() when it last started a send, or came with its claim.
    served_at: float
    claimed: list[tuple[Delivery, Ready]] = attrs.Factory(list)
    outcomes: list[Sent | None] = attrs.Factory(list)
    started: int = 0
    finished: int = 0
    # The sends that really went out (not skipped) and the seconds they took.
    sent: int = 0
    spent: float = 0.0
    # Set once a request went unanswered: its sends not yet started are
    # skipped, and the webhook is held when the lane is recorded.
    unanswered: bool = False
    # Set once a send could not be made for want of something on this
    # machine (a local transport result): the lane's other sends are
    # skipped too, and the call claims no more.
    short_here: bool = False
    # Set once the endpoint answered 410: its sends not yet started are
    # skipped (released untried, then held by the disabled webhook).
    gone: bool = False
    # Set once the webhook was found paused or disabled (or deleted) since
    # the claim: its sends not yet started are skipped (released untried,
    # then held by the webhook as it now is). When it was last read.
    stopped: bool = False
    status_read_at: float = attrs.field(
        default=attrs.Factory(lambda self: self.served_at, takes_self=True)
    )


QUICK_SECONDS = 0.5
"""A webhook whose sends in a call took less than this on average is quick:
its lane may take the last free worker too, so a lone quick endpoint keeps
every worker (the kept worker is for lanes waiting behind slow sends)."""


class Schedule:
    """The lanes of one :meth:`Dispatcher.deliver_pending` call, and which
    send a free worker takes next.

    Up to ``workers`` worker loops take sends one after another. A worker
    takes the next send of the lane with the fewest sends under way (then
    the fewest started, then the oldest lane), so lanes take turns, each
    one's first send before any one's second. With :data:`RESERVE_FROM`
    workers or more, the last free worker is kept for a quick webhook, or a
    lane with nothing under way not known to be slow: slow endpoints, whose
    sends stay under way, never hold every worker, so another webhook's
    send starts at once instead of waiting for one of theirs to end. A
    lane passed over for ``overdue`` seconds
    with nothing under way goes first, oldest first: newer lanes cannot
    pass it for ever.
    """

    def __init__(self, workers: int, overdue: float) -> None:
        self.lanes: dict[str, Lane] = {}
        self.lane_ended = threading.Event()
        self._workers = workers
        self._overdue = overdue
        # The sends under way from which the last worker is kept.
        self._reserve_at = workers - 1 if workers >= RESERVE_FROM else workers
        self._opened = 0
        self._running = 0  # sends under way
        self._loops = 0  # worker loops taking sends
        self._closed = False
        self._lock = threading.Lock()
        # Seconds spent and sends made per webhook, by its ended lanes.
        self._paces: dict[str, tuple[float, int]] = {}
        # Wakes a worker waiting for a send it may take (see take()).
        self._changed = threading.Condition(self._lock)

    def open(self, claimed: list[tuple[Delivery, Ready]]) -> int:
        """Add the claimed sends; how many more worker loops to start."""
        with self._lock:
            for delivery, ready in claimed:
                lane = self.lanes.get(delivery.webhook_id)
                if lane is None:
                    lane = Lane(delivery.webhook_id, self._opened, time.monotonic())
                    self.lanes[delivery.webhook_id] = lane
                    self._opened += 1
                lane.claimed.append((delivery, ready))
                lane.outcomes.append(None)
            more = min(self._workers - self._loops, len(claimed))
            self._loops += more
            self._changed.notify_all()

            return more

    def close(self) -> None:
        """Start no further send: the call that owns the schedule has left."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()

    def waiting(self) -> int:
        """Claimed sends not started yet: a claim fills the batch's room
        left by these, not by sends under way (a slow endpoint's would
        otherwise keep every other webhook from being claimed)."""
        with self._lock:
            return sum(len(lane.claimed) - lane.started for lane in self.lanes.values())

    def take(self) -> tuple[Lane, int] | None:
        """The lane and index of the send a worker starts now; None ends the
        worker's loop (no send left to start, or the schedule closed). A
        worker that may take none of the sends left (the last free worker,
        kept) waits until a send ends or more are claimed."""
        with self._lock:
            while not self._closed:
                left = [
                    lane
                    for lane in self.lanes.values()
                    if lane.started < len(lane.claimed)
                ]
                if not left:
                    break
                if self._running >= self._reserve_at:
                    left = [lane for lane in left if self._may_take_the_last(lane)]
                if left:
                    lane = min(left, key=self._priority())
                    lane.started += 1
                    lane.served_at = time.monotonic()
                    self._running += 1
                    return lane, lane.started - 1
                self._changed.wait(ASK_AGAIN)
            self._loops -= 1

            return None

    def _may_take_the_last(self, lane: Lane) -> bool:
        """Whether the lane may start a send on the last free worker: its
        webhook's sends in this call were quick, or it has nothing under way
        and is not known to be slow (several slow webhooks would otherwise
        take turns on it between their sends)."""
        spent, sent = self._paces.get(lane.webhook_id, (0.0, 0))
        spent, sent = spent + lane.spent, sent + lane.sent
        if sent:
            return spent / sent < QUICK_SECONDS

        return lane.started == lane.finished

    def _priority(self) -> Callable[[Lane], tuple[int, int, int, int]]:
        since = time.monotonic() - self._overdue

        def priority(lane: Lane) -> tuple[int, int, int, int]:
            under_way = lane.started - lane.finished
            if not under_way and lane.served_at <= since:
                # Passed over for a timeout with nothing under way: first.
                return (0, 0, 0, lane.order)
            return (1, under_way, lane.started, lane.order)

        return priority

    def finish(self, lane: Lane, seconds: float | None) -> None:
        """A send of the lane ended after ``seconds``; None: it was skipped
        (it says nothing of how quick the endpoint is)."""
        with self._lock:
            lane.finished += 1
            if seconds is not None:
                lane.sent += 1
                lane.spent += seconds
            self._running -= 1
            if lane.finished == len(lane.claimed):
                self.lane_ended.set()
            self._changed.notify_all()

    def pop_ended(self) -> list[Lane]:
        """The lanes whose every send has ended, taken out of the schedule."""
        with self._lock:
            ended = [
                webhook_id
                for webhook_id, lane in self.lanes.items()
                if lane.finished == len(lane.claimed)
            ]
            for webhook_id in ended:
                # How quick the webhook was, for its next lane (see above).
                spent, sent = self._paces.get(webhook_id, (0.0, 0))
                lane = self.lanes[webhook_id]
                self._paces[webhook_id] = (spent + lane.spent, sent + lane.sent)

            return [self.lanes.pop(webhook_id) for webhook_id in ended]


@attrs.frozen
class DeliveryReport:
    """What one :meth:`~ipm.usecases.delivery.Dispatcher.deliver_pending` call did."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    disabled: tuple[str, ...] = ()
    held: int = 0
    """Deliveries of the batch left untried because their webhook was held:
    its endpoint did not answer another request."""
    untried_here: int = 0
    """Deliveries released untried, still due, because this machine could
    not send them (no descriptor or memory left, a transport it could not
    build); the call then claimed no more."""
    released: int = 0
    """Deliveries of the batch released untried, still due, for another
    reason: their endpoint answered 410 (the webhook is now disabled and
    keeps them), the call was stopping, or a delivery's lease would have
    ended before a worker was free for it."""

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return summed(self, other)


class Stopping:
    """Set once the caller's ``stop`` is set or the dispatcher is closing."""

    __slots__ = ("_events",)

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [event for event in events if event is not None]

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less once stopping (checked every 0.1 s)."""
        deadline = time.monotonic() + seconds
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


def count_only(uow: UnitOfWork, current: Delivery, attempt: DeliveryAttempt) -> None:
    """Count ``attempt`` (logged) of a delivery this sender does not hold:
    it is in the log, so it is in ``attempts``; nothing else changes (no
    status, schedule or lease)."""
    if current.attempts < attempt.number:
        uow.deliveries.save(attrs.evolve(current, attempts=attempt.number))


def logged(uow: UnitOfWork, attempt: DeliveryAttempt) -> tuple[DeliveryAttempt, int]:
    """Record ``attempt`` under the next number of its delivery's log.

    Numbered here, inside the write transaction, not when it was sent: a
    replay and a dispatcher may send the same delivery at once, and each
    attempt must keep a number of its own. Also returns how many of the
    log's attempts are the dispatcher's own (the retry schedule counts
    those, not replays).
    """
    logged, dispatched = uow.deliveries.attempt_counts(attempt.delivery_id)
    numbered = attrs.evolve(attempt, number=logged + 1)
    uow.deliveries.add_attempt(numbered)

    return numbered, dispatched + (attempt.kind == "dispatch")
