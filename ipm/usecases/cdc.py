"""CDC: appending events to the store and reading the ordered feed.

:class:`Recorder` is the one way anything becomes an event — the host's
``publish()``, a bulk import line, ipm's own job, webhook and KPI changes.
It runs inside the caller's unit of work, so a change and the event that
records it commit together (the transactional outbox), and so do the
webhook deliveries that sinks queue for the event.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from ipm.domain.alerts import NOTIFICATION_ID_PREFIX
from ipm.domain.errors import (
    MAX_PROBLEMS,
    EventIdConflict,
    InvalidRequest,
    IpmError,
    Problem,
    StorageBusy,
    capped,
    pointer_token,
)
from ipm.domain.events import (
    NO_AUDIT,
    OPS,
    Audit,
    AuditLike,
    Event,
    EventFilter,
    FeedScan,
    NewEvent,
    Op,
    SourceRef,
    check_names,
    check_orgcode,
)
from ipm.domain.jsoncodec import as_stored, dumps, is_unicode, strict_problems
from ipm.domain.timeutil import check_instant
from ipm.ports import Clock, Ids, Storage, UnitOfWork
from ipm.usecases.catalog import OWN_SERVICE, RESERVED_SERVICES, EventCatalog

log = logging.getLogger(__name__)

EventSink = Callable[[UnitOfWork, Event], None]
"""Called inside the transaction for every newly appended event."""


@attrs.define
class Recorder:
    clock: Clock
    ids: Ids
    catalog: EventCatalog
    sinks: list[EventSink] = attrs.Factory(list)

    def record_own(
        self,
        uow: UnitOfWork,
        orgcode: str,
        action: str,
        payload: Mapping[str, Any],
        *,
        op: Op = "u",
        logical_guid: str | None = None,
        audit: AuditLike | None = None,
        occurred_at: datetime | None = None,
    ) -> Event:
        """Record one of ipm's own changes (service ``ipm``) in ``uow``.

        ``audit`` is what the use case was given: an :class:`Audit`, or a
        host's plain mapping (checked as an event's audit is).
        ``occurred_at`` is the instant the change itself carries (a KPI's
        ``updated_at``), so the event and the record agree; the clock's
        now otherwise.
        """
        if audit is not None:
            audit = checked_audit(audit)
        new = NewEvent(
            event_id=self.ids("evt"),
            service=OWN_SERVICE,
            action=action,
            op=op,
            payload=payload,
            occurred_at=self.clock() if occurred_at is None else occurred_at,
            logical_guid=logical_guid,
            audit=audit or NO_AUDIT,
        )

        return self.record(uow, orgcode, new, fresh_id=True)[0]

    def record(
        self, uow: UnitOfWork, orgcode: str, new: NewEvent, *, fresh_id: bool = False
    ) -> tuple[Event, bool]:
        """Append ``new`` unless its id exists; ``(event, created)``.

        The same id with the same content returns the stored event; with
        other content it is an :class:`EventIdConflict`. ``fresh_id`` says
        the id was just minted here, so there is nothing to look up.
        """
        existing = None if fresh_id else uow.events.get(orgcode, new.event_id)
        if existing is not None:
            if not new.occurred_at_given:
                new = attrs.evolve(new, occurred_at=existing.new.occurred_at)
            if existing.content_hash != new.content_hash():
                raise _conflict(new.event_id)
            return existing, False

        self.catalog.check_payload(new)
        event = uow.events.append(orgcode, new, self.clock())
        for sink in self.sinks:
            sink(uow, event)

        return event, True

    def record_many(
        self,
        uow: UnitOfWork,
        orgcode: str,
        news: Sequence[NewEvent],
        *,
        checked_at: int | None = None,
    ) -> builtins.list[Recorded]:
        """:meth:`record` for each of ``news`` in order, with one lookup and one
        insert for the lot; an outcome per event instead of an exception.

        The outcome is the new :class:`Event`, ``"duplicate"`` (the id is
        stored, or came earlier in ``news``, with the same content), an
        :class:`EventIdConflict`, or the catalog's :class:`InvalidRequest`.
        Exactly what calling :meth:`record` on each in turn would give,
        sequences included: the created events get contiguous sequences in
        the order of ``news``.

        ``checked_at`` says every payload passed the catalog when its
        :func:`catalog_generation` was that number; while it still is, the
        payloads are not checked again.
        """
        check = checked_at is None or checked_at != catalog_generation(self.catalog)
        stored = uow.events.existing_ids(orgcode, {new.event_id for new in news})
        # Ids first seen in this batch, to their event (hashed only if repeated).
        earlier: dict[str, NewEvent] = {}
        outcomes: list[Recorded | None] = []
        fresh: list[NewEvent] = []
        for new in news:
            event_id = new.event_id
            if event_id in stored:
                outcomes.append(self._repeat_of_stored(uow, orgcode, new, stored))
            elif event_id in earlier:
                outcomes.append(_repeat(new, earlier[event_id]))
            else:
                if check:
                    try:
                        self.catalog.check_payload(new)
                    except InvalidRequest as error:
                        # Kept without its traceback, which would tie this
                        # frame (and the slice above it) into a cycle.
                        outcomes.append(error.with_traceback(None))
                        continue
                earlier[event_id] = new
                fresh.append(new)
                outcomes.append(None)

        created = iter(uow.events.append_many(orgcode, fresh, self.clock()))
        recorded = [next(created) if o is None else o for o in outcomes]
        for outcome in recorded:
            if isinstance(outcome, Event):
                for sink in self.sinks:
                    sink(uow, outcome)

        return recorded

    def _repeat_of_stored(
        self, uow: UnitOfWork, orgcode: str, new: NewEvent, stored: dict[str, str]
    ) -> Recorded:
        if not new.occurred_at_given:
            # A retry without a time matches whatever time was stored.
            existing = uow.events.get(orgcode, new.event_id)
            assert existing is not None
            new = attrs.evolve(new, occurred_at=existing.new.occurred_at)

        if stored[new.event_id] != new.content_hash():
            return _conflict(new.event_id)
        return "duplicate"


Recorded = Event | Literal["duplicate"] | EventIdConflict | InvalidRequest
"""What :meth:`Recorder.record_many` made of one event."""


def catalog_generation(catalog: EventCatalog) -> int:
    """A number that changes whenever ``check_payload`` could answer otherwise."""
    return catalog.generation


def _repeat(new: NewEvent, first: NewEvent) -> Recorded:
    if not new.occurred_at_given:
        new = attrs.evolve(new, occurred_at=first.occurred_at)

    return (
        "duplicate"
        if new.content_hash() == first.content_hash()
        else _conflict(new.event_id)
    )


class _Refusals:
    """The errors of a call's refused events, one error in the end: a bad
    event (400) before a reused id (409), every problem of that kind named
    up to :data:`MAX_PROBLEMS` (past it, checking stops and one more item
    says so, as for one body: a batch of 20,000 events with 50 faults each
    made an error of a million problems).

    The errors are kept without their tracebacks, and given away by
    :meth:`error`: a traceback holds the frame that holds this list (and
    the caller's batch), a cycle only the collector would free.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._errors: list[IpmError] = []
        self._problems = 0
        self.stopped = False

    def __bool__(self) -> bool:
        return bool(self._errors)

    def add(self, error: IpmError, *, last: bool) -> bool:
        """Keep ``error``; whether enough are kept to stop checking (and
        so events are left unchecked, unless it came from the ``last``)."""
        self._errors.append(error.with_traceback(None))
        self._problems += len(error.details)
        full = self._problems > MAX_PROBLEMS
        self.stopped = full and not last

        return full

    def error(self) -> IpmError:
        """The one error to raise (the list is emptied)."""
        errors, self._errors = self._errors, []
        invalid = [e for e in errors if isinstance(e, InvalidRequest)]
        chosen = invalid or errors
        if len(chosen) == 1:
            return chosen[0]  # (its own check bounds its problems)

        problems = [problem for error in chosen for problem in error.details]
        said = "every problem is in details"
        if len(problems) > MAX_PROBLEMS:
            problems = capped(problems)
            said = f"the first {MAX_PROBLEMS:,} problems are in details"
        many = f"{len(chosen)}{' or more' if self.stopped else ''} of the "
        many += f"{self.count} events"
        if not invalid:
            return EventIdConflict(
                f"{many} reuse an event_id for other content; {said}", problems
            )

        return InvalidRequest(f"{many} are not valid; {said}", problems)


def _conflict(event_id: str) -> EventIdConflict:
    return EventIdConflict(
        f"event_id {event_id!r} was already used for other content",
        [Problem("/event_id", "reused with different content")],
    )


@attrs.frozen
class Cdc:
    storage: Storage
    recorder: Recorder
    ids: Ids
    clock: Clock

    def publish(
        self,
        orgcode: str,
        event: Mapping[str, Any] | NewEvent,
        *,
        connection: Any = None,
    ) -> Event:
        """Append one host event; see :meth:`publish_many`.

        Its problems are pointed at from the event itself (``/payload``),
        not from a list of one (``/0/payload``).
        """
        return self._publish(orgcode, [event], connection, in_list=False)[0]

    def publish_many(
        self,
        orgcode: str,
        events: Iterable[Mapping[str, Any] | NewEvent],
        *,
        connection: Any = None,
    ) -> list[Event]:
        """Append events in one transaction: all of them or none.

        With ``connection`` (a host's open SQLite connection to the same
        database) nothing is begun or committed here: the events and the
        deliveries they queue share the host's transaction. A problem is
        pointed at from the list (``/2/payload/total``).
        """
        if isinstance(events, str | bytes | Mapping) or not isinstance(
            events, Iterable
        ):
            # One event, or none at all, where a list of them belongs.
            raise TypeError(
                f"events must be a list of events, not {type(events).__name__}"
            )
        return self._publish(orgcode, list(events), connection, in_list=True)

    def _publish(
        self,
        orgcode: str,
        events: builtins.list[Mapping[str, Any] | NewEvent],
        connection: Any,
        *,
        in_list: bool,
    ) -> builtins.list[Event]:
        check_orgcode(orgcode)
        pointers = [f"/{i}" if in_list else "" for i in range(len(events))]
        # Every event's problems are named, not the first one's: the rules
        # any event meets first, then (all of those met) each payload
        # against its schema and each id against the stored events.
        refused = _Refusals(len(events))
        news: builtins.list[NewEvent] = []
        last = len(events) - 1
        for i, (event, pointer) in enumerate(zip(events, pointers, strict=True)):
            try:
                news.append(self._checked(event, pointer))
            except InvalidRequest as error:
                if refused.add(error, last=i == last):
                    break
        if refused:
            raise refused.error()
        try:
            with self._unit_of_work(connection) as uow:
                stored: builtins.list[Event] = []
                for i, (new, pointer) in enumerate(zip(news, pointers, strict=True)):
                    try:
                        stored.append(self._record(uow, orgcode, new, pointer))
                    except (InvalidRequest, EventIdConflict) as error:
                        # The others are still checked, up to a bound.
                        if refused.add(error, last=i == last):
                            break
                if refused:
                    raise refused.error()
                uow.commit()
        except sqlite3.OperationalError as error:
            # Only a host's own connection gets here: ours retry and translate.
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            raise StorageBusy(
                "the host's transaction could not take the write lock; retry it"
            ) from error

        log.debug("published %d event(s) for %s", len(stored), orgcode)
        return stored

    def _checked(self, event: Mapping[str, Any] | NewEvent, pointer: str) -> NewEvent:
        """The event to record, after every rule a mapping meets.

        A host's :class:`NewEvent` is checked too: it is built without any
        check, so it could carry what no request may (an empty id, an op
        of "z", a NaN in the payload).
        """
        if not isinstance(event, NewEvent):
            return self.new_event(event, pointer)

        checked = self.new_event(_as_mapping(event), pointer)

        return attrs.evolve(checked, occurred_at_given=event.occurred_at_given)

    def _record(
        self, uow: UnitOfWork, orgcode: str, new: NewEvent, pointer: str
    ) -> Event:
        try:
            return self.recorder.record(uow, orgcode, new)[0]
        except (InvalidRequest, EventIdConflict) as error:
            # The catalog and the id check point from the event: say which.
            problems = [Problem(pointer + p.pointer, p.message) for p in error.details]
            raise type(error)(error.message, problems) from None

    def list(self, orgcode: str, where: EventFilter, limit: int) -> list[Event]:
        with self.storage.unit_of_work(write=False) as uow:
            return uow.events.list(orgcode, where, limit)

    def feed(
        self, orgcode: str, where: EventFilter, limit: int
    ) -> builtins.list[tuple[int, bytes]]:
        """Matching events as ready-made wire JSON, for ``/cdc/list``."""
        with self.storage.unit_of_work(write=False) as uow:
            return uow.events.feed(orgcode, where, limit)

    def feed_scan(
        self, orgcode: str, where: EventFilter, limit: int, examine: int
    ) -> FeedScan:
        """:meth:`feed` looking at no more than ``examine`` events
        (``EventStore.feed_scan``)."""
        with self.storage.unit_of_work(write=False) as uow:
            return uow.events.feed_scan(orgcode, where, limit, examine)

    def last_sequence(self) -> int:
        with self.storage.unit_of_work(write=False) as uow:
            return uow.events.last_sequence()

    def new_event(self, raw: Mapping[str, Any], pointer: str = "") -> NewEvent:
        """Build a :class:`NewEvent` from the host's plain mapping."""
        return event_from_mapping(raw, self.ids, self.clock, pointer)

    def _unit_of_work(self, connection: Any) -> UnitOfWork:
        if connection is None:
            return self.storage.unit_of_work()

        open_on = getattr(self.storage, "unit_of_work_on", None)
        if open_on is None:
            raise TypeError("this storage cannot join a host transaction")

        return open_on(connection)  # type: ignore[no-any-return]


EVENT_FIELDS = frozenset(
    {
        "event_id",
        "service",
        "action",
        "op",
        "logical_guid",
        "channel_code",
        "occurred_at",
        "payload",
        "audit",
    }
)
"""Every field an event mapping may have."""


def event_from_mapping(
    raw: Mapping[str, Any],
    ids: Ids,
    clock: Clock,
    pointer: str = "",
    *,
    proven_strict: bool = False,
) -> NewEvent:
    """Check a plain event mapping field by field, reporting every fault.

    ``proven_strict`` skips only the strict-JSON walk of the values, for a
    mapping the strict NDJSON reader produced (it refuses every line that
    walk would refuse, and no deeper nesting); every other check runs.
    A host's mapping is never proven: ``publish()`` leaves it False.
    """
    if not isinstance(raw, Mapping):
        raise InvalidRequest("an event must be an object", [Problem(pointer, "object")])
    raw = _plain_texts(raw)

    # (message, problems) of each rule broken. Never the exceptions: one
    # kept in a local would hold its traceback, this frame and every frame
    # above it (a whole import slice) in a cycle only the collector frees.
    failures: list[Failure] = []
    problems = _field_problems(raw, pointer)
    if not proven_strict:
        # The event is the first level, as an NDJSON line's object is: what
        # publish() takes, an export writes and an import takes back.
        problems += strict_problems(
            {key: raw[key] for key in (*ID_LIMITS, "payload") if key in raw},
            pointer,
            depth=1,
        )
    payload = raw.get("payload", {})
    if problems:
        failures.append(("event is malformed", problems))
    elif not proven_strict and isinstance(payload, dict):
        # Read back as the plain JSON it is stored as: a host's tuple, enum
        # or own nested dict would else be in the Event publish() returns
        # (a retry returned lists and ints).
        plain, size = as_stored(payload)
        if size > MAX_PAYLOAD_BYTES:
            too_large = _too_large(size, pointer)
            failures.append((too_large.message, too_large.details))
        else:
            payload = plain

    # Every rule runs, so one answer names every fault of the event.
    service, action = raw.get("service"), raw.get("action")
    if isinstance(service, str) and isinstance(action, str):
        failures += _failure_of(check_names, service, action, pointer)
        failures += _failure_of(_not_own, service, pointer)
    failures += _failure_of(_not_own_id, raw.get("event_id"), pointer)
    occurred = raw.get("occurred_at")
    occurred_at = None
    try:
        occurred_at = _occurred_at(occurred, clock, f"{pointer}/occurred_at")
    except InvalidRequest as error:
        failures.append((error.message, error.details))
    audit = NO_AUDIT
    try:
        audit = _audit(raw.get("audit"), pointer, proven_strict)
    except InvalidRequest as error:
        failures.append((error.message, error.details))
    if failures:
        # A KPI file imported as events: said, not only its eight faults.
        # (Raised at once: an exception kept in a local of this frame
        # would tie it into a cycle through its own traceback.)
        kpi_like = "kpi_code" in raw and "service" not in raw
        raise _all_of(failures, _KPI_HINT if kpi_like else "")
    assert occurred_at is not None

    return NewEvent(
        event_id=raw.get("event_id") or ids("evt"),
        service=raw["service"],
        action=raw["action"],
        op=raw.get("op", "c"),
        logical_guid=raw.get("logical_guid"),
        channel_code=raw.get("channel_code"),
        occurred_at=occurred_at,
        payload=payload,
        audit=audit,
        occurred_at_given=occurred is not None,
    )


MAX_PAYLOAD_BYTES = 512 << 10
"""The largest payload an event may have, as compact JSON, published or
imported. An NDJSON line holds at most a mebibyte
(``DEFAULT_MAX_LINE_BYTES``), so an export line of any stored event, with
the fields and audit an export adds, imports again; and a page of the
feed stays bounded (see ``MAX_PAGE_BYTES``)."""


def oversized_payload(payload: Any, pointer: str = "") -> InvalidRequest | None:
    """The refusal of a strict-JSON object payload past
    :data:`MAX_PAYLOAD_BYTES`, or None (also for what is no such object:
    its own check says why)."""
    if not isinstance(payload, dict):
        return None
    size = len(dumps(payload))

    return None if size <= MAX_PAYLOAD_BYTES else _too_large(size, pointer)


def _too_large(size: int, pointer: str) -> InvalidRequest:
    message = f"must be at most {MAX_PAYLOAD_BYTES:,} bytes as JSON, not {size:,}"

    return InvalidRequest(
        "event is too large", [Problem(f"{pointer}/payload", message)]
    )


def _as_mapping(new: NewEvent) -> dict[str, Any]:
    """A host's :class:`NewEvent` as the mapping ``event_from_mapping`` checks."""
    payload = new.payload
    audit: Any = new.audit

    return {
        "event_id": new.event_id,
        "service": new.service,
        "action": new.action,
        "op": new.op,
        "logical_guid": new.logical_guid,
        "channel_code": new.channel_code,
        "occurred_at": new.occurred_at,
        "payload": dict(payload) if isinstance(payload, Mapping) else payload,
        "audit": audit.to_wire() if isinstance(audit, Audit) else audit,
    }


Failure = tuple[str, Sequence[Problem]]
"""A broken rule: its message and its problems."""


def _failure_of(check: Callable[..., None], *args: Any) -> list[Failure]:
    """The refusal ``check(*args)`` raises, as a list of none or one."""
    try:
        check(*args)
    except InvalidRequest as error:
        return [(error.message, error.details)]

    return []


def _all_of(failures: list[Failure], hint: str = "") -> InvalidRequest:
    """One refusal naming every problem (a lone one keeps its own message),
    with ``hint`` after the message."""
    if len(failures) == 1:
        message, problems = failures[0]
        return InvalidRequest(message + hint, problems)

    return InvalidRequest(
        "event is malformed" + hint,
        [problem for _, found in failures for problem in found],
    )


_KPI_HINT = " (a KPI snapshot? an import takes those with target kpis)"


def _field_problems(raw: Mapping[str, Any], pointer: str) -> list[Problem]:
    """Names, types and lengths of the fields (the hot path of every import)."""
    get = raw.get
    problems: list[Problem] = []
    if not raw.keys() <= EVENT_FIELDS:
        problems += [
            Problem(f"{pointer}/{pointer_token(key)}", "unknown field")
            for key in raw
            if key not in EVENT_FIELDS
        ]
    for key in ("service", "action"):
        if not isinstance(get(key), str):
            problems.append(Problem(f"{pointer}/{key}", "required string"))
    if not isinstance(get("payload", _EMPTY), dict):
        problems.append(Problem(f"{pointer}/payload", "must be an object"))
    if get("op", "c") not in OPS:
        problems.append(Problem(f"{pointer}/op", "must be one of c, u, d"))
    for key, longest in ID_LIMITS.items():
        value = get(key)
        if value is not None and not (
            isinstance(value, str) and 0 < len(value) <= longest
        ):
            problems.append(
                Problem(f"{pointer}/{key}", f"must be 1-{longest} characters")
            )

    return problems


def _audit(raw: Any, pointer: str, proven_strict: bool) -> Audit:
    # Only null and {} mean "no audit"; [], 0 or "" are refused as no object.
    if raw is None or (type(raw) is dict and not raw):
        return NO_AUDIT

    return audit_from_mapping(raw, f"{pointer}/audit", proven_strict=proven_strict)


_EMPTY: dict[str, Any] = {}
ID_LIMITS = {"event_id": 128, "logical_guid": 128, "channel_code": 64}
"""The longest value of each id field, in characters (at least one)."""
AUDIT_LIMITS = {"actor": (1, 128), "context_source": (1, 64), "reason": (0, 1024)}
"""The shortest and longest value of each audit text, in characters."""
SOURCE_REF_LIMITS = {"kind": (1, 64), "id": (1, 256)}
"""The shortest and longest kind and id of a source ref, in characters."""
MAX_SOURCE_REFS = 32
AUDIT = frozenset({*AUDIT_LIMITS, "source_refs"})
"""Every field an audit may have."""


_TEXT_FIELDS = (*ID_LIMITS, "service", "action", "op", "occurred_at")


def _plain_texts(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with its str-subclass fields (a host's StrEnum) as plain str.

    Every rule then reads the text itself: a subclass could answer ``==``
    or ``startswith`` as it liked, and pass a reserved name or id.
    """
    odd = [
        key
        for key in _TEXT_FIELDS
        if type(value := raw.get(key)) is not str and isinstance(value, str)
    ]
    if not odd:
        return raw

    return {**raw, **{key: str.__str__(raw[key]) for key in odd}}


def _not_own(service: str, pointer: str) -> None:
    """ipm's own events (services ``ipm`` and ``inbox``) come only from ipm.

    Integrators, the KPI export and alert inboxes trust them; a host or an
    import that could write them could fake a job, webhook or KPI change,
    or an alert's notification.
    """
    if service in RESERVED_SERVICES:
        raise InvalidRequest(
            f"the service name {service!r} is reserved for ipm's own events",
            [Problem(f"{pointer}/service", "reserved")],
        )


def _not_own_id(event_id: Any, pointer: str) -> None:
    """An alert's notification has a known id (``ntf_`` and the alert's):
    an event given that id first would make the notification fail as an
    id conflict, so hosts and imports may not use the prefix."""
    if isinstance(event_id, str) and event_id.startswith(NOTIFICATION_ID_PREFIX):
        raise InvalidRequest(
            f"event ids beginning {NOTIFICATION_ID_PREFIX!r} are reserved for "
            "ipm's alert notifications",
            [Problem(f"{pointer}/event_id", "reserved")],
        )


def audit_from_mapping(
    raw: Mapping[str, Any], pointer: str = "/audit", *, proven_strict: bool = False
) -> Audit:
    """Check the audit fields a host passes, with the wire's limits.

    Exactly what the ``Audit`` of an ``Event`` on the wire may hold: no
    other field, texts within their lengths (an actor or a context source
    is not empty), at most 32 source refs of a kind (1-64 characters) and
    an id (1-256).
    """
    if not isinstance(raw, Mapping):
        raise InvalidRequest("audit must be an object", [Problem(pointer, "object")])

    problems = [
        Problem(f"{pointer}/{pointer_token(key)}", "unknown field")
        for key in raw
        if key not in AUDIT
    ]
    problems += [
        Problem(f"{pointer}/{key}", f"must be a string of {least}-{most} characters")
        for key, (least, most) in AUDIT_LIMITS.items()
        if raw.get(key) is not None and not _text_within(raw[key], least, most)
    ]
    refs = raw.get("source_refs")
    if refs is None:
        refs = []
    if not _good_refs(refs):
        problems.append(
            Problem(
                f"{pointer}/source_refs",
                "up to 32 items, each only a kind (1-64 characters) and an id (1-256)",
            )
        )
    if not proven_strict:
        problems += strict_problems(dict(raw), pointer)
    if problems:
        raise InvalidRequest("audit is malformed", problems)

    return Audit(
        actor=raw.get("actor"),
        context_source=raw.get("context_source"),
        reason=raw.get("reason"),
        source_refs=tuple(SourceRef(r["kind"], r["id"]) for r in refs),
    )


def checked_audit(audit: Audit | Mapping[str, Any]) -> Audit:
    """The audit a use case was given, refused if the wire could not carry it.

    A plain mapping is read as an event's audit is. An :class:`Audit` is
    built without checks, so its texts and refs are measured here (a few
    comparisons; the full check runs only to explain a refusal).
    """
    if not isinstance(audit, Audit):
        return audit_from_mapping(audit)
    if audit is NO_AUDIT or _fits(audit):
        return audit

    # Read field by field: a malformed Audit may not even have a wire form.
    refs = audit.source_refs
    mapping = {
        "actor": audit.actor,
        "context_source": audit.context_source,
        "reason": audit.reason,
        "source_refs": [
            {"kind": r.kind, "id": r.id} if isinstance(r, SourceRef) else r
            for r in (refs if isinstance(refs, tuple | list) else [refs])
        ],
    }

    return audit_from_mapping(mapping)


def _fits(audit: Audit) -> bool:
    refs = audit.source_refs

    return (
        all(
            (text := getattr(audit, key)) is None
            or (_text_within(text, least, most) and is_unicode(text))
            for key, (least, most) in AUDIT_LIMITS.items()
        )
        and isinstance(refs, tuple)
        and len(refs) <= MAX_SOURCE_REFS
        and all(
            isinstance(ref, SourceRef)
            and _text_within(ref.kind, *SOURCE_REF_LIMITS["kind"])
            and _text_within(ref.id, *SOURCE_REF_LIMITS["id"])
            and is_unicode(ref.kind)
            and is_unicode(ref.id)
            for ref in refs
        )
    )


def _text_within(value: Any, least: int, most: int) -> bool:
    return isinstance(value, str) and least <= len(value) <= most


def _good_refs(refs: Any) -> bool:
    return (
        isinstance(refs, list | tuple)
        and len(refs) <= MAX_SOURCE_REFS
        and all(
            isinstance(r, Mapping)
            and r.keys() <= SOURCE_REF_LIMITS.keys()
            and all(
                _text_within(r.get(key), least, most)
                for key, (least, most) in SOURCE_REF_LIMITS.items()
            )
            for r in refs
        )
    )


def _occurred_at(value: Any, clock: Clock, pointer: str) -> datetime:
    if value is None:
        return clock()
    if not isinstance(value, datetime | str):
        raise InvalidRequest("occurred_at must be a string", [Problem(pointer, "type")])

    return check_instant(value, pointer)
