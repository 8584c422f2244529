"""Write a realistic retail event file for bulk import benchmarks and tests.

Usage: ``python bench/gen_bulk_file.py OUT [--lines N] [--bad N] [--seed N]``

Each line is one event of a retail platform (sales, voids, orders, stock
moves, payments) of about 300 bytes. Planted among them: bad lines of
every kind the NDJSON reader refuses, lines that break the event rules,
blank lines and exact repeats of earlier events. The expected outcome of
an import is printed as JSON (and returned by :func:`generate`), so a
test can hold the importer to it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import orjson

STORES = [
    f"FR-{city}-{n:02d}"
    for city in ("PAR", "LYO", "MRS", "LIL", "NAN")
    for n in range(1, 9)
]
SKUS = [f"SKU-{n:06d}" for n in range(1, 400)]
CHANNELS = ("pos_generic", "pos_mobile", "web", "marketplace")

SALE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store_code", "till", "currency", "total_minor", "lines"],
    "properties": {
        "store_code": {"type": "string", "pattern": "^[A-Z]{2}-[A-Z]{3}-[0-9]{2}$"},
        "till": {"type": "integer", "minimum": 1, "maximum": 99},
        "cashier": {"type": "string", "maxLength": 32},
        "currency": {"enum": ["EUR", "GBP", "CHF"]},
        "total_minor": {"type": "integer", "minimum": 0},
        "tax_minor": {"type": "integer", "minimum": 0},
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "qty", "price_minor"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^SKU-[0-9]{6}$"},
                    "qty": {"type": "integer", "minimum": 1},
                    "price_minor": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
        },
        "loyalty_id": {"type": ["string", "null"]},
        "paid_at": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
}
"""The payload schema of ``pos/sale.created``, as a host would register it."""


def _sale(rng: random.Random, n: int) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [
        {
            "sku": rng.choice(SKUS),
            "qty": rng.randint(1, 3),
            "price_minor": rng.randint(99, 9999),
        }
        for _ in range(1 + (n % 4 == 0))
    ]
    total = sum(line["qty"] * line["price_minor"] for line in lines)

    return {
        "store_code": rng.choice(STORES),
        "till": rng.randint(1, 12),
        "currency": "EUR",
        "total_minor": total,
        "lines": lines,
        "loyalty_id": f"L{rng.randint(10**8, 10**9)}" if n % 3 else None,
        "paid_at": _time(n),
    }


def _time(n: int) -> str:
    seconds = n * 7
    day, rest = divmod(seconds, 86_400)
    hour, rest = divmod(rest, 3600)
    month, day = 1 + day // 28 % 12, 1 + day % 28
    minute, second = divmod(rest, 60)

    return f"2026-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def event(rng: random.Random, n: int) -> dict[str, Any]:
    """The n-th good event of the file."""
    kind = n % 10
    if kind < 7:
        service, action, payload = "pos", "sale.created", _sale(rng, n)
    elif kind == 7:
        service, action = "pos", "sale.voided"
        payload = {"store_code": rng.choice(STORES), "reason": "customer_request"}
    elif kind == 8:
        service, action = "orders", "order.placed"
        payload = {
            "order_ref": f"WEB-{n:09d}",
            "items": rng.randint(1, 9),
            "total_minor": rng.randint(500, 90_000),
        }
    else:
        service, action = "inventory", "stock.adjusted"
        payload = {
            "sku": rng.choice(SKUS),
            "store_code": rng.choice(STORES),
            "delta": rng.randint(-20, 50),
        }

    wire = {
        "event_id": f"evt-{n:08d}",
        "service": service,
        "action": action,
        "op": "c",
        "logical_guid": f"{action.split('.')[0]}-{n:08d}",
        "channel_code": rng.choice(CHANNELS),
        "occurred_at": _time(n),
        "payload": payload,
    }
    if n % 5 == 0 or n >= 10**8:
        wire["audit"] = {"actor": f"till-{n % 40}", "context_source": "pos-sync"}

    return wire


def _bad_lines(line: bytes) -> list[bytes]:
    """One line per kind of refusal, each built from a good sale line."""
    return [
        line.replace(b'"till":', b'"till":NaN,"x":', 1),
        line.replace(b'"op":"c"', b'"op":"c","op":"u"', 1),
        line[: len(line) // 2],
        b"[" + line + b"]",
        line + b" {}",
        line.replace(b'"occurred_at"', b'"occurred"', 1),
        line.replace(b'"op":"c"', b'"op":"c","colour":"red"', 1),
        line.replace(b'"pos-sync"', b'"\\ud800"', 1),
        line.replace(b"FR-", b"FR-\xff", 1),
        line.replace(b'"op":"c"', b'"op":"z"', 1),
    ]


def generate(
    path: str | Path, lines: int = 1_000_000, bad: int = 300, seed: int = 7
) -> dict[str, int]:
    """Write the file; return the counts a correct import must report."""
    rng = random.Random(seed)
    expected = {"lines_read": 0, "created": 0, "duplicate": 0, "failed": 0, "blank": 0}
    every = max(lines // max(bad, 1), 2)
    recent: list[bytes] = []
    n = 0
    with open(path, "wb") as out:
        for number in range(1, lines + 1):
            extra = number % every
            if bad and extra == 0 and expected["failed"] < bad:
                base = orjson.dumps(event(rng, 10**8 + 10 * number))
                kinds = _bad_lines(base)
                out.write(kinds[expected["failed"] % len(kinds)] + b"\n")
                expected["failed"] += 1
            elif bad and extra == 1 and recent:
                out.write(rng.choice(recent) + b"\n")
                expected["duplicate"] += 1
            elif bad and extra == 2:
                out.write(b"\n")
                expected["blank"] += 1
            else:
                data = orjson.dumps(event(rng, n))
                n += 1
                recent = [*recent[-50:], data]
                out.write(data + b"\n")
                expected["created"] += 1
            expected["lines_read"] += 1

    return expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--bad", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    expected = generate(args.out, args.lines, args.bad, args.seed)
    json.dump(expected, sys.stdout)
    sys.stdout.write("\n")

    return 0


if __name__ == "__main__":
    sys.exit(main())
