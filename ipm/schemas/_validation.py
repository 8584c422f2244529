"""Two validators held equal: a compiled fast one and the reference.

Theory of operation: every instance first meets the compiled validator of
jsonschema-rs, which only answers valid or not. Only an invalid instance
meets the reference, jsonschema, which lists every problem; its problems
are rewritten as short messages, each with the RFC 6901 pointer of the
offending value. The two must agree. Three formats are asserted: uri and
date are plain Python functions given to both; date-time is checked
natively by jsonschema-rs (a callback per timestamp would cost several
times the whole validation) and mirrored exactly by the function given to
the reference. Every other format is an annotation, as Draft 2020-12 says
by default. The reference matches a ``pattern`` (and the keys of
``patternProperties``) with the compiled engine's regex, as ECMA-262 reads
it (``$`` is the end of the string): linear in the text for patterns
without backreferences or lookaround, and bounded for those. Python's
``re`` backtracks without bound, so one value such as ``"a" * 40 + "!"``
against ``^(a+)+$`` held a check, and an import slice with it, for hours.
Should the two still disagree, the reference wins. Differential tests
hold them equal.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jsonschema
import jsonschema.validators
import jsonschema_rs
import referencing
import referencing.jsonschema
from jsonschema.exceptions import ValidationError

from ipm.domain.errors import (
    MAX_PROBLEMS,
    Problem,
    capped,
    document_order,
    pointer_token,
)
from ipm.schemas._fragments import PATTERN_RULES, Schema

# -- formats -----------------------------------------------------------------

_DATE = r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
_DATE_TIME = re.compile(
    _DATE + r"[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_DATE_ONLY = re.compile(_DATE)
_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*:"
    r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_LAST_MINUTE_OF_DAY = 23 * 60 + 59


def _is_calendar_date(year: int, month: int, day: int) -> bool:
    """A proleptic Gregorian date; year 0000 included, as RFC 3339 allows."""
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS[month - 1]:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)

    return month != 2 or day <= 28 or leap


def is_date_time(value: object) -> bool:
    """An RFC 3339 date-time, judged exactly as jsonschema-rs judges one.

    A leap second (second 60) passes only at 23:59 UTC. ipm's timestamp
    parser refuses leap seconds later with a clear 400; keeping the same
    verdict here lets the compiled validator check date-times natively,
    which is several times faster than calling back into Python.
    """
    if not isinstance(value, str):
        return True
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False

    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    sign, off_hour, off_minute = match.groups()[6:]
    offset = 0
    if sign is not None:
        if int(off_hour) > 23 or int(off_minute) > 59:
            return False
        offset = (int(off_hour) * 60 + int(off_minute)) * (1 if sign == "+" else -1)
    if hour > 23 or minute > 59 or second > 60:
        return False
    if second == 60 and (hour * 60 + minute - offset) % 1440 != _LAST_MINUTE_OF_DAY:
        return False

    return _is_calendar_date(year, month, day)


def is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _DATE_ONLY.fullmatch(value)

    return match is not None and _is_calendar_date(*map(int, match.groups()))


def is_uri(value: object) -> bool:
    """An absolute URI (RFC 3986 characters, a scheme, no spaces)."""
    return not isinstance(value, str) or _URI.fullmatch(value) is not None


FORMATS: dict[str, Callable[[object], bool]] = {
    "date-time": is_date_time,
    "date": is_date,
    "uri": is_uri,
}

# Formats jsonschema-rs would check on its own; here they stay annotations,
# as they are for the reference.
_RS_BUILTIN_FORMATS = (
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
    "uri-reference",
    "uri-template",
    "uuid",
)


def _annotation(value: object) -> bool:
    return True


def _rs_formats() -> dict[str, Callable[[object], bool]]:
    # date-time is left to the compiled validator: is_date_time mirrors it.
    ours = {name: check for name, check in FORMATS.items() if name != "date-time"}

    return {**dict.fromkeys(_RS_BUILTIN_FORMATS, _annotation), **ours}


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name)(check)

    return checker


# -- patterns, the ECMA-262 way -----------------------------------------------


@functools.lru_cache(maxsize=1024)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile a schema pattern so that ``$`` means the end of the string."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        out.append(r"\Z" if char == "$" and not in_class else char)
        index += 1

    return re.compile("".join(out))


@functools.lru_cache(maxsize=1024)
def _matches(pattern: str) -> Callable[[str], bool]:
    """Whether a text matches ``pattern``, by the compiled engine's regex."""
    checker = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})

    def matches(text: str) -> bool:
        if type(text) is not str:
            # A str subclass (a host's StrEnum): the engine takes only str.
            text = str.__str__(text)
        try:
            return checker.is_valid(text)
        except UnicodeEncodeError:
            # A lone surrogate: no JSON text holds one, and the engine
            # cannot take it. It matches nothing (a library caller's dict;
            # the wire's parser refuses such text before any schema).
            return False

    return matches


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern)(instance):
        yield ValidationError(f"does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        matches = _matches(pattern)
        for key, value in instance.items():
            if matches(key):
                yield from validator.descend(
                    value, subschema, path=key, schema_path=pattern
                )


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    """``additionalProperties``, the extra fields taken in the instance's
    order and told from ``patternProperties`` by the same regex engine.

    The reference takes them from a set: past the cap on problems, which
    ones were listed changed from one process to the next.
    """
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [_matches(pattern) for pattern in schema.get("patternProperties", {})]
    extras = [
        name
        for name in instance
        if name not in known and not any(matches(name) for matches in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        yield ValidationError("additional properties are not allowed")


_Reference = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {
        "additionalProperties": _additional_properties,
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
    },
)


# -- compiling ---------------------------------------------------------------

SCHEMA_VALUED = frozenset(
    {
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SCHEMA_MAPS = frozenset(
    {"$defs", "dependentSchemas", "patternProperties", "properties"}
)


def without_false(schema: Any) -> Any:
    """The schema with each ``false`` subschema spelt ``{"not": {}}``.

    Works around jsonschema dropping the instance path of an error raised
    by a ``false`` subschema (the pointer would name the parent object).
    As a bonus, ``additionalProperties: false`` then yields one error per
    unknown field, each at its own path.
    """
    if schema is False:
        return {"not": {}}
    if not isinstance(schema, dict):
        return schema

    rewritten: dict[str, Any] = {}
    for key, value in schema.items():
        if key in SCHEMA_VALUED:
            value = without_false(value)
        elif key in SCHEMA_LISTS and isinstance(value, list):
            value = [without_false(item) for item in value]
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            value = {name: without_false(item) for name, item in value.items()}
        rewritten[key] = value

    return rewritten


def reference_registry(schemas: Mapping[str, Schema]) -> referencing.Registry[Any]:
    spec = referencing.jsonschema.DRAFT202012
    resources = [(uri, spec.create_resource(schema)) for uri, schema in schemas.items()]

    return referencing.Registry().with_resources(resources)


def compile_reference(schema: Schema, registry: referencing.Registry[Any]) -> Any:
    return _Reference(
        without_false(schema), registry=registry, format_checker=_format_checker()
    )


def fast_registry(schemas: Mapping[str, Schema]) -> jsonschema_rs.Registry:
    with _panics_refused():
        return jsonschema_rs.Registry(list(schemas.items()))


def compile_fast(schema: Schema, registry: jsonschema_rs.Registry) -> Any:
    with _panics_refused():
        return jsonschema_rs.Draft202012Validator(
            schema,
            validate_formats=True,
            formats=_rs_formats(),
            registry=registry,
            offline=True,
        )


def panicked(error: BaseException) -> bool:
    """Whether ``error`` is the compiled validator's own failure (a Rust
    panic, which PyO3 raises as a BaseException, past ``except Exception``)."""
    return type(error).__name__ == "PanicException"


@contextlib.contextmanager
def _panics_refused() -> Iterator[None]:
    """A panic of the compiled validator as a ValueError, which its callers
    read as "cannot compile" (a schema refused, not a crash)."""
    try:
        yield
    except BaseException as error:
        if not panicked(error):
            raise
        raise ValueError(f"the compiled validator failed on it ({error})") from None


def schema_problems(schema: Any) -> list[Problem]:
    """Problems of a schema itself against the Draft 2020-12 metaschema."""
    meta = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)

    return problems(meta.iter_errors(schema))


def patterns_of(schema: Any) -> Iterator[str]:
    """Every ``pattern`` value and ``patternProperties`` key in a schema."""
    if isinstance(schema, list):
        for item in schema:
            yield from patterns_of(item)
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            yield value
        if key == "patternProperties" and isinstance(value, dict):
            yield from value
        yield from patterns_of(value)


# -- problems ----------------------------------------------------------------

_LONGEST_MESSAGE = 200

_KINDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "object": "an object",
    "array": "an array",
    "boolean": "a boolean",
    "null": "null",
}

_FORMAT_MESSAGES = {
    "date-time": "must be an RFC 3339 date-time such as 2026-01-01T00:00:00Z",
    "date": "must be a date such as 2026-01-01",
    "uri": "must be an absolute URI",
}


def truncate(text: str, limit: int = _LONGEST_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pointer(path: Iterable[object]) -> str:
    return "".join("/" + pointer_token(token) for token in path)


def _json(value: Any) -> str:
    return truncate(json.dumps(value, ensure_ascii=False, default=str), 60)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _kinds(kinds: Any) -> str:
    names = [kinds] if isinstance(kinds, str) else list(kinds)

    return " or ".join(_KINDS.get(name, name) for name in names)


def _not_message(excluded: Any, schema: Any) -> str:
    if isinstance(excluded, dict) and set(excluded) - {"type"} == {"required"}:
        return "must not combine " + " and ".join(excluded["required"])
    # A field forbidden in some case says why in its description.
    why = schema.get("description") if isinstance(schema, dict) else None

    return f"is not allowed: {why}" if isinstance(why, str) else "is not allowed"


def _limit_message(keyword: str, value: Any) -> str | None:
    templates: dict[str, Callable[[Any], str]] = {
        "minLength": lambda n: f"must have at least {_plural(n, 'character')}",
        "maxLength": lambda n: f"must have at most {_plural(n, 'character')}",
        "minItems": lambda n: f"must have at least {_plural(n, 'item')}",
        "maxItems": lambda n: f"must have at most {_plural(n, 'item')}",
        "minProperties": lambda n: f"must have at least {_plural(n, 'field')}",
        "maxProperties": lambda n: f"must have at most {_plural(n, 'field')}",
        "minimum": lambda n: f"must be at least {n}",
        "maximum": lambda n: f"must be at most {n}",
        "exclusiveMinimum": lambda n: f"must be greater than {n}",
        "exclusiveMaximum": lambda n: f"must be less than {n}",
        "multipleOf": lambda n: f"must be a multiple of {n}",
    }
    template = templates.get(keyword)

    return None if template is None else template(value)


def message(error: ValidationError) -> str:
    """A short message for one failed keyword, never echoing the value."""
    keyword, value = error.validator, error.validator_value
    if keyword is None:
        return "is not allowed here"
    if keyword == "type":
        return "must be " + _kinds(value)
    if keyword == "enum":
        return truncate("must be one of " + ", ".join(_json(v) for v in value))
    if keyword == "const":
        return "must be " + _json(value)
    if keyword == "pattern":
        said = PATTERN_RULES.get(str(value))
        return said or "must match the pattern " + truncate(str(value), 100)
    if keyword == "format":
        return _FORMAT_MESSAGES.get(str(value), f"must be a valid {value}")
    if keyword == "not":
        return _not_message(value, error.schema)
    if keyword == "uniqueItems":
        return "must not contain duplicate items"
    if keyword == "oneOf" and not error.context:
        return "matches more than one allowed shape"

    return _limit_message(str(keyword), value) or truncate(error.message)


def _kind_mismatch(child: ValidationError, parent: ValidationError) -> bool:
    same_place = bool(child.absolute_path == parent.absolute_path)

    return child.validator == "type" and same_place


def _kind_names(errors: Iterable[ValidationError]) -> list[str]:
    """The JSON types that ``type`` errors among ``errors`` asked for."""
    names: dict[str, None] = {}
    for error in errors:
        if error.validator == "type":
            value = error.validator_value
            names.update(dict.fromkeys([value] if isinstance(value, str) else value))

    return list(names)


def _alternatives(error: ValidationError) -> list[Problem]:
    """Explain anyOf/oneOf by the branch that came closest to matching.

    A branch that fails on the very type of the value is off the mark;
    among the others, the one with the fewest problems is the closest.
    """
    children = list(error.context or ())
    branches: dict[object, list[ValidationError]] = {}
    for child in children:
        branches.setdefault(child.relative_schema_path[0], []).append(child)
    plausible: list[list[ValidationError]] = [
        group
        for group in branches.values()
        if not any(_kind_mismatch(child, error) for child in group)
    ]
    if plausible:
        closest: list[ValidationError] = min(plausible, key=len)
        return problems(closest)

    kinds = _kind_names(children)
    text = "must be " + _kinds(kinds) if kinds else "has the wrong shape"

    return [Problem(pointer(error.absolute_path), text)]


def explain(error: ValidationError) -> list[Problem]:
    """The problems one reference error stands for."""
    where = pointer(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [name for name in error.validator_value if name not in instance]
        return [
            Problem(f"{where}/{pointer_token(name)}", "is required") for name in missing
        ]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _alternatives(error)

    return [Problem(where, message(error))]


def problems(errors: Iterable[ValidationError]) -> list[Problem]:
    """Every problem once, sorted by pointer (array items by index); past
    :data:`MAX_PROBLEMS`, the first found and a last item saying so."""
    found: dict[Problem, None] = {}
    each = (problem for error in errors for problem in explain(error))
    for problem in each:
        found[problem] = None
        if len(found) > MAX_PROBLEMS:
            break

    # The reference yields some problems in set order; sort for stable output.
    return capped(sorted(found, key=document_order))
