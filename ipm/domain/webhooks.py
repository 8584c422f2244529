"""Webhooks: subscriptions, their deliveries and the attempts to send them.

Theory of operation. A :class:`Webhook` says which events an org wants
(its filters) and where they go. When an event that matches a webhook is
recorded, a :class:`Delivery` is queued in the same transaction; its body
bytes and its id (the ``webhook-id`` header) are fixed at that moment and
never change, so every retry and every replay sends the same message and
receivers can dedupe on the id. Each try is a :class:`DeliveryAttempt`;
:meth:`Delivery.after_attempt` decides, from the answer and the
:class:`~ipm.domain.retry.RetryPolicy`, whether the delivery is done,
waits for another try, or has failed for good.

A webhook's status follows the ``webhook`` lifecycle: ``paused`` holds its
deliveries (they stay queued), ``active`` releases them, ``disabled``
holds them too and queues nothing new. Delivery health lives on the
webhook as ``failing_since`` (the first failure since the last success),
so "no success for N days" is one comparison.

Secrets never enter this module in clear: a webhook carries its secret
sealed (encrypted) and only its last four characters readable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar, cast

import attrs

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.events import NAME_PATTERN, Event
from ipm.domain.jsoncodec import dumps
from ipm.domain.lifecycle import WEBHOOK
from ipm.domain.netguard import NetworkPolicy, ParsedUrl, UnsafeUrl, check_url
from ipm.domain.retry import RetryPolicy
from ipm.domain.revision import FIRST, next_revision
from ipm.domain.timeutil import check_bound, format_utc

STATUSES = ("active", "paused", "disabled")
SIGNING_ALGORITHMS = ("hmac-sha256", "ed25519")
ORDERING_KEYS = ("logical_guid", "channel_code", "service", "action", "orgcode")
DELIVERY_STATUSES = ("pending", "delivered", "failed")
MAX_FILTERS = 32
MAX_DESCRIPTION = 256
MAX_ERROR = 1024
MAX_EXCERPT = 1024

DisableReason = Literal["gone_410", "sustained_failure", "manual"]
AttemptKind = Literal["dispatch", "replay"]
Verdict = Literal["delivered", "retry", "failed", "gone"]


# -- filters ------------------------------------------------------------------


@attrs.frozen
class SubscriptionFilter:
    """Events of one service, optionally one action or an action prefix."""

    service: str
    action: str | None = None
    action_prefix: str | None = None

    def matches(self, event: Event) -> bool:
        return self.names(event.new.service, event.new.action)

    def names(self, service: str, action: str) -> bool:
        """Whether an event of ``service`` and ``action`` matches."""
        if service != self.service:
            return False
        if self.action is not None:
            return action == self.action
        if self.action_prefix is not None:
            return action.startswith(self.action_prefix)

        return True

    def to_wire(self) -> dict[str, str]:
        wire = {"service": self.service}
        if self.action is not None:
            wire["action"] = self.action
        if self.action_prefix is not None:
            wire["action_prefix"] = self.action_prefix

        return wire


def check_filters(
    filters: Sequence[SubscriptionFilter],
) -> tuple[SubscriptionFilter, ...]:
    """The filters, if each could match a real event; else every problem."""
    problems: list[Problem] = []
    if not filters:
        problems.append(Problem("/event_filters", "at least one filter is needed"))
    if len(filters) > MAX_FILTERS:
        problems.append(Problem("/event_filters", f"at most {MAX_FILTERS} filters"))

    for index, rule in enumerate(filters):
        pointer = f"/event_filters/{index}"
        if isinstance(rule, SubscriptionFilter):
            problems += _filter_problems(rule, pointer)
        else:
            # A host passing the wire's dict: say what goes there instead.
            problems.append(Problem(pointer, "must be a SubscriptionFilter"))
    if problems:
        raise InvalidRequest("event_filters are invalid", problems)

    return tuple(filters)


def _filter_problems(rule: SubscriptionFilter, pointer: str) -> list[Problem]:
    # The same pattern events are held to: a filter outside it never matches.
    problems = [
        Problem(f"{pointer}/{name}", f"must match {NAME_PATTERN.pattern}")
        for name in ("service", "action")
        if (value := getattr(rule, name)) is not None and not _is_name(value)
    ]
    prefix = rule.action_prefix
    if prefix is not None and not _is_name(prefix):
        problems.append(
            Problem(f"{pointer}/action_prefix", "must be the start of an action name")
        )
    if rule.action is not None and prefix is not None:
        problems.append(Problem(pointer, "give action or action_prefix, not both"))

    return problems


def _is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


# -- endpoints ----------------------------------------------------------------


def check_endpoint(url: str, policy: NetworkPolicy) -> ParsedUrl:
    """Check an endpoint URL against the SSRF guard and the https rule.

    https is required, except that plain http may reach an address the
    policy allows explicitly, when the URL names it literally (or as
    ``localhost``): a name could resolve to a public address later, and
    plain http must never leave the allowed networks. A policy with
    ``require_https=False`` accepts http everywhere the guard does.
    """
    parsed = check_url(url, attrs.evolve(policy, require_https=False))
    if parsed.scheme == "https" or not policy.require_https:
        return parsed

    if not _names_allowed_address(parsed, policy):
        raise UnsafeUrl(
            "the scheme must be https; http is accepted only for an IP address "
            "in an allowed network, or localhost when loopback is allowed"
        )

    return parsed


def _names_allowed_address(parsed: ParsedUrl, policy: NetworkPolicy) -> bool:
    if parsed.address is not None:
        return policy.allows(parsed.address)

    # check_url let a localhost name through, so loopback is allowed.
    return parsed.host == "localhost" or parsed.host.endswith(".localhost")


# -- subscriptions ------------------------------------------------------------


@attrs.frozen
class Webhook:
    """A subscription: which events of an org go to which endpoint."""

    webhook_id: str
    orgcode: str
    endpoint_url: str
    event_filters: tuple[SubscriptionFilter, ...]
    signing_algorithm: str
    sealed_secret: bytes = attrs.field(repr=False)
    secret_last4: str
    created_at: datetime
    updated_at: datetime
    status: str = "active"
    ordering_key: str | None = None
    description: str | None = None
    disabled_reason: str | None = None
    revision: str = FIRST
    failing_since: datetime | None = None
    held_until: datetime | None = None
    """Until then its deliveries are not sent: a request to its endpoint got
    no answer (see ``RetryPolicy.unanswered_hold``). Not on the wire."""

    @property
    def queues(self) -> bool:
        """Whether new events are queued for it (paused ones are, and held)."""
        return self.status != "disabled"

    def matches(self, event: Event) -> bool:
        return (
            self.queues
            and event.orgcode == self.orgcode
            and any(rule.matches(event) for rule in self.event_filters)
        )

    def ordering_value(self, event: Event) -> str | None:
        """The key whose deliveries go out one at a time, or ``None``."""
        if self.ordering_key is None:
            return None
        if self.ordering_key == "orgcode":
            return event.orgcode

        value = getattr(event.new, self.ordering_key)
        return None if value is None else str(value)

    def move_to(self, target: str, now: datetime) -> Webhook:
        """The webhook in ``target`` status; an illegal move raises."""
        WEBHOOK.check(self.status, target)
        if target == "disabled":
            return self._changed(now, status=target, disabled_reason="manual")

        # Re-activating starts the failure clock afresh.
        return self._changed(
            now,
            status=target,
            disabled_reason=None,
            failing_since=None,
            held_until=None,
        )

    def disable(self, reason: DisableReason, now: datetime) -> Webhook:
        WEBHOOK.check(self.status, "disabled")

        return self._changed(now, status="disabled", disabled_reason=reason)

    def after_success(self) -> Webhook:
        """The endpoint answered 2xx: no failure clock, no hold."""
        if self.failing_since is None and self.held_until is None:
            return self

        return attrs.evolve(self, failing_since=None, held_until=None)

    def after_failure(self, now: datetime) -> Webhook:
        return self if self.failing_since else attrs.evolve(self, failing_since=now)

    def failing_too_long(self, now: datetime, limit: timedelta) -> bool:
        return (
            self.status == "active"
            and self.failing_since is not None
            and now - self.failing_since >= limit
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "orgcode": self.orgcode,
            "endpoint_url": self.endpoint_url,
            "status": self.status,
            "event_filters": [rule.to_wire() for rule in self.event_filters],
            "signing_algorithm": self.signing_algorithm,
            "secret_last4": self.secret_last4,
            "ordering_key": self.ordering_key,
            "description": self.description,
            "disabled_reason": self.disabled_reason,
            "created_at": format_utc(self.created_at),
            "updated_at": format_utc(self.updated_at),
            "revision": self.revision,
        }

    def _changed(self, now: datetime, **changes: Any) -> Webhook:
        return attrs.evolve(
            self, updated_at=now, revision=next_revision(self.revision), **changes
        )


def check_options(signing_algorithm: str, ordering_key: str | None) -> None:
    problems = []
    if signing_algorithm not in SIGNING_ALGORITHMS:
        problems.append(
            Problem("/signing_algorithm", f"one of {', '.join(SIGNING_ALGORITHMS)}")
        )
    if ordering_key is not None and ordering_key not in ORDERING_KEYS:
        problems.append(
            Problem("/ordering_key", f"null or one of {', '.join(ORDERING_KEYS)}")
        )
    if problems:
        raise InvalidRequest("webhook options are invalid", problems)


_KNOWN_NAMES = 4096
"""The most event names whose webhooks :class:`Routes` remembers."""


class Routes:
    """Which of an org's queuing webhooks an event's name reaches, in a few
    dict lookups whatever the number of webhooks and filters.

    Checking every filter of every webhook for every event costs webhooks x
    filters per event, all of it inside the write transaction that records
    the event; an import slice of 10,000 lines into an org with a thousand
    webhooks held the lock for half a minute. Filters are indexed by what
    they name instead: an exact action, a whole service, or an action
    prefix, found among the prefixes of the event's action (only at the
    lengths some filter has). Answers keep the order the webhooks came in.
    """

    def __init__(self, webhooks: Sequence[Webhook]) -> None:
        self.webhooks = tuple(webhooks)
        self._exact: dict[tuple[str, str], set[int]] = {}
        self._prefix: dict[tuple[str, str], set[int]] = {}
        self._lengths: dict[str, set[int]] = {}
        for position, webhook in enumerate(self.webhooks):
            if not webhook.queues:
                continue
            for rule in webhook.event_filters:
                self._add(position, rule)
        self._found: dict[tuple[str, str], tuple[Webhook, ...]] = {}

    def _add(self, position: int, rule: SubscriptionFilter) -> None:
        service = rule.service
        if rule.action is not None:
            self._exact.setdefault((service, rule.action), set()).add(position)
            return
        prefix = rule.action_prefix or ""
        self._prefix.setdefault((service, prefix), set()).add(position)
        self._lengths.setdefault(service, set()).add(len(prefix))

    def naming(self, service: str, action: str) -> tuple[Webhook, ...]:
        """The webhooks with a filter that matches ``service`` and ``action``."""
        key = (service, action)
        found = self._found.get(key)
        if found is None:
            hits = set(self._exact.get(key, ()))
            for length in self._lengths.get(service, ()):
                if length <= len(action):
                    hits.update(self._prefix.get((service, action[:length]), ()))
            found = tuple(self.webhooks[i] for i in sorted(hits))
            if len(self._found) >= _KNOWN_NAMES:
                self._found.clear()  # a host minting names: stay bounded
            self._found[key] = found

        return found

    def reached_by(self, event: Event) -> tuple[Webhook, ...]:
        """The webhooks ``event`` queues a delivery for."""
        found = self.naming(event.new.service, event.new.action)
        return tuple(w for w in found if w.orgcode == event.orgcode)


# -- deliveries ---------------------------------------------------------------


def delivery_body(event: Event) -> bytes:
    """The bytes a delivery sends, frozen when it is queued.

    The Standard Webhooks envelope: ``type`` (service and action),
    ``timestamp`` (when ipm recorded the event) and ``data`` (the event as
    ``/cdc/list`` shows it, so a receiver can reconcile against the feed).
    """
    return dumps(
        {
            "type": f"{event.new.service}.{event.new.action}",
            "timestamp": format_utc(event.recorded_at),
            "data": event.to_wire(),
        }
    )


@attrs.frozen
class DeliveryAttempt:
    """One try at sending a delivery, as it is recorded."""

    delivery_id: str
    number: int
    kind: AttemptKind
    started_at: datetime
    duration_ms: float
    status: int | None
    error: str | None
    response_excerpt: bytes = attrs.field(default=b"", repr=False)

    @property
    def verdict(self) -> Literal["success", "gone", "failure"]:
        """2xx succeeds; 410 says the endpoint is gone; all else failed."""
        if self.status is not None and 200 <= self.status < 300:
            return "success"
        if self.status == 410:
            return "gone"

        return "failure"


@attrs.frozen
class Delivery:
    """One event on its way to one webhook: frozen id and body, live state."""

    delivery_id: str
    webhook_id: str
    orgcode: str
    event_sequence: int
    event_id: str
    body: bytes = attrs.field(repr=False)
    created_at: datetime
    next_attempt_at: datetime
    ordering_value: str | None = None
    status: str = "pending"
    attempts: int = 0
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    seq: int = 0
    """Queue position, assigned by storage; orders a key's deliveries."""
    lease_owner: str | None = None
    lease_until: datetime | None = None

    @classmethod
    def queue(cls, delivery_id: str, webhook: Webhook, event: Event) -> Delivery:
        return cls(
            delivery_id=delivery_id,
            webhook_id=webhook.webhook_id,
            orgcode=event.orgcode,
            event_sequence=event.sequence,
            event_id=event.new.event_id,
            body=delivery_body(event),
            created_at=event.recorded_at,
            next_attempt_at=event.recorded_at,
            ordering_value=webhook.ordering_value(event),
        )

    @property
    def final(self) -> bool:
        return self.status != "pending"

    def attempt(
        self,
        number: int,
        kind: AttemptKind,
        started_at: datetime,
        *,
        duration_ms: float,
        status: int | None,
        error: str | None,
        response: bytes = b"",
    ) -> DeliveryAttempt:
        return DeliveryAttempt(
            delivery_id=self.delivery_id,
            number=number,
            kind=kind,
            started_at=started_at,
            duration_ms=duration_ms,
            status=status,
            error=None if error is None else error[:MAX_ERROR],
            response_excerpt=response[:MAX_EXCERPT],
        )

    def after_attempt(
        self,
        attempt: DeliveryAttempt,
        now: datetime,
        policy: RetryPolicy,
        *,
        retry_after: float | None = None,
        rand: float = 0.5,
        tries: int | None = None,
    ) -> tuple[Delivery, Verdict]:
        """This delivery once ``attempt`` is known, and what it came to.

        ``tries`` counts the dispatcher's own tries, this one included (by
        default every attempt): replays, made by hand, leave the automatic
        schedule as it was and spend none of its attempts.
        """
        tried = self._counted(attempt)
        if attempt.verdict == "success":
            return attrs.evolve(tried, status="delivered"), "delivered"
        if attempt.verdict == "gone":
            return attrs.evolve(tried, status="failed"), "gone"

        counted = tried.attempts if tries is None else tries
        delay = policy.next_delay(counted, retry_after, rand)
        if delay is None:
            return attrs.evolve(tried, status="failed"), "failed"

        later = now + timedelta(seconds=delay)
        return attrs.evolve(tried, next_attempt_at=later), "retry"

    def after_replay(self, attempt: DeliveryAttempt) -> Delivery:
        """This delivery once a replay's ``attempt`` is known.

        A success settles it. A failure is counted and recorded but moves
        nothing: a pending delivery keeps its schedule, a final one stays.
        """
        tried = self._counted(attempt)
        if attempt.verdict != "success":
            return tried

        return attrs.evolve(tried, status="delivered")

    def _counted(self, attempt: DeliveryAttempt) -> Delivery:
        return attrs.evolve(
            self,
            # The attempt's number is its place in the delivery's log, which
            # may hold a replay's try that this copy has not seen.
            attempts=max(self.attempts + 1, attempt.number),
            last_attempt_at=attempt.started_at,
            last_status=attempt.status,
            last_error=attempt.error,
            lease_owner=None,
            lease_until=None,
        )


@attrs.frozen
class ReplayOutcome:
    """What a replay did: ``delivered + failed == considered``, always."""

    webhook_id: str
    considered: int
    delivered: int
    failed: int

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def counts(self) -> dict[str, int]:
        return {
            "considered": self.considered,
            "delivered": self.delivered,
            "failed": self.failed,
        }


def replay_window(
    since: datetime | str | None, until: datetime | str | None
) -> tuple[datetime | None, datetime | None]:
    """A replay's ``[since, until)`` in UTC, or an InvalidRequest saying why not.

    An inverted window is refused as ``/kpi/query`` refuses one (a 400,
    not zero events). A naive datetime is refused rather than guessed at.
    """
    since_at = _instant(since, "/since")
    until_at = _instant(until, "/until", end=True)
    if since_at is not None and until_at is not None and since_at > until_at:
        raise InvalidRequest(
            "until must not be before since",
            [Problem("/until", "until must not be before since")],
        )

    return since_at, until_at


def _instant(moment: object, pointer: str, *, end: bool = False) -> datetime | None:
    return None if moment is None else check_bound(moment, pointer, end=end)


# -- sharing a batch ------------------------------------------------------------

T = TypeVar("T")
_GAP = object()


def fair_share(batch: int, webhooks: int) -> int:
    """Each ready webhook's share of a batch: the whole batch when it is
    alone, an equal part (at least one) when several wait."""
    return max(1, -(-batch // max(1, webhooks)))


def in_turns(queues: Iterable[Sequence[T]]) -> list[T]:
    """The queues' items taking turns: every queue's first, then every
    second, and so on, each queue in its own order."""
    turns = itertools.zip_longest(*queues, fillvalue=_GAP)

    return [cast(T, item) for turn in turns for item in turn if item is not _GAP]


SEAL_VERSION = 1
"""The first byte of a sealed secret: then the key id's length in one byte,
the key id, and what the sealing made of the secret."""


def sealing_key_id(sealed: bytes) -> str | None:
    """The id of the key that sealed ``sealed``; None for another format."""
    if len(sealed) < 2 or sealed[0] != SEAL_VERSION:
        return None

    return sealed[2 : 2 + sealed[1]].decode("ascii", "replace")


def is_key_id(value: object) -> bool:
    """Whether ``value`` may name a key: 1-255 printable ASCII characters, as
    a sealed secret stores it (its length in one byte)."""
    return (
        isinstance(value, str)
        and 0 < len(value) < 256
        and value.isascii()
        and value.isprintable()
    )
