"""The specimens: one valid, named example for every request, response and event."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm import schemas
from ipm.adapters.system import SortableIds
from ipm.domain.timeutil import format_utc, parse_utc

NAMES = schemas.specimen_names()
VARIANT = re.compile(r"[a-z0-9_]+")


@pytest.mark.parametrize("name", NAMES)
def test_every_specimen_is_valid_against_its_schema(name: str) -> None:
    """A specimen has no problem under the schema it is named after."""
    schema = schemas.schema_of_specimen(name)

    found = schemas.validate(schema, schemas.specimen(name))

    assert found == []


REVISION = re.compile(r"[1-9][0-9]*")
INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T")


def _texts(value: object, key: str = "") -> list[tuple[str, str]]:
    """Every (key, text) pair of a specimen, at any depth."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _texts(v, k)]
    if isinstance(value, list):
        return [pair for v in value for pair in _texts(v, key)]
    return [(key, value)] if isinstance(value, str) else []


@pytest.mark.parametrize("name", NAMES)
def test_a_specimen_shows_values_in_the_shape_ipm_writes_them(name: str) -> None:
    """Integrators copy specimens into fixtures: a revision is ipm's own
    (a count), a time is written as ipm writes it (Z, 0 or 6 digits)."""
    for key, text in _texts(schemas.specimen(name)):
        if key in ("revision", "expected_revision"):
            assert REVISION.fullmatch(text), (key, text)
        if INSTANT.match(text):
            assert format_utc(parse_utc(text, "/")) == text, (key, text)


IPM_ID = re.compile(r"(?:job|wh|kpi|alr|rpl|msg|evt)_[0-9a-f]{32}")
IPM_PREFIXES = ("job_", "wh_", "kpi_", "alr_", "rpl_", "msg_")


def _ipm_ids(value: object) -> list[str]:
    """Every id ipm itself made in a specimen: its records' ids (and a
    notification's, ntf_ and the alert's), and the event ids of its own
    events; a host's own event ids are the host's to shape."""
    if isinstance(value, list):
        return [found for v in value for found in _ipm_ids(v)]
    if not isinstance(value, dict):
        return (
            [value] if isinstance(value, str) and value.startswith(IPM_PREFIXES) else []
        )
    found = [i for v in value.values() for i in _ipm_ids(v)]
    if value.get("service") in ("ipm", "inbox") and "event_id" in value:
        found.append(value["event_id"])
    if isinstance(value.get("notification_id"), str):
        found.append(value["notification_id"].removeprefix("ntf_"))

    return found


@pytest.mark.parametrize("name", NAMES)
def test_a_specimen_shows_ids_in_the_shape_ipm_makes_them(name: str) -> None:
    """An id ipm makes is its prefix and 32 hex digits, in a specimen too
    (they once showed 26 base-32 letters, a shape no answer has)."""
    made = SortableIds()("job")

    found = _ipm_ids(schemas.specimen(name))

    assert IPM_ID.fullmatch(made)
    assert [i for i in found if not IPM_ID.fullmatch(i)] == []


@pytest.mark.parametrize(
    "schema",
    [
        *schemas.request_schema_names(),
        *schemas.response_schema_names(),
        *(
            n
            for n in schemas.event_schema_names()
            if n.startswith(("event.ipm.", "event.inbox."))
        ),
    ],
)
def test_every_request_response_and_event_schema_has_a_primary_specimen(
    schema: str,
) -> None:
    """A file named after the schema exists for each of them."""
    assert schema in NAMES
    assert schemas.schema_of_specimen(schema) == schema


@pytest.mark.parametrize("name", NAMES)
def test_specimen_names_are_a_schema_and_an_optional_variant(name: str) -> None:
    """A name is <Schema> or <Schema>.<variant>, the variant in lower snake case."""
    schema = schemas.schema_of_specimen(name)

    variant = name.removeprefix(schema).removeprefix(".")

    assert schema in schemas.names()
    assert variant == "" or VARIANT.fullmatch(variant)


def test_a_variant_maps_to_its_schema() -> None:
    """A variant's schema is its name without the last segment."""
    assert schemas.schema_of_specimen("Envelope.error") == "Envelope"
    assert schemas.schema_of_specimen("event.ipm.kpi.recorded") == (
        "event.ipm.kpi.recorded"
    )
    assert schemas.schema_of_specimen("event.ipm.kpi.recorded.update") == (
        "event.ipm.kpi.recorded"
    )


def test_unknown_specimens_raise_key_error() -> None:
    """Asking for a specimen that does not exist is a KeyError."""
    with pytest.raises(KeyError):
        schemas.specimen("NoSuchSpecimen")
    with pytest.raises(KeyError):
        schemas.schema_of_specimen("NoSuchSpecimen")


def test_a_specimen_is_a_fresh_copy() -> None:
    """Changing a returned specimen leaves the stored one intact."""
    first = schemas.specimen("KpiRecordRequest")
    first["kpi"]["value"] = "spoiled"

    assert schemas.specimen("KpiRecordRequest")["kpi"]["value"] == 18342.75


@pytest.mark.parametrize("name", [n for n in NAMES if n.split(".")[0] == "Event"])
def test_ipm_event_specimens_carry_valid_ipm_payloads(name: str) -> None:
    """An ipm event's payload is valid under event.ipm.<action>."""
    event = schemas.specimen(name)
    if event["service"] != "ipm":
        pytest.skip("a host event; its payload schema belongs to the host")

    found = schemas.validate(f"event.ipm.{event['action']}", event["payload"])

    assert found == []


def _response_schema_of(call: str) -> str:
    path = call.split(" ", 1)[1]
    words = path.replace("_", "/").strip("/").split("/")

    return "".join(word.capitalize() for word in words) + "Response"


@pytest.mark.parametrize("name", [n for n in NAMES if n.split(".")[0] == "Envelope"])
def test_successful_envelope_specimens_hold_their_routes_data(name: str) -> None:
    """The data of a success envelope is valid for the route in stats.call."""
    envelope = schemas.specimen(name)
    if not envelope["success"]:
        pytest.skip("an error envelope has no data")

    schema = _response_schema_of(envelope["stats"]["call"])

    assert schemas.validate(schema, envelope["data"]) == []


@pytest.mark.parametrize("name", schemas.request_schema_names())
@settings(max_examples=20, deadline=None)
@given(field=st.text(min_size=1, max_size=12))
def test_a_request_specimen_with_an_unknown_field_is_refused(
    name: str, field: str
) -> None:
    """Adding a field no request declares makes the specimen invalid, at that field."""
    body = schemas.specimen(name)
    if field in schemas.get(name)["properties"]:
        return
    body[field] = "surprise"

    found = schemas.validate(name, body)

    escaped = field.replace("~", "~0").replace("/", "~1")
    assert [p.pointer for p in found] == ["/" + escaped]
