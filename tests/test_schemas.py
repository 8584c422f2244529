"""The schemas of ipm: well-formed, strict, and explained with pointers."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import attrs
import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipm import schemas
from ipm.api.routes import ROUTES as TABLE
from ipm.domain.errors import Conflict, InvalidRequest, Problem
from ipm.domain.events import NAME_PATTERN
from ipm.schemas import _validation
from ipm.schemas._catalog import SchemaSet, builtin
from ipm.schemas._fragments import (
    DIALECT,
    KPI_CODE_PATTERN,
    URN,
    action_name,
    service_name,
)
from ipm.schemas.openapi import as_component, build_openapi

KPI = {
    "kpi_code": "NET_SALES",
    "bucket": "daily",
    "bucket_start": "2026-03-02T00:00:00Z",
    "bucket_end": "2026-03-03T00:00:00Z",
    "value": 18342.75,
}


def pointers(found: list[Problem]) -> list[str]:
    return [problem.pointer for problem in found]


# -- the schemas themselves ------------------------------------------------------


@pytest.mark.parametrize("name", schemas.names())
def test_every_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each schema passes the Draft 2020-12 metaschema."""
    schema = schemas.get(name)

    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", schemas.names())
def test_every_schema_names_its_dialect_urn_and_title(name: str) -> None:
    """Each schema declares Draft 2020-12, a urn:ipm:schema id and a title."""
    schema = schemas.get(name)

    assert schema["$schema"] == DIALECT
    assert schema["$id"] == URN + name
    assert schema["title"] == name


def test_the_schema_families_cover_every_route() -> None:
    """There are 21 request, 22 response and 9 ipm event schemas."""
    requests = schemas.request_schema_names()
    responses = schemas.response_schema_names()

    assert len(requests) == 21
    assert len(responses) == 22
    assert {n.removesuffix("Request") for n in requests} < {
        n.removesuffix("Response") for n in responses
    }
    assert len([n for n in schemas.event_schema_names() if "event.ipm." in n]) == 11
    assert set(requests) | set(responses) <= set(schemas.names())


@pytest.mark.parametrize("name", schemas.request_schema_names())
def test_requests_refuse_unknown_fields(name: str) -> None:
    """An unknown top-level field of any request is named as not allowed."""
    found = schemas.validate(name, {"colour": "blue"})

    assert Problem("/colour", "is not allowed") in found


def test_get_returns_a_copy_and_refuses_unknown_names() -> None:
    """Changing a schema from get() changes nothing; an unknown name is a KeyError."""
    schema = schemas.get("Kpi")
    schema["properties"].clear()

    assert schemas.get("Kpi")["properties"]
    with pytest.raises(KeyError):
        schemas.get("NoSuchSchema")
    with pytest.raises(KeyError):
        schemas.validate("NoSuchSchema", {})


# -- problems and their pointers ---------------------------------------------


def test_a_lone_surrogate_is_a_problem_not_an_exception() -> None:
    """Regression: validate() and is_valid() raised UnicodeEncodeError on a
    library caller's text with a lone surrogate (the regex engine cannot
    take it); such text matches no pattern, in a value or in a key."""
    query = {
        "kpi_code": "\ud800",
        "bucket": "daily",
        "from_utc": "2026-03-01T00:00:00Z",
        "to_utc": "2026-03-02T00:00:00Z",
    }

    assert pointers(schemas.validate("KpiQueryRequest", query)) == ["/kpi_code"]
    assert not schemas.is_valid("KpiQueryRequest", query)
    keyed = {**query, "kpi_code": "NET_SALES", "\udc80x": 1}
    # A key no JSON text could hold is the object's problem, as on the wire.
    assert pointers(schemas.validate("KpiQueryRequest", keyed)) == [""]


def test_a_valid_instance_has_no_problem() -> None:
    """A correct request validates with no problem."""
    found = schemas.validate("KpiRecordRequest", {"kpi": KPI})

    assert found == []
    assert schemas.is_valid("KpiRecordRequest", {"kpi": KPI})


def test_missing_nested_property_points_at_the_property() -> None:
    """A missing nested field is reported at its own path."""
    kpi = {k: v for k, v in KPI.items() if k != "bucket_start"}

    found = schemas.validate("KpiRecordRequest", {"kpi": kpi})

    assert found == [Problem("/kpi/bucket_start", "is required")]


def test_wrong_type_is_reported_at_the_value() -> None:
    """A value of the wrong JSON type names the expected type."""
    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "value": "high"}})

    assert found == [Problem("/kpi/value", "must be a number or null")]


def test_each_extra_property_is_reported_on_its_own() -> None:
    """Every unknown field gets its own problem and pointer."""
    body = {"kpi": {**KPI, "colour": "red"}, "zzz": 1}

    found = schemas.validate("KpiRecordRequest", body)

    assert sorted(pointers(found)) == ["/kpi/colour", "/zzz"]


def test_bad_enum_lists_the_allowed_values() -> None:
    """A value outside an enum is refused with the allowed values."""
    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "bucket": "yearly"}})

    assert found == [
        Problem("/kpi/bucket", 'must be one of "hourly", "daily", "weekly", "monthly"')
    ]


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-03-02 00:00:00Z",
        "2026-03-02T00:00:00",
        "2026-03-02T12:00:60Z",
        "2026-03-02T00:00:00+24:00",
        "2026-03-02T00:00:00Z\n",
        "yesterday",
    ],
)
def test_bad_date_times_are_refused(stamp: str) -> None:
    """Impossible dates, missing offsets, misplaced seconds and newlines fail."""
    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "bucket_end": stamp}})

    assert pointers(found) == ["/kpi/bucket_end"]
    assert "RFC 3339" in found[0].message


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-03-02T00:00:00Z",
        "2026-03-02T01:30:00.123456+01:30",
        "2024-02-29t00:00:00z",
    ],
)
def test_good_date_times_are_accepted(stamp: str) -> None:
    """RFC 3339 date-times with any offset and fraction are accepted."""
    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "bucket_end": stamp}})

    assert found == []


def test_several_problems_are_reported_at_once() -> None:
    """Every problem of a body is listed, not just the first."""
    body = {
        "request_context": {"actor": ""},
        "kpi": {"kpi_code": "net sales", "bucket": "daily", "value": True},
        "extra": None,
    }

    found = schemas.validate("KpiRecordRequest", body)

    assert set(pointers(found)) == {
        "/request_context/orgcode",
        "/request_context/actor",
        "/kpi/kpi_code",
        "/kpi/bucket_start",
        "/kpi/bucket_end",
        "/kpi/value",
        "/extra",
    }


def test_a_body_that_is_not_an_object_points_at_the_root() -> None:
    """A non-object body is one problem at the empty pointer."""
    found = schemas.validate("KpiRecordRequest", ["kpi"])

    assert found == [Problem("", "must be an object")]


def test_pointers_escape_slash_and_tilde() -> None:
    """Field names with / and ~ are escaped as RFC 6901 says."""
    found = schemas.validate("PaginationGetRequest", {"a/b": 1, "c~d": 2})

    assert pointers(found) == ["/a~1b", "/c~0d"]


def test_messages_never_echo_a_huge_value() -> None:
    """A megabyte-long wrong value yields a short message."""
    huge = "x" * 1_000_000

    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "bucket": huge}})

    assert len(found) == 1
    assert len(found[0].message) < 250


def test_a_trailing_newline_does_not_pass_a_pattern() -> None:
    """Regression: Python's $ also matches before a final newline; ours does not."""
    found = schemas.validate("KpiRecordRequest", {"kpi": {**KPI, "kpi_code": "NET\n"}})

    assert pointers(found) == ["/kpi/kpi_code"]


def test_array_items_are_located_by_index() -> None:
    """A fault inside an array item names the item's index."""
    body = {
        "endpoint_url": "https://hooks.example.com/ipm",
        "event_filters": [{"service": "pos"}, {"service": "POS!"}],
    }

    found = schemas.validate("WebhookCreateRequest", body)

    assert pointers(found) == ["/event_filters/1/service"]


def test_action_and_action_prefix_are_mutually_exclusive() -> None:
    """A webhook filter with both action and action_prefix is refused."""
    body = {
        "endpoint_url": "https://hooks.example.com/ipm",
        "event_filters": [{"service": "pos", "action": "sale", "action_prefix": "s"}],
    }

    found = schemas.validate("WebhookCreateRequest", body)

    assert found == [
        Problem("/event_filters/0", "must not combine action and action_prefix")
    ]


def test_an_ed25519_webhook_takes_no_secret() -> None:
    """A secret sent with signing_algorithm ed25519 is refused at /secret."""
    body = {
        "endpoint_url": "https://hooks.example.com/ipm",
        "event_filters": [{"service": "pos"}],
        "signing_algorithm": "ed25519",
        "secret": "whsec_q3Vw9CkYt2mB7xR1pLf8ZsN4uH6jE0aD",
    }

    found = schemas.validate("WebhookCreateRequest", body)

    assert found == [
        Problem(
            "/secret",
            "is not allowed: a secret is for hmac-sha256 only; an ed25519 "
            "webhook gets a key pair made by ipm",
        )
    ]


@settings(max_examples=200)
@given(name=st.text(alphabet="ab0_.-A ", max_size=70) | st.just("a" * 65))
def test_the_name_schemas_accept_exactly_the_names_the_domain_accepts(
    name: str,
) -> None:
    """service and action names in every schema follow the domain's rule.

    The action schema once allowed 128 characters where every writer
    refuses more than 64, so the OpenAPI document promised what ipm refused.
    """
    domain_verdict = NAME_PATTERN.fullmatch(name) is not None

    for fragment in (service_name(), action_name()):
        schema_verdict = jsonschema.Draft202012Validator(fragment).is_valid(name)
        assert schema_verdict == domain_verdict


@pytest.mark.parametrize("prefix", ["Sale.", "a b", "-x", "x" * 65])
def test_a_webhook_filter_prefix_no_action_could_start_with_is_refused(
    prefix: str,
) -> None:
    """The schema refuses the prefixes the server refuses.

    Regression: the schema allowed any 1-128 characters, so a client that
    validated with the OpenAPI document still got a 400 from the server.
    """
    body = {
        "endpoint_url": "https://hooks.example/in",
        "event_filters": [{"service": "pos", "action_prefix": prefix}],
    }

    found = schemas.validate("WebhookCreateRequest", body)

    assert [p.pointer for p in found] == ["/event_filters/0/action_prefix"]


@pytest.mark.parametrize("limit", [-5, 0, 9999, 10**30])
def test_any_integer_limit_is_accepted(limit: int) -> None:
    """limit accepts every integer; the server clamps it."""
    assert schemas.validate("WebhookListRequest", {"limit": limit}) == []


@pytest.mark.parametrize("limit", ["8", 8.5, None, True])
def test_a_non_integer_limit_is_refused(limit: Any) -> None:
    """limit must be an integer."""
    found = schemas.validate("WebhookListRequest", {"limit": limit})

    assert found == [Problem("/limit", "must be an integer")]


def test_a_nullable_reference_is_explained_by_the_closer_branch() -> None:
    """For a value that must be an object or null, the object's faults are shown."""
    job = schemas.specimen("Job")
    job["upload"] = {"size": -1, "sha256": "00", "bom": False, "gzip": False}

    found = schemas.validate("Job", job)

    assert pointers(found) == ["/upload/sha256", "/upload/size"]


def test_envelope_success_and_error_exclude_each_other() -> None:
    """A successful envelope with an error is refused at /error."""
    envelope = schemas.specimen("Envelope")
    envelope["error"] = schemas.specimen("Error")

    found = schemas.validate("Envelope", envelope)

    assert found == [Problem("/error", "is not allowed")]


def test_check_raises_invalid_request_with_every_problem() -> None:
    """check() raises a 400 that carries the problems."""
    with pytest.raises(InvalidRequest) as caught:
        schemas.check("KpiRecordRequest", {"kpi": {}})

    assert caught.value.status == 400
    assert caught.value.message == "request body does not match its schema"
    assert "/kpi/kpi_code" in pointers(list(caught.value.details))


def test_check_passes_a_valid_instance_quietly() -> None:
    """check() returns nothing for a valid instance."""
    schemas.check("WebhookGetRequest", {"webhook_id": "wh_1"}, message="bad")


def test_non_json_python_values_are_judged_by_the_reference() -> None:
    """A tuple is not a JSON array: refused, not crashed on."""
    found = schemas.validate("WebhookCreateRequest", {"event_filters": ("pos",)})

    assert "/event_filters" in pointers(found)


# -- the two validators ----------------------------------------------------------


@attrs.define
class AlwaysInvalid:
    def is_valid(self, instance: Any) -> bool:
        return False


def test_a_disagreement_trusts_the_reference_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the fast validator refuses what the reference accepts, it is accepted."""
    monkeypatch.setattr(_validation, "compile_fast", lambda s, r: AlwaysInvalid())
    catalog = SchemaSet.builtin()

    with caplog.at_level(logging.WARNING):
        first = catalog.validate("WebhookGetRequest", {"webhook_id": "wh_1"})
        second = catalog.validate("WebhookGetRequest", {"webhook_id": "wh_2"})

    assert first == second == []
    assert catalog.is_valid("WebhookGetRequest", {"webhook_id": "wh_3"})
    assert len([r for r in caplog.records if "disagree" in r.getMessage()]) == 1
    assert "wh_1" not in caplog.text


@functools.cache
def _pair(name: str) -> tuple[Any, Any]:
    every = builtin()
    by_uri = {URN + n: s for n, s in every.items()}
    fast = _validation.compile_fast(every[name], _validation.fast_registry(by_uri))
    reference = _validation.compile_reference(
        every[name], _validation.reference_registry(by_uri)
    )

    return fast, reference


TRICKY = st.sampled_from(
    [
        "2026-03-02T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-12-31T23:59:60Z",
        "2026-03-02T00:00:00Z\n",
        "2026-03-02t00:00:00+05:30",
        "NET_SALES",
        "NET_SALES\n",
        "net_sales",
        "https://hooks.example.com/ipm",
        "https://hooks.example.com/ipm\n",
        "ftp://hooks.example.com",
        "http://",
        "whsec_q3Vw9CkYt2mB7xR1pLf8ZsN4uH6jE0aD",
        "hmac-sha256",
        "ed25519",
        "daily",
        "ACME01",
        "pos",
        "sale.completed",
        "logical_guid",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | TRICKY
    | st.from_regex(KPI_CODE_PATTERN)
)
KEYS = st.sampled_from(["service", "action", "action_prefix", "kpi", "value"]) | (
    st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))

    return found


def _near_misses(value: Any) -> list[Any]:
    """Values one small step away from ``value``, where validators tend to differ."""
    if isinstance(value, str):
        return [
            value + "\n",
            " " + value,
            value.lower(),
            value.upper(),
            value[:-1],
            value + "x",
            value.replace("0", "6").replace("1", "3"),
            "",
            value * 40,
        ]
    if isinstance(value, bool) or value is None:
        return [0, "true", [], {}]
    if isinstance(value, int | float):
        return [value + 1, -value - 1, value + 0.5, str(value), None, 2**64]

    return [None, "x", [], {}]


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]

    return value


def _replaced(base: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(base))
    if not path:
        return value
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value

    return copy


def _mutated(base: Any, data: st.DataObject) -> Any:
    instance = base
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(instance)))
        value = data.draw(st.sampled_from(_near_misses(_at(instance, path))) | JSON)
        instance = _replaced(instance, path, value)

    return instance


def _two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


DATE_TIMES = st.one_of(
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,3})?"
        r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
    ),
    st.tuples(
        st.integers(0, 9999).map(lambda n: f"{n:04d}"),
        _two_digits(0, 13),
        _two_digits(0, 32),
        st.sampled_from("Tt"),
        _two_digits(0, 24),
        _two_digits(0, 60),
        _two_digits(57, 61),
        st.sampled_from(["", ".5", ".123456789"]),
        st.sampled_from(["Z", "z", "+00:00", "-00:00", "+01:00", "-00:01", "+23:59"])
        | st.tuples(st.sampled_from("+-"), _two_digits(0, 25), _two_digits(0, 61)).map(
            lambda t: f"{t[0]}{t[1]}:{t[2]}"
        ),
    ).map(lambda p: f"{p[0]}-{p[1]}-{p[2]}{p[3]}{p[4]}:{p[5]}:{p[6]}{p[7]}{p[8]}"),
    # Leap seconds near midnight UTC, where the offset decides the verdict.
    st.tuples(
        st.sampled_from(
            ["22:59", "23:29", "23:58", "23:59", "00:00", "00:29", "00:59"]
        ),
        st.sampled_from(["Z", "+00:30", "-00:30", "+01:00", "-01:00", "-00:01"]),
    ).map(lambda p: f"2026-12-31T{p[0]}:60{p[1]}"),
)


@settings(max_examples=800, deadline=None)
@given(stamp=DATE_TIMES)
def test_the_date_time_check_mirrors_the_compiled_one(stamp: str) -> None:
    """The reference's date-time check gives jsonschema-rs's verdict."""
    compiled = jsonschema_rs.Draft202012Validator(
        {"format": "date-time"}, validate_formats=True
    )

    assert compiled.is_valid(stamp) == _validation.is_date_time(stamp)


AGREEING = ["KpiRecordRequest", "WebhookCreateRequest", "Event", "Job"]


@pytest.mark.parametrize("name", AGREEING)
def test_validators_agree_on_every_near_miss_of_a_specimen(name: str) -> None:
    """Each one-step change of a specimen gets the same verdict from both."""
    fast, reference = _pair(name)
    specimen = schemas.specimen(name)

    cases = [
        _replaced(specimen, path, value)
        for path in _paths(specimen)
        for value in _near_misses(_at(specimen, path))
    ]

    disagreements = [c for c in cases if fast.is_valid(c) != reference.is_valid(c)]
    assert disagreements == []


@pytest.mark.parametrize("name", AGREEING)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_and_reference_validators_agree(name: str, data: st.DataObject) -> None:
    """jsonschema-rs and jsonschema give the same verdict on any instance."""
    fast, reference = _pair(name)
    specimen = schemas.specimen(name)
    random = data.draw(st.booleans())

    instance = data.draw(JSON) if random else _mutated(specimen, data)

    assert fast.is_valid(instance) == reference.is_valid(instance)


# -- registering host schemas ----------------------------------------------------

SALE = {
    "type": "object",
    "properties": {"store_code": {"type": "string"}, "at": {"format": "date-time"}},
    "required": ["store_code"],
    "additionalProperties": False,
}


def test_a_registered_schema_validates_with_pointers() -> None:
    """A host payload schema is usable by name once registered."""
    catalog = SchemaSet.builtin()
    catalog.register("event.pos.sale.completed", SALE)

    found = catalog.validate("event.pos.sale.completed", {"at": "soon", "x": 1})

    assert set(pointers(found)) == {"/store_code", "/at", "/x"}
    assert (
        catalog.get("event.pos.sale.completed")["$id"]
        == URN + "event.pos.sale.completed"
    )
    assert catalog.registered_names() == ("event.pos.sale.completed",)


def test_registering_the_same_schema_twice_is_harmless() -> None:
    """The same schema under the same name is a no-op."""
    catalog = SchemaSet.builtin()

    catalog.register("event.pos.sale.completed", SALE)
    catalog.register("event.pos.sale.completed", dict(SALE))

    assert catalog.registered_names() == ("event.pos.sale.completed",)


def test_registering_another_schema_under_a_taken_name_is_refused() -> None:
    """A different schema under an existing name is a Conflict."""
    catalog = SchemaSet.builtin()
    catalog.register("event.pos.sale.completed", SALE)

    with pytest.raises(Conflict):
        catalog.register("event.pos.sale.completed", {"type": "object"})
    with pytest.raises(Conflict):
        catalog.register("Job", {"type": "object"})


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "strng"}, "/type"),
        ({"properties": {"a": {"minLength": -1}}}, "/properties/a/minLength"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "/$schema"),
        ({"pattern": "(unclosed"}, ""),
        ({"$ref": "urn:ipm:schema:NoSuchSchema"}, ""),
        ([], ""),
    ],
)
def test_a_bad_schema_is_refused(schema: Any, where: str) -> None:
    """A schema that is not valid, compilable Draft 2020-12 is an InvalidRequest."""
    catalog = SchemaSet.builtin()

    with pytest.raises(InvalidRequest) as caught:
        catalog.register("event.pos.bad", schema)

    assert where in pointers(list(caught.value.details))
    assert "event.pos.bad" not in catalog


def test_registering_one_at_a_time_builds_no_registry_of_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: each register() built the compiled registry of every
    schema to check the new one, so registering types one after another was
    quadratic (800 took 5 s). A schema that refers to none is checked
    alone; one with a $ref still resolves against the others."""
    from ipm.schemas import _validation

    catalog = SchemaSet.builtin()
    built: list[int] = []
    real = _validation.fast_registry

    def counted(schemas: Any) -> Any:
        built.append(len(schemas))
        return real(schemas)

    monkeypatch.setattr(_validation, "fast_registry", counted)
    for n in range(50):
        catalog.register(f"event.pos.kind{n}.created", {"type": "object"})
    alone = [size for size in built if size]
    catalog.register(
        "event.pos.refund.created", {"$ref": "urn:ipm:schema:event.pos.kind7.created"}
    )

    assert alone == []
    assert "event.pos.refund.created" in catalog


@pytest.mark.parametrize("name", ["", "event.ipm.mine", "has space", "a/b"])
def test_bad_or_reserved_names_are_refused(name: str) -> None:
    """Names must be simple and may not take ipm's own event prefix."""
    with pytest.raises(InvalidRequest):
        SchemaSet.builtin().register(name, {"type": "object"})


def test_the_module_level_register_adds_an_event_schema() -> None:
    """schemas.register makes the schema known to names() and event_schema_names()."""
    name = "event.testsuite.thing.happened"

    schemas.register(name, {"type": "object", "required": ["id"]})

    assert name in schemas.names()
    assert name in schemas.event_schema_names()
    assert schemas.validate(name, {}) == [Problem("/id", "is required")]


# -- OpenAPI ----------------------------------------------------------------------


@attrs.frozen
class FakeRoute:
    method: str
    path: str
    summary: str
    tier: str
    request_schema: str | None
    response_schema: str
    ceilings: Mapping[str, int] = attrs.field(factory=lambda: {"p95_ms": 300})


ROUTES = [
    FakeRoute("GET", "/stat", "Health check", "A", None, "StatResponse"),
    FakeRoute(
        "POST",
        "/kpi/record",
        "Record KPI snapshot",
        "D",
        "KpiRecordRequest",
        "KpiRecordResponse",
    ),
    FakeRoute(
        "POST",
        "/webhook/status/set",
        "Update webhook status",
        "D",
        "WebhookStatusSetRequest",
        "WebhookStatusSetResponse",
    ),
]


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for token in ref.removeprefix("#/").split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]

    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []

    return own + [ref for value in node.values() for ref in _refs(value)]


def _keys(node: Any) -> set[str]:
    if isinstance(node, list):
        return {key for item in node for key in _keys(item)}
    if not isinstance(node, dict):
        return set()

    return set(node) | {key for value in node.values() for key in _keys(value)}


def test_openapi_document_is_3_1_with_every_route() -> None:
    """Each route appears under its path and method, with its tier."""
    document = build_openapi(ROUTES, version="1.2.3")

    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "ipm", "version": "1.2.3"}
    for route in ROUTES:
        op = document["paths"][route.path][route.method.lower()]
        assert op["summary"] == route.summary
        assert op["x-ipm-tier"] == route.tier
        assert op["x-ipm-latency-ms"] == route.ceilings


REFERENCE_LATENCY = {
    # (tier, p95 ms, p99 ms) as the API reference states them per route:
    # a tier's routes do not all share one ceiling.
    "/bulk/export/continue": ("D", 300, 600),
    "/bulk/job/get": ("B", 300, None),
    "/cdc/list": ("C", 150, 400),
    "/kpi/alert": ("D", 1500, 3000),
    "/kpi/query": ("C", 1200, 2500),
    "/kpi/record": ("D", 1500, 3000),
    "/stat": ("A", 500, None),
    "/webhook/replay": ("D", 500, 1000),
    "/webhook/status/set": ("D", 300, 600),
}


@pytest.mark.parametrize(("path", "stated"), REFERENCE_LATENCY.items())
def test_each_route_carries_the_latency_the_reference_states_for_it(
    path: str, stated: tuple[str, int, int | None]
) -> None:
    """Regression: only the tier letter was kept, and a per-tier table of
    p95 ceilings (unused) gave /kpi/alert 300 ms where the reference says
    1500 ms (p99 3000 ms)."""
    (route,) = [r for r in TABLE if r.path == path]
    tier, p95, p99 = stated
    document = build_openapi(TABLE, version="1")
    op = document["paths"][path][route.method.lower()]

    assert op["x-ipm-tier"] == tier
    assert op["x-ipm-latency-ms"] == (
        {"p95_ms": p95} if p99 is None else {"p95_ms": p95, "p99_ms": p99}
    )


def test_openapi_references_all_resolve_locally() -> None:
    """Every $ref points inside the document; no $schema or $id is left."""
    document = build_openapi(ROUTES, version="1")

    refs = _refs(document)

    assert refs
    assert all(ref.startswith("#/") for ref in refs)
    for ref in refs:
        _resolve(document, ref)
    assert not {"$schema", "$id"} & _keys(document["components"]["schemas"])


def test_openapi_wires_bodies_envelopes_and_errors() -> None:
    """Requests, the 200 envelope and the error statuses point at the schemas."""
    document = build_openapi(ROUTES, version="1")

    op = document["paths"]["/kpi/record"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["allOf"]

    assert body == {"$ref": "#/components/schemas/KpiRecordRequest"}
    assert ok[0] == {"$ref": "#/components/schemas/Envelope"}
    assert ok[1]["properties"]["data"] == {
        "$ref": "#/components/schemas/KpiRecordResponse"
    }
    assert set(op["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "404",
        "409",
        "411",
        "413",
        "414",
        "428",
        "431",
        "500",
        "501",
        "503",
        "505",
    }


def test_openapi_lists_only_the_statuses_a_public_route_can_answer() -> None:
    """GET /stat needs no key and no body: no 401, 403, 409 or 428, and no 405.

    Regression: every operation listed one fixed set of statuses, 405 and
    the tenant refusals included, and none of 411, 414, 431 or 503; then
    the 400 of a malformed Host and ipm serve's 505 were missing.
    """
    document = build_openapi(ROUTES, version="1")

    stat = document["paths"]["/stat"]["get"]

    assert set(stat["responses"]) == {"200", "400", "414", "431", "500", "503", "505"}


def test_openapi_names_the_headers_answers_carry() -> None:
    """x-request-id on every answer, WWW-Authenticate on 401, Retry-After on 503."""
    document = build_openapi(ROUTES, version="1")
    responses = document["components"]["responses"]
    ok = document["paths"]["/kpi/record"]["post"]["responses"]["200"]

    assert "x-request-id" in ok["headers"]
    assert set(responses["Error401"]["headers"]) == {"x-request-id", "WWW-Authenticate"}
    assert set(responses["Error503"]["headers"]) == {"x-request-id", "Retry-After"}
    for ref in _refs(document):
        _resolve(document, ref)


def test_openapi_describes_the_signed_links_and_documents() -> None:
    """The upload an import cannot skip, the file links and the documents are in.

    Regression: only the 22 routes of the table were described, so a client
    generated from the document could not upload an import's file.
    """
    document = build_openapi(ROUTES, version="1")
    paths = document["paths"]

    upload = paths["/bulk/upload/{job_id}"]["put"]
    names = [p["name"] for p in upload["parameters"]]
    assert names == ["job_id", "org", "expires", "sig"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert upload["security"] == []
    for link in ("download", "report", "results"):
        answer = paths[f"/bulk/{link}/{{job_id}}"]["get"]["responses"]["200"]
        assert "application/x-ndjson" in answer["content"]
    assert "get" in paths["/openapi.json"]
    assert "get" in paths["/schemas/{name}.json"]
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_openapi_asks_for_x_orgcode_everywhere_but_stat() -> None:
    """Tenant routes take the x-orgcode header and a bearer key; /stat takes neither."""
    document = build_openapi(ROUTES, version="1")

    stat = document["paths"]["/stat"]["get"]
    record = document["paths"]["/kpi/record"]["post"]

    assert "parameters" not in stat and stat["security"] == []
    assert "requestBody" not in stat
    assert _resolve(document, record["parameters"][0]["$ref"])["name"] == "x-orgcode"
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_openapi_components_hold_every_schema() -> None:
    """components.schemas has one entry per schema name."""
    document = build_openapi([], version="1")

    assert set(document["components"]["schemas"]) == set(schemas.names())


def test_openapi_relocates_a_schemas_local_references() -> None:
    """'#/$defs/...' inside a schema points into its own component afterwards."""
    schema = {
        "$schema": DIALECT,
        "$id": URN + "event.bi.kpi.mirrored",
        "properties": {
            "kpi": {"$ref": URN + "Kpi"},
            "n": {"$ref": "#/$defs/n"},
        },
        "$defs": {"n": {"type": "integer"}},
    }

    component = as_component("event.bi.kpi.mirrored", schema)

    assert "$schema" not in component and "$id" not in component
    assert component["properties"] == {
        "kpi": {"$ref": "#/components/schemas/Kpi"},
        "n": {"$ref": "#/components/schemas/event.bi.kpi.mirrored/$defs/n"},
    }


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, "\ud800"])
def test_validate_refuses_what_json_text_cannot_hold(odd: Any, caplog: Any) -> None:
    """Regression: ipm.schemas.validate/is_valid/check called a KPI value of
    NaN valid (the wire refuses it) and logged that its two validators
    disagreed."""
    body = schemas.specimen("KpiRecordRequest")
    body["kpi"]["value" if isinstance(odd, float) else "scope"] = odd

    found = schemas.validate("KpiRecordRequest", body)

    assert found and found[0].pointer in ("/kpi/value", "/kpi/scope")
    assert not schemas.is_valid("KpiRecordRequest", body)
    with pytest.raises(InvalidRequest):
        schemas.check("KpiRecordRequest", body)
    assert "disagree" not in caplog.text
