"""CDC feed benchmark: keyset pages through handle() against an OFFSET baseline.

1,000,000 events over 50 orgs are written straight into a fresh SQLite
file (the same table and indexes ipm uses, loaded in bulk so the set-up
takes seconds). Then one org's feed is read 256 events at a time at its
first, middle and last position, through ``handle()`` with real page
tokens, and the same pages are read by an OFFSET query on the same
database in the same run. Printed: p50/p99 per position and the ratios.

Run: ``python bench/bench_cdc.py`` (``--quick`` for 100,000 events).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _options  # the sibling module: scripts run with bench/ on sys.path

import ipm
from ipm.domain.jsoncodec import dumps
from ipm.domain.pagination import TokenScope

ORGS = 50
PAGE = 256
REPEAT = 200


def _load(app: ipm.Application, total: int) -> None:
    conn = app.storage._connection()  # type: ignore[attr-defined]
    audit = dumps(
        {"actor": "bench", "context_source": None, "reason": None, "source_refs": []}
    ).decode()
    rows = (
        (
            f"ORG{n % ORGS:02d}",
            f"evt-{n}",
            "pos",
            "sale.created",
            "c",
            f"sale-{n}",
            "pos_generic",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            dumps(
                {
                    "sale_id": n,
                    "total_minor": n % 10_000,
                    "currency": "EUR",
                    "lines": [{"sku": f"SKU-{n % 977}", "qty": 1}],
                }
            ).decode(),
            audit,
            "0" * 64,
        )
        for n in range(total)
    )
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (orgcode, event_id, service, action, op, logical_guid, "
        "channel_code, occurred_at, recorded_at, payload, audit, content_hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def _time(action: Any) -> list[float]:
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def run(quick: bool = False) -> dict[str, Any]:
    total = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        app = ipm.open_sqlite(Path(folder) / "bench.sqlite")
        started = time.perf_counter()
        _load(app, total)
        load_s = time.perf_counter() - started

        org = "ORG07"
        key = app.create_api_key("bench", [org])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": org}
        conn = app.storage._connection()  # type: ignore[attr-defined]
        sequences = [
            r[0]
            for r in conn.execute(
                "SELECT sequence FROM events WHERE orgcode = ? ORDER BY sequence",
                (org,),
            )
        ]
        positions = {
            "first": 0,
            "middle": len(sequences) // 2,
            "last": len(sequences) - PAGE,
        }
        scope = TokenScope(org, "/cdc/list", {"after_sequence": 0})

        results: dict[str, Any] = {
            "events": total,
            "org_events": len(sequences),
            "load_s": round(load_s, 1),
        }
        for name, index in positions.items():
            body: dict[str, Any] = {"limit": PAGE}
            if index:
                body["next_token"] = app.tokens.issue(scope, [sequences[index - 1]])
            raw = json.dumps(body).encode()

            def keyset(raw: bytes = raw) -> None:
                response = app.handle("POST", "/cdc/list", headers, raw)
                assert response.status == 200, response.body[:200]

            def offset(index: int = index) -> None:
                rows = conn.execute(
                    "SELECT * FROM events WHERE orgcode = ? ORDER BY sequence "
                    "LIMIT ? OFFSET ?",
                    (org, PAGE, index),
                ).fetchall()
                assert len(rows) == PAGE

            results[name] = {
                "handle_ms": _percentiles(_time(keyset)),
                "offset_sql_ms": _percentiles(_time(offset)),
            }
        app.close()

    first, last = results["first"]["handle_ms"], results["last"]["handle_ms"]
    results["last_over_first_p50"] = round(last[0] / first[0], 2)
    base_first = results["first"]["offset_sql_ms"][0]
    base_last = results["last"]["offset_sql_ms"][0]
    results["offset_last_over_first_p50"] = round(base_last / base_first, 2)

    return results


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints this module's description."""
    parser = _options.parser(__doc__, "100,000 events instead of 1,000,000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    results = run(quick=options(argv).quick)
    print(
        f"CDC feed: {results['events']:,} events, {results['org_events']:,} "
        f"in the org read; loaded in {results['load_s']} s"
    )
    print(
        f"{'position':<8} {'handle p50':>11} {'handle p99':>11} "
        f"{'OFFSET p50':>11} {'OFFSET p99':>11}"
    )
    for name in ("first", "middle", "last"):
        h, o = results[name]["handle_ms"], results[name]["offset_sql_ms"]
        print(f"{name:<8} {h[0]:>9.2f}ms {h[1]:>9.2f}ms {o[0]:>9.2f}ms {o[1]:>9.2f}ms")
    print(
        f"depth ratio last/first (p50): keyset via handle() "
        f"{results['last_over_first_p50']}x, OFFSET "
        f"{results['offset_last_over_first_p50']}x"
    )


if __name__ == "__main__":
    main()
