"""Kill a bulk import at random moments, resume it, compare with a clean run.

Usage: ``python bench/crash_bulk.py [--lines N] [--kills N] [--seed N]``

A worker process drives one import job (``Bulk.run``) on a SQLite file and
is killed with SIGKILL at a random moment, again and again; after each
kill one ``continue`` is made from this process, then a new worker
starts. Finally the job is run to its end and everything it stored — the
events, the counters, the report — is compared with a clean single run of
the same file in another database. Any lost or repeated line shows up as
a difference. The test suite runs this with 20 kills; run it here with
more.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ipm
from ipm.domain.events import EventFilter

ORG = "ACME01"
SLICE = 1500
WORKER = """
import sys
import ipm

db, job_id, slice_lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
with ipm.open_sqlite(db) as app:
    print("ready", flush=True)
    app.bulk.run("ACME01", job_id, max_lines=slice_lines)
print("finished", flush=True)
"""


def write_file(path: Path, lines: int, seed: int) -> None:
    """Small events, with bad lines, blank lines and repeats planted."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        for n in range(lines):
            kind = rng.random()
            if kind < 0.002:
                out.write(b'{"event_id": "broken\n')
            elif kind < 0.003:
                out.write(b"\n")
            elif kind < 0.005 and n > 10:
                out.write(_line(rng.randrange(n - 10, n)))
            else:
                out.write(_line(n))


def _line(n: int) -> bytes:
    event = {
        "event_id": f"e{n}",
        "service": "pos",
        "action": "sale.created",
        "occurred_at": "2026-03-01T10:00:00Z",
        "payload": {"n": n, "store": "FR-PAR-01"},
    }

    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def start_job(db: Path, data: Path) -> str:
    with ipm.open_sqlite(db) as app, open(data, "rb") as handle:
        job = app.bulk.create_import(ORG)
        job = app.bulk.upload(ORG, job.job_id, iter(lambda: handle.read(1 << 20), b""))
        job = app.bulk.commit(ORG, job.job_id, job.revision)

    return job.job_id


def crash_and_resume(db: Path, job_id: str, kills: int, seed: int) -> int:
    """Kill ``kills`` workers at random moments; return how many finished first."""
    rng = random.Random(seed)
    finished_early = 0
    for _ in range(kills):
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), job_id, str(SLICE)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        worker.stdout.readline()
        time.sleep(rng.uniform(0.02, 0.5))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        finished_early += worker.returncode == 0
        with ipm.open_sqlite(db) as app:
            job = app.bulk.get(ORG, job_id)
            assert job.status in ("processing", "completed_with_errors"), job.status
            app.bulk.continue_import(ORG, job_id, max_lines=SLICE)

    return finished_early


def outcome(db: Path, job_id: str) -> dict[str, Any]:
    """Everything a run leaves: host events in order, counters, report."""
    with ipm.open_sqlite(db) as app:
        job = app.bulk.run(ORG, job_id, max_lines=50_000)
        events = app.cdc.list(ORG, EventFilter(service="pos"), 10_000_000)
        report = b"".join(app.bulk.report(ORG, job_id)).decode().splitlines()

    return {
        "status": job.status,
        "counters": job.counters.to_wire(),
        "events": [(e.new.event_id, e.content_hash) for e in events],
        "report": report,
    }


def run(
    workdir: Path, *, lines: int = 200_000, kills: int = 20, seed: int = 1
) -> dict[str, Any]:
    """The whole experiment; the two outcomes and what the kills did."""
    data = workdir / "crash.ndjson"
    write_file(data, lines, seed)

    crashed_db, clean_db = workdir / "crashed.sqlite", workdir / "clean.sqlite"
    crashed_job = start_job(crashed_db, data)
    finished_early = crash_and_resume(crashed_db, crashed_job, kills, seed)
    crashed = outcome(crashed_db, crashed_job)
    clean = outcome(clean_db, start_job(clean_db, data))

    return {"crashed": crashed, "clean": clean, "finished_early": finished_early}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(Path(workdir), lines=args.lines, kills=args.kills, seed=args.seed)
    same = result["crashed"] == result["clean"]
    counters = result["clean"]["counters"]
    print(
        f"{args.kills} kills, {result['finished_early']} workers finished first; "
        f"{counters['lines_read']:,} lines, {counters['created']:,} events; "
        f"identical to a clean run: {same} ({time.monotonic() - started:.0f} s)"
    )

    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
