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
100,000 lines, ``--rounds N`` to run every loader N times in turn).

CPU time counts every thread of a loader: ipm's includes the SQLite
checkpoints its storage runs on a background thread. Per-round ratios
compare loaders that ran minutes apart at most; on a shared machine read
those, not one figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _options  # noqa: E402  (a sibling module, like gen_bulk_file)
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


Command = list[str]


def loaders(work: Path, utils: str) -> dict[str, tuple[str, Command]]:
    """Each loader: which file it reads and its command (``{db}`` per run)."""
    schema = json.dumps(SALE_SCHEMA)
    ipm_cli = [sys.executable, "-m", "ipm", "import"]

    return {
        SU: (
            "readable.ndjson",
            [utils, "insert", "{db}", "events", "{file}", "--nl", "--alter"],
        ),
        FLOOR_NAME: ("retail.ndjson", [sys.executable, "-c", FLOOR, "{file}", "{db}"]),
        CLI: ("retail.ndjson", [*ipm_cli, "{file}", "--db", "{db}", "--org", "ACME01"]),
        LIB: (
            "retail.ndjson",
            [sys.executable, "-c", LIBRARY, "{file}", "{db}", schema],
        ),
        QUARTER: (
            "small.ndjson",
            [sys.executable, "-c", LIBRARY, "{file}", "{db}", schema],
        ),
    }


SU = "sqlite-utils insert --nl (WAL)"
FLOOR_NAME = "raw executemany, two indexes"
CLI = "ipm import (CLI)"
LIB = "ipm library, sale schema checked"
QUARTER = "ipm library, same, 1/4 of the file"


def run(quick: bool = False, rounds: int = 1) -> dict[str, Any]:
    """Every loader ``rounds`` times, in turn, so a slow spell of a shared
    machine hits them alike; each round's ratios compare neighbours."""
    lines = 100_000 if quick else 1_000_000
    bad = 30 if quick else 300
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        data, small = work / "retail.ndjson", work / "small.ndjson"
        expected = generate(data, lines, bad)
        generate(small, lines // 4, bad // 4)
        readable = readable_only(data, work / "readable.ndjson")
        counts = {"retail.ndjson": lines, "small.ndjson": lines // 4}
        counts["readable.ndjson"] = readable
        utils = str(Path(sys.executable).with_name("sqlite-utils"))
        runs: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(rounds):
            for name, (source, command) in loaders(work, utils).items():
                db = (
                    work / f"run{round_}-{len(runs.get(name, []))}-{abs(hash(name))}.db"
                )
                if name == SU:
                    create = [utils, "create-database", str(db), "--enable-wal"]
                    subprocess.run(create, check=True)
                places = {"{db}": str(db), "{file}": str(work / source)}
                args = [places.get(arg, arg) for arg in command]
                result = measure(*args)
                if name == SU and count_rows(db, "events") != readable:
                    raise RuntimeError("sqlite-utils did not insert every row")
                result["rows"] = counts[source]
                runs.setdefault(name, []).append(result)
                _forget(db)
        size_mb = data.stat().st_size / 1e6

    return {
        "lines": lines,
        "file_mb": size_mb,
        "expected": expected,
        "runs": runs,
    }


def _forget(db: Path) -> None:
    for path in db.parent.glob(db.name + "*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best (highest) rows/s of a loader's runs, by CPU and by wall time."""
    rows = runs[0]["rows"]

    return {
        "rows": rows,
        "rows_per_s_cpu": max(rows / r["cpu"] for r in runs),
        "rows_per_s_wall": max(rows / r["wall"] for r in runs),
        "peak_rss_mb": max(r["rss_mb"] for r in runs),
        "exit": runs[-1]["code"],
        "out": runs[-1]["out"].strip().splitlines()[-1:],
    }


def round_ratios(result: dict[str, Any], name: str, clock: str) -> list[float]:
    """The loader's rows/s over sqlite-utils', round by round."""
    runs, base = result["runs"][name], result["runs"][SU]

    return [
        (r["rows"] / r[clock]) / (b["rows"] / b[clock])
        for r, b in zip(runs, base, strict=True)
    ]


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints this module's description."""
    parser = _options.parser(__doc__, "100,000 lines instead of 1,000,000")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="run every loader N times in turn (1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    quick, rounds = args.quick, args.rounds
    started = time.monotonic()
    result = run(quick, rounds)
    figures = {name: summary(runs) for name, runs in result["runs"].items()}
    baseline, floor = figures[SU], figures[FLOOR_NAME]

    print(f"{result['lines']:,} lines, {result['file_mb']:.0f} MB, {rounds} round(s)")
    print(f"expected {result['expected']}")
    head = ("loader (best of rounds)", "rows/s cpu", "rows/s wall", "cpu s-u")
    head += ("wall s-u", "vs floor", "peak MB")
    print("{:<36} {:>11} {:>12} {:>7} {:>8} {:>9} {:>8} exit".format(*head))
    for name, row in figures.items():
        cpu, wall = row["rows_per_s_cpu"], row["rows_per_s_wall"]
        print(
            f"{name:<36} {cpu:>11,.0f} {wall:>12,.0f} "
            f"{cpu / baseline['rows_per_s_cpu']:>6.2f}x "
            f"{wall / baseline['rows_per_s_wall']:>7.2f}x "
            f"{cpu / floor['rows_per_s_cpu']:>8.2f}x {row['peak_rss_mb']:>8.0f} "
            f"{row['exit']:>4}"
        )
    for name in (CLI, LIB):
        cpu = ", ".join(f"{x:.2f}" for x in round_ratios(result, name, "cpu"))
        wall = ", ".join(f"{x:.2f}" for x in round_ratios(result, name, "wall"))
        print(f"{name} / sqlite-utils, each round: cpu {cpu}; wall {wall}")
    for name in (CLI, LIB):
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
