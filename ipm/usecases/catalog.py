"""The event catalog: which (service, action) pairs exist and their schemas.

ipm's own event types come from :mod:`ipm.schemas` (``event.ipm.*``);
hosts add theirs with :meth:`EventCatalog.register`. A catalog belongs to
one application, so two applications in one process never see each
other's registrations. Export contracts are derived from the same entries,
so a new event type shows up in both at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs
import jsonschema

from ipm import schemas
from ipm.domain.errors import Conflict, InvalidRequest, Problem
from ipm.domain.events import NewEvent, check_names
from ipm.domain.jsoncodec import canonical_bytes

OWN_SERVICE = "ipm"


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
        self._schemas: dict[str, Mapping[str, Any]] = {}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        for name in schemas.event_schema_names():
            self._add_own(name)

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
        check_names(service, action)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InvalidRequest(
                f"the schema for {service}/{action} is not valid JSON Schema",
                [Problem("/" + "/".join(map(str, exc.path)), exc.message)],
            ) from None

        name = f"event.{service}.{action}"
        if name in self._schemas and self._schemas[name] != schema:
            raise Conflict(f"{service}/{action} is registered with another schema")

        entry = CatalogEntry(service, action, name, description, op)
        self._entries[entry.key] = entry
        self._schemas[name] = dict(schema)
        self._validators[name] = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )

        return entry

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._entries.values(), key=lambda e: e.key)

    def entry(self, service: str, action: str) -> CatalogEntry | None:
        return self._entries.get((service, action))

    def schema(self, name: str) -> Mapping[str, Any] | None:
        if name in self._schemas:
            return self._schemas[name]
        if name in schemas.names():
            return schemas.get(name)

        return None

    def version_of(self, entry: CatalogEntry) -> str:
        """A digest of the entry's schema: it changes when the schema does."""
        schema = self.schema(entry.schema_name) or {}
        return hashlib.sha256(canonical_bytes(dict(schema))).hexdigest()[:16]

    def check_payload(self, new: NewEvent, pointer: str = "/payload") -> None:
        """Refuse a payload that breaks its registered schema, naming every fault."""
        entry = self._entries.get((new.service, new.action))
        if entry is None:
            return

        if entry.service == OWN_SERVICE and entry.schema_name not in self._validators:
            problems = schemas.validate(entry.schema_name, dict(new.payload))
        else:
            validator = self._validators[entry.schema_name]
            problems = [
                Problem(pointer + _pointer(error.absolute_path), error.message[:200])
                for error in validator.iter_errors(dict(new.payload))
            ]
        if problems:
            problems = [
                p
                if p.pointer.startswith(pointer)
                else Problem(pointer + p.pointer, p.message)
                for p in problems
            ]
            raise InvalidRequest(
                f"payload does not match the schema of {new.service}/{new.action}",
                problems,
            )

    def _add_own(self, schema_name: str) -> None:
        action = schema_name.removeprefix(f"event.{OWN_SERVICE}.")
        description = str(schemas.get(schema_name).get("description", ""))
        entry = CatalogEntry(OWN_SERVICE, action, schema_name, description)
        self._entries[entry.key] = entry


def _pointer(path: Any) -> str:
    return "".join(
        "/" + str(part).replace("~", "~0").replace("/", "~1") for part in path
    )
