"""Small builders and the reusable pieces every ipm schema is made of.

Each builder returns a fresh dict, so a schema can be assembled from shared
pieces without two schemas ever aliasing (and mutating) the same object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Schema = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
URN = "urn:ipm:schema:"

ORGCODE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_PATTERN = "^[a-z0-9][a-z0-9_.-]*$"
KPI_CODE_PATTERN = "^[A-Z][A-Z0-9_]{0,63}$"
SHA256_PATTERN = "^[0-9a-f]{64}$"

BUCKETS = ("hourly", "daily", "weekly", "monthly")
OPS = ("c", "u", "d")
JOB_TYPES = ("import", "export")
JOB_TARGETS = ("events", "kpis")
JOB_MODES = ("apply", "validate")
JOB_STATUSES = (
    "pending",
    "awaiting_upload",
    "uploaded",
    "processing",
    "validated",
    "completed",
    "completed_with_errors",
    "failed",
)
JOB_FINAL_STATUSES = ("completed", "completed_with_errors", "failed")
WEBHOOK_STATUSES = ("active", "paused", "disabled")
SIGNING_ALGORITHMS = ("hmac-sha256", "ed25519")
ORDERING_KEYS = ("logical_guid", "channel_code", "service", "action", "orgcode")
COMPARATORS = ("gt", "gte", "lt", "lte", "eq", "ne")
ROLLUPS = ("sum", "min", "max", "avg", "last")
NOTIFICATION_STATUSES = ("not_requested", "sent", "failed", "pending")


# -- builders ---------------------------------------------------------------


def obj(
    properties: Mapping[str, Schema],
    required: Iterable[str] = (),
    *,
    extra: bool = False,
    **keywords: Any,
) -> Schema:
    """An object with the given properties; unknown properties refused."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    names = list(required)
    if names:
        schema["required"] = names
    if not extra:
        schema["additionalProperties"] = False
    schema.update(keywords)

    return schema


def closed(properties: Mapping[str, Schema], **keywords: Any) -> Schema:
    """An object whose every property is required (typical of responses)."""
    return obj(properties, properties.keys(), **keywords)


def string(
    min_length: int | None = None,
    max_length: int | None = None,
    **keywords: Any,
) -> Schema:
    schema: Schema = {"type": "string"}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    schema.update(keywords)

    return schema


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum

    return schema


MAX_INT64 = 2**63 - 1


def count() -> Schema:
    # Counts and positions are stored as SQLite integers (signed 64-bit).
    return integer(minimum=0, maximum=MAX_INT64)


def boolean(**keywords: Any) -> Schema:
    return {"type": "boolean", **keywords}


def enum(values: Iterable[Any], **keywords: Any) -> Schema:
    return {"enum": list(values), **keywords}


def const(value: Any) -> Schema:
    return {"const": value}


def array(
    items: Schema,
    *,
    min_items: int | None = None,
    max_items: int | None = None,
) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items

    return schema


def ref(name: str) -> Schema:
    """A reference to another ipm schema by its URN."""
    return {"$ref": URN + name}


def nullable(schema: Schema) -> Schema:
    """The same schema, also accepting ``null``."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}

    widened = dict(schema)
    if "enum" in widened:
        widened["enum"] = [*widened["enum"], None]
    if "type" in widened:
        kinds = widened["type"]
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        widened["type"] = [*kinds, "null"]

    return widened


def described(schema: Schema, text: str) -> Schema:
    return {**schema, "description": text}


# -- scalar fragments -------------------------------------------------------


def identifier() -> Schema:
    """job_id, webhook_id, kpi_id, alert_id, event_id."""
    return string(1, 128)


def id_field(name: str) -> dict[str, Schema]:
    """A one-property mapping naming a record by its id."""
    return {name: identifier()}


def revision() -> Schema:
    return described(string(1, 128), "Opaque; changes on every update.")


def timestamp() -> Schema:
    return string(format="date-time", examples=["2026-01-01T00:00:00Z"])


def orgcode() -> Schema:
    return string(pattern=ORGCODE_PATTERN)


def service_name() -> Schema:
    return string(1, 64, pattern=NAME_PATTERN)


def action_name() -> Schema:
    return string(1, 64, pattern=NAME_PATTERN)


def action_prefix() -> Schema:
    # The start of an action name, so a typo ("Sale.", "sale created") is a
    # 400 rather than a filter that can never match.
    return string(1, 64, pattern=NAME_PATTERN)


def kpi_code() -> Schema:
    return string(pattern=KPI_CODE_PATTERN)


_SPACE = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u202f\\u205f\\u3000"
_UNSEEN = (
    "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029"  # controls, line breaks
    # Format characters of the Basic Multilingual Plane (Unicode 14/15).
    "\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e"
    "\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff"
    "\\ufff9-\\ufffb"
)
_JOINER = "\\u200c\\u200d"
SCOPE_PATTERN = (
    f"^(?![{_SPACE}])(?![\\s\\S]*[{_UNSEEN}])(?![\\s\\S]*[{_SPACE}]$)"
    f"(?![\\s\\S]*(?:^|[\\u0000-\\u007f{_SPACE}{_JOINER}])[{_JOINER}])"
)
"""ipm.domain.kpi.check_scope's rule, as far as a pattern can say it: no
control, format (of the Basic Multilingual Plane, but the two zero-width
joiners) or line-break character, no white space at either end, no
joiner first or after ASCII, white space or a joiner; the server also
refuses the few format characters beyond that plane and text not in
NFC. Only lookaheads, with
the characters spelled out, so ECMA-262 (with or without its u flag) and
Python read it alike (their \\s differ, and Python's $ also matches before
a final line break)."""


PATTERN_RULES = {
    SCOPE_PATTERN: "must not hold control, format or line-break characters "
    "(a zero-width joiner only after a character that is neither ASCII nor "
    "a space), nor begin or end with white space",
}
"""What a pattern too long to read says, in words, for refusals."""


def scope() -> Schema:
    """A scope as answers and events carry it: any recorded one, older
    ones included (see :func:`new_scope`)."""
    return string(1, 64)


def new_scope() -> Schema:
    """A scope a request records."""
    return string(1, 64, pattern=SCOPE_PATTERN)


def bucket() -> Schema:
    return enum(BUCKETS)


def kpi_value() -> Schema:
    return {"type": ["number", "null"]}


def url() -> Schema:
    return string(1, 2048, format="uri")


def sha256() -> Schema:
    return string(pattern=SHA256_PATTERN)


def job_status() -> Schema:
    return enum(JOB_STATUSES)


def webhook_status() -> Schema:
    return enum(WEBHOOK_STATUSES)


def limit() -> Schema:
    return {
        "type": "integer",
        "default": 8,
        "description": "Page size; any integer is accepted and clamped to 1..256.",
    }


def next_token() -> Schema:
    return {
        "type": ["object", "null"],
        "description": "Opaque page token from the previous page; null or absent "
        "on the last page.",
    }


def issued_token() -> Schema:
    """A page token as ipm issues it: opaque to callers, but of one shape
    (its version, the keyset position after the page, its signature)."""
    return {
        "type": ["object", "null"],
        "description": "Opaque token of the next page: send it back unchanged "
        "as next_token; null on the last page.",
        "required": ["v", "k", "s"],
        "properties": {
            "v": {"type": "integer"},
            "k": {"type": "array"},
            "s": {"type": "string"},
        },
        "additionalProperties": False,
    }


# -- audit fragments (mutating requests) ------------------------------------


def request_context() -> Schema:
    return obj(
        {
            "orgcode": orgcode(),
            "actor": string(1, 128),
            "context_source": string(1, 64),
        },
        ["orgcode"],
        description="Who acts for which org; defaults to the authenticated "
        "caller. orgcode must equal the x-orgcode header.",
    )


def reason() -> Schema:
    return string(max_length=1024)


def source_ref() -> Schema:
    return obj({"kind": string(1, 64), "id": string(1, 256)}, ["kind", "id"])


def source_refs() -> Schema:
    return array(source_ref(), max_items=32)


def mutating(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """A request that changes state: it also carries the audit fields."""
    audit = {
        "request_context": request_context(),
        "reason": reason(),
        "source_refs": source_refs(),
    }

    return obj({**audit, **properties}, required)


def paged(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """A list request: its filters plus limit and next_token."""
    return obj({**properties, "limit": limit(), "next_token": next_token()}, required)


def page_of(items: Schema, key: str = "items", **more: Schema) -> Schema:
    """A page of results: the items, then next_token (null on the last page)."""
    return obj({key: array(items), "next_token": issued_token(), **more}, [key, *more])
