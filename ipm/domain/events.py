"""CDC events: what happened, to what, when, and on whose word.

An event is appended once and never changed. Its ``event_id`` is the
idempotency key within its org: publishing the same id with the same
content returns the stored event, the same id with other content is a
conflict. "Content" is everything the publisher controls about *what*
happened (service, action, op, record, channel, time, payload) and not the
audit trail or the time ipm recorded it, so a retried publish from another
actor is still the same event.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.jsoncodec import canonical_bytes, is_unicode
from ipm.domain.timeutil import format_utc

Op = Literal["c", "u", "d"]
OPS: tuple[str, ...] = ("c", "u", "d")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ORGCODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_actor_name(value: object) -> bool:
    """Whether ``value`` may name an API key's actor (and so an audit's,
    from a key or the CLI): 1-128 printable characters of valid Unicode."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and value.isprintable()
        and is_unicode(value)
    )


def check_orgcode(orgcode: object, pointer: str = "/orgcode") -> str:
    """``orgcode`` if it is a well-formed org code; an ``InvalidRequest`` if not.

    The HTTP layer checks ``x-orgcode``; every use case a host calls
    directly checks its ``orgcode`` with this, so nothing is ever stored
    under a code no request could name.
    """
    if not isinstance(orgcode, str) or not ORGCODE_PATTERN.fullmatch(orgcode):
        raise InvalidRequest(
            "orgcode is malformed",
            [Problem(pointer, f"must match {ORGCODE_PATTERN.pattern}")],
        )

    return orgcode


@attrs.frozen
class SourceRef:
    kind: str
    id: str


@attrs.frozen
class Audit:
    """Who asked for a change and why; copied into the event it causes."""

    actor: str | None = None
    context_source: str | None = None
    reason: str | None = None
    source_refs: tuple[SourceRef, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "context_source": self.context_source,
            "reason": self.reason,
            "source_refs": [{"kind": r.kind, "id": r.id} for r in self.source_refs],
        }


NO_AUDIT = Audit()

AuditLike = Audit | Mapping[str, Any]
"""What a use case takes as an audit: an :class:`Audit`, or a plain mapping
read as an event's ``audit`` is (both checked before anything is written)."""
"""The audit of an event nobody explained (shared: events without one use it)."""


@attrs.frozen
class NewEvent:
    """An event as a publisher describes it, before it has a sequence."""

    event_id: str
    service: str
    action: str
    payload: Mapping[str, Any]
    occurred_at: datetime
    op: Op = "c"
    logical_guid: str | None = None
    channel_code: str | None = None
    audit: Audit = NO_AUDIT
    occurred_at_given: bool = attrs.field(default=True, eq=False, repr=False)
    """False when ``occurred_at`` defaulted to the time of publishing; a
    retry of such an event then matches whatever time was stored."""
    _wire_time: str | None = attrs.field(init=False, default=None, eq=False, repr=False)

    @property
    def wire_time(self) -> str:
        """``occurred_at`` as the wire writes it, formatted once and kept.

        (Kept outside ``__init__``, so ``attrs.evolve`` never copies it to
        an event with another time.)
        """
        text = self._wire_time
        if text is None:
            text = format_utc(self.occurred_at)
            object.__setattr__(self, "_wire_time", text)

        return text

    def content_hash(self) -> str:
        return hash_content(self, self.wire_time)


def known_wire_time(new: NewEvent, text: str) -> NewEvent:
    """``new``, told its wire time by a builder that parsed it from that text.

    Only for text that ``format_utc`` would write for ``new.occurred_at``
    (the import lane's canonical UTC times); it saves formatting it again.
    """
    object.__setattr__(new, "_wire_time", text)

    return new


def hash_content(new: NewEvent, occurred_at: str) -> str:
    """:meth:`NewEvent.content_hash`, given its ``occurred_at`` as wire text.

    A store that writes that text anyway formats it once for both.
    """
    content = [
        new.service,
        new.action,
        new.op,
        new.logical_guid,
        new.channel_code,
        occurred_at,
        new.payload,
    ]

    return hashlib.sha256(canonical_bytes(content)).hexdigest()


@attrs.frozen
class Event:
    """An event as stored: a :class:`NewEvent` with its place in the feed."""

    sequence: int
    orgcode: str
    recorded_at: datetime
    content_hash: str
    new: NewEvent

    def to_wire(self) -> dict[str, Any]:
        new = self.new
        return {
            "sequence": self.sequence,
            "event_id": new.event_id,
            "orgcode": self.orgcode,
            "service": new.service,
            "action": new.action,
            "op": new.op,
            "logical_guid": new.logical_guid,
            "channel_code": new.channel_code,
            "occurred_at": new.wire_time,
            "recorded_at": format_utc(self.recorded_at),
            "payload": dict(new.payload),
            "audit": new.audit.to_wire(),
        }


@attrs.frozen
class EventFilter:
    """The filters of a CDC read; ``None`` means "any"."""

    service: str | None = None
    logical_guid: str | None = None
    channel_code: str | None = None
    action_prefix: str | None = None
    after_sequence: int = 0
    until_sequence: int | None = None
    recorded_from: datetime | None = None
    """Only events recorded at or after this instant."""
    recorded_before: datetime | None = None
    """Only events recorded before this instant."""

    def matches(self, event: Event) -> bool:
        """Whether an event of the queried org passes every filter."""
        return self.keyed(event) and self.sifts(event)

    def keyed(self, event: Event) -> bool:
        """Whether an event passes the filters an index finds: the range of
        sequences and the values a field must equal."""
        new = event.new
        return (
            event.sequence > self.after_sequence
            and (self.until_sequence is None or event.sequence <= self.until_sequence)
            and (self.service is None or new.service == self.service)
            and (self.logical_guid is None or new.logical_guid == self.logical_guid)
            and (self.channel_code is None or new.channel_code == self.channel_code)
        )

    def sifts(self, event: Event) -> bool:
        """Whether an event passes the other filters, which are checked on
        each event the keyed ones found: the action prefix and the window
        of recording times."""
        return (
            (self.recorded_from is None or event.recorded_at >= self.recorded_from)
            and (
                self.recorded_before is None or event.recorded_at < self.recorded_before
            )
            and (
                self.action_prefix is None
                or event.new.action.startswith(self.action_prefix)
            )
        )

    @property
    def sifting(self) -> bool:
        """Whether any filter is of the kind :meth:`sifts` checks."""
        return (
            self.action_prefix is not None
            or self.recorded_from is not None
            or self.recorded_before is not None
        )


@attrs.frozen
class FeedScan:
    """What a bounded read of the feed found (``EventStore.feed_scan``).

    ``rows`` are the matching events as ``(sequence, wire JSON)`` pairs.
    ``reached`` is the sequence of the last event looked at when the read
    stopped at its bound before it had ``limit`` rows and before the end:
    a next read starts after it. None when the read found ``limit`` rows or
    looked at every event there was.
    """

    rows: list[tuple[int, bytes]]
    reached: int | None = None


def check_names(service: str, action: str, pointer: str = "") -> None:
    problems = [
        Problem(f"{pointer}/{field}", f"{field} must match {NAME_PATTERN.pattern}")
        for field, value in (("service", service), ("action", action))
        if not NAME_PATTERN.fullmatch(value)
    ]
    if problems:
        raise InvalidRequest("event names are malformed", problems)
