"""``ipm import`` and ``ipm export`` as processes, on the benchmark's file."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm import cli
from ipm.cli import _admin as admin
from ipm.domain.errors import StorageBusy, StorageUnavailable
from ipm.usecases.delivery import DeliveryReport

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "bench" / "gen_bulk_file.py"


def generate(path: Path, lines: int, bad: int) -> dict[str, int]:
    done = subprocess.run(
        [
            sys.executable,
            str(GENERATOR),
            str(path),
            "--lines",
            str(lines),
            "--bad",
            str(bad),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    expected: dict[str, int] = json.loads(done.stdout)

    return expected


def ipm_cli(
    *args: str, terminal: bool = False, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run ``ipm`` (in ``cwd``); with ``terminal`` its stderr is a pseudo-terminal."""
    command = [sys.executable, "-m", "ipm", *args]
    if not terminal:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=300, cwd=cwd
        )
        return done.returncode, done.stdout, done.stderr

    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(leader)

    return process.returncode, stdout.decode(), b"".join(seen).decode(errors="replace")


def summary_counts(summary: str) -> dict[str, int]:
    words = summary.replace(",", "").replace("(", " ").replace(")", " ").split()
    found: dict[str, Any] = {}
    for number, word in itertools.pairwise(words):
        if number.isdigit():
            found.setdefault(word, int(number))

    return found


def test_import_of_the_benchmark_file_shows_progress_and_a_true_summary(
    tmp_path: Path,
) -> None:
    """On a terminal: a progress bar, then a summary that matches the file."""
    data = tmp_path / "retail.ndjson"
    expected = generate(data, 30_000, 120)
    db = tmp_path / "ipm.sqlite"

    code, stdout, progress = ipm_cli(
        "import",
        str(data),
        "--db",
        str(db),
        "--org",
        "ACME01",
        "--slice-lines",
        "5000",
        terminal=True,
    )
    counts = summary_counts(stdout)
    report = (tmp_path / "retail.ndjson.errors.ndjson").read_text().splitlines()

    assert code == 1
    assert "completed_with_errors" in stdout
    assert counts["lines"] == expected["lines_read"]
    assert counts["created"] == expected["created"]
    assert counts["duplicates"] == expected["duplicate"]
    assert counts["failed"] == expected["failed"] == len(report)
    assert counts["blank"] == expected["blank"]
    assert "report: " in stdout
    assert "\r" in progress and "lines/s" in progress and "%" in progress


def test_without_a_terminal_there_is_no_progress_bar(tmp_path: Path) -> None:
    """Piped, the import prints only its summary; a clean file exits 0."""
    data = tmp_path / "clean.ndjson"
    generate(data, 500, 0)

    code, stdout, stderr = ipm_cli(
        "import", str(data), "--db", str(tmp_path / "ipm.sqlite"), "--org", "ACME01"
    )

    assert code == 0
    assert " completed: 500 lines" in stdout
    assert "\r" not in stderr
    # Under a second, two decimals: never "in 0.0 s (313 lines/s)".
    pattern = r" in (0\.\d\d|[1-9]\d*\.\d) s \([\d,]+ lines/s\)$"
    assert re.search(pattern, stdout.strip())


def test_validate_then_export(tmp_path: Path) -> None:
    """A validate run writes nothing; an export writes the imported events."""
    data = tmp_path / "retail.ndjson"
    expected = generate(data, 2_000, 20)
    db = str(tmp_path / "ipm.sqlite")
    out = tmp_path / "out.ndjson"

    checked = ipm_cli(
        "import", str(data), "--db", db, "--org", "ACME01", "--mode", "validate"
    )
    empty = ipm_cli(
        "export", "--db", db, "--org", "ACME01", "--service", "pos", "-o", str(out)
    )
    empty_lines = out.read_text().splitlines()
    ipm_cli("import", str(data), "--db", db, "--org", "ACME01")
    code, stdout, _ = ipm_cli("export", "--db", db, "--org", "ACME01", "-o", str(out))
    exported = [json.loads(line) for line in out.read_text().splitlines()]

    assert checked[0] == 1 and " validated: " in checked[1]
    assert empty[0] == 0 and empty_lines == []
    assert code == 0 and "written to" in stdout
    hosts = [e for e in exported if e["service"] != "ipm"]
    assert len(hosts) == expected["created"]
    assert all(line["orgcode"] == "ACME01" for line in exported)


def test_an_export_summary_counts_in_the_singular_for_one(tmp_path: Path) -> None:
    """One exported event is "1 event", not "1 events"."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db) as app:
        app.publish("ACME01", {"service": "pos", "action": "sale.created"})
    out = tmp_path / "out.ndjson"

    code, stdout, _ = ipm_cli(
        "export", "--db", str(db), "--org", "ACME01", "--service", "pos", "-o", str(out)
    )

    assert code == 0 and " completed: 1 event, " in stdout


def test_an_export_names_its_job_when_it_starts(tmp_path: Path) -> None:
    """A killed export (SIGKILL) printed nothing that named its job, which
    --job needs; the job is now named as ipm import names its own."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db) as app:
        app.publish("ACME01", {"service": "pos", "action": "sale.created"})

    code, stdout, stderr = ipm_cli(
        "export", "--db", str(db), "--org", "ACME01", "-o", str(tmp_path / "o")
    )
    job_id = stdout.split()[0]

    assert code == 0
    assert stderr.startswith(f"ipm export: job {job_id} started; ")
    assert f"ipm export --job {job_id} --org ACME01 --db " in stderr


def test_a_malformed_org_code_is_named_as_the_option(tmp_path: Path) -> None:
    """--org with a space is a usage error about --org, before any work."""
    data = tmp_path / "clean.ndjson"
    generate(data, 5, 0)

    code, _, stderr = ipm_cli(
        "import", str(data), "--db", str(tmp_path / "ipm.sqlite"), "--org", "bad org"
    )

    assert code == 2
    assert "--org" in stderr and "not an org code" in stderr
    assert not (tmp_path / "ipm.sqlite").exists()


@pytest.mark.parametrize(
    "option",
    [["--max-failed-lines", "-1"], ["--slice-lines", "0"], ["--slice-lines", "x"]],
)
def test_an_out_of_range_count_is_a_usage_error(
    tmp_path: Path, option: list[str]
) -> None:
    """A negative bound or an empty slice is refused before any work."""
    data = tmp_path / "clean.ndjson"
    generate(data, 5, 0)
    db = tmp_path / "ipm.sqlite"

    code, _, stderr = ipm_cli(
        "import", str(data), "--db", str(db), "--org", "ACME01", *option
    )

    assert code == 2
    assert option[0] in stderr
    assert not db.exists()


@pytest.mark.parametrize("case", ["missing file", "directory", "no such folder"])
def test_a_command_that_cannot_run_exits_2(tmp_path: Path, case: str) -> None:
    """2 means the command could not run; 1 is kept for "lines failed"."""
    data = tmp_path / "clean.ndjson"
    generate(data, 5, 0)
    file, db = {
        "missing file": (tmp_path / "absent.ndjson", tmp_path / "ipm.sqlite"),
        "directory": (tmp_path, tmp_path / "ipm.sqlite"),
        "no such folder": (data, tmp_path / "absent" / "ipm.sqlite"),
    }[case]

    code, stdout, stderr = ipm_cli(
        "import", str(file), "--db", str(db), "--org", "ACME01"
    )

    assert code == 2
    assert stdout == ""
    assert "Traceback" not in stderr
    if db.exists():
        with ipm.open_sqlite(db) as app:
            assert app.bulk.find("ACME01") == []


def test_an_export_to_no_folder_stops_before_the_job(tmp_path: Path) -> None:
    """-o in a folder that does not exist is refused before any export runs."""
    db = tmp_path / "ipm.sqlite"
    out = tmp_path / "absent" / "events.ndjson"

    code, _, stderr = ipm_cli(
        "export", "--db", str(db), "--org", "ACME01", "-o", str(out)
    )

    assert code == 2
    assert "absent" in stderr
    if db.exists():
        with ipm.open_sqlite(db) as app:
            assert app.bulk.find("ACME01") == []


def test_every_command_defaults_to_the_file_ipm_serve_uses(tmp_path: Path) -> None:
    """Without --db, keys and imports work on ./ipm.sqlite, as ipm serve does."""
    data = tmp_path / "clean.ndjson"
    generate(data, 5, 0)

    created, _, _ = ipm_cli(
        "keys", "create", "--org", "ACME01", "--actor", "ops", cwd=tmp_path
    )
    imported, _, stderr = ipm_cli("import", str(data), "--org", "ACME01", cwd=tmp_path)

    assert (created, imported) == (0, 0), stderr
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        assert len(app.list_api_keys()) == 1
        assert len(app.bulk.find("ACME01")) == 1


@pytest.mark.parametrize("output", ["", ".", "a_folder"])
def test_an_export_to_no_file_name_stops_before_the_job(
    tmp_path: Path, output: str
) -> None:
    """-o naming a folder or nothing is refused before any export runs."""
    (tmp_path / "a_folder").mkdir()
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass

    code, _, stderr = ipm_cli("export", "--org", "ACME01", "-o", output, cwd=tmp_path)

    assert code == 2, stderr
    assert "Traceback" not in stderr
    with ipm.open_sqlite(db) as app:
        assert app.bulk.find("ACME01") == []


@pytest.mark.parametrize("command", [["keys", "list"], ["deliver", "--once"]])
def test_reading_a_database_that_is_not_there_exits_2(
    tmp_path: Path, command: list[str]
) -> None:
    """A mistyped --db (or folder) is named, not silently made anew."""
    code, _, stderr = ipm_cli(*command, "--db", str(tmp_path / "typo.sqlite"))

    assert code == 2
    assert "no database" in stderr
    assert not (tmp_path / "typo.sqlite").exists()


def test_a_report_with_nowhere_to_go_stops_the_import_first(tmp_path: Path) -> None:
    """--report into a missing folder is refused before any line is imported."""
    data = tmp_path / "clean.ndjson"
    generate(data, 5, 0)
    db = tmp_path / "ipm.sqlite"

    code, _, _ = ipm_cli(
        "import",
        str(data),
        "--db",
        str(db),
        "--org",
        "ACME01",
        "--report",
        str(tmp_path / "absent" / "r.ndjson"),
    )

    assert code == 2
    assert not db.exists()


Step = Callable[[int, Callable[[], None]], DeliveryReport]


def run_deliver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: Step
) -> tuple[int, list[dict[str, Any]]]:
    """``ipm deliver`` on a new database; ``step(call number, stop)`` answers
    each deliver_pending call, and ``stop()`` sends the SIGTERM."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass
    handlers: dict[int, Any] = {}
    calls: list[dict[str, Any]] = []

    def stop() -> None:
        handlers[signal.SIGTERM](signal.SIGTERM, None)

    def deliver_pending(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        calls.append(kwargs)
        return step(len(calls), stop)

    monkeypatch.setattr(
        signal, "signal", lambda sig, handler: handlers.update({sig: handler})
    )
    monkeypatch.setattr(ipm.Application, "deliver_pending", deliver_pending)

    code = cli.main(["deliver", "--db", str(db), "--interval", "0.01"])

    return code, calls


def test_the_dispatcher_loop_outlives_a_busy_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipm deliver waits out a locked database instead of exiting."""

    def step(call: int, stop: Callable[[], None]) -> DeliveryReport:
        if call == 1:
            raise StorageBusy("the database stayed locked")
        stop()
        return DeliveryReport()

    code, calls = run_deliver(tmp_path, monkeypatch, step)

    assert code == 0
    assert len(calls) == 2


def test_a_dispatcher_stopped_on_a_storage_fault_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a stop whose call then gave up recording its sends (the
    database still locked) ended ipm deliver with status 0, as if all
    were well; a supervisor now sees 1 and the log says what follows."""

    def step(call: int, stop: Callable[[], None]) -> DeliveryReport:
        stop()
        raise StorageBusy("the database stayed locked; try again later")

    with caplog.at_level(logging.ERROR, logger="ipm.cli._admin"):
        code, calls = run_deliver(tmp_path, monkeypatch, step)

    assert code == 1
    assert len(calls) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "stopped while the database could not take writes (the database stayed locked)"
    )


def test_the_dispatcher_stops_after_the_batch_it_is_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during a backlog ends ipm deliver with the call under way,
    which is handed the stop (it starts no further send), not after the
    backlog; the call tells each group of sends as it is recorded."""

    def step(call: int, stop: Callable[[], None]) -> DeliveryReport:
        if call == 1:
            stop()
        # A backlog: every call finds a full batch due.
        return DeliveryReport(attempted=64, delivered=64)

    code, calls = run_deliver(tmp_path, monkeypatch, step)

    assert code == 0
    (call,) = calls
    assert call["stop"].is_set()
    assert "max_batches" not in call and callable(call["progress"])


def test_the_dispatcher_loop_sums_what_it_tells(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Groups recorded within a second make one log line, which names the
    webhooks disabled too."""
    one = DeliveryReport(attempted=1, retrying=1)
    gone = DeliveryReport(attempted=1, failed=1, disabled=("wh_1",), released=3)
    progress: list[Any] = []

    def deliver_pending(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        progress.append(kwargs["progress"])
        if len(progress) > 1:
            handlers[signal.SIGTERM](signal.SIGTERM, None)
            return DeliveryReport()
        for report in (one, one, gone):
            kwargs["progress"](report)
        return one + one + gone

    handlers: dict[int, Any] = {}
    monkeypatch.setattr(
        signal, "signal", lambda sig, handler: handlers.update({sig: handler})
    )
    monkeypatch.setattr(ipm.Application, "deliver_pending", deliver_pending)
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass

    with caplog.at_level(logging.INFO, logger="ipm.cli._admin"):
        code = cli.main(["deliver", "--db", str(db), "--interval", "0.01"])

    lines = [r.getMessage() for r in caplog.records if "attempt(s)" in r.getMessage()]
    assert code == 0
    assert lines[0] == (
        "3 attempt(s): 0 delivered, 2 to retry, 1 failed for good, "
        "1 webhook(s) disabled, 3 put back untried, still due"
    )
    assert lines[1].startswith("in all: 3 attempt(s)")


def _deliver_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    deliver_pending: Callable[..., DeliveryReport],
    *argv: str,
) -> int:
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass
    monkeypatch.setattr(ipm.Application, "deliver_pending", deliver_pending)

    return cli.main(["deliver", "--db", str(db), "--interval", "0.01", *argv])


def test_once_does_not_claim_to_drain_what_this_machine_cannot_send(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: --once exited 0 ("0 to retry") with due deliveries left
    untried for want of descriptors. It tries a few rounds, then exits 1."""
    calls: list[int] = []

    def short(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        calls.append(1)
        return DeliveryReport(untried_here=2)

    with caplog.at_level(logging.INFO, logger="ipm.cli._admin"):
        code = _deliver_with(tmp_path, monkeypatch, short, "--once")

    lines = [r.getMessage() for r in caplog.records]
    assert code == 1
    assert len(calls) == admin.ONCE_SHORT_ROUNDS
    # The deliveries the last round left, not a sum over the rounds.
    assert any("2 left untried" in line for line in lines if "in all" in line)
    assert any("could not send" in line for line in lines if "still due" in line)


def test_once_tells_a_short_run_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a --once run that drained its backlog within a second
    logged the same counts twice, once for the spell and once "in all"."""
    sent = DeliveryReport(attempted=2, delivered=2)
    calls: list[int] = []

    def drain(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        calls.append(1)
        if len(calls) > 1:
            return DeliveryReport()
        kwargs["progress"](sent)
        return sent

    with caplog.at_level(logging.INFO, logger="ipm.cli._admin"):
        code = _deliver_with(tmp_path, monkeypatch, drain, "--once")

    lines = [r.getMessage() for r in caplog.records if "attempt(s)" in r.getMessage()]
    assert code == 0
    assert lines == ["in all: 2 attempt(s): 2 delivered, 0 to retry, 0 failed for good"]


def test_a_close_that_fails_in_the_loop_is_the_command_s_failure(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: once the loop had a thread of its own, an error closing
    the database there was printed as a thread's traceback, the last line
    was lost and the command exited 0."""

    def full_disk(self: ipm.Application) -> None:
        raise StorageUnavailable("ipm cannot store anything just now")

    def nothing_due(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        monkeypatch.setattr(ipm.Application, "close", full_disk)
        return DeliveryReport()

    with caplog.at_level(logging.INFO, logger="ipm.cli._admin"):
        code = _deliver_with(tmp_path, monkeypatch, nothing_due, "--once")

    assert code == 2
    assert any(r.getMessage().startswith("in all") for r in caplog.records)


def test_once_goes_on_while_a_shortage_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [
        DeliveryReport(untried_here=1),
        DeliveryReport(attempted=1, delivered=1),
        DeliveryReport(),
    ]

    def passing(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        return answers.pop(0)

    assert _deliver_with(tmp_path, monkeypatch, passing, "--once") == 0
    assert answers == []


def test_sends_recorded_before_a_storage_fault_count_in_the_total(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: groups recorded by a call that then met a full disk were
    left out of "in all", and the fault was warned about at every interval."""
    handlers: dict[int, Any] = {}
    calls: list[int] = []

    def recorded_then_full(self: ipm.Application, **kwargs: Any) -> DeliveryReport:
        calls.append(1)
        if len(calls) == 1:
            kwargs["progress"](DeliveryReport(attempted=2, delivered=2))
        if len(calls) <= 4:
            raise StorageUnavailable(
                "ipm cannot store anything just now: the disk is full; "
                "nothing of this request was kept, try again later"
            )
        handlers[signal.SIGTERM](signal.SIGTERM, None)
        return DeliveryReport()

    monkeypatch.setattr(
        signal, "signal", lambda sig, handler: handlers.update({sig: handler})
    )
    with caplog.at_level(logging.INFO, logger="ipm.cli._admin"):
        code = _deliver_with(tmp_path, monkeypatch, recorded_then_full)

    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if "cannot record deliveries" in m]
    assert code == 0
    assert warned == [
        "cannot record deliveries just now (ipm cannot store anything just now: "
        "the disk is full); trying again every 0.01 s"
    ]
    assert [m for m in messages if m.startswith("in all")] == [
        "in all: 2 attempt(s): 2 delivered, 0 to retry, 0 failed for good"
    ]


_STUCK_IN_SQLITE = """
import sqlite3, sys
from ipm import cli

# Another writer holds the database: the dispatcher's claim waits for it
# inside SQLite's busy handler (C code, up to the 30 s busy timeout).
holder = sqlite3.connect(sys.argv[1], isolation_level=None)
holder.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.exit(cli.main(["deliver", "--db", sys.argv[1]]))
"""


@pytest.mark.slow
def test_signals_reach_ipm_deliver_while_its_call_is_stuck(tmp_path: Path) -> None:
    """Regression: the loop ran in the main thread, where Python handles
    signals only between its own steps: inside SQLite's busy wait a SIGTERM
    was heard 30 s late and a second one was lost. The second now ends the
    process at once."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK_IN_SQLITE)
    process = subprocess.Popen(
        [sys.executable, str(script), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "holding"
        time.sleep(2)  # into the claim's wait
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        process.kill()
        process.wait()
    err = process.stderr.read() if process.stderr else ""

    assert code == -signal.SIGTERM
    assert "stopping on signal" in err
    assert "second signal" in err


# -- the benchmarks' command lines ----------------------------------------------------

BENCH = ROOT / "bench"


def bench_help(script: Path) -> tuple[int, str]:
    """``script --help``, stopped with everything it started after 20 s."""
    process = subprocess.Popen(
        [sys.executable, str(script), "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        # A script that ignores --help is running a benchmark: stop it all.
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{script.name} --help ran instead of printing its usage")

    return process.returncode, out


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("run.py", ["--quick", "--rounds N", "NAME"]),
        ("bench_bulk.py", ["--quick", "--rounds N"]),
        ("bench_cdc.py", ["--quick"]),
        ("bench_delivery.py", ["--quick"]),
        ("bench_kpi.py", ["--quick"]),
        ("bench_signing.py", ["--quick"]),
    ],
)
def test_a_benchmark_s_help_prints_its_usage_at_once(
    name: str, flags: list[str]
) -> None:
    """--help prints usage with every flag and exits 0 instead of benchmarking."""
    code, out = bench_help(BENCH / name)

    assert code == 0 and out.startswith("usage:")
    assert all(flag in out for flag in flags)


def test_run_py_hands_each_benchmark_the_flags_it_takes() -> None:
    """--quick goes to every benchmark, --rounds N only to the bulk one."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)

    commands = runner.commands(
        runner.parse(["--quick", "--rounds", "2", "bulk", "cdc"])
    )

    assert [command[1:] for command in commands] == [
        [str(BENCH / "bench_bulk.py"), "--quick", "--rounds", "2"],
        [str(BENCH / "bench_cdc.py"), "--quick"],
    ]


@pytest.mark.parametrize(
    ("words", "verbose"),
    [
        (["keys", "list"], False),
        (["-v", "keys", "list"], True),
        (["keys", "list", "-v"], True),
        (["serve", "--verbose"], True),
    ],
)
def test_verbose_is_taken_before_or_after_the_command(
    words: list[str], verbose: bool
) -> None:
    """ipm serve -v works as users type it, as ipm -v serve does."""
    assert cli.build_parser().parse_args(words).verbose is verbose


def test_keys_list_of_an_empty_database_says_so_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No lines on stdout for a script; a sentence on stderr for a person."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db):
        pass

    code = cli.main(["keys", "list", "--db", str(db)])

    out, err = capsys.readouterr()
    assert (code, out) == (0, "")
    assert "no API keys" in err
