"""Bulk import benchmark: ``ipm import`` against ``sqlite-utils insert --nl``.

A realistic retail file (``gen_bulk_file.py``: 1,000,000 lines of about
350 bytes, a few hundred planted bad lines, repeats and blank lines) is
loaded, in the same run, by:

- ``sqlite-utils insert --nl --alter`` into an empty WAL database: parses
  each line, validates nothing, keeps no report (it stops at a line that
  is not a JSON object, so it gets the file without those lines);
- a raw ``executemany`` floor: orjson and one prepared INSERT into a table
  with two indexes, 10,000 rows per transaction;
- ``ipm import`` (the CLI, no host schema registered);
- ipm's library with the sale payload schema registered, so every sale is
  also checked against JSON Schema — at two file sizes, to see whether
  peak memory follows the file size.

Each loader runs in its own process; its wall time, CPU time and peak
memory (``ru_maxrss``) are measured. Printed: rows/s, the ratios and
peak memory. Run: ``python bench/bench_bulk.py`` (``--quick`` for
100,000 lines).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402
from gen_bulk_file import SALE_SCHEMA, generate  # noqa: E402

MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "code": done.returncode,
    "wall": time.perf_counter() - started,
    "cpu": usage.ru_utime + usage.ru_stime,
    "rss_mb": usage.ru_maxrss / 1024,
    "out": done.stdout[-2000:],
}))
"""

FLOOR = """
import sqlite3, sys, orjson
path, db = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = NORMAL")
conn.execute(
    "CREATE TABLE events (event_id TEXT, service TEXT, action TEXT, "
    "occurred_at TEXT, payload TEXT)"
)
conn.execute("CREATE UNIQUE INDEX e_id ON events (event_id)")
conn.execute("CREATE INDEX e_service ON events (service, occurred_at)")
rows = []
count = 0

def flush():
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    rows.clear()

with open(path, "rb") as handle:
    for line in handle:
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(e) is not dict:
            continue
        rows.append((e.get("event_id"), e.get("service"), e.get("action"),
                     e.get("occurred_at"), orjson.dumps(e.get("payload"))))
        count += 1
        if len(rows) == 10_000:
            flush()
flush()
print(count)
"""

LIBRARY = """
import json, sys
import ipm
path, db, schema = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with ipm.open_sqlite(db) as app:
    app.register_event_type("pos", "sale.created", schema)
    job = app.bulk.create_import("ACME01")
    with open(path, "rb") as handle:
        chunks = iter(lambda: handle.read(1 << 20), b"")
        job = app.bulk.upload("ACME01", job.job_id, chunks)
    job = app.bulk.commit("ACME01", job.job_id, job.revision)
    job = app.bulk.run("ACME01", job.job_id, max_lines=10_000)
print(json.dumps(job.counters.to_wire()))
"""


def measure(*command: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)

    return result


def readable_only(source: Path, target: Path) -> int:
    """Copy the lines that are JSON objects (sqlite-utils stops at others)."""
    kept = 0
    with open(source, "rb") as lines, open(target, "wb") as out:
        for line in lines:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.write(line)
                kept += 1

    return kept


def count_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def run(quick: bool = False) -> dict[str, Any]:
    lines = 100_000 if quick else 1_000_000
    bad = 30 if quick else 300
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        data, small = work / "retail.ndjson", work / "small.ndjson"
        expected = generate(data, lines, bad)
        generate(small, lines // 4, bad // 4)
        readable = readable_only(data, work / "readable.ndjson")
        utils = str(Path(sys.executable).with_name("sqlite-utils"))
        subprocess.run(
            [utils, "create-database", str(work / "su.db"), "--enable-wal"], check=True
        )

        rows = {
            "sqlite-utils insert --nl (WAL)": (
                readable,
                measure(
                    utils,
                    "insert",
                    str(work / "su.db"),
                    "events",
                    str(work / "readable.ndjson"),
                    "--nl",
                    "--alter",
                ),
            ),
            "raw executemany, two indexes": (
                readable,
                measure(sys.executable, "-c", FLOOR, str(data), str(work / "floor.db")),
            ),
            "ipm import (CLI)": (
                lines,
                measure(
                    sys.executable,
                    "-m",
                    "ipm",
                    "import",
                    str(data),
                    "--db",
                    str(work / "cli.sqlite"),
                    "--org",
                    "ACME01",
                ),
            ),
            "ipm library, sale schema checked": (
                lines,
                measure(
                    sys.executable,
                    "-c",
                    LIBRARY,
                    str(data),
                    str(work / "lib.sqlite"),
                    json.dumps(SALE_SCHEMA),
                ),
            ),
            "ipm library, same, 1/4 of the file": (
                lines // 4,
                measure(
                    sys.executable,
                    "-c",
                    LIBRARY,
                    str(small),
                    str(work / "small.sqlite"),
                    json.dumps(SALE_SCHEMA),
                ),
            ),
        }
        size_mb = data.stat().st_size / 1e6
        inserted = count_rows(work / "su.db", "events")
        if inserted != readable:
            raise RuntimeError(f"sqlite-utils inserted {inserted} of {readable} rows")

    figures = {
        name: {
            "rows": count,
            "wall_s": result["wall"],
            "cpu_s": result["cpu"],
            "rows_per_s_wall": count / result["wall"],
            "rows_per_s_cpu": count / result["cpu"],
            "peak_rss_mb": result["rss_mb"],
            "exit": result["code"],
            "out": result["out"].strip().splitlines()[-1:] if result["out"] else [],
        }
        for name, (count, result) in rows.items()
    }

    return {
        "lines": lines,
        "file_mb": size_mb,
        "expected": expected,
        "figures": figures,
    }


def main() -> int:
    quick = "--quick" in sys.argv
    started = time.monotonic()
    result = run(quick)
    figures = result["figures"]
    baseline = figures["sqlite-utils insert --nl (WAL)"]
    floor = figures["raw executemany, two indexes"]

    print(f"{result['lines']:,} lines, {result['file_mb']:.0f} MB")
    print(f"expected {result['expected']}")
    head = ("loader", "rows/s cpu", "rows/s wall", "vs s-u", "vs floor", "peak MB")
    print("{:<36} {:>11} {:>12} {:>7} {:>9} {:>8} exit".format(*head))
    for name, row in figures.items():
        cpu = row["rows_per_s_cpu"]
        print(
            f"{name:<36} {cpu:>11,.0f} {row['rows_per_s_wall']:>12,.0f} "
            f"{cpu / baseline['rows_per_s_cpu']:>6.2f}x "
            f"{cpu / floor['rows_per_s_cpu']:>8.2f}x {row['peak_rss_mb']:>8.0f} "
            f"{row['exit']:>4}"
        )
    for name in ("ipm import (CLI)", "ipm library, sale schema checked"):
        print(f"{name}: {figures[name]['out']}")
    print(f"({time.monotonic() - started:.0f} s; load average {resource_load():.1f})")

    return 0


def resource_load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
