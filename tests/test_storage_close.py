"""Closing an application while other threads still use it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import ipm
from ipm.domain.errors import StorageClosed

ORG = "ACME01"

_CLOSE_UNDER_READERS = textwrap.dedent(
    """
    import sys, threading, time
    import ipm
    from ipm.domain.errors import StorageClosed

    path, rounds = sys.argv[1], int(sys.argv[2])
    with ipm.open_sqlite(path) as app:
        app.publish_many("ACME01", [{"service": "pos", "action": "a.b"}] * 300)
    for _ in range(rounds):
        app = ipm.open_sqlite(path)
        odd = []

        def read():
            while True:
                try:
                    app.events("ACME01", limit=300)
                except StorageClosed:
                    return
                except Exception as error:  # anything else is a defect
                    odd.append(repr(error))
                    return

        threads = [threading.Thread(target=read) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        app.close()
        for thread in threads:
            thread.join(30)
        if odd:
            print(odd[0])
            sys.exit(3)
    """
)


@pytest.mark.slow
def test_closing_under_running_readers_neither_crashes_nor_confuses(
    tmp_path: Path,
) -> None:
    """Regression: close() closed connections other threads were reading
    through, which crashed the process (SIGSEGV) in about one run of six,
    and gave the others sqlite3.ProgrammingError instead of StorageClosed."""
    script = tmp_path / "close.py"
    script.write_text(_CLOSE_UNDER_READERS)

    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ipm.sqlite"), "25"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])


def test_a_call_under_way_finishes_and_the_next_is_refused(tmp_path: Path) -> None:
    """The connection in use is closed when it is given back, not under it."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    storage = app.storage
    inside = threading.Event()
    go_on = threading.Event()
    outcome: list[object] = []

    def long_read() -> None:
        with storage.unit_of_work(write=False) as uow:
            inside.set()
            go_on.wait(10)
            outcome.append(uow.events.last_sequence())

    reader = threading.Thread(target=long_read)
    reader.start()
    inside.wait(10)
    app.close()
    go_on.set()
    reader.join(10)

    assert outcome == [0]
    assert storage.open_connections() == 0
    with pytest.raises(StorageClosed):
        app.events(ORG)
