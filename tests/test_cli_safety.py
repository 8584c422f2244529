"""``ipm`` commands that cannot run leave nothing behind and overwrite nothing.

Most tests call :func:`ipm.cli.main` in-process; a subprocess is used only
where a real pipe or a signal is the point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import io
import json
import logging
import os
import pty
import re
import shlex
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import ipm
from ipm import cli
from ipm.adapters import blobs as blobs_module
from ipm.adapters.blobs import FileBlobStore
from ipm.api.wsgi import Pace
from ipm.cli import _common as cli_common
from ipm.cli import _export
from ipm.cli import _files as cli_files
from ipm.cli import _import as cli_import
from ipm.cli import _server as cli_server
from ipm.domain.errors import NotFound, StorageBusy
from ipm.domain.jobs import Job
from ipm.usecases.bulk import Bulk, BulkOptions
from tests.conftest import raw_answer, raw_exchange, serving

ORG = "ACME01"
ROOT = Path(__file__).resolve().parent.parent


def ndjson(count: int, *, bad: int = 0, start: int = 0) -> bytes:
    """``count`` events, then ``bad`` lines that are not JSON."""
    events = [
        {
            "event_id": f"e-{n}",
            "service": "pos",
            "action": "sale.created",
            "occurred_at": "2026-03-01T10:00:00Z",
            "payload": {"till": n % 9},
        }
        for n in range(start, start + count)
    ]
    good = b"".join(json.dumps(event).encode() + b"\n" for event in events)

    return good + b"{not json\n" * bad


def fail(monkeypatch: pytest.MonkeyPatch, method: str, error: Exception) -> None:
    """Make ``Bulk.<method>`` raise ``error``, as a full disk or busy database does."""

    def failing(*args: Any, **kwargs: Any) -> Job:
        raise error

    monkeypatch.setattr(Bulk, method, failing)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()

    return code, captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(list(argv))

    assert stopped.value.code == 2
    return capsys.readouterr().err


def jobs(db: Path) -> list[Job]:
    with ipm.open_sqlite(db) as app:
        return app.bulk.find(ORG)


def blob_files(db: Path) -> list[Path]:
    return [p for p in Path(f"{db}.blobs").rglob("*") if p.is_file()]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(path):
        pass

    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "sales.ndjson"
    path.write_bytes(ndjson(20, bad=2))

    return path


# -- 1. option values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"short\n", "holds 5 bytes"), (None, "no such file")],
)
def test_a_link_key_file_serve_cannot_use_is_refused_before_the_database(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    said: str,
) -> None:
    """A link key file that is missing or too short stops ipm serve in one
    line, exit 2, before the database is made."""
    key_file = tmp_path / "link.key"
    if content is not None:
        key_file.write_bytes(content)
    db = tmp_path / "ipm.sqlite"

    code, _, err = run(
        capsys, "serve", "--db", str(db), "--link-key-file", str(key_file)
    )

    assert code == 2
    assert said in err.lower() and "--link-key-file" in err
    assert not db.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--allow-network", "not-a-network"],
        ["serve", "--allow-network", "10.0.0.1/8"],
        ["deliver", "--allow-network", "300.1.1.1"],
        ["serve", "--port", "65536"],
        ["serve", "--port", "-1"],
        ["deliver", "--interval", "-1"],
        ["deliver", "--interval", "0"],
        ["deliver", "--interval", "nan"],
        ["deliver", "--interval", "inf"],
        ["import", "x.ndjson", "--org", ORG, "--slice-lines", "1000001"],
        ["export", "-o", "x.ndjson", "--org", ORG, "--slice-lines", "1000001"],
        # Found by a CLI probe: each was taken, and some ran.
        ["import", "--org", ORG, "--job", ""],  # a traceback
        ["export", "-o", "x.ndjson", "--org", ORG, "--job", ""],
        ["import", "x.ndjson", "--org", ORG, "--org", "OTHER1"],  # kept the last
        ["export", "-o", "x.ndjson", "--org", ORG, "--org", "OTHER1"],
        ["serve", "--host", ""],  # listened on every interface
        ["keys", "list", "--db", "-"],  # made a file named -
        ["import", "x.ndjson", "--org", ORG, "--report", ""],  # silently ignored
        ["serve", "--event-types", ""],
        ["serve", "--link-key-file", ""],
        ["import", "x.ndjson", "--org", ORG, "--actor", "x\x1b[31m"],
        ["deliver", "--allow-network", "fe80::1%eth0/128"],  # opened nothing
        ["import", "x.ndjson", "--org", ORG, "--max-failed-lines", "9" * 20],
    ],
)
def test_a_bad_option_value_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    """The option is named in one line, nothing runs and no database appears."""
    monkeypatch.chdir(tmp_path)
    option = argv[-2]

    err = usage_error(capsys, *argv)

    assert f"argument {option}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "list"],
        ["keys", "revoke", "0123456789abcdef"],
        ["deliver", "--once"],
        ["export", "--org", ORG, "-o", "out.ndjson"],
    ],
)
@pytest.mark.parametrize("kind", ["another application's", "empty"])
def test_a_command_that_reads_leaves_a_file_that_is_not_ipm_s_alone(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    kind: str,
) -> None:
    """Regression: keys list --db other.sqlite answered "no API keys" and
    had written ipm's forty tables into the other application's file (an
    empty file grew to 180 KB)."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.sqlite"
    if kind == "empty":
        other.touch()
    else:
        with contextlib.closing(sqlite3.connect(other)) as connection:
            connection.execute("CREATE TABLE orders (id INTEGER)")
            connection.commit()
    before = other.read_bytes()

    code, _, err = run(capsys, *argv, "--db", str(other))

    assert code == 2
    assert "is not an ipm database" in err
    assert other.read_bytes() == before


def test_serve_help_shows_defaults_but_not_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: --allow-network and --event-types read "(default: None)"."""
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])

    shown = capsys.readouterr().out
    assert "(default: None)" not in shown
    assert "(default: 8080)" in shown


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["serve", "--no-such"], "usage: ipm serve"),
        (["keys", "create", "--org", ORG, "--actor", "a", "--nope"], "ipm keys create"),
        (["deliver", "--once", "--nope"], "usage: ipm deliver"),
    ],
)
def test_an_unknown_option_is_said_with_its_command_s_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str
) -> None:
    """Regression: the top-level usage (ipm [-h] [-v] COMMAND ...) answered
    a typo in a command's options."""
    err = usage_error(capsys, *argv)

    assert usage in err
    assert "unrecognized arguments: --n" in err


def test_good_option_values_are_kept() -> None:
    """A CIDR, a port and a fraction of a second parse as given."""
    parser = cli.build_parser()

    served = parser.parse_args(["serve", "--port", "0", "--allow-network", "::1"])
    delivered = parser.parse_args(["deliver", "--interval", "0.25"])

    assert (served.port, served.allow_network) == (0, ["::1"])
    assert delivered.interval == 0.25


@pytest.mark.parametrize("verb", ["serve", "deliver"])
def test_several_networks_follow_one_allow_network(verb: str) -> None:
    """Regression: `--allow-network CIDR …` (as the CLI is documented) was
    refused after its first network ("unrecognized arguments")."""
    parser = cli.build_parser()

    args = parser.parse_args(
        [verb, "--allow-network", "127.0.0.1/32", "::1/128", "--allow-network", "::1"]
    )

    assert args.allow_network == ["127.0.0.1/32", "::1/128", "::1"]


# -- 2. no job left behind ---------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _corrupt(data: bytes) -> bytes:
    packed = bytearray(_gzip(data))
    packed[len(packed) // 2] ^= 0xFF

    return bytes(packed)


REFUSED_UPLOADS: dict[str, Callable[[bytes], bytes]] = {
    "UTF-16": lambda data: data.decode().encode("utf-16"),
    "UTF-32": lambda data: data.decode().encode("utf-32"),
    "truncated gzip": lambda data: _gzip(data)[:-12],
    "corrupt gzip": _corrupt,
    "gzip with trailing garbage": lambda data: _gzip(data) + b"not a member",
}


@pytest.mark.parametrize("kind", sorted(REFUSED_UPLOADS))
def test_a_refused_upload_cancels_the_job_it_created(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """The job ends failed (cancelled, with the reason); exit 2; no blob stays."""
    path = tmp_path / "refused.ndjson"
    path.write_bytes(REFUSED_UPLOADS[kind](ndjson(50)))

    code, out, err = run(capsys, "import", str(path), "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "cancelled"
    assert job.error.message in err
    # Named: the job stays, ended, whatever the refusal says of the upload.
    assert f"job {job.job_id} cancelled before any line was imported" in err
    assert blob_files(db) == []


def _small_uploads(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """ipm as the CLI opens it, but taking uploads of ``limit`` bytes at most."""
    opened = ipm.open_sqlite

    def open_small(path: Any, **options: Any) -> ipm.Application:
        bulk = attrs.evolve(options.pop("bulk", BulkOptions()), max_upload_bytes=limit)
        return opened(path, bulk=bulk, **options)

    monkeypatch.setattr(ipm, "open_sqlite", open_small)
    small = BulkOptions(max_upload_bytes=limit)
    monkeypatch.setattr(cli_files, "BulkOptions", lambda: small)


def test_a_file_too_large_cancels_the_job(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past max_upload_bytes the upload is refused (413) and the job cancelled."""
    _small_uploads(monkeypatch, 100)

    code, _, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 2 and "payload_too_large" in err
    assert job.error is not None and job.error.code == "cancelled"


def test_a_file_that_grows_while_read_is_said_in_the_user_s_words(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a file appended to while ipm import read it was refused
    as "/headers/content-length: differs from the body"; the user sent no
    header. The job is cancelled, as before."""
    reading = cli_import.file_chunks

    def growing(handle: Any, progress: Any) -> Any:
        yield from reading(handle, progress)
        yield b'{"service": "pos", "action": "sale.created"}\n'

    monkeypatch.setattr(cli_import, "file_chunks", growing)

    code, _, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 2
    assert f"{data} changed while it was read" in err
    assert "headers" not in err
    assert job.error is not None and job.error.code == "cancelled"


def test_an_endless_device_is_refused_as_too_large(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/dev/zero is copied only one byte past the limit, then refused."""
    _small_uploads(monkeypatch, 1000)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    code, _, err = run(capsys, "import", "/dev/zero", "--db", str(db), "--org", ORG)

    assert code == 2 and "payload_too_large" in err
    assert [job.status for job in jobs(db)] == ["failed"]


def test_any_failure_before_the_run_cancels_the_job(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failing commit (here a full disk) cancels the job with its reason."""

    fail(monkeypatch, "commit", OSError("no space left on the device"))

    code, _, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 2 and "no space left" in err
    assert job.error is not None
    assert (job.error.code, job.error.message) == (
        "cancelled",
        "no space left on the device",
    )
    assert blob_files(db) == []


def test_a_failure_during_the_run_keeps_the_job_and_names_it(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once lines are imported the job is kept: exit 2 with the --job command."""
    sliced = Bulk.continue_import

    def one_slice_then_busy(self: Bulk, *args: Any, **kwargs: Any) -> Job:
        job = sliced(self, *args, **kwargs)
        if job.cursor.lines >= 5:
            raise StorageBusy("the database stayed locked")
        return job

    monkeypatch.setattr(Bulk, "continue_import", one_slice_then_busy)
    argv = ["import", str(data), "--db", str(db), "--org", ORG, "--slice-lines", "5"]

    code, _, err = run(capsys, *argv)

    (job,) = jobs(db)
    assert code == 2 and "stayed locked" in err
    assert job.status == "processing" and job.cursor.lines == 5
    assert f"go on with: ipm import --job {job.job_id}" in err


def test_a_job_that_cannot_even_be_cancelled_is_named_with_its_command(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upload and cancel both meet a busy database: no traceback, the job named."""

    fail(monkeypatch, "upload", StorageBusy("the database stayed locked"))
    fail(monkeypatch, "cancel", StorageBusy("the database stayed locked"))

    code, _, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 2 and "stayed locked" in err
    assert "Traceback" not in err
    assert job.status == "awaiting_upload"
    assert f"go on with: ipm import --job {job.job_id}" in err


def test_an_export_that_fails_midway_is_cancelled(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The export job it created ends cancelled; exit 2; nothing is written."""
    out = tmp_path / "out.ndjson"

    fail(monkeypatch, "continue_export", StorageBusy("the database stayed locked"))

    code, _, err = run(capsys, "export", "--db", str(db), "--org", ORG, "-o", str(out))

    (job,) = jobs(db)
    assert code == 2 and "stayed locked" in err
    assert job.status == "failed" and job.error is not None
    assert job.error.code == "cancelled"
    assert not out.exists()


# -- 3. input that is not a regular file -------------------------------------------


def test_standard_input_is_imported_through_a_temporary_copy(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-`` reads stdin whole; the copy is gone; the report goes to JOB.errors."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spool))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(ndjson(30, bad=1))))
    monkeypatch.chdir(tmp_path)

    code, out, _ = run(capsys, "import", "-", "--db", str(db), "--org", ORG)

    (job,) = jobs(db)
    assert code == 1
    assert f"{job.job_id} completed_with_errors: 31 lines, 30 ok" in out
    assert (tmp_path / f"{job.job_id}.errors.ndjson").is_file()
    assert list(spool.iterdir()) == []


def test_a_fifo_is_imported_and_no_report_is_put_beside_it(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A named pipe works like a file; its report goes to the current folder."""
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    writer = threading.Thread(
        target=fifo.write_bytes, args=(ndjson(40, bad=1),), daemon=True
    )
    writer.start()

    code, out, _ = run(capsys, "import", str(fifo), "--db", str(db), "--org", ORG)
    writer.join(timeout=10)

    (job,) = jobs(db)
    assert code == 1 and "41 lines, 40 ok" in out
    assert job.filename == "feed"
    assert not (tmp_path / "feed.errors.ndjson").exists()
    assert (tmp_path / f"{job.job_id}.errors.ndjson").is_file()


@pytest.mark.slow
def test_a_real_pipe_into_ipm_import(tmp_path: Path) -> None:
    """`... | ipm import -` completes and leaves no temporary file."""
    spool = tmp_path / "spool"
    spool.mkdir()
    db = tmp_path / "ipm.sqlite"

    done = subprocess.run(
        [sys.executable, "-m", "ipm", "import", "-", "--db", str(db), "--org", ORG],
        input=ndjson(500),
        capture_output=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(spool)},
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert b" completed: 500 lines, 500 ok" in done.stdout
    assert list(spool.iterdir()) == []


# -- 4. Ctrl-C ------------------------------------------------------------------------


def _wait_for(db: Path, ready: Callable[[Job], bool], process: Any) -> Job:
    deadline = time.monotonic() + 20
    with ipm.open_sqlite(db) as app:
        while time.monotonic() < deadline and process.poll() is None:
            found = [job for job in app.bulk.find(ORG) if ready(job)]
            if found:
                return found[0]
            time.sleep(0.01)

    raise AssertionError("the job never got going")


def _interrupted(
    db: Path,
    argv: list[str],
    ready: Callable[[Job], bool],
    sent: signal.Signals = signal.SIGINT,
) -> Any:
    """Run ``ipm argv`` and send it SIGINT (or ``sent``) once a job is ``ready``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ipm", *argv, "--db", str(db), "--org", ORG],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = _wait_for(db, ready, process)
    process.send_signal(sent)
    out, err = process.communicate(timeout=30)

    return job, process.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "status"),
    [(signal.SIGINT, cli.INTERRUPTED), (signal.SIGTERM, cli.TERMINATED)],
)
def test_an_interrupted_import_says_how_to_go_on(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    sent: signal.Signals,
    status: int,
) -> None:
    """Ctrl-C: exit 130, the job id, its status and the --job command; then
    that command finishes the file with every line counted once. SIGTERM
    (a supervisor, timeout) the same, exit 143 (regression: it ended the
    process without a word)."""
    data = tmp_path / "big.ndjson"
    data.write_bytes(ndjson(20_000))

    job, code, out, err = _interrupted(
        db,
        ["import", str(data), "--slice-lines", "20"],
        lambda job: job.status == "processing" and job.cursor.lines > 0,
        sent,
    )
    resumed = run(capsys, "import", "--job", job.job_id, "--db", str(db), "--org", ORG)

    assert code == status, err
    assert "Traceback" not in err and out == ""
    assert f"interrupted; job {job.job_id} is processing after line" in err
    assert f"ipm import --job {job.job_id} --org {ORG} --db {db}" in err
    assert resumed[0] == 0
    assert f"{job.job_id} completed: 20,000 lines, 20,000 ok" in resumed[1]


@pytest.mark.slow
@pytest.mark.slow
def test_an_import_killed_outright_has_named_its_job_already(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a SIGKILLed ipm import had printed no job id, so its
    job stayed processing (its upload copy on disk) with nothing naming it;
    the run now says the job and the --job command as it starts."""
    data = tmp_path / "big.ndjson"
    data.write_bytes(ndjson(20_000))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipm",
            "import",
            str(data),
            "--slice-lines",
            "20",
            "--db",
            str(db),
            "--org",
            ORG,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = _wait_for(
        db, lambda job: job.status == "processing" and job.cursor.lines > 0, process
    )
    process.kill()
    _, err = process.communicate(timeout=30)

    command = f"ipm import --job {job.job_id} --org {ORG} --db {db}"
    assert f"job {job.job_id} started; if this run is cut short, go on with: " in err
    assert command in err
    resumed = run(capsys, *command.split()[1:])
    assert resumed[0] == 0
    assert f"{job.job_id} completed: 20,000 lines, 20,000 ok" in resumed[1]


def test_the_command_to_go_on_works_from_any_folder_and_keeps_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the --job command named --db as typed (a relative path
    worked only from the first folder) and dropped --report, so going on
    wrote the report somewhere else."""
    monkeypatch.chdir(tmp_path)
    Path("in.ndjson").write_bytes(ndjson(3))

    code, _, err = run(
        capsys,
        "import",
        "in.ndjson",
        "--db",
        "ipm.sqlite",
        "--org",
        ORG,
        "--report",
        "r.ndjson",
    )

    assert code == 0
    assert f"--db {tmp_path / 'ipm.sqlite'}" in err
    assert f"--report {tmp_path / 'r.ndjson'}" in err
    # Without --report, the report this run writes beside FILE.
    code, _, err = run(capsys, "import", "in.ndjson", "--db", "x.sqlite", "--org", ORG)
    assert f"--report {tmp_path / 'in.ndjson.errors.ndjson'}" in err


def test_the_command_to_go_on_keeps_an_actor_that_starts_with_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: --actor -bob was printed as two words, which the command
    line then read as an option with no value: the printed command failed."""
    monkeypatch.chdir(tmp_path)
    Path("in.ndjson").write_bytes(ndjson(3))
    argv = ["in.ndjson", "--db", "ipm.sqlite", "--org", ORG, "--actor=-bob"]

    code, out, _ = run(capsys, "import", *argv, "--mode", "validate")
    (command,) = [line for line in out.splitlines() if "to apply it: " in line]
    words = shlex.split(command.split("to apply it: ", 1)[1])
    applied, out, err = run(capsys, *words[1:])

    assert code == applied == 0, err
    assert "--actor=-bob" in words
    assert "completed: 3 lines, 3 ok" in out


@pytest.mark.parametrize(
    "name",
    [
        "/tmp/plain/ipm.sqlite",
        "/tmp/it's here/ipm.sqlite",
        os.fsdecode(b"/tmp/caf\xe9/ipm.sqlite"),  # Latin-1 bytes: not UTF-8
        os.fsdecode(b"/tmp/x\xff'\\y\n/r.ndjson"),
        "/tmp/a\x1b]0;title\x07b.ndjson",  # UTF-8, but terminal controls
    ],
)
def test_a_printed_path_reads_back_in_a_shell_as_the_same_bytes(name: str) -> None:
    """Regression: a name that is not UTF-8 printed as escapes
    (bad\\udcff...) that a shell read as another file."""
    word = cli_common.shell_word(name)

    done = subprocess.run(
        ["bash", "-c", f"printf %s {word}"], capture_output=True, check=True
    )

    assert done.stdout == os.fsencode(name)
    assert word.isprintable()  # nothing for the terminal to act on


def test_the_summary_names_the_report_as_a_shell_reads_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the summary printed the report's name raw, so a file
    named with terminal controls or bytes that are not UTF-8 sent them to
    the terminal (only the printed commands were escaped)."""
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"in\x1b[31m\xff.ndjson")
    Path(name).write_bytes(ndjson(2) + b"not json\n")

    code, out, _ = run(capsys, "import", name, "--db", "ipm.sqlite", "--org", ORG)

    (summary,) = [line for line in out.splitlines() if "report: " in line]
    assert code == 1
    assert summary.isprintable() and "\udcff" not in summary
    assert summary.endswith("report: $'in\\x1b[31m\\xff.ndjson.errors.ndjson'")


def test_the_command_after_standard_input_keeps_the_report_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from - there is no FILE to put the report beside: the run writes
    JOB_ID.errors.ndjson in its folder, and the command says so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(ndjson(3))))

    code, _, err = run(capsys, "import", "-", "--db", "ipm.sqlite", "--org", ORG)

    (job,) = jobs(tmp_path / "ipm.sqlite")
    assert code == 0
    assert f"--report {tmp_path / (job.job_id + '.errors.ndjson')}" in err


def test_an_interrupted_export_is_cancelled(tmp_path: Path, db: Path) -> None:
    """Ctrl-C: exit 130, the export job cancelled, no file and no partial file."""
    _events(db, 1_000)
    out = tmp_path / "out.ndjson"

    job, code, _, err = _interrupted(
        db,
        ["export", "-o", str(out), "--slice-lines", "1"],
        lambda job: job.job_type == "export" and job.cursor.slices > 0,
    )

    with ipm.open_sqlite(db) as app:
        ended = app.bulk.get(ORG, job.job_id)
    assert code == cli.INTERRUPTED, err
    assert "Traceback" not in err
    assert f"export {job.job_id} cancelled" in err
    assert ended.error is not None and ended.error.code == "cancelled"
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == []


@pytest.mark.slow
def test_a_killed_export_goes_on_with_job_to_the_same_bytes(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL mid-run leaves the export processing with its parts; --job
    finishes it to the bytes a clean run writes, and leaves no blob."""
    _events(db, 1_000)
    cut = ["-o", str(tmp_path / "cut.ndjson"), "--slice-lines", "1", "--service", "pos"]
    process = subprocess.Popen(
        [sys.executable, "-m", "ipm", "export", *cut, "--db", str(db), "--org", ORG],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ready = lambda job: job.job_type == "export" and job.cursor.slices > 2  # noqa: E731
    job = _wait_for(db, ready, process)
    process.kill()
    process.communicate(timeout=30)
    with ipm.open_sqlite(db) as app:
        killed = app.bulk.get(ORG, job.job_id)
    argv = ["export", "--db", str(db), "--org", ORG, "-o"]

    resumed = run(capsys, *argv, str(tmp_path / "resumed.ndjson"), "--job", job.job_id)
    clean = run(capsys, *argv, str(tmp_path / "clean.ndjson"), "--service", "pos")

    assert killed.status == "processing" and 2 < killed.cursor.slices < 1_000
    assert resumed[0] == 0 and f"{job.job_id} completed: 1,000 events" in resumed[1]
    assert clean[0] == 0
    written = (tmp_path / "resumed.ndjson").read_bytes()
    assert written == (tmp_path / "clean.ndjson").read_bytes()
    assert len(written.splitlines()) == 1_000
    assert not (tmp_path / "cut.ndjson").exists()
    # A part the killed run was writing stays until it has not changed for
    # a minute (ipm.adapters.blobs.STALE_SECONDS); a minute on, it goes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blobs_module, "STALE_SECONDS", 0.0)
        FileBlobStore(Path(f"{db}.blobs")).sweep()
    assert blob_files(db) == []


def test_export_job_refuses_what_it_cannot_go_on_with(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--job with filters is a usage error; an import job, a handed-over
    export and a failed one are refused in one line, exit 2, nothing written."""
    _events(db, 3)
    out = tmp_path / "out.ndjson"
    with ipm.open_sqlite(db) as app:
        bulk = app.bulk
        (imported,) = bulk.find(ORG)
        cancelled = bulk.create_export(ORG)
        bulk.cancel(ORG, cancelled.job_id, "not wanted")
        done = bulk.create_export(ORG, filters={"service": "pos"})
    argv = ["export", "--db", str(db), "--org", ORG, "-o", str(out), "--job"]

    filters = usage_error(capsys, *argv, done.job_id, "--target", "events")
    first = run(capsys, *argv, done.job_id)
    written = out.read_bytes()
    out.unlink()
    again = run(capsys, *argv, done.job_id)
    wrong = run(capsys, *argv, imported.job_id)
    failed = run(capsys, *argv, cancelled.job_id)

    assert "--target cannot be given with --job" in filters
    assert first[0] == 0 and written.count(b"\n") == 3
    assert again[0] == 2 and "was handed over already" in again[2]
    assert "does not hold it" in again[2]
    assert wrong[0] == 2 and "is an import job, not an export" in wrong[2]
    assert failed[0] == 2 and "failed (not wanted): nothing written" in failed[2]
    assert not out.exists()


def test_going_on_with_an_export_whose_file_o_holds_already_says_so(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a run killed after it wrote -o and handed the file over
    printed a --job command that then refused (exit 2) and told the user to
    export again, though -o held the file whole; it is now said, exit 0. A
    file of other bytes at -o is still refused, untouched."""
    _events(db, 3)
    out = tmp_path / "out.ndjson"
    with ipm.open_sqlite(db) as app:
        done = app.bulk.create_export(ORG)
    argv = ["export", "--db", str(db), "--org", ORG, "-o", str(out), "--job"]
    first = run(capsys, *argv, done.job_id)
    written = out.read_bytes()

    again = run(capsys, *argv, done.job_id)
    out.write_bytes(written[:-1] + b"X")
    changed = run(capsys, *argv, done.job_id)

    assert first[0] == 0
    assert again[0] == 0 and "holds it already" in again[1]
    assert changed[0] == 2 and "does not hold it" in changed[2]
    assert out.read_bytes() == written[:-1] + b"X"


def test_the_command_an_export_prints_to_write_its_kept_file_runs_as_printed(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a failed write of -o printed ``ipm export --job JOB -o
    FILE``, which is refused without --org and finds no database from
    another folder; the command now names both."""
    _events(db, 3)
    real_write = _export.write_output

    def full_disk(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_export, "write_output", full_disk)
    argv = ["export", "--db", str(db), "--org", ORG, "--service", "pos"]
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "x"))
    monkeypatch.setattr(_export, "write_output", real_write)
    printed = err.rsplit(" with ", 1)[1].strip()
    words = shlex.split(printed)
    out = tmp_path / "written.ndjson"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    again = run(capsys, *[str(out) if w == "FILE" else w for w in words[1:]])

    assert code == 2
    assert words[:3] == ["ipm", "export", "--job"]
    assert again[0] == 0, again[2]
    assert out.read_bytes().count(b"\n") == 3


def test_an_export_interrupted_while_writing_a_fifo_says_its_reader_had_part(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: stopped while writing to a FIFO (written to directly, a
    reader may have had megabytes), stderr said nothing was written."""
    _events(db, 3)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def stopped(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_export, "write_output", stopped)

    code, _, err = run(capsys, "export", "--db", str(db), "--org", ORG, "-o", str(fifo))

    assert code == cli.INTERRUPTED
    assert f"what was written to {fifo} is incomplete" in err
    assert "nothing written" not in err


def test_an_export_another_run_handed_over_first_says_so(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs on one export (an --job racing a live run): the one that
    finds the file gone says another run handed it over; exit 2, no -o."""
    _events(db, 3)

    def gone(*args: Any, **kwargs: Any) -> Job:
        raise NotFound("export file (discarded)")

    monkeypatch.setattr(Bulk, "download", gone)
    out = tmp_path / "out.ndjson"

    code, _, err = run(capsys, "export", "--db", str(db), "--org", ORG, "-o", str(out))

    assert code == 2
    assert "was handed over by another run meanwhile" in err
    assert not out.exists()


def test_an_interrupt_before_the_run_cancels_the_new_job(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped during the upload, the job it created is cancelled; exit 130."""

    def upload(*args: Any, **kwargs: Any) -> Job:
        raise KeyboardInterrupt

    monkeypatch.setattr(Bulk, "upload", upload)

    try:
        code, _, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped ipm import")

    (job,) = jobs(db)
    assert code == cli.INTERRUPTED
    assert f"job {job.job_id} cancelled before any line was imported" in err
    assert job.error is not None and job.error.code == "cancelled"


# -- 5. --job ----------------------------------------------------------------------


def _job(db: Path, *steps: str, data: bytes = b"", mode: str = "apply") -> Job:
    """A job taken through ``steps`` (upload, commit, slice, run) by the library."""
    with ipm.open_sqlite(db) as app:
        bulk = app.bulk
        job = bulk.create_import(ORG, mode=mode)  # type: ignore[arg-type]
        for step in steps:
            if step == "upload":
                job = bulk.upload(ORG, job.job_id, data)
            elif step == "commit":
                job = bulk.commit(ORG, job.job_id, job.revision)
            elif step == "slice":
                job = bulk.continue_import(ORG, job.job_id, max_lines=5)
            else:
                job = bulk.run(ORG, job.job_id)

        return job


def _resume(
    capsys: pytest.CaptureFixture[str], db: Path, job: Job, *more: str
) -> tuple[int, str, str]:
    return run(
        capsys, "import", "--job", job.job_id, "--db", str(db), "--org", ORG, *more
    )


def test_a_job_awaiting_its_upload_takes_the_file(
    data: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--job with FILE uploads it into the waiting job and runs it."""
    job = _job(db)

    code, out, _ = _resume(capsys, db, job, str(data))

    assert code == 1
    assert f"{job.job_id} completed_with_errors: 22 lines, 20 ok" in out
    assert len(jobs(db)) == 1


def test_a_job_awaiting_its_upload_needs_the_file(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without FILE it is refused (exit 2) and keeps waiting."""
    job = _job(db)

    code, _, err = _resume(capsys, db, job)

    assert code == 2 and "give the FILE" in err
    assert len(err.splitlines()) == 1
    assert f"ipm import --job {job.job_id} --org {ORG}" in err
    assert [j.status for j in jobs(db)] == ["awaiting_upload"]


@pytest.mark.parametrize("steps", [("upload",), ("upload", "commit", "slice")])
def test_an_uploaded_or_processing_job_runs_to_its_end(
    data: Path, db: Path, capsys: pytest.CaptureFixture[str], steps: tuple[str, ...]
) -> None:
    """Its own upload is used; a FILE given is named as not read."""
    job = _job(db, *steps, data=ndjson(30))

    code, out, err = _resume(capsys, db, job, str(data))

    assert code == 0
    assert f"{job.job_id} completed: 30 lines, 30 ok (30 created" in out
    assert f"{job.job_id} is {job.status} and has its upload; {data} is not read" in err


def test_a_file_imported_again_says_its_lines_were_skipped(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing the same file twice adds nothing and says how many lines
    were skipped as already stored."""
    source = tmp_path / "again.ndjson"
    source.write_bytes(ndjson(5))
    argv = ("import", str(source), "--db", str(db), "--org", ORG)

    first = run(capsys, *argv)
    second = run(capsys, *argv)

    assert first[0] == second[0] == 0
    assert "(5 created, 0 updated, 0 unchanged, 0 duplicates skipped)" in first[1]
    assert "(0 created, 0 updated, 0 unchanged, 5 duplicates skipped)" in second[1]


def test_a_validated_job_is_promoted_without_a_new_upload(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mode apply turns the validate run into a real one over the same bytes."""
    job = _job(db, "upload", "commit", "run", data=ndjson(12), mode="validate")

    code, out, _ = _resume(capsys, db, job, "--mode", "apply")

    (promoted,) = jobs(db)
    assert code == 0 and "completed: 12 lines, 12 ok (12 created" in out
    assert promoted.mode == "apply"
    assert promoted.validation is not None and promoted.validation.ok == 12


@pytest.mark.parametrize("mode", [[], ["--mode", "validate"]])
def test_an_ended_or_validated_job_is_only_summed_up(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mode: list[str],
) -> None:
    """Its summary and report, its exit status, and no change to the job."""
    monkeypatch.chdir(tmp_path)
    validated = _job(
        db, "upload", "commit", "run", data=ndjson(5, bad=1), mode="validate"
    )
    ended = _job(db, "upload", "commit", "run", data=ndjson(5, bad=1))

    results = [_resume(capsys, db, job, *mode) for job in (validated, ended)]

    assert [code for code, _, _ in results] == [1, 1]
    assert not any("lines/s" in out for _, out, _ in results)
    assert f"{validated.job_id} validated: 6 lines" in results[0][1]
    assert f"{ended.job_id} completed_with_errors: 6 lines" in results[1][1]
    assert {(j.job_id, j.revision) for j in jobs(db)} == {
        (validated.job_id, validated.revision),
        (ended.job_id, ended.revision),
    }
    assert (tmp_path / f"{ended.job_id}.errors.ndjson").read_text().count("\n") == 1


def test_a_running_job_keeps_its_mode(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mode validate cannot turn a running apply job into a validate run."""
    job = _job(db, "upload", "commit", "slice", data=ndjson(30))

    code, _, err = _resume(capsys, db, job, "--mode", "validate")

    assert code == 2 and "running in apply mode" in err
    assert [j.revision for j in jobs(db)] == [job.revision]


def test_an_export_job_is_not_resumed_as_an_import(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--job naming an export is refused with exit 2."""
    with ipm.open_sqlite(db) as app:
        export = app.bulk.create_export(ORG)

    code, _, err = _resume(capsys, db, export)

    assert code == 2 and "is an export job" in err


def test_file_may_be_left_out_only_with_job(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ipm import` without FILE and without --job is a usage error."""
    err = usage_error(capsys, "import", "--db", str(db), "--org", ORG)

    assert "FILE is required" in err
    assert jobs(db) == []


# -- 6. nothing overwritten that was not asked for -----------------------------------


def _protected(db: Path, data: Path) -> dict[str, Path]:
    hard = db.parent / "hard-link"
    os.link(db, hard)
    soft = db.parent / "soft-link"
    soft.symlink_to(db)
    for end in ("wal", "shm", "journal"):
        Path(f"{db}-{end}").touch()
    return {
        "database": db,
        "wal": Path(f"{db}-wal"),
        "shm": Path(f"{db}-shm"),
        "journal": Path(f"{db}-journal"),
        "blob": Path(f"{db}.blobs") / "jobs" / "x",
        "hard link": hard,
        "symbolic link": soft,
        "input": data,
    }


@pytest.mark.parametrize(
    "which",
    ["database", "wal", "shm", "journal", "blob", "hard link", "symbolic link"],
)
@pytest.mark.parametrize("verb", ["export", "import"])
def test_an_output_over_the_database_is_refused(
    data: Path, db: Path, capsys: pytest.CaptureFixture[str], which: str, verb: str
) -> None:
    """-o or --report naming the database, its journals or blobs exits 2 first."""
    target = _protected(db, data)[which]
    before = db.read_bytes()
    option = ["-o", str(target)] if verb == "export" else ["--report", str(target)]
    argv = [verb, *([str(data)] if verb == "import" else [])]

    code, _, err = run(capsys, *argv, "--db", str(db), "--org", ORG, *option)

    assert code == 2 and "Traceback" not in err
    assert "not overwritten" in err or "blobs folder" in err
    assert db.read_bytes() == before
    assert jobs(db) == []


@pytest.mark.parametrize("verb", ["export", "import"])
def test_the_journals_of_a_database_behind_a_link_are_protected(
    tmp_path: Path, data: Path, db: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    """With --db a symbolic link, the real file's -wal is refused as an output."""
    link = tmp_path / "elsewhere" / "link.sqlite"
    link.parent.mkdir()
    link.symlink_to(db)
    wal = Path(f"{db}-wal")
    wal.touch()
    option = ["-o", str(wal)] if verb == "export" else ["--report", str(wal)]
    argv = [verb, *([str(data)] if verb == "import" else [])]

    code, _, err = run(capsys, *argv, "--db", str(link), "--org", ORG, *option)

    assert code == 2 and "not overwritten" in err
    assert wal.read_bytes() == b""


@pytest.mark.parametrize("which", ["input", "hard link"])
def test_a_report_over_the_input_is_refused(
    tmp_path: Path, data: Path, db: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """--report naming the input FILE (or another name of it) exits 2 first."""
    report = data if which == "input" else tmp_path / "same-file"
    if which == "hard link":
        os.link(data, report)
    before = data.read_bytes()

    code, _, err = run(
        capsys,
        "import",
        str(data),
        "--db",
        str(db),
        "--org",
        ORG,
        "--report",
        str(report),
    )

    assert code == 2 and "is the input file" in err
    assert data.read_bytes() == before
    assert jobs(db) == []


def _events(db: Path, count: int) -> None:
    _job(db, "upload", "commit", "run", data=ndjson(count))


def test_an_export_to_standard_output(
    db: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-o - writes NDJSON alone on stdout; the summary goes to stderr."""
    _events(db, 7)
    monkeypatch.chdir(db.parent)

    code = cli.main(
        ["export", "--db", str(db), "--org", ORG, "--service", "pos", "-o", "-"]
    )
    captured = capsysbinary.readouterr()

    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0
    assert [line["event_id"] for line in lines] == [f"e-{n}" for n in range(7)]
    assert b"written to standard output" in captured.err


def test_a_report_to_standard_output(
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--report - puts the report alone on stdout and the summary on stderr."""
    monkeypatch.chdir(db.parent)

    code, out, err = run(
        capsys, "import", str(data), "--db", str(db), "--org", ORG, "--report", "-"
    )

    assert code == 1
    assert [json.loads(line)["line"] for line in out.splitlines()] == [21, 22]
    assert "completed_with_errors: 22 lines" in err


IPM = (sys.executable, "-m", "ipm")
ERR = "/dev/stderr"


@pytest.mark.parametrize("alias", ["/dev/stdout", "/proc/self/fd/1"])
def test_an_export_to_a_name_of_standard_output_keeps_what_was_there(
    db: Path, tmp_path: Path, alias: str
) -> None:
    """Regression: -o /dev/stdout >> log followed the link to log and
    replaced it: what log held was lost, and the summary went into the
    replaced file. It is now written as -o - is."""
    _events(db, 3)
    log = tmp_path / "all.ndjson"
    log.write_text("line A\n")

    with open(log, "ab") as appended:
        done = subprocess.run(
            [
                *IPM,
                "export",
                "--db",
                str(db),
                "--org",
                ORG,
                "--service",
                "pos",
                "-o",
                alias,
            ],
            stdout=appended,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    lines = log.read_text().splitlines()
    assert done.returncode == 0, done.stderr
    assert lines[0] == "line A"
    assert [json.loads(line)["event_id"] for line in lines[1:]] == [
        f"e-{n}" for n in range(3)
    ]
    assert b"written to standard output" in done.stderr


def test_a_report_to_the_file_behind_standard_error_is_refused(
    data: Path, db: Path, tmp_path: Path
) -> None:
    """--report /dev/stderr 2>> log would have replaced log: refused first."""
    log = tmp_path / "app.log"
    log.write_text("old line\n")

    with open(log, "ab") as appended:
        done = subprocess.run(
            [*IPM, "import", str(data), "--db", str(db), "--org", ORG, "--report", ERR],
            stdout=subprocess.PIPE,
            stderr=appended,
            timeout=120,
        )

    assert done.returncode == 2
    assert log.read_text().startswith("old line\n")
    assert "it is not replaced" in log.read_text()
    assert jobs(db) == []


def test_standard_output_sent_into_a_protected_file_is_refused(
    db: Path, data: Path, tmp_path: Path
) -> None:
    """Regression: -o /dev/stdout >> ipm.sqlite wrote the export into the
    database, and --report - >> FILE appended the report to the input; the
    names given were checked, the file standard output went to was not."""
    _events(db, 3)
    before = db.read_bytes()
    source = data.read_bytes()

    with open(db, "ab") as into_db:
        exported = subprocess.run(
            [*IPM, "export", "--db", str(db), "--org", ORG, "-o", "/dev/stdout"],
            stdout=into_db,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    with open(data, "ab") as into_input:
        imported = subprocess.run(
            [*IPM, "import", str(data), "--db", str(db), "--org", ORG, "--report", "-"],
            stdout=into_input,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    assert exported.returncode == 2
    assert b"which is the database: it is not written to" in exported.stderr
    assert db.read_bytes() == before
    assert imported.returncode == 2
    assert b"which is the input file" in imported.stderr
    assert data.read_bytes() == source


def test_a_link_to_another_descriptor_is_refused_as_its_name_is(
    db: Path, tmp_path: Path
) -> None:
    """Regression: -o LINK where LINK leads to /dev/fd/3 (3>> file) replaced
    the file and lost what it held; only the spelling /dev/fd/3 was caught."""
    _events(db, 3)
    kept = tmp_path / "o5"
    kept.write_text("KEEP\n")
    link = tmp_path / "l3"
    link.symlink_to("/dev/fd/3")

    command = [*IPM, "export", "--db", str(db), "--org", ORG, "-o", str(link)]
    line = " ".join(shlex.quote(word) for word in command)

    done = subprocess.run(
        f"{line} 3>>{shlex.quote(str(kept))}",
        shell=True,
        capture_output=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert b"it is not replaced" in done.stderr
    assert kept.read_text() == "KEEP\n"


def test_a_database_named_in_bytes_that_are_not_utf_8_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: the check that a file is ipm's own built a URI of its
    name and failed on one that is not UTF-8 (a traceback)."""
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"u\xff.sqlite")
    with ipm.open_sqlite(name) as app:
        app.create_api_key("me", [ORG])

    code, out, _ = run(capsys, "keys", "list", "--db", name)

    assert code == 0
    assert json.loads(out)["orgs"] == [ORG]


def test_an_export_through_a_symbolic_link_replaces_its_target(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The link stays a link; its target gets the file; no partial file stays."""
    _events(db, 3)
    target = tmp_path / "exports" / "latest.ndjson"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "out.ndjson"
    link.symlink_to(target)
    args = ["--service", "pos", "-o", str(link)]

    code, _, _ = run(capsys, "export", "--db", str(db), "--org", ORG, *args)

    assert code == 0
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text().count("\n") == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.ndjson"]


def test_an_export_into_a_fifo_is_written_to_it(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO is written to directly, and stays a FIFO."""
    _events(db, 4)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.append(fifo.read_bytes()), daemon=True
    )
    reader.start()
    args = ["--service", "pos", "-o", str(fifo)]

    code, _, _ = run(capsys, "export", "--db", str(db), "--org", ORG, *args)
    reader.join(timeout=10)

    assert code == 0
    assert received and received[0].count(b"\n") == 4
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_an_export_into_a_character_device(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device is written to, not replaced (a node of the null device here,
    made in the test's folder so that a faulty CLI replaces only that)."""
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        pytest.skip("this system does not let the test make a device node")
    _events(db, 2)

    code, out, _ = run(
        capsys, "export", "--db", str(db), "--org", ORG, "-o", str(device)
    )

    assert code == 0 and f"written to {device}" in out
    assert stat.S_ISCHR(device.lstat().st_mode)


# -- 7. a report that cannot be written -----------------------------------------------


def test_a_report_that_cannot_be_written_still_gives_the_summary(
    tmp_path: Path,
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The import ran: summary on stdout, why on stderr with report_url; exit 1."""
    folder = tmp_path / "reports"
    folder.mkdir()
    ran = Bulk.run

    def run_then_lose_the_folder(self: Bulk, *args: Any, **kwargs: Any) -> Job:
        job = ran(self, *args, **kwargs)
        folder.rmdir()
        return job

    monkeypatch.setattr(Bulk, "run", run_then_lose_the_folder)
    report = str(folder / "r.ndjson")

    code, out, err = run(
        capsys, "import", str(data), "--db", str(db), "--org", ORG, "--report", report
    )

    (job,) = jobs(db)
    assert code == 1
    assert f"{job.job_id} completed_with_errors: 22 lines" in out
    assert "report:" not in out
    assert f"could not be written to {report}" in err
    assert "report_url" in err and job.job_id in err


def test_an_import_from_a_folder_it_cannot_write_in_still_runs(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the check made for -o and --report (a file made and
    removed beside the output) ran for the default report beside FILE too,
    so importing from a read-only folder (a :ro mount) was refused before
    any line. A report nobody asked for is told about at the end."""
    data = tmp_path / "clean.ndjson"
    data.write_bytes(ndjson(5, bad=0))
    real_open = os.open

    def read_only_folder(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(data)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_folder)

    code, out, err = run(capsys, "import", str(data), "--db", str(db), "--org", ORG)

    assert code == 0, err
    assert "5 lines" in out


# -- 8. ambiguous request framing --------------------------------------------------


def test_a_client_still_sending_a_body_too_large_reads_the_413(
    server: tuple[ipm.Application, int],
) -> None:
    """The refused body is drained, so the client gets the 413, not a reset."""
    _, port = server
    body = b'{"service": "' + b"x" * (4 << 20) + b'"}'
    head = (
        b"POST /cdc/list HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )

    status, answer = raw_exchange(port, head + body)

    assert status == 413
    assert answer["error"]["code"] == "payload_too_large"


def test_a_body_declared_too_large_but_not_sent_is_answered_at_once(
    server: tuple[ipm.Application, int],
) -> None:
    """Declaring 2 MiB and sending {} gets the 413 now, not after a wait."""
    _, port = server
    head = (
        b"POST /cdc/list HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 2097152\r\n\r\n{}"
    )
    started = time.monotonic()

    status, answer = raw_exchange(port, head)

    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert time.monotonic() - started < 2


def test_an_upload_over_a_small_limit_reads_its_413_over_http() -> None:
    """A PUT past max_upload_bytes (a few MB) still gets its answer, no reset."""
    app = ipm.open_memory(bulk=BulkOptions(max_upload_bytes=1000))
    body = ndjson(1) * 40_000
    with serving(app) as port:
        head = _upload_head(app, port, len(body), b"", b"HTTP/1.1")
        status, answer = raw_exchange(port, head + body)

    assert status == 413
    assert answer["error"]["code"] == "payload_too_large"


def _upload_head(
    app: ipm.Application, port: int, length: int, extra: bytes, version: bytes
) -> bytes:
    job = app.bulk.create_import(ORG)
    url = app.bulk.link("upload", job, f"http://127.0.0.1:{port}").url
    target = url.split(str(port), 1)[1].encode()

    return (
        b"PUT "
        + target
        + b" "
        + version
        + b"\r\nHost: 127.0.0.1\r\n"
        + f"Content-Length: {length}\r\n".encode()
        + extra
        + b"\r\n"
    )


def _first_bytes(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return b""


def _expecting(port: int, head: bytes, body: bytes, wait: float) -> tuple[bytes, bytes]:
    """Send the head, take what comes within ``wait`` (a 100 Continue, or
    nothing), then send the body: (what came first, the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        interim = _first_bytes(sock, wait)
        sock.sendall(body)
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    return interim, answer


def test_an_upload_expecting_100_continue_is_told_to_go_on() -> None:
    """Regression: curl waits a second for 100 Continue before a body over
    1 MB, and ipm serve never sent one. It goes out when the body is read."""
    app = ipm.open_memory()
    body = ndjson(3)
    expect = b"Expect: 100-continue\r\n"
    with serving(app) as port:
        head = _upload_head(app, port, len(body), expect, b"HTTP/1.1")
        interim, answer = _expecting(port, head, body, 5)
        late = _upload_head(app, port, len(body), expect, b"HTTP/1.0")
        silent, old_answer = _expecting(port, late, body, 0.3)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.split(b"\r\n", 1)[0].endswith(b" 200 OK")
    # An HTTP/1.0 client's expectation is ignored (RFC 9110, 10.1.1).
    assert silent == b""
    assert old_answer.split(b"\r\n", 1)[0].endswith(b" 200 OK")


def test_an_upload_refused_unread_gets_no_100_continue() -> None:
    """A declared size over the limit is answered at once: the body is
    never asked for."""
    app = ipm.open_memory(bulk=BulkOptions(max_upload_bytes=1000))
    expect = b"Expect: 100-continue\r\n"
    with serving(app) as port:
        answer = raw_answer(port, _upload_head(app, port, 50_000, expect, b"HTTP/1.1"))

    assert answer.split(b"\r\n", 1)[0].endswith(b" 413 Payload Too Large")


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nContent-Length: 50\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
        b"Content-Length: 5\r\nnot a header line\r\n",
    ],
    ids=[
        "two-lengths",
        "length-and-chunked",
        "chunked-and-length",
        "te-space",
        "no-colon",
    ],
)
def test_an_upload_with_ambiguous_framing_is_refused_unread(
    server: tuple[ipm.Application, int], framing: bytes
) -> None:
    """400 invalid_request in ipm's envelope, before the body, nothing stored."""
    app, port = server
    job = app.bulk.create_import(ORG)
    url = app.bulk.link("upload", job, f"http://127.0.0.1:{port}").url
    target = url.split(str(port), 1)[1].encode()

    status, body = raw_exchange(
        port, b"PUT " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n"
    )

    assert status == 400
    assert body["success"] is False
    assert body["error"]["code"] == "invalid_request"
    # A line that is no header (a space before the colon is one) ends the
    # headers' parse: said as such, the framing after it unseen.
    unreadable = b"not a header" in framing or b" :" in framing
    pointer = "/headers" if unreadable else "/headers/content-length"
    assert body["error"]["details"][0]["pointer"] == pointer
    assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


def test_a_header_line_without_a_colon_is_said_to_be_one(
    server: tuple[ipm.Application, int],
) -> None:
    """Regression: a GET with such a line was told its body length was
    ambiguous, though it had no body."""
    _, port = server

    status, body = raw_exchange(
        port, b"GET /stat HTTP/1.1\r\nHost: 127.0.0.1\r\nfoo\r\n\r\n"
    )

    assert status == 400
    assert body["error"]["message"] == (
        "the request headers cannot be read: a line that is not name: value"
    )
    assert body["error"]["details"] == [
        {"pointer": "/headers", "message": "a line that is not name: value"}
    ]


def test_a_refused_head_request_gets_no_body(
    server: tuple[ipm.Application, int],
) -> None:
    """A HEAD refused for its framing gets the 400's headers and no content."""
    _, port = server
    head = (
        b"HEAD /stat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = raw_answer(port, head)

    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 400 " in status_line
    assert rest.partition(b"\r\n\r\n")[2] == b""


def test_an_http_1_1_request_without_host_is_a_400(
    server: tuple[ipm.Application, int],
) -> None:
    """RFC 9112 asks a server to refuse it; an HTTP/1.0 one needs no Host."""
    _, port = server

    status, answer = raw_exchange(port, b"GET /stat HTTP/1.1\r\n\r\n")
    old, _ = raw_exchange(port, b"GET /stat HTTP/1.0\r\n\r\n")

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert "Host" in answer["error"]["message"]
    assert old == 200


@pytest.mark.parametrize("line", [b"GET /stat\r\n", b"HEAD /stat\r\n"])
def test_an_http_0_9_request_is_refused_at_once_with_a_status_line(
    server: tuple[ipm.Application, int], line: bytes
) -> None:
    """Such a client sends no headers: the answer does not wait for them
    (and a HEAD's has no body)."""
    _, port = server
    started = time.monotonic()

    answer = raw_answer(port, line)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"505"
    assert time.monotonic() - started < 5
    if line.startswith(b"HEAD"):
        assert body == b""
    else:
        assert json.loads(body)["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("version", "status"),
    [
        (b"HTTP/1.2", 400),  # a later 1.x is read as 1.1: Host required
        (b"HTTP/1.01", 505),
        (b"HTTP/01.1", 505),
        (b"HTTP/0.8", 505),
    ],
)
def test_only_http_1_x_written_as_rfc_9112_writes_it_is_taken(
    server: tuple[ipm.Application, int], version: bytes, status: int
) -> None:
    _, port = server

    answer = raw_exchange(port, b"GET /stat " + version + b"\r\n\r\n")

    assert answer[0] == status


@pytest.mark.parametrize(
    ("lengths", "status", "code"),
    [
        # Two lengths that differ are ambiguous, on a JSON route too.
        (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n", 400, "invalid_request"),
        # The same length said twice is not: the route answers (401 here).
        (b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 401, "unauthenticated"),
    ],
)
def test_repeated_lengths_are_refused_only_when_they_differ(
    server: tuple[ipm.Application, int], lengths: bytes, status: int, code: str
) -> None:
    """Differing Content-Length headers are a 400; equal ones reach the route."""
    _, port = server
    head = b"POST /bulk/job/get HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lengths

    answered, body = raw_exchange(port, head)

    assert (answered, body["error"]["code"]) == (status, code)
    assert body["stats"]["call"] == "POST /bulk/job/get"


@pytest.mark.parametrize(
    "hidden",
    [
        # A key no header line of its own carries: a proxy saw one X-Trace.
        b"X-Trace: abc\rAuthorization: Bearer {key}\r\n",
        # A length hidden from a proxy's framing.
        b"X-Trace: abc\rContent-Length: 5\r\n",
        b"X-Trace: a\x00b\r\n",
        b"X-Trace: abc\r\r\n",
    ],
)
def test_a_cr_or_nul_inside_a_header_line_is_refused(
    server: tuple[ipm.Application, int], hidden: bytes
) -> None:
    """Regression: the header parser took a lone CR as a line's end, so a
    request with no Authorization line of its own was served as the key
    hidden after the CR (and a hidden Content-Length framed the body)."""
    app, port = server
    api_key = app.create_api_key("a", [ORG])
    head = (
        b"POST /cdc/list HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Orgcode: "
        + ORG.encode()
        + b"\r\nContent-Length: 2\r\n"
        + hidden.replace(b"{key}", api_key.encode())
        + b"\r\n{}"
    )

    answered, body = raw_exchange(port, head)

    assert (answered, body["error"]["code"]) == (400, "invalid_request")
    assert body["error"]["details"][0]["pointer"] == "/headers"


def test_a_folded_header_line_is_refused(
    server: tuple[ipm.Application, int],
) -> None:
    """Regression: obs-fold (a line starting with a space) reached the
    environ as a value with CR LF inside it; RFC 9112 lets a server refuse
    it, and ipm does."""
    _, port = server
    head = (
        b"POST /cdc/list HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Orgcode: "
        + ORG.encode()
        + b"\r\n X\r\nContent-Length: 2\r\n\r\n{}"
    )

    answered, body = raw_exchange(port, head)

    assert (answered, body["error"]["code"]) == (400, "invalid_request")
    assert "folded" in body["error"]["message"]


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"Content-Length(: 5", "not name: value"),
        (b"X-Trace\x01: 1", "not name: value"),
        (b"X-Trace: a\x0bb", "control character"),
        (b"X-Trace: a\x0cb", "control character"),
        (b"X-Trace: a\x7fb", "control character"),
    ],
)
def test_a_header_name_that_is_no_token_or_a_value_with_controls_is_refused(
    server: tuple[ipm.Application, int], line: bytes, said: str
) -> None:
    """Regression: such lines were served; a proxy may read them otherwise
    (RFC 9110, 5.1 and 5.5)."""
    _, port = server

    answered, body = raw_exchange(
        port,
        b"POST /bulk/import/create HTTP/1.1\r\nHost: x\r\n"
        + line
        + b"\r\nContent-Length: 2\r\n\r\n{}",
    )

    assert (answered, body["error"]["code"]) == (400, "invalid_request")
    assert said in body["error"]["message"]


def test_a_first_header_line_without_a_colon_is_refused(
    server: tuple[ipm.Application, int],
) -> None:
    """Regression: the parser dropped a first line ``From x`` as a mailbox's
    separator, while the same line further down was a 400."""
    _, port = server

    answered, body = raw_exchange(
        port, b"GET /stat HTTP/1.1\r\nFrom x\r\nHost: x\r\n\r\n"
    )

    assert (answered, body["error"]["code"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    "cut",
    [
        b"GET /stat HTTP/1.1\r\nHost: x",
        b"GET /stat HTTP/1.1\r\nHost: x\r\n",
        b"POST /bulk/import/create HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
    ],
)
def test_headers_cut_off_by_a_closed_connection_are_not_acted_on(
    server: tuple[ipm.Application, int], cut: bytes
) -> None:
    """Regression: a request whose headers never ended (the client closed
    its side) was served with the headers that came: a job was created."""
    app, port = server
    key = app.create_api_key("clerk", [ORG])
    cut = cut.replace(
        b"Host: x", b"Host: x\r\nAuthorization: Bearer " + key.encode()
    ).replace(b"Host: x", b"Host: x\r\nx-orgcode: " + ORG.encode())

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(cut)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    assert answer.startswith(b"HTTP/1.0 400 ")
    assert b"cut off" in answer
    assert app.bulk.find(ORG) == []


@pytest.mark.parametrize("gap", [b"\x0b", b"\x0c", b"\r", b"\x85", b"\xa0", b"  "])
def test_a_request_line_is_split_on_single_spaces_only(
    server: tuple[ipm.Application, int], gap: bytes
) -> None:
    """Regression: the standard library split the request line on whatever
    Python calls whitespace, so POST<VT>/stat was served as POST /stat,
    where a proxy saw one word."""
    _, port = server

    answered, body = raw_exchange(
        port, b"GET" + gap + b"/stat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )

    assert (answered, body["error"]["code"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("line", "status"),
    [
        # Raw UTF-8 in a target: é was served, à (C3 A0) split at its A0.
        (b"GET /stat?q=\xc3\xa9 HTTP/1.1", 400),
        # A control or DEL in a word: "G<NUL>ET" was a method (405).
        (b"G\x00ET /stat HTTP/1.1", 400),
        (b"GE\x7fT /stat HTTP/1.1", 400),
        (b"GET /st\x01at HTTP/1.1", 400),
        (b"GET /stat?q=\xc3\xa0 HTTP/1.1", 400),
        # No target: not HTTP/0.9's "GET /path" (a 505), a malformed line.
        (b"GET HTTP/1.1", 400),
        # Percent-encoded, the same query is served.
        (b"GET /stat?q=%C3%A0 HTTP/1.1", 200),
    ],
)
def test_a_request_line_is_ascii_with_its_three_words(
    server: tuple[ipm.Application, int], line: bytes, status: int
) -> None:
    """Bytes outside ASCII in the request line are refused alike, whatever
    Python would have read them as."""
    _, port = server

    answered, _ = raw_exchange(port, line + b"\r\nHost: 127.0.0.1\r\n\r\n")

    assert answered == status


def test_one_empty_line_before_the_request_line_is_ignored(
    server: tuple[ipm.Application, int],
) -> None:
    """RFC 9112, 2.2: a server ignores at least one empty line before a
    request line (a client's stray CRLF); it was answered 400."""
    _, port = server

    answered, body = raw_exchange(
        port, b"\r\nGET /stat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )

    assert answered == 200, body


def test_a_head_trickled_in_is_dropped_after_its_deadline(
    server: tuple[ipm.Application, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending a header line now and then (each well within any
    read timeout) loses its connection once the head's deadline passes."""
    monkeypatch.setattr(cli_server, "HEAD_SECONDS", 0.6)
    _, port = server
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for n in range(30):
            time.sleep(0.1)
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % n)
                sock.settimeout(0.01)
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break

    assert closed
    assert time.monotonic() - started < 2.5


def test_a_body_trickled_in_is_refused_at_the_pace_it_must_keep(
    server: tuple[ipm.Application, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that stops coming, or comes slower than the pace, is a 400
    that says so, while the connection's per-read timeout is far off."""
    monkeypatch.setattr(cli_server, "BODY_PACE", Pace(0.5, 100))
    _, port = server
    head = b"POST /cdc/list HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n"

    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        sock.settimeout(0.1)
        for _ in range(50):  # a byte every 0.1 s: 10 bytes a second
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            break
        sock.settimeout(5)
        while chunk := sock.recv(65536):
            answer += chunk

    status, _, rest = answer.partition(b"\r\n")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert status.split()[1] == b"400"
    assert body["error"]["code"] == "invalid_request"
    assert "under the 100 bytes a second" in body["error"]["message"]


def test_the_server_s_own_refusals_repeat_nothing_the_client_sent(
    server: tuple[ipm.Application, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A request line the standard library refuses is answered without
    quoting it, and its control characters reach no log line raw."""
    _, port = server
    with caplog.at_level(logging.DEBUG, logger="ipm.cli._server"):
        status, body = raw_exchange(
            port, b"GET /stat\x1b[31m\rINFO forged HTTP/1.1 x\r\n\r\n"
        )

    assert status == 400
    assert "forged" not in json.dumps(body)
    assert body["error"]["message"] == "the request line or headers cannot be read"
    assert all("\x1b" not in r.getMessage() for r in caplog.records)
    assert all("\r" not in r.getMessage() for r in caplog.records)


def test_a_request_is_logged_with_its_status_and_size_never_its_query(
    server: tuple[ipm.Application, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: serve -v logged "GET /stat HTTP/1.1" without the status
    or size, and a line with a query lost its protocol as well."""
    _, port = server
    with caplog.at_level(logging.DEBUG, logger="ipm.cli._server"):
        raw_exchange(port, b"GET /stat?sig=s3cret HTTP/1.1\r\nHost: a\r\n\r\n")
        raw_exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")

    lines = [r.getMessage() for r in caplog.records if " - GET " in r.getMessage()]
    assert len(lines) == 2
    assert re.search(r" - GET /stat HTTP/1\.1 200 \d+$", lines[0]), lines
    assert re.search(r" - GET /nowhere HTTP/1\.1 404 \d+$", lines[1]), lines
    assert all("s3cret" not in line for line in lines)


def test_an_absolute_form_target_is_logged_without_its_user_and_password(
    server: tuple[ipm.Application, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: serve -v logged "GET http://user:pw@a/stat", a password
    in the log, though it already left the query out."""
    _, port = server
    targets = [
        b"http://user:s3cret@a/stat?sig=x",
        b"//user:s3cret@a/stat",
        b"http:/\\u:s3cret@a/stat",
        b"user:s3cret@a:443",
        b"http://a@b:s3cret@a/stat",
        b"http://alice:s3cret?x@a/stat",
        b"http://alice:s3cret#x@a/stat",
        b"http://alice:s3cret/x@a/stat",
    ]
    with caplog.at_level(logging.DEBUG, logger="ipm.cli._server"):
        for target in targets:
            raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")

    lines = [r.getMessage() for r in caplog.records if " - GET " in r.getMessage()]
    assert len(lines) == len(targets)
    assert re.search(r" - GET http://a/stat HTTP/1\.1 \d{3} \d+$", lines[0]), lines
    assert all("s3cret" not in line for line in lines), lines


def test_an_answer_that_cannot_be_sent_is_one_log_line(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What wsgiref reports while answering (a client that stopped reading
    past the write timeout) reaches ipm's log as one warning, the traceback
    at debug level, and nothing is printed raw to stderr."""
    errors = cli_server._AnswerErrors("127.0.0.1")
    try:
        raise TimeoutError("timed out")
    except TimeoutError:
        traceback.print_exc(file=errors)

    with caplog.at_level(logging.DEBUG, logger="ipm.cli._server"):
        errors.flush()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "127.0.0.1 - the answer was not sent whole: TimeoutError: timed out"
    ]
    assert capsys.readouterr().err == ""


def test_a_refused_path_is_named_as_handle_names_it(
    server: tuple[ipm.Application, int],
) -> None:
    """A path the server cannot repeat is never in stats.call: one with a
    control character is refused with its request line (nothing of it
    named), an over-long one is /invalid-path, as handle() names it."""
    _, port = server
    long_path = b"/" + b"a" * 3000

    control = raw_exchange(
        port, b"GET /st\x01at HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )
    too_long = raw_exchange(
        port, b"GET " + long_path + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )

    assert control[0] == too_long[0] == 400
    assert control[1]["stats"]["call"] == "INVALID /"
    assert too_long[1]["stats"]["call"] == "GET /invalid-path"


def test_a_length_with_leading_zeros_is_its_value(
    server: tuple[ipm.Application, int],
) -> None:
    """Content-Length: 000...02 (legal HTTP) is 2, not a length past every
    limit."""
    _, port = server
    zeros = "0" * 30 + "2"

    head = f"POST /cdc/list HTTP/1.1\r\nHost: x\r\nContent-Length: {zeros}\r\n"

    status, body = raw_exchange(port, head.encode() + b"\r\n{}")

    assert (status, body["error"]["code"]) == (401, "unauthenticated")


def test_a_link_refused_before_ipm_names_the_route_not_the_job(
    server: tuple[ipm.Application, int],
) -> None:
    """stats.call of an upload refused by the adapter is PUT /bulk/upload,
    as handle() names it, not the path with its job id."""
    app, port = server
    job = app.bulk.create_import(ORG)
    target = app.bulk.link("upload", job, f"http://127.0.0.1:{port}").url
    target = target.split(str(port), 1)[1]

    status, body = raw_exchange(
        port, f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )

    assert status == 411
    assert body["stats"]["call"] == "PUT /bulk/upload"


def test_an_upload_declaring_thousands_of_digits_is_413_unread(
    server: tuple[ipm.Application, int],
) -> None:
    """A Content-Length past int()'s 4,300 digits is too large, answered at
    once, as a shorter huge one is."""
    app, port = server
    job = app.bulk.create_import(ORG)
    target = app.bulk.link("upload", job, f"http://127.0.0.1:{port}").url
    target = target.split(str(port), 1)[1]
    length = "9" * 5000
    request = f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"

    started = time.monotonic()
    status, body = raw_exchange(port, request.encode() + b"abc")

    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert time.monotonic() - started < 5
    assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


# -- keys ----------------------------------------------------------------------


def test_a_key_is_revoked_by_its_id_as_the_help_writes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`ipm keys revoke ipm_<id>` revokes the key, as the bare id does."""
    db = str(tmp_path / "keys.sqlite")
    _, key, _ = run(capsys, "keys", "create", "--db", db, "--org", ORG, "--actor", "a")
    key_id = key.strip().split("_")[1]

    code, _, err = run(capsys, "keys", "revoke", f"ipm_{key_id}", "--db", db)

    assert code == 0, err
    with ipm.open_sqlite(db) as app:
        assert app.list_api_keys() == []


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`ipm keys list | head` with the reader gone: exit 141, nothing on stderr."""
    db = tmp_path / "keys.sqlite"
    with ipm.open_sqlite(db) as app:
        app.create_api_key("a", [ORG])
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write meets EPIPE

    try:
        done = subprocess.run(
            [sys.executable, "-m", "ipm", "keys", "list", "--db", str(db)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert done.returncode == cli.BROKEN_PIPE
    assert b"Traceback" not in done.stderr and b"Broken pipe" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["deliver", "--once"], ["export", "-o", "out.ndjson"]],
)
def test_a_database_from_a_newer_ipm_is_one_line_and_untouched(
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    """A file with a migration this ipm does not know: exit 2, one line that
    says so, no traceback, and not a byte of the file changed."""
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO ipm_migrations VALUES ('9999_future', 'x')")
    conn.close()
    before = db.read_bytes()
    monkeypatch.chdir(db.parent)
    org = ["--org", ORG] if command[0] == "export" else []

    code, out, err = run(capsys, *command, "--db", str(db), *org)

    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"ipm {' '.join(command[:2]) if command[0] == 'keys' else command[0]}: "
        "database has migrations this ipm does not know: ['9999_future'] "
        "(a newer ipm wrote it; it is left untouched)"
    ]
    assert db.read_bytes() == before
    assert not (db.parent / "out.ndjson").exists()


# -- 9. what the user reads ------------------------------------------------------------


def _export_blobs(db: Path, job_id: str) -> list[Path]:
    return [p for p in blob_files(db) if job_id in str(p)]


@pytest.mark.parametrize("output", ["file", "-"])
def test_an_export_leaves_no_copy_of_its_file_behind(
    tmp_path: Path, db: Path, capsysbinary: pytest.CaptureFixture[bytes], output: str
) -> None:
    """Once -o is written, ipm's copy is discarded (it used to stay for ever)."""
    _events(db, 5)
    target = str(tmp_path / "out.ndjson") if output == "file" else "-"

    code = cli.main(["export", "--db", str(db), "--org", ORG, "-o", target])
    written = capsysbinary.readouterr().out if output == "-" else None

    export = next(j for j in jobs(db) if j.job_type == "export")
    assert code == 0 and export.status == "completed"
    assert _export_blobs(db, export.job_id) == []
    with ipm.open_sqlite(db) as app:
        assert not app.bulk.has_file(export)
    if written is not None:
        assert written.count(b"\n") == export.result.records  # type: ignore[union-attr]


def test_a_written_export_sweeps_the_partial_files_killed_runs_left(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed mid-write leaves out.ndjson.<hex>.partial; the next run
    that writes out.ndjson removes such files once they are a minute old and
    unlocked, and nothing else beside them."""
    _events(db, 3)
    out = tmp_path / "out.ndjson"
    old = time.time() - 3_600

    def left(name: str, *, age: float = old) -> Path:
        path = tmp_path / name
        path.write_bytes(b'{"half": ')
        os.utime(path, (age, age))
        return path

    abandoned = left("out.ndjson.0123abcd.partial")
    fresh = left("out.ndjson.89abcdef.partial", age=time.time())
    other_output = left("other.ndjson.0123abcd.partial")
    not_ours = left("out.ndjson.notours.partial")
    in_use = left("out.ndjson.00ff00ff.partial")
    linked = left("out.ndjson.abababab.partial")
    os.link(linked, tmp_path / "a file of the user's")
    import fcntl

    with open(in_use, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live writer holds its lock
        code, said, _ = run(
            capsys,
            "export",
            "--db",
            str(db),
            "--org",
            ORG,
            "-o",
            str(out),
            "--service",
            "pos",
        )

    assert code == 0 and "completed: 3 events" in said
    assert out.read_bytes().count(b"\n") == 3
    assert not abandoned.exists()
    assert fresh.exists() and other_output.exists() and not_ours.exists()
    assert in_use.exists() and linked.exists()


def test_a_partial_file_is_locked_while_it_is_written(tmp_path: Path) -> None:
    """The writer's own partial file cannot be swept from under it."""
    import fcntl

    out = tmp_path / "out.ndjson"
    seen: list[bool] = []

    def chunks() -> Any:
        (partial,) = tmp_path.glob("out.ndjson.*.partial")
        os.utime(partial, (0, 0))  # as old as can be: only the lock protects it
        with open(partial, "rb") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                seen.append(True)
        cli_files._sweep_partials(out)
        yield b"{}\n"

    cli_files.write_output(str(out), chunks())

    assert seen == [True]
    assert out.read_bytes() == b"{}\n"
    assert list(tmp_path.glob("*.partial")) == []


def test_a_private_file_s_new_content_is_private_while_it_is_written(
    tmp_path: Path,
) -> None:
    """Regression: the partial file was made with the umask's mode (0644)
    and given the replaced file's mode (0600) only at the end, so the new
    content was readable by others while it was written (and in a killed
    run's leftover). It has the replaced file's mode from the start, and
    goes to disk before it takes the name."""
    out = tmp_path / "out.ndjson"
    out.write_bytes(b"old\n")
    out.chmod(0o600)
    modes: list[int] = []
    synced: list[int] = []
    fsync = os.fsync

    def chunks() -> Any:
        (partial,) = tmp_path.glob("out.ndjson.*.partial")
        modes.append(stat.S_IMODE(partial.stat().st_mode))
        yield b"{}\n"

    def counted(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", counted)
        cli_files.write_output(str(out), chunks())

    assert modes == [0o600]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes() == b"{}\n"
    assert synced  # the file (and its folder) went to disk


def test_an_output_that_is_a_loop_of_links_is_refused_before_any_work(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: -o naming a symbolic link to itself was a traceback
    (RuntimeError from resolving it) and exit 1; it is exit 2 with a message."""
    _events(db, 1)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)

    code, _, said = run(
        capsys, "export", "--db", str(db), "--org", ORG, "-o", str(loop)
    )

    assert code == 2
    assert "loop of symbolic links" in said
    assert "Traceback" not in said


def test_a_read_only_output_is_refused_and_kept(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: -o naming a 0444 file replaced it (a rename needs only
    the folder); shell redirection refuses it, and so does ipm export."""
    _events(db, 1)
    kept = tmp_path / "kept.ndjson"
    kept.write_bytes(b"old\n")
    kept.chmod(0o444)

    code, _, said = run(
        capsys, "export", "--db", str(db), "--org", ORG, "-o", str(kept)
    )

    assert code == 2
    assert "read-only" in said
    assert kept.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_an_output_nothing_can_be_made_beside_is_refused_before_the_export(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o into a folder where no file can be made (here /proc, where root
    passes every permission check) ran the whole export and failed at the
    end; it is refused first, with no job made."""
    _events(db, 1)
    with sqlite3.connect(db) as connection:
        before = connection.execute("select count(*) from jobs").fetchone()[0]

    code, _, said = run(
        capsys, "export", "--db", str(db), "--org", ORG, "-o", "/proc/x.ndjson"
    )

    assert code == 2
    assert "cannot be written" in said
    with sqlite3.connect(db) as connection:
        after = connection.execute("select count(*) from jobs").fetchone()[0]
    assert after == before


def test_an_output_in_an_append_only_folder_is_refused_before_the_export(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In an append-only folder (chattr +a) a file can be made but neither
    removed nor renamed: the probe's removal failing refuses the output
    before the export (it ran whole, then failed at the rename)."""
    _events(db, 1)
    real_unlink = Path.unlink

    def append_only(path: Path, missing_ok: bool = False) -> None:
        if path.parent == tmp_path and path.name.endswith(".partial"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", append_only)
    out = tmp_path / "x.ndjson"

    code, _, said = run(capsys, "export", "--db", str(db), "--org", ORG, "-o", str(out))

    assert code == 2
    assert "cannot be removed or renamed" in said
    assert not out.exists()


def test_a_replaced_file_s_group_and_owner_access_are_kept_while_written(
    tmp_path: Path,
) -> None:
    """Regression: a partial file made with an unwritable target's mode
    (0200, 0000) could not be opened by the next run's sweep, so a killed
    run's leftover stayed for good. While written it is the owner's to
    read and write, never wider than the target for group and others, in
    the target's group; the target's own mode comes back at the end."""
    out = tmp_path / "out.ndjson"
    out.write_bytes(b"old\n")
    out.chmod(0o200)
    modes: list[int] = []

    def chunks() -> Any:
        (partial,) = tmp_path.glob("out.ndjson.*.partial")
        modes.append(stat.S_IMODE(partial.stat().st_mode))
        assert partial.stat().st_gid == out.stat().st_gid
        yield b"{}\n"

    cli_files.write_output(str(out), chunks())

    assert modes == [0o600]
    assert stat.S_IMODE(out.stat().st_mode) == 0o200


def test_an_export_whose_output_cannot_be_written_keeps_its_file(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job stays completed with its file, and stderr says where it is; exit 2."""
    _events(db, 5)
    folder = tmp_path / "exports"
    folder.mkdir()
    ran = Bulk.run

    def run_then_lose_the_folder(self: Bulk, *args: Any, **kwargs: Any) -> Job:
        job = ran(self, *args, **kwargs)
        folder.rmdir()
        return job

    monkeypatch.setattr(Bulk, "run", run_then_lose_the_folder)
    out = str(folder / "out.ndjson")

    code, _, err = run(capsys, "export", "--db", str(db), "--org", ORG, "-o", out)

    export = next(j for j in jobs(db) if j.job_type == "export")
    assert code == 2 and f"{out} could not be written" in err
    assert "stays completed" in err and "bulk/job/get" in err
    assert export.status == "completed"
    with ipm.open_sqlite(db) as app:
        assert app.bulk.has_file(export)


@pytest.mark.parametrize(
    ("ended_at", "said"),
    [
        # 25 of 30 lines in 5 s is 5 lines/s, not the whole job's 30 over 5 s.
        (105.0, "; this run: 25 lines in 5.0 s (5 lines/s)"),
        # Regression: "25 lines in 0.05 s (543 lines/s)": the rate came from
        # the unrounded time; it is the rate of the time shown now.
        (100.046, "; this run: 25 lines in 0.05 s (500 lines/s)"),
    ],
)
def test_a_resumed_import_is_rated_by_the_lines_this_run_read(
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ended_at: float,
    said: str,
) -> None:
    """The rate is of this run's lines over the time the summary shows."""
    job = _job(db, "upload", "commit", "slice", data=ndjson(30))
    ticks = iter([100.0])
    clock = types.SimpleNamespace(monotonic=lambda: next(ticks, ended_at))
    monkeypatch.setattr(cli_import, "time", clock)

    code, out, _ = _resume(capsys, db, job)

    assert code == 0
    assert f"{job.job_id} completed: 30 lines" in out
    assert said in out


def test_the_progress_bar_rates_only_this_run(db: Path) -> None:
    """Lines a resumed job read before this run are not counted in its rate."""
    job = _job(db, "upload", "commit", "slice", data=ndjson(30))
    stream = io.StringIO()
    progress = cli_files.Progress(stream, "import")

    progress.count_from(job.cursor.lines)
    progress.job(job)

    assert job.cursor.lines == 5
    assert stream.getvalue().endswith(" 0 lines/s")


def test_the_progress_bar_fits_the_terminal(db: Path) -> None:
    """Regression: lines of 90-100 characters wrapped on an 80-column
    terminal, and each redraw left a trail of them."""
    job = _job(db, "upload", "commit", "slice", data=ndjson(30))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    with open(follower, "w", closefd=True) as stream:
        cli_files.Progress(stream, "import").job(job)
    drawn = os.read(leader, 4096).decode()
    os.close(leader)

    assert drawn.startswith("\rimport [")
    assert len(drawn) - 1 == 39


def test_an_ended_job_s_file_is_not_read_because_it_ended(
    tmp_path: Path,
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its upload is deleted: the note says it has ended, not that it has one."""
    monkeypatch.chdir(tmp_path)
    job = _job(db, "upload", "commit", "run", data=ndjson(5))

    code, _, err = _resume(capsys, db, job, str(data))

    assert code == 0
    assert f"{job.job_id} has ended (completed); {data} is not read" in err
    assert "has its upload" not in err


def test_a_validate_run_says_what_apply_would_do_and_how(
    tmp_path: Path,
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing was written: "would create", then a command that applies it."""
    monkeypatch.chdir(tmp_path)
    argv = ["import", str(data), "--db", str(db), "--org", ORG, "--mode", "validate"]

    code, out, _ = run(capsys, *argv)
    (job,) = jobs(db)
    hint = out.splitlines()[-1]
    applied = run(capsys, *shlex.split(hint.split(": ", 1)[1])[1:])

    assert code == 1 and "created" not in out
    assert f"{job.job_id} validated: 22 lines, 20 ok (would create 20, " in out
    assert hint == (
        f"nothing was written; to apply it: ipm import --job {job.job_id} "
        f"--mode apply --org {ORG} --db {db} --report {data}.errors.ndjson"
    )
    assert applied[0] == 1 and "completed_with_errors" in applied[1]
    assert "(20 created" in applied[1]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--bucket", "daily"], "  --bucket: does not apply to an export of events"),
        (["--from", "yesterday"], "  --from: must be an RFC 3339 date-time"),
        (
            ["--from", "2026-03-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
            "  --to: must be later than --from",
        ),
    ],
)
def test_an_export_s_refusal_names_the_options_typed(
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    says: str,
) -> None:
    """--bucket, --from, --to rather than /filters/bucket or from_utc."""
    out = str(tmp_path / "out.ndjson")

    code, _, err = run(
        capsys, "export", "--db", str(db), "--org", ORG, "-o", out, *options
    )

    assert code == 2 and says in err
    assert "/filters" not in err and "_utc" not in err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{}", "  must be a list, not an object (wrap one type in [ ])"),
        ("[", "Expecting"),
        ("", "is empty"),
    ],
)
def test_a_problem_with_the_whole_input_has_no_pointer(
    tmp_path: Path,
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    says: str,
) -> None:
    """Pointer "" is shown as nothing, not "/:", and not again when the
    message is already in the first line."""
    types_file = tmp_path / "types.json"
    types_file.write_text(text)
    argv = ["import", str(data), "--db", str(db), "--org", ORG]

    code, _, err = run(capsys, *argv, "--event-types", str(types_file))

    assert code == 2 and says in err
    assert "/:" not in err
    assert err.count(says.strip()) == 1


def test_a_network_with_host_bits_set_is_named_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """10.0.0.1/8 is refused as having host bits set, with 10.0.0.0/8 offered."""
    err = usage_error(capsys, "deliver", "--allow-network", "10.0.0.1/8")

    assert "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)" in err


@pytest.mark.parametrize("which", ["FILE", "--event-types"])
def test_a_missing_file_is_named_plainly(
    tmp_path: Path,
    data: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    which: str,
) -> None:
    """ "no file FILE", not "[Errno 2] No such file or directory: '...'"."""
    missing = str(tmp_path / "absent.json")
    argv = ["import", missing if which == "FILE" else str(data)]
    argv += ["--db", str(db), "--org", ORG]
    if which == "--event-types":
        argv += ["--event-types", missing]

    code, _, err = run(capsys, *argv)

    assert code == 2 and f"no file {missing}" in err
    assert "Errno" not in err
    assert jobs(db) == []


def test_serve_on_a_port_in_use_names_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The address and port, and the option that changes it; exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--db", str(tmp_path / "s.sqlite"), "--port", str(port)]

        code, _, err = run(capsys, *argv)

    assert code == 2
    assert err == f"ipm serve: 127.0.0.1:{port} is already in use (give --port)\n"


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, "--help"])

    assert stopped.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_says_what_a_key_id_may_be_and_a_default_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """keys revoke takes what `keys list` shows; serve's --db default is said once."""
    revoke = _help(capsys, "keys", "revoke")
    serve = _help(capsys, "serve")

    assert "the key id from `ipm keys list` (ipm_<id> and a whole key also work)" in (
        revoke
    )
    db_help = serve.split("--db DB", 2)[2].split("--host")[0]
    assert db_help.count("ipm.sqlite") == 1


def test_a_key_nobody_could_read_is_revoked(tmp_path: Path) -> None:
    """keys create with its reader gone: exit 141 and no usable key is left."""
    db = tmp_path / "keys.sqlite"
    read_end, write_end = os.pipe()
    os.close(read_end)

    try:
        argv = ["keys", "create", "--db", str(db), "--org", ORG, "--actor", "a"]
        done = subprocess.run(
            [sys.executable, "-m", "ipm", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert done.returncode == cli.BROKEN_PIPE
    with ipm.open_sqlite(db) as app:
        assert app.list_api_keys() == []


def test_shutdown_is_not_held_by_a_server_whose_slots_are_all_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every slot taken by a silent client, shutdown still returns promptly."""
    from ipm.cli import _server

    monkeypatch.setattr(_server._ThreadingServer, "max_threads", 1)
    app = ipm.open_memory()
    http = cli.make_http_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = int(http.server_address[1])
    silent = socket.create_connection(("127.0.0.1", port))  # holds the one slot
    waiting = socket.create_connection(("127.0.0.1", port))  # the loop waits on it
    time.sleep(0.3)

    started = time.monotonic()
    http.shutdown()
    took = time.monotonic() - started

    http.server_close()
    silent.close()
    waiting.close()
    app.close()
    assert took < 3


class _LoadInterrupted(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        raise KeyboardInterrupt


def test_ctrl_c_while_the_cli_loads_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script and python -m ipm enter through ipm._entry, which
    catches a Ctrl-C that lands while the CLI's modules are still loading."""
    from ipm import _entry

    monkeypatch.setitem(sys.modules, "ipm.cli", _LoadInterrupted("ipm.cli"))

    assert _entry.main() == 130
    assert capsys.readouterr().err == "ipm: interrupted\n"


@pytest.mark.parametrize(
    ("closed", "argv"),
    [(1, ["openapi"]), (2, ["import", "no-such-file.ndjson", "--org", ORG])],
    ids=["stdout", "stderr"],
)
def test_a_command_started_without_a_standard_stream_exits_2(
    tmp_path: Path, closed: int, argv: list[str]
) -> None:
    """Regression: started with stdout (or stderr) closed, Python has no
    sys.stdout, and a command died with a traceback and exit 1, the status
    of an import whose lines failed. Writing to a missing stdout is refused
    as a full disk's is (exit 2); without stderr only the status tells."""
    if argv[0] == "import":
        argv = [*argv, "--db", str(tmp_path / "ipm.sqlite")]

    ran = subprocess.run(
        [sys.executable, "-m", "ipm", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: os.close(closed),
        timeout=60,
    )

    assert ran.returncode == 2
    if closed == 1:
        assert ran.stderr == "ipm openapi: standard output is closed\n"


@pytest.mark.parametrize(
    ("stdout", "said"), [("closed", "closed"), ("read-only", "open for reading only")]
)
def test_a_command_whose_output_is_closed_does_nothing(
    tmp_path: Path, stdout: str, said: str
) -> None:
    """Regression: ipm import with stdout closed (or opened for reading
    only, 1</dev/null) imported every line, then exited 2 ("could not run")
    when its summary could not be written."""
    data = tmp_path / "sales.ndjson"
    data.write_bytes(ndjson(3))
    db = tmp_path / "ipm.sqlite"
    argv = ["import", str(data), "--db", str(db), "--org", ORG]

    def unwritable() -> None:
        if stdout == "closed":
            os.close(1)
        else:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 1)

    ran = subprocess.run(
        [sys.executable, "-m", "ipm", *argv],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=unwritable,
        timeout=60,
    )

    assert ran.returncode == 2
    assert ran.stderr == f"ipm import: standard output is {said}\n"
    assert not db.exists()


def test_serve_warns_at_start_when_its_database_is_read_only(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reads work on such a file, so nothing else says it before the first
    write is refused."""
    from ipm.cli import _server

    db = tmp_path / "ipm.sqlite"
    db.touch()
    monkeypatch.setattr(_server.os, "access", lambda path, mode: path != str(db))

    with caplog.at_level(logging.WARNING, logger="ipm.cli._server"):
        _server._warn_if_read_only(str(db))
        warned = len(caplog.records)
        monkeypatch.setattr(_server.os, "access", lambda path, mode: True)
        _server._warn_if_read_only(str(db))

    assert warned == 1 and "read-only" in caplog.records[0].getMessage()
    assert len(caplog.records) == 1


# -- 9. the path as sent -------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"/kpi%2Fquery", b"/kpi%2fquery", b"//kpi/query", b"/kpi//query", b"//stat"],
)
def test_a_path_a_proxy_would_read_otherwise_reaches_no_route(
    server: tuple[ipm.Application, int], target: bytes
) -> None:
    """Regression: /kpi%2Fquery and //kpi/query were served as /kpi/query,
    a path a proxy filtering by path never saw."""
    _, port = server
    method = b"GET" if target.endswith(b"stat") else b"POST"
    request = (
        method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )

    status, answer = raw_exchange(port, request)

    assert (status, answer["error"]["code"]) == (404, "route_not_found")


def test_an_absolute_form_target_is_served_as_its_path(
    server: tuple[ipm.Application, int],
) -> None:
    """RFC 9112, 3.2.2: a server takes "GET http://host/stat" as /stat."""
    _, port = server
    request = (
        f"GET http://127.0.0.1:{port}/stat HTTP/1.1\r\n".encode()
        + b"Host: 127.0.0.1\r\n\r\n"
    )

    status, answer = raw_exchange(port, request)

    assert status == 200
    assert answer["stats"]["call"] == "GET /stat"


def test_an_absolute_form_target_that_is_no_url_is_a_400(
    server: tuple[ipm.Application, int],
) -> None:
    """Regression: "GET http://[::1/stat" raised in the server's own code:
    no answer at all, a traceback on stderr."""
    _, port = server

    status, answer = raw_exchange(
        port, b"GET http://[::1/stat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert answer["error"]["details"][0]["pointer"] == "/target"


def test_any_command_folds_a_killed_process_s_wal_into_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As foundation.md's backup steps say: after a SIGKILL the last
    commits sit in the -wal; one ipm command on the file (keys list)
    folds them in and removes it, so the file alone is the backup."""
    db = tmp_path / "ipm.sqlite"
    killed = textwrap.dedent(
        f"""
        import os, signal, ipm
        app = ipm.open_sqlite({str(db)!r})
        for n in range(50):
            app.publish("{ORG}", {{"service": "pos", "action": "a", "payload": {{}}}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", killed], check=False, timeout=60)
    assert Path(f"{db}-wal").exists()

    run(capsys, "keys", "list", "--db", str(db))

    assert not Path(f"{db}-wal").exists()
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(db.read_bytes())
    with sqlite3.connect(copy) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    assert count == 50


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipm_serve_listens_on_the_ipv6_loopback(host: str) -> None:
    """Regression: --host ::1 failed ("Address family for hostname not
    supported"): the server only ever made IPv4 sockets."""
    app = ipm.open_memory()
    http = cli.make_http_server(app, host, 0)
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = http.server_address[1]
        with socket.create_connection(("::1", port), timeout=5) as sock:
            sock.sendall(b"GET /stat HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        http.shutdown()
        http.server_close()
        app.close()

    assert answer.startswith(b"HTTP/1.0 200 ")


def test_a_signal_while_stopping_says_once_that_the_command_is_stopping(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user pressing Ctrl-C again while the clean-up waits (on a database
    lock, say) heard nothing for up to 30 s; now one line says why (once a
    second has passed: a quick repeat, a group kill, says nothing)."""
    monkeypatch.setattr(cli, "TELL_AFTER", 0.0)
    handler = cli._Stopping("ipm import")

    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    for _ in range(3):
        handler(signal.SIGINT, None)

    assert capfd.readouterr().err == "\nipm import: stopping, please wait\n"


def test_a_quick_repeat_says_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """Regression: a second signal landing just after the command's last
    line (while the database closed) printed "stopping" below it."""
    handler = cli._Stopping("ipm export")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)

    handler(signal.SIGINT, None)

    assert capfd.readouterr().err == ""


def test_a_signal_once_the_work_is_done_and_said_is_ignored() -> None:
    """Regression: a Ctrl-C after ipm export had written its file and said
    so (while the database closed) made it "interrupted", exit 130."""
    before = {stop: signal.getsignal(stop) for stop in cli._STOPS}
    try:
        with cli._sigterm_as_interrupt(True) as stopping:
            cli_common.work_done()
            stopping(signal.SIGINT, None)  # no KeyboardInterrupt

        assert not stopping.seen
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


@pytest.mark.parametrize("exiting", [True, False])
def test_signals_after_the_work_stay_ignored_only_when_the_process_ends(
    exiting: bool,
) -> None:
    """Regression: once a finished import or export left main, the default
    handlers came back for the interpreter's shutdown, so a SIGTERM landing
    then ended the finished command by the signal (143). A host calling
    main in-process gets its own handlers back."""
    before = {stop: signal.getsignal(stop) for stop in cli._STOPS}
    try:
        with cli._sigterm_as_interrupt(True, exiting=exiting):
            cli_common.work_done()

        for stop in cli._STOPS:
            after = signal.getsignal(stop)
            assert after is (signal.SIG_IGN if exiting else before[stop])
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


def test_the_process_entry_runs_the_cli_as_exiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ipm command and python -m ipm end with the command they run."""
    from ipm import _entry

    calls: list[dict[str, object]] = []
    fake = types.ModuleType("ipm.cli")
    fake.main = lambda **kwargs: calls.append(kwargs) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ipm.cli", fake)

    assert _entry.main() == 0
    assert calls == [{"exiting": True}]


def test_a_signal_after_the_last_line_says_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Regression: a repeat landing after the command's own last line (the
    job and the command to go on) printed "stopping" below it."""
    handler = cli._Stopping("ipm export")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    handler.ended = True

    handler(signal.SIGTERM, None)

    assert capfd.readouterr().err == ""


def test_a_second_sigterm_does_not_break_into_the_clean_up() -> None:
    """Regression: a second SIGTERM (a group kill, then the process) raised
    again inside the first one's clean-up, so the job was neither cancelled
    nor named. Only the first stops the command."""
    handler = cli._Stopping()

    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    handler(signal.SIGTERM, None)  # ignored
    handler(signal.SIGINT, None)  # ignored too (Ctrl-C on top)

    assert handler.seen and handler.terminated


@pytest.mark.parametrize(("verb", "wrapped"), [("import", True), ("serve", False)])
def test_sigterm_stops_one_shot_commands_only(verb: str, wrapped: bool) -> None:
    """serve and deliver stop on SIGTERM their own way (exit 0): one sent
    while they start must not end them as interrupted (143)."""
    before = signal.getsignal(signal.SIGTERM)

    with cli._sigterm_as_interrupt(verb not in cli._LOGGING_COMMANDS):
        during = signal.getsignal(signal.SIGTERM)

    assert isinstance(during, cli._Stopping) is wrapped
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_after_the_command_stopped_is_ignored_too() -> None:
    """Regression: the default handler came back as soon as the command
    returned, so a second SIGTERM a few milliseconds after the first killed
    the process by the signal instead of its exit 143."""
    before = {stop: signal.getsignal(stop) for stop in cli._STOPS}
    try:
        with (
            cli._sigterm_as_interrupt(True) as stopping,
            contextlib.suppress(KeyboardInterrupt),
        ):
            stopping(signal.SIGTERM, None)

        assert stopping.terminated
        for stop in cli._STOPS:
            assert signal.getsignal(stop) is signal.SIG_IGN
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


def test_ctrl_c_on_top_of_a_sigterm_does_not_cut_the_clean_up_short() -> None:
    """Regression: SIGTERM then SIGINT a millisecond later broke into the
    clean-up, and the line naming the command to go on was lost."""
    before = {stop: signal.getsignal(stop) for stop in cli._STOPS}
    try:
        with cli._sigterm_as_interrupt(True) as stopping:
            with contextlib.suppress(KeyboardInterrupt):
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
            cleaned_up = True

        assert cleaned_up and stopping.terminated
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("::1", "[::1]:8080"),
        ("[::1]", "[::1]:8080"),
        ("::", "[::]:8080"),
        ("127.0.0.1", "127.0.0.1:8080"),
        ("[127.0.0.1]", "[127.0.0.1]:8080"),
        ("[::1", "[[::1]:8080"),
    ],
)
def test_an_address_is_written_as_a_url_writes_it(host: str, shown: str) -> None:
    """Regression: the start line said http://::1:8080, and a port in use
    on --host [::1] was named [[::1]]:8080."""
    assert cli_server._authority(host, 8080) == shown


def test_starting_the_server_looks_up_no_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the standard library's bind asked DNS for the name of
    the address (socket.getfqdn), a query off the machine at every start."""

    def no_lookup(name: str = "") -> str:
        raise AssertionError(f"looked up {name!r}")

    monkeypatch.setattr(socket, "getfqdn", no_lookup)
    app = ipm.open_memory()
    http = cli.make_http_server(app, "127.0.0.1", 0)
    http.server_close()
    app.close()

    assert http.server_name == "127.0.0.1"


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize(
    "sent",
    [b"GET /stat HTTP/1.1\r\nHost: x\r\n", b"GET  /stat HTTP/1.1\r\nHost: x\r\n\r\n"],
)
def test_a_client_gone_before_its_refusal_makes_no_traceback(
    server: tuple[ipm.Application, int],
    capfd: pytest.CaptureFixture[str],
    sent: bytes,
    reset: bool,
) -> None:
    """Regression: a client that sent a part or a bad request and closed
    made the refusal's write fail, and the standard library printed a
    BrokenPipeError traceback per connection (123 in a fuzz run)."""
    _, port = server
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if reset:  # closed with an RST rather than a FIN
                linger = b"\1\0\0\0\0\0\0\0"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.sendall(sent)
    time.sleep(0.5)

    assert "Traceback" not in capfd.readouterr().err
