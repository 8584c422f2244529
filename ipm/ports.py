"""The ports: what ipm's use-cases need from the world, named by role.

Adapters live in :mod:`ipm.adapters`; the in-memory ones are also offered
to hosts through :mod:`ipm.testing`. A one-method port is a plain callable
alias; the rest are :class:`typing.Protocol` classes, so an adapter needs
no base class to fit.
"""

from __future__ import annotations

import builtins
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, Protocol, Self, runtime_checkable

import attrs

from ipm.domain.alerts import Alert, AlertNotification
from ipm.domain.events import Event, EventFilter, FeedScan, NewEvent, is_actor_name
from ipm.domain.jobs import Job, ReportLine
from ipm.domain.kpi import Kpi
from ipm.domain.kpi_grid import Bucket
from ipm.domain.webhooks import Delivery, DeliveryAttempt, Webhook

Clock = Callable[[], datetime]
"""The current time, tz-aware UTC."""

Ids = Callable[[str], str]
"""A new unique id with the given prefix (``"wh"`` → ``"wh_01J…"``)."""


def _org_set(orgs: Iterable[str]) -> frozenset[str]:
    # One string is a collection of its letters: "ACME01" would let the
    # caller act for "ACME", "CME0" and "1" too.
    # A mapping ({"ACME01": True, "BETA": False}) would grant its keys.
    scalar = isinstance(orgs, str | bytes | Mapping)
    try:
        codes = None if scalar else frozenset(orgs)
    except TypeError:  # not iterable (None), or holding lists
        codes = None
    if codes is None or not all(isinstance(code, str) for code in codes):
        raise TypeError(
            f"Principal.orgs must be a collection of org codes, not {orgs!r}"
        )

    return codes


def _a_bool(_instance: object, _attribute: object, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Principal.all_orgs must be True or False, not {value!r}")


def _an_actor(_instance: object, _attribute: object, value: Any) -> None:
    # As an API key's actor may be (and so an audit's): the host's slip,
    # not the client's write.
    if not is_actor_name(value):
        raise TypeError(
            "Principal.actor must be a string of 1-128 printable characters"
        )


@attrs.frozen
class Principal:
    """An authenticated caller: who it is and which orgs it may act for.

    ``orgs`` is any collection of org codes (kept as a frozenset); one
    string is refused with a TypeError, since it would be read letter by
    letter.
    """

    actor: str = attrs.field(validator=_an_actor)
    orgs: frozenset[str] = attrs.field(converter=_org_set)
    # A bool, strictly: "false" read from a host's configuration is true.
    all_orgs: bool = attrs.field(default=False, validator=_a_bool)

    def may_act_for(self, orgcode: str) -> bool:
        return self.all_orgs or orgcode in self.orgs


class Authenticator(Protocol):
    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller behind these request headers, or ``None`` if unknown."""


@attrs.frozen
class ApiKeyRecord:
    key_id: str
    secret_hash: str = attrs.field(repr=False)
    actor: str
    orgs: tuple[str, ...]
    created_at: datetime


class EventStore(Protocol):
    def append(self, orgcode: str, new: NewEvent, recorded_at: datetime) -> Event:
        """Store a new event with the next sequence; the caller checked the id."""

    def append_many(
        self, orgcode: str, news: Sequence[NewEvent], recorded_at: datetime
    ) -> builtins.list[Event]:
        """Store events with the next sequences, contiguous and in order.

        The caller checked the ids (none stored yet, none repeated).
        """

    def get(self, orgcode: str, event_id: str) -> Event | None: ...

    def existing_ids(self, orgcode: str, event_ids: Collection[str]) -> dict[str, str]:
        """The content hash of each of ``event_ids`` that the org has stored."""

    def list(self, orgcode: str, where: EventFilter, limit: int) -> list[Event]:
        """Matching events in sequence order, after ``where.after_sequence``."""

    def feed(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[tuple[int, bytes]]:
        """As :meth:`list`, as ``(sequence, wire JSON)`` pairs (the hot path)."""

    def feed_scan(
        self, orgcode: str, where: EventFilter, limit: int, examine: int
    ) -> FeedScan:
        """As :meth:`feed`, looking at no more than ``examine`` events.

        The events looked at are those the keyed filters find, in sequence
        order (``EventFilter.keyed``); of them, those the other filters
        pass (``EventFilter.sifts``) are returned, up to ``limit``. So a
        sparse action prefix or time window costs a bounded read however
        many events the org holds; :class:`FeedScan` says where it stopped.
        """

    def last_sequence(self) -> int: ...


class KeyStore(Protocol):
    def add(self, record: ApiKeyRecord) -> None: ...

    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    def list(self) -> builtins.list[ApiKeyRecord]:
        """Every key, oldest first."""

    def remove(self, key_id: str) -> bool:
        """Forget a key; whether there was one."""


class Settings(Protocol):
    """Small per-deployment values kept with the data (e.g. the token key)."""

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, value: bytes) -> None: ...


class WebhookRepository(Protocol):
    """Webhook subscriptions by org; ids sort by creation."""

    def add(self, webhook: Webhook) -> None: ...

    def save(self, webhook: Webhook) -> None:
        """Replace a stored webhook; the caller has checked its revision."""

    def get(self, orgcode: str, webhook_id: str) -> Webhook | None: ...

    def list(
        self, orgcode: str, status: str | None, after: str | None, limit: int
    ) -> builtins.list[Webhook]:
        """In webhook id order, only ids above ``after``."""

    def queuing(self, orgcode: str) -> builtins.list[Webhook]:
        """The org's webhooks that take new deliveries (all but disabled)."""

    def sealing_key_ids(self) -> builtins.set[str]:
        """The ids of the keys that sealed the secrets of every org's
        webhooks that are not disabled (:func:`~ipm.domain.webhooks.
        sealing_key_id` of each): the keyring must hold them all before a
        new secret is sealed."""


class DeliveryRepository(Protocol):
    """Queued webhook deliveries and the record of every attempt."""

    def add(self, delivery: Delivery) -> Delivery:
        """Queue a delivery; returns it with its queue position ``seq``."""

    def get(self, delivery_id: str) -> Delivery | None: ...

    def find(self, webhook_id: str, event_sequence: int) -> Delivery | None: ...

    def waits_behind(
        self, webhook_id: str, ordering_value: str, event_sequence: int
    ) -> bool:
        """Whether a pending delivery of this key, of an earlier event, exists."""

    def save(self, delivery: Delivery) -> None:
        """Store a delivery's new state (status, schedule, lease)."""

    def claim(
        self,
        now: datetime,
        owner: str,
        lease_until: datetime,
        limit: int,
        skip: Collection[str] = (),
    ) -> builtins.list[Delivery]:
        """Lease up to ``limit`` deliveries to ``owner``, webhooks in turns.

        Only pending, due (``next_attempt_at <= now``), unleased (or lease
        expired) deliveries of active webhooks not held past ``now``
        (``Webhook.held_until``); for an ordered webhook only the oldest
        pending delivery of each ordering key. The webhooks with one due
        share the batch (see :func:`ipm.domain.webhooks.fair_share`; a failing
        one gets one), the longest waiting first, and it is returned in
        turns (:func:`ipm.domain.webhooks.in_turns`): every webhook's first
        delivery, then every second, each webhook's in queue order. The
        webhooks whose ids are in ``skip`` (the caller is still sending to
        them) are left out, as if they had nothing due.
        """

    def add_attempt(self, attempt: DeliveryAttempt) -> None: ...

    def attempts(self, delivery_id: str) -> builtins.list[DeliveryAttempt]: ...

    def attempt_counts(self, delivery_id: str) -> tuple[int, int]:
        """How many attempts the delivery's log holds, and how many of them
        the dispatcher made (kind ``dispatch``); (0, 0) for none."""

    def list(
        self, webhook_id: str, status: str | None, limit: int, after_seq: int = 0
    ) -> builtins.list[Delivery]:
        """A webhook's deliveries in queue order, from after ``after_seq`` on."""


class Keyring(Protocol):
    """Keys that seal secrets at rest, kept apart from the data they protect."""

    def current(self) -> tuple[str, bytes]:
        """The id and 32-byte key that seal new secrets."""

    def get(self, key_id: str) -> bytes | None:
        """A key by id; older keys stay readable after a rotation."""


class JobRepository(Protocol):
    """Bulk jobs by org, with what their slices leave behind.

    Besides the job itself: its error report (one line per failed input
    line), the action of every line (runs of one byte per line, keyed by
    the first line) and, for a validate-only run, the event ids it has seen
    (so a duplicate inside the file is found without writing any event).
    """

    def add(self, job: Job) -> None: ...

    def get(self, orgcode: str, job_id: str) -> Job | None: ...

    def save(self, job: Job) -> None:
        """Replace a stored job; the caller has checked its revision."""

    def find(
        self,
        orgcode: str,
        *,
        statuses: frozenset[str] | None,
        job_type: str | None,
        before: str | None,
        limit: int,
    ) -> list[Job]:
        """Newest first: job ids sort by creation; only ids below ``before``."""

    def waiting(
        self, statuses: frozenset[str], after: str | None, limit: int
    ) -> list[Job]:
        """Jobs of every org in one of ``statuses``, in job id order, only
        ids above ``after`` (a sweep over the whole deployment)."""

    def add_report(self, job_id: str, lines: Sequence[ReportLine]) -> None: ...

    def report(self, job_id: str, after_line: int, limit: int) -> list[ReportLine]:
        """Report lines after ``after_line``, in line order."""

    def add_actions(self, job_id: str, first_line: int, actions: bytes) -> None: ...

    def actions(
        self, job_id: str, after_line: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Runs ``(first_line, actions)`` starting after ``after_line``."""

    def seen(self, job_id: str, event_ids: Collection[str]) -> dict[str, str]:
        """Content hashes of the ids a validate-only run has seen."""

    def add_seen(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Remember the content seen for each id (replacing an older one)."""

    def clear_run(self, job_id: str) -> None:
        """Forget the report, actions and seen ids of a job's run."""


class KpiRepository(Protocol):
    """KPI snapshots (one per key, the latest revision) and alerts, by org."""

    def get(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        bucket_start: datetime,
    ) -> Kpi | None: ...

    def add(self, orgcode: str, kpi: Kpi) -> None:
        """Store a new snapshot; a key already taken is a ``Conflict``."""

    def add_new(self, orgcode: str, kpi: Kpi) -> bool:
        """Store ``kpi`` unless its key is taken; whether it was stored."""

    def update(self, orgcode: str, kpi: Kpi) -> None:
        """Store a new value, revision and ``updated_at`` for a snapshot."""

    def series(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[Kpi]:
        """Snapshots with ``lo <= bucket_start < hi``, in that order, at most
        ``limit``."""

    def series_wire(
        self,
        orgcode: str,
        kpi_code: str,
        scope: str,
        bucket: Bucket,
        window: tuple[datetime, datetime],
        limit: int,
    ) -> list[dict[str, Any]]:
        """As :meth:`series`, each snapshot in its wire form (the hot path)."""

    def get_alert(self, orgcode: str, alert_id: str) -> Alert | None: ...

    def alert_by_key(self, orgcode: str, alert_key: str) -> Alert | None: ...

    def add_alert(self, orgcode: str, alert: Alert) -> None:
        """Store a new alert; an ``alert_key`` already taken is a ``Conflict``."""

    def update_alert(self, orgcode: str, alert: Alert) -> None: ...

    def alerts_due(self, now: datetime, limit: int) -> list[tuple[str, Alert]]:
        """``(orgcode, alert)`` whose notification is pending and unclaimed at
        ``now``, oldest first."""


class Notifier(Protocol):
    """The inbox: where a fired alert is announced when the caller asks."""

    def notify(self, notification: AlertNotification) -> None:
        """Deliver one notification; raising any exception reports a failure."""


class UnitOfWork(Protocol):
    """One transaction over every repository; nothing persists until commit.

    Leaving the ``with`` block without :meth:`commit` rolls back. A write
    unit of work is serialised with every other writer, which is what makes
    event sequences follow commit order.

    Repositories are read-only properties here so that an adapter may
    expose its own, more specific classes (protocol attributes would be
    invariant).
    """

    @property
    def events(self) -> EventStore: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def deliveries(self) -> DeliveryRepository: ...

    @property
    def jobs(self) -> JobRepository: ...

    @property
    def kpis(self) -> KpiRepository: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def commit(self) -> None: ...


class Storage(Protocol):
    """Where the units of work come from; one per application."""

    def unit_of_work(self, *, write: bool = True) -> UnitOfWork: ...

    def close(self) -> None: ...


BlobChunks = Iterator[bytes]


def close_chunks(chunks: object) -> None:
    """Let go of what ``chunks`` reads from (a blob's open file) now, not
    whenever it is collected: ``close()`` when it has one."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


class BlobStore(Protocol):
    """Uploaded and generated files, addressed by a key such as a job id.

    Keys are ``/``-separated relative paths (``jobs/<job_id>/upload_<n>``);
    a store refuses with ``ValueError`` one that is empty, absolute, has an
    empty segment or climbs out with ``..``. :class:`ipm.testing.BlobStoreContract`
    holds a store to these rules.
    """

    def write(self, key: str, chunks: Iterator[bytes]) -> tuple[int, str]:
        """Store the bytes; return their size and SHA-256 hex digest.

        All or nothing: when ``chunks`` raises, the error goes on to the
        caller and the blob the key held before (if any) is left whole.
        A second write of a key replaces it.
        """

    def read(self, key: str, offset: int = 0) -> BlobChunks:
        """The bytes from ``offset`` on, in chunks.

        A missing key raises ``KeyError`` at the call, not at the first
        chunk (``FileNotFoundError`` is taken as the same).
        """

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is no error."""


BLOB_MISSING: tuple[type[Exception], ...] = (KeyError, FileNotFoundError)
"""What a :class:`BlobStore` read may raise for a key it does not hold."""


@runtime_checkable
class ListingBlobStore(BlobStore, Protocol):
    """A blob store that can also list its keys (optional).

    With it, ipm deletes what an upload killed half-way left under a job
    (a process stopped between storing the bytes and recording them)
    once the job ends; without it such bytes stay until the host's own
    life-cycle rules remove them. ipm's file and memory stores list.
    """

    def keys(self, prefix: str) -> Iterable[str]:
        """Every stored key that starts with ``prefix``, in any order."""


@attrs.frozen
class OutboundRequest:
    """One webhook POST: the body bytes are sent exactly as given."""

    url: str = attrs.field(repr=False)  # a query string may hold a token
    headers: Mapping[str, str] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    timeout: float = attrs.field(validator=attrs.validators.gt(0))


def lower_header_names(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, str]:
    """Header names in lower case; a name given twice joins its values with ", "."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    joined: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        joined[name] = f"{joined[name]}, {value}" if name in joined else value

    return joined


@attrs.frozen
class TransportResult:
    """What came back: a status, or an error when no full answer arrived.

    Exactly one of ``status`` and ``error`` is set. ``headers`` are kept
    with lower-case names whatever the transport gave (``Retry-After`` is
    read as ``retry-after``; repeated headers joined with ``", "``);
    ``body_excerpt`` is the start of the body, for the delivery record.
    """

    status: int | None
    headers: Mapping[str, str] = attrs.field(converter=lower_header_names)
    body_excerpt: bytes
    duration_ms: float
    error: str | None = None
    local: bool = False
    """The request never left this machine, for want of something here (no
    file descriptor, no memory): not the endpoint's failure.
    The dispatcher then releases the delivery untried instead of spending
    one of its attempts."""

    def __attrs_post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError("a result has either a status or an error")
        if self.local and self.error is None:
            raise ValueError("only a failed result can be local")

    @classmethod
    def failed(
        cls, error: str, duration_ms: float, *, local: bool = False
    ) -> TransportResult:
        return cls(None, {}, b"", duration_ms, error, local)


class Transport(Protocol):
    """Sends one webhook request; never raises for a network problem."""

    def send(self, request: OutboundRequest) -> TransportResult: ...
