"""Two OS processes writing one SQLite file: no lock error, no gap, no repeat."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ipm
from ipm.domain.events import EventFilter

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent(
    """
    import sys
    import ipm

    db, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with ipm.open_sqlite(db) as app:
        for n in range(count):
            app.publish("ACME01", {
                "event_id": f"{name}-{n}",
                "service": "pos",
                "action": "sale.created",
                "payload": {"n": n},
            })
    """
)


def test_two_processes_append_without_lock_errors(tmp_path: Path) -> None:
    """Two writer processes and a reader: every event seen once, in order."""
    db = tmp_path / "shared.sqlite"
    per_writer = 400
    with ipm.open_sqlite(db) as app:
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(db), name, str(per_writer)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]

        seen: list[int] = []
        while True:
            finished = all(w.poll() is not None for w in writers)
            after = seen[-1] if seen else 0
            page = app.cdc.list("ACME01", EventFilter(after_sequence=after), 50)
            seen += [event.sequence for event in page]
            if finished and not page:
                break

        errors = [w.stderr.read() for w in writers if w.stderr]
        codes = [w.wait() for w in writers]

    assert codes == [0, 0], errors
    assert seen == list(range(1, 2 * per_writer + 1))
