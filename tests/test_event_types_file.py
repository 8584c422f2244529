"""Event types from a file: the catalog a standalone ipm process checks with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ipm
from ipm.domain.errors import InvalidRequest
from tests.test_bulk_cli import ipm_cli

ORG = "ACME01"
REFUND = {
    "service": "pos",
    "action": "refund.created",
    "description": "A till refund",
    "op": "c",
    "schema": {
        "type": "object",
        "required": ["amount_minor"],
        "properties": {"amount_minor": {"type": "integer", "minimum": 1}},
    },
}


def refund_line(n: int, amount: int) -> str:
    return json.dumps(
        {
            "event_id": f"refund-{n}",
            "service": "pos",
            "action": "refund.created",
            "occurred_at": "2026-03-01T10:00:00Z",
            "payload": {"amount_minor": amount},
        }
    )


def test_a_list_of_types_is_registered_and_checked() -> None:
    """Each registered type's payloads are checked as register_event_type's are."""
    with ipm.open_memory() as app:
        entries = app.catalog.register_all([REFUND])

        with pytest.raises(InvalidRequest) as caught:
            app.publish(ORG, json.loads(refund_line(1, -5)))

    assert [(e.service, e.action, e.op) for e in entries] == [
        ("pos", "refund.created", "c")
    ]
    assert caught.value.details[0].pointer == "/payload/amount_minor"


@pytest.mark.parametrize(
    ("types", "pointers"),
    [
        ({"service": "pos"}, [""]),
        ([REFUND, "pos/refund"], ["/1"]),
        ([{"service": "pos", "extra": 1}], ["/0/action", "/0/schema", "/0/extra"]),
        ([REFUND, {**REFUND, "schema": {"type": "nonsense"}}], ["/1/schema"]),
        ([{**REFUND, "op": "x"}], ["/0/op"]),
    ],
)
def test_a_malformed_list_names_the_item_at_fault(
    types: object, pointers: list[str]
) -> None:
    """Shape, schema and op problems point at their item in the list."""
    with ipm.open_memory() as app, pytest.raises(InvalidRequest) as caught:
        app.catalog.register_all(types)

    found = [p.pointer for p in caught.value.details]
    assert all(any(f.startswith(p) for f in found) for p in pointers), found


def test_ipm_import_checks_payloads_against_the_file(tmp_path: Path) -> None:
    """With --event-types a bad payload fails its line; without, it passes."""
    types = tmp_path / "types.json"
    types.write_text(json.dumps([REFUND]))
    data = tmp_path / "refunds.ndjson"
    data.write_text(refund_line(1, 250) + "\n" + refund_line(2, -99) + "\n")

    checked = ipm_cli(
        "import",
        str(data),
        "--db",
        str(tmp_path / "a.sqlite"),
        "--org",
        ORG,
        "--event-types",
        str(types),
    )
    unchecked = ipm_cli(
        "import", str(data), "--db", str(tmp_path / "b.sqlite"), "--org", ORG
    )

    assert checked[0] == 1, checked[2]
    assert "1 failed" in checked[1]
    assert unchecked[0] == 0, unchecked[2]


@pytest.mark.parametrize("verb", ["import", "serve"])
def test_an_unreadable_types_file_stops_the_command_first(
    tmp_path: Path, verb: str
) -> None:
    """A types file that is not JSON exits 2 before any job or server starts."""
    types = tmp_path / "types.json"
    types.write_text("[{not json")
    data = tmp_path / "refunds.ndjson"
    data.write_text(refund_line(1, 250) + "\n")
    where = ["--db", str(tmp_path / "ipm.sqlite"), "--event-types", str(types)]
    args = (
        [verb, str(data), "--org", ORG, *where]
        if verb == "import"
        else [verb, "--port", "0", *where]
    )

    code, _, stderr = ipm_cli(*args)

    assert code == 2
    assert "not strict JSON" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "ipm.sqlite").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[{"service": "pos", "service": "web"}]', "/0/service"),
        ('[{"service": "pos", "action": "a.b", "schema": {"minimum": NaN}}]', "NaN"),
        (
            '[{"service": "pos", "action": "a.b", "schema": {"type": "nope"}}]',
            "/0/schema",
        ),
        ("[" * 100 + "]" * 100, "deeper"),
        ('[\n {"service": "pos",\n  "action": }\n]', "at line 3 column 13"),
        (" \n", "is empty"),
    ],
)
def test_a_types_file_is_read_strictly_before_the_database_opens(
    tmp_path: Path, text: str, says: str
) -> None:
    """Duplicate keys, NaN, bad schemas and deep nesting stop ipm import first."""
    types = tmp_path / "types.json"
    types.write_text(text)
    data = tmp_path / "refunds.ndjson"
    data.write_text(refund_line(1, 250) + "\n")
    db = tmp_path / "ipm.sqlite"

    code, _, stderr = ipm_cli(
        "import", str(data), "--org", ORG, "--db", str(db), "--event-types", str(types)
    )

    assert code == 2, stderr
    assert says in stderr
    assert not db.exists()


def test_ipm_s_own_service_is_refused_as_publishing_under_it_is() -> None:
    """Registering under service ipm is a 400 pointing at /service."""
    with ipm.open_memory() as app, pytest.raises(InvalidRequest) as caught:
        app.register_event_type("ipm", "sale.created", {"type": "object"})

    assert [p.pointer for p in caught.value.details] == ["/service"]


def test_a_list_registers_all_or_nothing_and_may_refer_forward() -> None:
    """A bad last item registers none; a $ref to a later item resolves."""
    refers = {
        "service": "pos",
        "action": "return.created",
        "schema": {"$ref": "urn:ipm:schema:event.pos.refund.created"},
    }
    broken = {"service": "pos", "action": "void.created", "schema": {"type": "x"}}

    with ipm.open_memory() as app:
        with pytest.raises(InvalidRequest) as caught:
            app.catalog.register_all([refers, REFUND, broken])
        before = app.catalog.entry("pos", "refund.created")
        app.catalog.register_all([refers, REFUND])
        with pytest.raises(InvalidRequest):
            app.publish(
                ORG,
                {
                    **json.loads(refund_line(1, 5)),
                    "action": "return.created",
                    "payload": {"amount_minor": -1},
                },
            )

    assert caught.value.details[0].pointer.startswith("/2/schema")
    assert before is None


def test_a_remote_ref_is_refused_at_its_item_and_nothing_is_fetched() -> None:
    """A $ref to a document outside the catalog is an InvalidRequest, not ValueError."""
    remote = {
        "service": "pos",
        "action": "void.created",
        "schema": {"$ref": "https://schemas.invalid/void.json"},
    }

    with ipm.open_memory() as app:
        with pytest.raises(InvalidRequest) as caught:
            app.catalog.register_all([REFUND, remote])
        registered = app.catalog.entry("pos", "refund.created")

    assert caught.value.details[0].pointer.startswith("/1/schema")
    assert "never fetched" in caught.value.message
    assert registered is None


def test_a_long_list_registers_in_one_go() -> None:
    """Hundreds of types register together (one build of the registries)."""
    types = [
        {"service": "pos", "action": f"kind{n}.created", "schema": {"type": "object"}}
        for n in range(300)
    ]

    with ipm.open_memory() as app:
        entries = app.catalog.register_all(types)

    assert len(entries) == 300
