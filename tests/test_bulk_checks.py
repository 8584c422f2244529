"""Payload checks of an import: the catalog's fast verdicts equal its reference.

Every line of an import is checked by the event catalog, which answers
with a compiled jsonschema-rs validator and asks jsonschema (the
reference) only to explain a refusal. This differential property test
holds the two equal on generated payloads of a realistic retail schema,
valid ones and near misses.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.schemas import _validation
from ipm.schemas._fragments import DIALECT, URN

GENERATOR = Path(__file__).resolve().parent.parent / "bench" / "gen_bulk_file.py"
NAME = "event.pos.sale.created"


def _sale_schema() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("gen_bulk_file", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: dict[str, Any] = module.SALE_SCHEMA

    return {"$schema": DIALECT, "$id": URN + NAME, **schema}


SALE = _sale_schema()
FAST = _validation.compile_fast(SALE, _validation.fast_registry({URN + NAME: SALE}))
REFERENCE = _validation.compile_reference(
    SALE, _validation.reference_registry({URN + NAME: SALE})
)

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


@given(st.integers(1, 10_000).flatmap(lambda n: near_misses(sale(n))))
@settings(max_examples=400, deadline=None)
def test_sale_verdicts_of_both_validators_are_equal(payload: dict[str, Any]) -> None:
    """On the retail sale schema the compiled verdict is the reference's."""
    assert FAST.is_valid(payload) == (not list(REFERENCE.iter_errors(payload)))
