"""The event catalog: which (service, action) pairs exist and their schemas.

ipm's own event types come with :mod:`ipm.schemas` (``event.ipm.*``);
hosts add theirs with :meth:`EventCatalog.register`. Each application
holds its own :class:`~ipm.schemas.SchemaSet`, so two applications in one
process never see each other's registrations, and host payloads get the
same fast validator (and the same pointer-per-problem errors) as ipm's own
requests. Export contracts are derived from the same entries, so a new
event type shows up in both at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

from ipm.domain.errors import InvalidRequest, IpmError, Problem
from ipm.domain.events import OPS, NewEvent, check_names
from ipm.domain.jsoncodec import canonical_bytes, is_unicode
from ipm.schemas import SchemaSet, event_ops, event_schema_names
from ipm.schemas._catalog import ItemRefused

OWN_SERVICE = "ipm"
INBOX_SERVICE = "inbox"
RESERVED_SERVICES = (OWN_SERVICE, INBOX_SERVICE)
"""The services only ipm records under: its own changes, and the default
notifier's alert notifications. No host, key holder or import may write
or register an event under them, since subscribers, the KPI export and
alert inboxes trust what those events say."""


@attrs.frozen
class CatalogEntry:
    service: str
    action: str
    schema_name: str
    description: str = ""
    op: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.action)


class EventCatalog:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], CatalogEntry] = {}
        self._generation = 0
        self._schemas = SchemaSet.builtin()
        ops = event_ops()
        for name in event_schema_names():
            if name in ops:
                self._add_own(name, ops[name])

    def register(
        self,
        service: str,
        action: str,
        schema: Mapping[str, Any],
        *,
        description: str = "",
        op: str | None = None,
    ) -> CatalogEntry:
        """Add a host event type; re-registering the same schema is harmless."""
        entry = _checked_entry(service, action, schema, description, op)
        try:
            self._schemas.register(entry.schema_name, dict(schema))
        except InvalidRequest as error:
            raise _from_schema(error) from None

        return self._add(entry)

    def register_all(self, types: Any) -> list[CatalogEntry]:
        """Register a list of event types, as a file of them holds: all or none.

        Each item is ``{service, action, schema, description?, op?}``; a
        problem points at its item (``/2/schema/type``). The schemas are
        registered together (SchemaSet.register_many), so a schema may
        refer to one later in the list, and a long list costs one build of
        the validators' registries, not one per type.
        """
        if not isinstance(types, list):
            given = "an object" if isinstance(types, dict) else type(types).__name__
            raise InvalidRequest(
                "event types are a JSON list of {service, action, schema}",
                [Problem("", f"must be a list, not {given} (wrap one type in [ ])")],
            )
        problems = [
            problem
            for i, item in enumerate(types)
            for problem in _type_problems(i, item)
        ]
        if problems:
            raise InvalidRequest("the event types are malformed", problems)

        entries = []
        for i, item in enumerate(types):
            try:
                entries.append(
                    _checked_entry(
                        item["service"],
                        item["action"],
                        item["schema"],
                        item.get("description", ""),
                        item.get("op"),
                    )
                )
            except InvalidRequest as error:
                raise _at_item(error, i) from None
        schemas = [
            (entry.schema_name, dict(item["schema"]))
            for entry, item in zip(entries, types, strict=True)
        ]
        try:
            self._schemas.register_many(schemas)
        except ItemRefused as refusal:
            cause = refusal.error
            if isinstance(cause, InvalidRequest):
                cause = _from_schema(cause)
            raise _at_item(cause, refusal.index) from None

        return [self._add(entry) for entry in entries]

    def _add(self, entry: CatalogEntry) -> CatalogEntry:
        if self._entries.get(entry.key) != entry:
            self._entries[entry.key] = entry
            self._generation += 1

        return self._entries[entry.key]

    @property
    def generation(self) -> int:
        """A number that changes whenever an entry is added or changed.

        A caller that checked payloads at one generation need not check
        them again while the number stays the same.
        """
        return self._generation

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._entries.values(), key=lambda e: e.key)

    def entry(self, service: str, action: str) -> CatalogEntry | None:
        return self._entries.get((service, action))

    def schema(self, name: str) -> Mapping[str, Any] | None:
        return self._schemas.get(name) if name in self._schemas else None

    def document(self, name: str) -> Mapping[str, Any] | None:
        """The schema as served at its ``schema_url``: with every schema it
        refers to embedded, so an integrator validates with it alone."""
        return self._schemas.bundled(name) if name in self._schemas else None

    def version_of(self, entry: CatalogEntry) -> str:
        """A digest of the entry's schema: it changes when the schema does."""
        schema = self._schemas.get(entry.schema_name)
        return hashlib.sha256(canonical_bytes(schema)).hexdigest()[:16]

    def check_payload(self, new: NewEvent, pointer: str = "/payload") -> None:
        """Refuse a payload that breaks its registered schema, naming every fault."""
        entry = self._entries.get((new.service, new.action))
        if entry is None:
            return

        message = f"payload does not match the schema of {new.service}/{new.action}"
        problems = self._schemas.validate(entry.schema_name, new.payload)
        if problems:
            raise InvalidRequest(
                message, [Problem(pointer + p.pointer, p.message) for p in problems]
            )

    def list_builtin(
        self, service: str, action: str, schema_name: str, *, op: str | None = None
    ) -> CatalogEntry:
        """List a type whose payload schema ships with ipm (``ipm.schemas``).

        For ipm's parts that record events under a service of their own
        (the default notifier's ``inbox``), once they are in use.
        """
        check_names(service, action)
        if schema_name not in self._schemas:
            raise KeyError(schema_name)
        description = str(self._schemas.get(schema_name).get("description", ""))

        return self._add(CatalogEntry(service, action, schema_name, description, op))

    def _add_own(self, schema_name: str, op: str | None) -> None:
        action = schema_name.removeprefix(f"event.{OWN_SERVICE}.")
        description = str(self._schemas.get(schema_name).get("description", ""))
        entry = CatalogEntry(OWN_SERVICE, action, schema_name, description, op)
        self._entries[entry.key] = entry


_TYPE_FIELDS = frozenset({"service", "action", "schema", "description", "op"})


def _type_problems(index: int, item: Any) -> list[Problem]:
    """What keeps one item of an event-type list from being registered."""
    if not isinstance(item, dict):
        return [Problem(f"/{index}", "must be an object")]

    problems = [
        Problem(f"/{index}/{name}", "required")
        for name in ("service", "action", "schema")
        if name not in item
    ]
    problems += [
        Problem(f"/{index}/{name}", "unknown field")
        for name in sorted(set(item) - _TYPE_FIELDS)
    ]
    return problems


def _checked_entry(
    service: Any, action: Any, schema: Any, description: Any, op: Any
) -> CatalogEntry:
    """The entry of a host event type, after every rule but the schema's own."""
    if not isinstance(service, str) or not isinstance(action, str):
        raise InvalidRequest(
            "service and action must be strings",
            [Problem("/service", "string"), Problem("/action", "string")],
        )
    check_names(service, action)
    if op is not None and op not in OPS:
        raise InvalidRequest(
            "op must be c, u or d when given", [Problem("/op", "one of c, u, d")]
        )
    if not isinstance(description, str) or not is_unicode(description):
        raise InvalidRequest(
            "description must be a string of valid Unicode",
            [Problem("/description", "string")],
        )
    if not isinstance(schema, Mapping):
        raise InvalidRequest(
            "a payload schema is a JSON Schema object",
            [Problem("/schema", "object")],
        )
    if service in RESERVED_SERVICES:
        # Refused as publishing under it is: a reserved name, not a clash.
        raise InvalidRequest(
            f"the service name {service!r} is reserved for ipm's own events",
            [Problem("/service", "reserved")],
        )

    return CatalogEntry(service, action, f"event.{service}.{action}", description, op)


def _from_schema(error: InvalidRequest) -> InvalidRequest:
    """The schema's own problems, pointed at from the call's fields."""
    problems = [Problem(f"/schema{p.pointer}", p.message) for p in error.details]
    return InvalidRequest(error.message, problems)


def _at_item(error: IpmError, index: int) -> IpmError:
    """``error`` with its problems pointed at from item ``index`` of a list."""
    details = [Problem(f"/{index}{p.pointer}", p.message) for p in error.details]
    return type(error)(error.message, details or [Problem(f"/{index}", error.message)])
