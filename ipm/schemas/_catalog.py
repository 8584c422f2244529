"""A named set of schemas and their compiled validators.

The built-in schemas are assembled from the fragment modules when the set
is first needed (never at import). Hosts add the payload schemas of their
own events with :meth:`SchemaSet.register`. Validators are compiled on
first use of a name and cached; registering a schema rebuilds the
reference registries, so later schemas may refer to earlier ones.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ipm.domain.errors import Conflict, InvalidRequest, IpmError, Problem, pointer_token
from ipm.domain.jsoncodec import strict_problems
from ipm.schemas import _bundle, _validation
from ipm.schemas._events import EVENT_PREFIX, events
from ipm.schemas._fragments import DIALECT, URN, Schema
from ipm.schemas._objects import shared
from ipm.schemas._requests import requests
from ipm.schemas._responses import responses

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def stamp(name: str, schema: Schema) -> Schema:
    """The schema with its dialect, URN and title in front."""
    head = {"$schema": DIALECT, "$id": URN + name, "title": name}

    return {**head, **schema}


def builtin() -> dict[str, Schema]:
    named = {**shared(), **requests(), **responses(), **events()}

    return {name: stamp(name, schema) for name, schema in named.items()}


class _Registries(NamedTuple):
    reference: Any
    fast: Any


class SchemaSet:
    """Schemas by name, validated fast and explained by the reference."""

    def __init__(self, schemas: Mapping[str, Schema]) -> None:
        self._schemas = dict(schemas)
        self._lock = threading.RLock()
        self._fast: dict[str, Any] = {}
        self._reference: dict[str, Any] = {}
        self._registry_cache: _Registries | None = None
        self._disagreed: set[str] = set()
        self._registered: list[str] = []
        # The ids host schemas claim besides their URN, to the schema's name.
        self._ids: dict[str, str] = {}

    @classmethod
    def builtin(cls) -> SchemaSet:
        return cls(builtin())

    # -- reading ---------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        return tuple(self._schemas)

    def registered_names(self) -> tuple[str, ...]:
        """The names added with :meth:`register`, in order."""
        return tuple(self._registered)

    def get(self, name: str) -> Schema:
        return copy.deepcopy(self._schemas[name])

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def bundled(self, name: str) -> Schema:
        """The schema as one document that needs no other (see
        :mod:`ipm.schemas._bundle`)."""
        with self._lock:
            found = dict(self._schemas)

        return _bundle.bundled(found, name)

    # -- validating ------------------------------------------------------------

    def is_valid(self, name: str, instance: Any) -> bool:
        """True exactly when :meth:`validate` finds no problem."""
        return not self.validate(name, instance)

    def validate(self, name: str, instance: Any) -> list[Problem]:
        """Every problem of the instance, each with its JSON pointer."""
        verdict = self._fast_verdict(name, instance)
        if verdict:
            return []

        return self._explain(name, instance, refused=verdict is False)

    def check(self, name: str, instance: Any, *, message: str) -> None:
        found = self.validate(name, instance)
        if found:
            raise InvalidRequest(message, found)

    def _fast_verdict(self, name: str, instance: Any) -> bool | None:
        """The compiled validator's answer; None when it could not judge."""
        validator = self._compiled(name, self._fast, _validation.compile_fast)
        try:
            return bool(validator.is_valid(instance))
        except (ValueError, TypeError, OverflowError):
            # Not plain JSON data (a tuple, a lone surrogate, a str
            # subclass...): let the reference judge it.
            return None
        except BaseException as error:
            if not _validation.panicked(error):
                raise
            return None  # the compiled validator failed: the reference judges

    def _explain(self, name: str, instance: Any, *, refused: bool) -> list[Problem]:
        """The reference's problems; ``refused`` says the compiled validator
        refused the instance, so finding none is a disagreement worth a log."""
        validator = self._compiled(name, self._reference, _validation.compile_reference)
        found = _validation.problems(validator.iter_errors(instance))
        if refused and not found and name not in self._disagreed:
            self._disagreed.add(name)
            logger.warning(
                "fast and reference validators disagree on schema %s; "
                "trusting the reference",
                name,
            )

        return found

    def _compiled(
        self, name: str, cache: dict[str, Any], build: Callable[[Schema, Any], Any]
    ) -> Any:
        validator = cache.get(name)
        if validator is not None:
            return validator

        with self._lock:
            schema = self._schemas[name]
            registries = self._registries()
            registry = registries.fast if cache is self._fast else registries.reference
            validator = cache[name] = build(schema, registry)

        return validator

    def _registries(self) -> _Registries:
        if self._registry_cache is None:
            by_uri = {URN + name: s for name, s in self._schemas.items()}
            self._registry_cache = _Registries(
                _validation.reference_registry(by_uri),
                _validation.fast_registry(by_uri),
            )

        return self._registry_cache

    # -- registering -----------------------------------------------------------

    def register(self, name: str, schema: Any) -> None:
        """Add a host's event payload schema; the same twice is a no-op."""
        try:
            self._register(name, schema)
        except RecursionError:
            # Checking, copying and compiling a schema all recurse with it.
            raise _too_deep() from None

    def register_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """Register several schemas together: all of them or none.

        The validators' registries are built once for the lot (registering
        one by one rebuilds them each time), so a schema may also refer to
        one later in the list. A refusal raises :class:`ItemRefused` naming
        the item.
        """
        candidates: list[tuple[str, Schema]] = []
        for index, (name, schema) in enumerate(items):
            try:
                _refuse_bad_name(name)
                candidates.append((name, _prepared(name, schema)))
            except RecursionError:
                raise ItemRefused(index, _too_deep()) from None
            except InvalidRequest as error:
                raise ItemRefused(index, error) from None

        with self._lock:
            fresh: dict[str, Schema] = {}
            for index, (name, candidate) in enumerate(candidates):
                existing = self._schemas.get(name, fresh.get(name))
                if existing is None:
                    fresh[name] = candidate
                elif existing != candidate:
                    conflict = Conflict(f"schema {name} is registered, differently")
                    raise ItemRefused(index, conflict)
            if not fresh:
                return
            claims = dict(self._ids)
            for index, (name, candidate) in enumerate(candidates):
                if fresh.get(name) is candidate:
                    try:
                        claims.update(_claims(name, candidate, claims))
                    except InvalidRequest as error:
                        raise ItemRefused(index, error) from None

            by_uri = {URN + n: s for n, s in {**self._schemas, **fresh}.items()}
            try:
                registries = _Registries(
                    _validation.reference_registry(by_uri),
                    _validation.fast_registry(by_uri),
                )
            except ValueError as error:
                # The compiled registry resolves every $ref when it is built
                # and fetches nothing: a ref to a remote document fails here.
                raise _unresolvable(error, candidates, fresh) from None
            for index, (name, candidate) in enumerate(candidates):
                if fresh.get(name) is candidate:
                    try:
                        _refuse_uncompilable(candidate, registries.fast)
                    except RecursionError:
                        raise ItemRefused(index, _too_deep()) from None
                    except InvalidRequest as error:
                        raise ItemRefused(index, error) from None
            self._schemas.update(fresh)
            self._registered.extend(fresh)
            self._ids = claims
            self._registry_cache = registries

    def _register(self, name: str, schema: Any) -> None:
        _refuse_bad_name(name)
        candidate = _prepared(name, schema)

        with self._lock:
            existing = self._schemas.get(name)
            if existing == candidate:
                return
            if existing is not None:
                raise Conflict(f"schema {name} is already registered, differently")
            claims = _claims(name, candidate, self._ids)
            # A schema that refers to none other compiles alone: building
            # the registry of every schema for it made registering one type
            # after another quadratic (800 types took 5 s).
            fast = self._registries().fast if _refers(candidate) else _empty_registry()
            _refuse_uncompilable(candidate, fast)
            self._schemas[name] = candidate
            self._registered.append(name)
            self._ids.update(claims)
            self._registry_cache = None


def _claims(name: str, schema: Schema, taken: Mapping[str, str]) -> dict[str, str]:
    """The ids ``schema`` claims besides its URN (its own $id, those of the
    resources nested in it), each to ``name``. InvalidRequest when one is
    already another schema's, or claimed twice in it: the validators would
    each pick one of the two for a reference to it (ipm's verdict would
    depend on which, and a served schema, which embeds what it reaches,
    could judge otherwise)."""
    own = str(schema["$id"]).removesuffix("#")
    ids = [own] if own != URN + name else []
    ids += [uri.removesuffix("#") for uri in _bundle.resource_ids(schema, own)]
    claims: dict[str, str] = {}
    for uri in ids:
        holder = name if uri in claims else taken.get(uri)
        if holder is not None:
            said = "another resource in it" if holder == name else f"schema {holder}"
            raise InvalidRequest(
                f"$id {uri} is already the id of {said}",
                [Problem("", f"{uri} must name one resource only")],
            )
        claims[uri] = name

    return claims


class ItemRefused(Exception):
    """One item of :meth:`SchemaSet.register_many` was refused: which, and why."""

    def __init__(self, index: int, error: IpmError) -> None:
        super().__init__(index, error.message)
        self.index = index
        self.error = error


def _unresolvable(
    error: ValueError, candidates: list[tuple[str, Schema]], fresh: dict[str, Schema]
) -> ItemRefused:
    """The refusal of a batch whose $ref names a document ipm does not hold.

    The item blamed is the first new one that names the missing document
    (the compiler says which), or else the first new one.
    """
    reason = _validation.truncate(str(error).splitlines()[0])
    missing = re.search(r"'([^']+)'", reason)
    new = [i for i, (name, c) in enumerate(candidates) if fresh.get(name) is c]
    named = [
        i for i in new if missing and missing.group(1) in json.dumps(candidates[i][1])
    ]
    refusal = InvalidRequest(
        "the schema refers to a document that is not in ipm's catalog "
        "(remote $ref are never fetched)",
        [Problem("", reason)],
    )

    return ItemRefused((named or new)[0], refusal)


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        "the schema is nested too deeply", [Problem("", "too deeply nested")]
    )


def _refuse_misread_references(schema: Schema, base: str) -> None:
    """Refuse references the two validators read apart: an empty one (the
    compiled validator ignores it; write "#" for the whole schema) and one
    to ipm's namespace not written in lower case (the compiled validator
    finds it, the reference validator does not)."""
    for target in _bundle.references(schema, base):
        if target == "":
            raise InvalidRequest(
                'an empty $ref is read differently by validators: write "#"',
                [Problem("", 'a $ref of "" (write "#")')],
            )
        if target.lower().startswith(URN.lower()) and not target.startswith(URN):
            raise InvalidRequest(
                f"write ipm's schema references in lower case ({URN}...)",
                [Problem("", _validation.truncate(f"{target}: not {URN}..."))],
            )
        _refuse_other_spelling(target, "$ref")
    for uri in _bundle.resource_ids(schema, base):
        _refuse_other_spelling(uri, "$id")
    own = schema.get("$id")
    if isinstance(own, str):
        _refuse_other_spelling(own, "$id")


def _refuse_other_spelling(uri: str, keyword: str) -> None:
    """Refuse an absolute id or reference not written as the compiled
    validator reads it: the reference validator would read it apart (one
    resolves it, the other does not, or two ids are one to one of them)."""
    written = uri.removesuffix("#")  # an empty fragment names the same
    normal = _bundle.normal_form(written)
    if normal != written:
        raise InvalidRequest(
            f"write {keyword} {uri} as {normal}",
            [Problem("", _validation.truncate(f"{uri}: write it as {normal}"))],
        )


def _refuse_bad_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            "a schema name is 1 to 128 letters, digits, '_', '.' or '-'",
            [Problem("", "invalid schema name")],
        )
    if name.startswith(EVENT_PREFIX):
        raise InvalidRequest(
            f"schema names starting with {EVENT_PREFIX} belong to ipm",
            [Problem("", "reserved schema name")],
        )


def _prepared(name: str, schema: Any) -> Schema:
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "a schema must be a JSON object", [Problem("", "must be an object")]
        )
    unwritable = strict_problems(schema, max_depth=sys.maxsize)
    if unwritable:
        # ipm serves the schemas it checks with: NaN would be served as
        # null (or, beside a 65-bit integer, not at all), so the schema
        # read by integrators would not be the one applied. Its depth is
        # left to the recursion guard of register().
        raise InvalidRequest("a schema must be strict JSON", unwritable)
    if schema.get("$schema", DIALECT) != DIALECT:
        raise InvalidRequest(
            "only Draft 2020-12 schemas are accepted",
            [Problem("/$schema", f"must be {DIALECT}")],
        )

    found = _validation.schema_problems(schema)
    if found:
        raise InvalidRequest("the schema is not valid Draft 2020-12", found)
    claimed = _claimed_ids(schema, URN + name)
    if claimed:
        # An id in ipm's namespace would take over that schema for every
        # $ref to it (the two validators could even resolve it differently).
        raise InvalidRequest(
            f"$id in {URN}... names ipm's schemas; leave $id out",
            [
                Problem(pointer, "must not claim an ipm schema id")
                for pointer in claimed
            ],
        )

    own = schema.get("$id")
    if own is not None and not (isinstance(own, str) and _bundle.is_absolute(own)):
        # A relative one would be read against the schema's URN, where it
        # resolves to nothing: every later schema's compile would fail.
        raise InvalidRequest(
            "a schema's $id must be an absolute URI (or be left out)",
            [Problem("/$id", "must be an absolute URI")],
        )
    _refuse_misread_references(schema, URN + name)

    prepared = copy.deepcopy(schema)
    prepared.setdefault("$schema", DIALECT)
    prepared.setdefault("$id", URN + name)
    prepared.setdefault("title", name)

    return prepared


def _claimed_ids(schema: Any, own: str, pointer: str = "") -> list[str]:
    """Pointers to every ``$id`` in ipm's namespace but ``own`` at the top."""
    found: list[str] = []
    if isinstance(schema, dict):
        value = schema.get("$id")
        # Any case: the compiled validator reads URN:IPM: as urn:ipm:.
        ours = isinstance(value, str) and value.lower().startswith("urn:ipm:")
        if ours and (pointer or value != own):
            found.append(f"{pointer}/$id")
        for key, child in schema.items():
            found += _claimed_ids(child, own, f"{pointer}/{pointer_token(key)}")
    elif isinstance(schema, list):
        for index, child in enumerate(schema):
            found += _claimed_ids(child, own, f"{pointer}/{index}")

    return found


def _refers(schema: Any) -> bool:
    """Whether a schema holds a ``$ref`` or ``$dynamicRef`` anywhere (a
    key of that name inside a ``const`` counts too: that only costs the
    longer check)."""
    if isinstance(schema, dict):
        return (
            "$ref" in schema
            or "$dynamicRef" in schema
            or any(_refers(value) for value in schema.values())
        )
    if isinstance(schema, list):
        return any(_refers(item) for item in schema)

    return False


@functools.cache
def _empty_registry() -> Any:
    """The compiled registry of no schema, for one that refers to none."""
    return _validation.fast_registry({})


def _refuse_uncompilable(schema: Schema, fast: Any) -> None:
    for pattern in _validation.patterns_of(schema):
        try:
            _validation.ecma_regex(pattern)
        except re.error as error:
            raise InvalidRequest(
                "the schema has a pattern that does not compile",
                [Problem("", _validation.truncate(f"{pattern}: {error}"))],
            ) from error

    try:
        _validation.compile_fast(schema, fast)
    except Exception as error:  # the compiler reports with one broad type
        raise InvalidRequest(
            "the schema does not compile",
            [Problem("", _validation.truncate(str(error).splitlines()[0]))],
        ) from error
