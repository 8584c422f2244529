"""Every request, response and event schema of ipm, by name.

The schemas are JSON Schema Draft 2020-12, each with ``$id``
``urn:ipm:schema:<name>``. :func:`validate` lists every problem of an
instance with the JSON pointer of the offending value; :func:`check`
raises :class:`~ipm.domain.errors.InvalidRequest` with those problems.
:func:`register` adds a named schema to this module-level set, for a host
that validates its own documents with :func:`validate` and :func:`check`;
it changes no application's event catalog (that is
``Application.register_event_type``, one catalog per application).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.jsoncodec import strict_problems
from ipm.schemas import _validation
from ipm.schemas._catalog import SchemaSet
from ipm.schemas._events import event_ops, events
from ipm.schemas._fragments import Schema
from ipm.schemas._requests import requests
from ipm.schemas._responses import responses
from ipm.schemas.specimens import schema_of_specimen, specimen, specimen_names

__all__ = [
    "SchemaSet",
    "check",
    "check_arguments",
    "event_ops",
    "event_schema_names",
    "fast_check",
    "get",
    "is_valid",
    "names",
    "register",
    "request_schema_names",
    "response_schema_names",
    "schema_of_specimen",
    "specimen",
    "specimen_names",
    "validate",
]


@functools.cache
def _default() -> SchemaSet:
    # Built on first use, not at import: importing ipm stays cheap.
    return SchemaSet.builtin()


@functools.cache
def _builtin_names() -> dict[str, tuple[str, ...]]:
    return {
        "request": tuple(requests()),
        "response": tuple(responses()),
        "event": tuple(events()),
    }


_BODY_PROBLEM = "request body does not match its schema"


def names() -> tuple[str, ...]:
    """Every schema name, built-in and registered."""
    return _default().names()


def get(name: str) -> Schema:
    """A copy of the named schema; KeyError when there is none."""
    return _default().get(name)


def validate(name: str, instance: Any) -> list[Problem]:
    """Every problem of ``instance`` against the named schema ([] if valid).

    What no JSON text could hold (NaN, an infinity, a lone surrogate, a
    value that is no JSON value) is a problem by itself, as it is on the
    wire, whatever the schema would say of it; those are listed alone.
    """
    schema = _default()
    if name not in schema:
        raise KeyError(name)

    return strict_problems(instance) or schema.validate(name, instance)


def is_valid(name: str, instance: Any) -> bool:
    """Whether :func:`validate` finds no problem."""
    return not validate(name, instance)


def check(
    name: str,
    instance: Any,
    *,
    message: str = _BODY_PROBLEM,
) -> None:
    """Raise InvalidRequest listing every problem, if there is any."""
    problems = validate(name, instance)
    if problems:
        raise InvalidRequest(message, problems)


def check_parsed(name: str, instance: Any, *, message: str = _BODY_PROBLEM) -> None:
    """:func:`check` for an instance ipm's strict JSON parser read, which
    cannot hold what JSON text cannot: no walk for it."""
    _default().check(name, instance, message=message)


def check_arguments(
    route: str, *, always: Mapping[str, Any] | None = None, **fields: Any
) -> None:
    """Check a direct call's arguments as the route's request schema checks them.

    ``route`` names the request schema without its suffix (``"WebhookGet"``
    for ``WebhookGetRequest``). A host that calls a use case gets the very
    bounds, patterns and choices the wire enforces, each problem pointed at
    by the argument's name. In ``fields`` ``None`` means "not given", as an
    absent field does on the wire; ``always`` holds arguments that have no
    "not given" (``None`` there is checked, and refused where the wire
    refuses null).
    """
    given = {name: value for name, value in fields.items() if value is not None}
    instance = {**given, **(always or {})}
    # What no request body could hold (a lone surrogate, NaN, an object
    # that is no JSON value) is refused by name before the schema is asked.
    problems = strict_problems(instance)
    if problems:
        raise InvalidRequest("the arguments are not valid", problems)
    check_parsed(f"{route}Request", instance, message="the arguments are not valid")


def fast_check(schema: Schema) -> Callable[[Any], bool]:
    """A compiled yes-or-no check of one self-contained schema.

    The same compiled validator, with the same format rules, as every
    schema of a set gets; no error list, no reference to other schemas.
    A value that is not plain JSON data (an integer beyond 64 bits, a
    tuple...) raises ``ValueError``, ``TypeError`` or ``OverflowError``.
    """
    validator = _validation.compile_fast(schema, _validation.fast_registry({}))
    check: Callable[[Any], bool] = validator.is_valid

    return check


def register(name: str, schema: Any) -> None:
    """Add a named Draft 2020-12 schema to the module-level set.

    For :func:`validate` and :func:`check` only: an application's event
    catalog is its own (``Application.register_event_type``).

    A schema that is not valid Draft 2020-12 raises InvalidRequest; a
    different schema under a name already taken raises Conflict.
    """
    _default().register(name, schema)


def request_schema_names() -> tuple[str, ...]:
    return _builtin_names()["request"]


def response_schema_names() -> tuple[str, ...]:
    return _builtin_names()["response"]


def event_schema_names() -> tuple[str, ...]:
    """ipm's own event payload schemas, then the ones hosts registered."""
    return _builtin_names()["event"] + _default().registered_names()
