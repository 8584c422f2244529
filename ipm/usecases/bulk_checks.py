"""The catalog's payload verdicts, sooner: a compiled validator in front.

Theory of operation. :meth:`EventCatalog.check_payload` validates a host
event's payload with jsonschema, the reference and the source of every
message, at some ten thousand payloads a second — the hot spot of a bulk
import. :class:`FastPayloadCheck` compiles each host schema once more with
jsonschema-rs, giving it the very format checks the reference applies (the
reference's own checker functions), and asks the reference only about the
payloads the compiled validator refuses or cannot judge. So a valid
payload costs microseconds, and a refusal and its messages are the
catalog's own.

The one rule that keeps the verdicts equal: the compiled validator may be
stricter than the reference (the reference then has the last word) but
never laxer. Where the two regular-expression dialects could read a
pattern differently in the lax direction (``\\Z``, ``\\A``, named groups,
inline flags), the schema gets no compiled validator at all. A
differential property test holds the two equal on generated payloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import jsonschema
import jsonschema_rs

from ipm.domain.events import NewEvent
from ipm.usecases.catalog import OWN_SERVICE, CatalogEntry, EventCatalog

# Python-only regex syntax the other dialect might read as something laxer.
_RISKY_PATTERN = re.compile(r"\\[AZz]|\(\?P|\(\?[aiLmsux]")


class FastPayloadCheck:
    """Stands in for a catalog wherever only ``check_payload`` is called."""

    def __init__(self, catalog: EventCatalog) -> None:
        self.catalog = catalog
        self._compiled: dict[str, Any] = {}

    def check_payload(self, new: NewEvent, pointer: str = "/payload") -> None:
        """Return quietly or raise exactly as the catalog would."""
        entry = self.catalog.entry(new.service, new.action)
        if entry is None or self.is_valid(entry, new.payload):
            return

        self.catalog.check_payload(new, pointer)

    def is_valid(self, entry: CatalogEntry, payload: Mapping[str, Any]) -> bool:
        """True only when the compiled validator accepts the payload."""
        validator = self._validator(entry)
        if validator is None:
            return False
        try:
            return bool(validator.is_valid(payload))
        except (ValueError, TypeError, OverflowError):
            return False

    def as_catalog(self) -> EventCatalog:
        """This check where a Recorder expects its catalog."""
        return cast(EventCatalog, self)

    def _validator(self, entry: CatalogEntry) -> Any:
        name = entry.schema_name
        if name not in self._compiled:
            schema = None
            if entry.service != OWN_SERVICE:
                schema = self.catalog.schema(name)
            self._compiled[name] = None if schema is None else compile_fast(schema)

        return self._compiled[name]


def compile_fast(schema: Mapping[str, Any]) -> Any:
    """A jsonschema-rs validator that judges formats as the reference does.

    ``None`` when the schema has a risky pattern or does not compile there:
    the reference then judges every payload alone.
    """
    if any(_RISKY_PATTERN.search(pattern) for pattern in patterns_of(schema)):
        return None
    try:
        return jsonschema_rs.Draft202012Validator(
            dict(schema), validate_formats=True, formats=_reference_formats()
        )
    except Exception:  # the compiler reports every problem with one type
        return None


def patterns_of(schema: Any) -> Iterator[str]:
    """Every regular expression in a schema (``pattern``, ``patternProperties``)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from value
            yield from patterns_of(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from patterns_of(item)


def _reference_formats() -> dict[str, Callable[[object], bool]]:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER

    def judge(name: str) -> Callable[[object], bool]:
        return lambda value: bool(checker.conforms(value, name))

    # Every format the compiled validator knows starts as an annotation, as
    # it is for the reference unless the reference checks it too.
    formats: dict[str, Callable[[object], bool]] = dict.fromkeys(
        _RS_FORMATS, _annotation
    )
    formats.update({name: judge(name) for name in checker.checkers})

    return formats


def _annotation(value: object) -> bool:
    return True


_RS_FORMATS = (
    "date",
    "date-time",
    "duration",
    "email",
    "hostname",
    "idn-email",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "iri",
    "iri-reference",
    "json-pointer",
    "regex",
    "relative-json-pointer",
    "time",
    "uri",
    "uri-reference",
    "uri-template",
    "uuid",
)
