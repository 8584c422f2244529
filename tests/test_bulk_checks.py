"""The compiled payload check gives the reference's verdicts (differential)."""

from __future__ import annotations

import copy
import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.domain.errors import InvalidRequest
from ipm.domain.events import NewEvent
from ipm.usecases.bulk_checks import FastPayloadCheck, compile_fast
from ipm.usecases.catalog import EventCatalog

GENERATOR = Path(__file__).resolve().parent.parent / "bench" / "gen_bulk_file.py"


def _sale_schema() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("gen_bulk_file", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: dict[str, Any] = module.SALE_SCHEMA

    return schema


SALE = _sale_schema()
CONTACT = {
    "type": "object",
    "properties": {
        "email": {"type": "string", "format": "email"},
        "ip": {"type": "string", "format": "ipv4"},
        "site": {"type": "string", "format": "uri"},
        "seen": {"type": "string", "format": "date"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
}
REFERENCE = {
    name: jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for name, schema in (("sale", SALE), ("contact", CONTACT))
}

TRICKY_TEXT = st.sampled_from(
    [
        "2026-03-02T10:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-31T23:59:60Z",
        "2026-03-02t10:00:00+05:30",
        "2026-03-02T10:00:00Z\n",
        "2026-03-02",
        "FR-PAR-01",
        "FR-PAR-01\n",
        "fr-par-01",
        "SKU-000123",
        "SKU-000123\n",
        "SKU-12",
        "EUR",
        "USD",
        "ops@example.com",
        "not an email",
        "10.0.0.1",
        "10.0.0.256",
        "https://example.com/x",
        "no scheme",
        "ABC",
        "ABC\n",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY_TEXT
    | st.text(max_size=8)
)


def sale(n: int) -> dict[str, Any]:
    return {
        "store_code": "FR-PAR-01",
        "till": 1 + n % 12,
        "currency": "EUR",
        "total_minor": 100 * n,
        "lines": [{"sku": f"SKU-{n:06d}", "qty": 1, "price_minor": 100 * n}],
        "loyalty_id": None,
        "paid_at": "2026-03-02T10:00:00Z",
    }


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))

    return found


@st.composite
def near_misses(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A valid payload with a few values replaced, added or removed."""
    payload = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(payload)[1:]))
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(SCALARS)
        elif action == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "till", "qty"]))] = draw(SCALARS)

    return payload


def _reference_says(name: str, payload: Any) -> bool:
    return not list(REFERENCE[name].iter_errors(payload))


@given(st.integers(1, 10_000).flatmap(lambda n: near_misses(sale(n))))
@settings(max_examples=400, deadline=None)
def test_sale_verdicts_equal_the_reference(payload: dict[str, Any]) -> None:
    """On the retail sale schema the compiled verdict is the reference's."""
    fast = compile_fast(SALE)

    assert fast is not None
    assert fast.is_valid(payload) == _reference_says("sale", payload)


@given(st.dictionaries(st.sampled_from(list(CONTACT["properties"])), SCALARS))
@settings(max_examples=300, deadline=None)
def test_format_verdicts_equal_the_reference(payload: dict[str, Any]) -> None:
    """email, ipv4, uri, date and patterns are judged as the reference does."""
    fast = compile_fast(CONTACT)

    assert fast is not None
    assert fast.is_valid(payload) == _reference_says("contact", payload)


@pytest.mark.parametrize("pattern", [r"^A\Z", r"\Aabc", r"(?P<x>a)", r"(?i)abc"])
def test_python_only_patterns_get_no_compiled_validator(pattern: str) -> None:
    """Patterns the other dialect could read more laxly leave it to the reference."""
    schema = {
        "type": "object",
        "properties": {"x": {"type": "string", "pattern": pattern}},
    }

    assert compile_fast(schema) is None


def test_a_refusal_is_the_catalogs_own() -> None:
    """A payload the compiled validator refuses raises the catalog's error."""
    catalog = EventCatalog()
    catalog.register("pos", "sale.created", SALE)
    check = FastPayloadCheck(catalog)
    bad = NewEvent(
        "e1",
        "pos",
        "sale.created",
        {**sale(1), "till": 0},
        datetime(2026, 3, 2, tzinfo=UTC),
    )

    with pytest.raises(InvalidRequest) as fast:
        check.check_payload(bad)
    with pytest.raises(InvalidRequest) as reference:
        catalog.check_payload(bad)

    assert fast.value.details == reference.value.details
    assert fast.value.details[0].pointer == "/payload/till"
    check.check_payload(NewEvent("e2", "pos", "sale.created", sale(2), bad.occurred_at))
