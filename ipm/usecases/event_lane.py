"""The fast lane of an events import: one compiled check proves a line good.

Theory of operation. Every line of an events import must pass the rules of
``event_from_mapping`` (field names, types and lengths, name patterns, the
``op`` values, an RFC 3339 time, the audit limits) and then its payload
schema in the catalog. Checked in Python, field by field, those rules cost
more than everything else an import does to a line. Most lines of a real
file are plain: known fields, ids of ordinary length, a time already in
ipm's canonical UTC form (``2026-03-01T10:00:00Z``).

So a line first meets :func:`envelope_schema`, a JSON Schema compiled by
jsonschema-rs that accepts only lines every Python rule accepts. It is
built from the same constants as those rules, but it is *narrower* where
that is simpler: a time must already be canonical UTC text, an audit must
not hold a value the Python rules would quietly treat as absent. A line it
accepts is turned into the :class:`NewEvent` the slow path would build,
with no per-field checks and no timestamp parser (the canonical text is
read by ``datetime.fromisoformat``, in C); then the catalog checks the
payload, as for any event.

A line the lane cannot prove good is not refused by it: it takes the slow
path, which gives every verdict and every error message. The lane can only
make a good line cheaper, never change what happens to a line. A
differential property test holds that: for generated valid and invalid
lines, the lane's event (or its silence) agrees with the slow path's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from ipm.domain.alerts import NOTIFICATION_ID_PREFIX
from ipm.domain.errors import InvalidRequest
from ipm.domain.events import (
    NAME_PATTERN,
    NO_AUDIT,
    OPS,
    Audit,
    NewEvent,
    SourceRef,
    known_wire_time,
)
from ipm.schemas import fast_check
from ipm.usecases.catalog import RESERVED_SERVICES, CatalogEntry, EventCatalog
from ipm.usecases.cdc import (
    AUDIT_LIMITS,
    EVENT_FIELDS,
    ID_LIMITS,
    MAX_SOURCE_REFS,
    SOURCE_REF_LIMITS,
)

EXPORT_ONLY_FIELDS = ("sequence", "orgcode", "recorded_at")
"""Fields of an exported event that an import ignores (ipm assigns them)."""

CANONICAL_UTC = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{6})?Z$"
)
"""The shape of a time as ipm writes it; the calendar is checked apart."""


DERIVED_ID_PLACEHOLDER = "evt_derived"
"""Stands for a line's missing id until :func:`with_derived_id` replaces it."""


def with_derived_id(new: NewEvent) -> NewEvent:
    """``new`` with the id a line without one gets: its content's digest.

    The digest is the content hash, which decides whether two events are
    the same; so lines that differ only in how they write the time, in the
    order of their keys or in their audit get one id, and importing a file
    again adds nothing.
    """
    derived = attrs.evolve(new, event_id=f"evt_{new.content_hash()[:32]}")

    return known_wire_time(derived, new.wire_time)


def envelope_schema() -> dict[str, Any]:
    """A schema accepting only import lines that ``event_from_mapping`` accepts.

    ``occurred_at`` is required and ignored export fields are allowed, as
    an import wants them. The name pattern is Python's; read the ECMA-262
    way it is stricter (``$`` does not match before a final newline).
    """
    name = {"type": "string", "pattern": NAME_PATTERN.pattern}
    properties: dict[str, Any] = {
        key: {"type": ["string", "null"], "minLength": 1, "maxLength": longest}
        for key, longest in ID_LIMITS.items()
    }
    reserved_id = {"type": "string", "pattern": f"^{NOTIFICATION_ID_PREFIX}"}
    properties["event_id"]["not"] = reserved_id
    properties |= {
        "service": {**name, "not": {"enum": list(RESERVED_SERVICES)}},
        "action": name,
        "op": {"enum": list(OPS)},
        "occurred_at": {"type": "string", "pattern": CANONICAL_UTC},
        "payload": {"type": "object"},
        "audit": _audit_schema(),
    }
    properties |= dict.fromkeys(EXPORT_ONLY_FIELDS, True)
    assert properties.keys() == EVENT_FIELDS | set(EXPORT_ONLY_FIELDS)

    return {
        "type": "object",
        "required": ["service", "action", "occurred_at"],
        "properties": properties,
        "additionalProperties": False,
    }


def _audit_schema() -> dict[str, Any]:
    texts: dict[str, Any] = {
        key: {"type": ["string", "null"], "minLength": least, "maxLength": most}
        for key, (least, most) in AUDIT_LIMITS.items()
    }
    reference = {
        "type": "object",
        "required": list(SOURCE_REF_LIMITS),
        "properties": {
            key: {"type": "string", "minLength": least, "maxLength": most}
            for key, (least, most) in SOURCE_REF_LIMITS.items()
        },
        "additionalProperties": False,
    }
    refs = {"type": ["array", "null"], "maxItems": MAX_SOURCE_REFS, "items": reference}

    # An audit is an object, or null for none (the Python rules refuse any
    # other value, empty or not).
    return {
        "type": ["object", "null"],
        "properties": {**texts, "source_refs": refs},
        "additionalProperties": False,
    }


class EventLane:
    """Turns a provably good import line into its event; ``None`` otherwise.

    An event type with a payload schema gets its own compiled check, the
    envelope with that schema inside, so one call proves the whole line;
    it is rebuilt when the catalog entry changes. A schema that refers to
    others keeps the catalog's own check, after the envelope's.
    """

    def __init__(self, catalog: EventCatalog) -> None:
        self._catalog = catalog
        self._envelope = fast_check(envelope_schema())
        self._typed: dict[tuple[str, str], _TypedCheck] = {}

    def admit(self, record: dict[str, Any], audit: Audit = NO_AUDIT) -> NewEvent | None:
        """The event the slow path would build from ``record``, if proven.

        ``None`` means "not proven", never "refused": the caller then runs
        the slow path, which decides. ``audit`` is the importer's, for a
        line that names none.
        """
        service, action = record.get("service"), record.get("action")
        if type(service) is not str or type(action) is not str:
            return None
        check, whole = self._check_for(service, action)
        try:
            if not check(record):
                return None
            text = record["occurred_at"]
            occurred_at = datetime.fromisoformat(text)
        except (ValueError, TypeError, OverflowError):
            # Data the compiled check cannot take (an integer beyond 64
            # bits); a time that is no instant (a leap second, 30 February,
            # year 0). The slow path says which.
            return None

        new = self._event(record, service, action, occurred_at, audit)
        if not text.endswith(".000000Z"):
            # Canonical already: exactly what format_utc writes for it.
            known_wire_time(new, text)
        if record.get("event_id") is None:
            new = with_derived_id(new)
        if not whole:
            try:
                self._catalog.check_payload(new)
            except InvalidRequest:
                return None

        return new

    def _check_for(self, service: str, action: str) -> tuple[Check, bool]:
        """The check of a line of this type, and whether it covers the payload."""
        entry = self._catalog.entry(service, action)
        if entry is None:
            # No payload schema: the catalog has nothing to check.
            return self._envelope, True

        typed = self._typed.get((service, action))
        if typed is None or typed.entry is not entry:
            typed = self._typed[(service, action)] = self._compile(entry)

        return typed.check, typed.whole

    def _compile(self, entry: CatalogEntry) -> _TypedCheck:
        schema = self._catalog.schema(entry.schema_name)
        if schema is None or _refers(schema):
            return _TypedCheck(entry, self._envelope, whole=False)

        return _TypedCheck(entry, fast_check(typed_envelope(schema)), whole=True)

    def _event(
        self,
        record: dict[str, Any],
        service: str,
        action: str,
        occurred: datetime,
        importer: Audit,
    ) -> NewEvent:
        get = record.get
        event_id = get("event_id")
        if event_id is None:
            event_id = DERIVED_ID_PLACEHOLDER
        audit = get("audit")

        return NewEvent(
            event_id,
            service,
            action,
            get("payload", {}),
            occurred,
            get("op", "c"),
            get("logical_guid"),
            get("channel_code"),
            importer if not audit else _audit(audit),
        )


Check = Callable[[Any], bool]


@attrs.frozen
class _TypedCheck:
    entry: CatalogEntry
    check: Check
    whole: bool


def typed_envelope(payload_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope whose payload must also match an event type's schema.

    The payload is required here: the slow path checks an absent payload
    as ``{}``, which the schema may refuse.
    """
    envelope = envelope_schema()
    inner = {k: v for k, v in payload_schema.items() if k not in ("$schema", "$id")}
    envelope["properties"]["payload"] = {"type": "object", "allOf": [inner]}
    envelope["required"] = [*envelope["required"], "payload"]

    return envelope


def _refers(schema: Any) -> bool:
    """Whether a schema refers elsewhere (those are checked by the catalog)."""
    if isinstance(schema, dict):
        return any(
            key in _REFERENCES or _refers(value) for key, value in schema.items()
        )
    if isinstance(schema, list):
        return any(_refers(item) for item in schema)

    return False


_REFERENCES = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})


def _audit(raw: dict[str, Any]) -> Audit:
    refs = raw.get("source_refs") or ()

    return Audit(
        actor=raw.get("actor"),
        context_source=raw.get("context_source"),
        reason=raw.get("reason"),
        source_refs=tuple(SourceRef(r["kind"], r["id"]) for r in refs),
    )
