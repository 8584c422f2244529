"""The ``ipm`` command line: serve, keys, deliver, import, export, openapi.

Each verb is a small function over the library's public surface; the CLI
is a user of ipm like any host.

Theory of operation of ``import`` and ``export``. A command that cannot
run exits 2 and leaves nothing behind: paths are checked before any work
(an output never lands on the database, its journals or its blobs), and a
job this run created but could not start is cancelled with the reason.
Once an import runs, its job is worth keeping: an interrupted run says
how to go on with it (``ipm import --job``) and exits 130. An export is
cheap to redo, so an interrupted one is cancelled. Input that is not a
regular file (standard input, a pipe) is first copied, a chunk at a time,
to an unnamed temporary file, so the upload knows its size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import secrets
import shlex
import signal
import sqlite3
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.message import Message
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any, NamedTuple, TextIO, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import ipm
from ipm.domain.errors import InvalidRequest, Problem, StorageBusy
from ipm.domain.events import ORGCODE_PATTERN, Audit
from ipm.domain.jobs import MAX_SLICE_LINES, Job
from ipm.domain.ndjson import LineError, parse_record
from ipm.domain.netguard import NetworkPolicy
from ipm.usecases.bulk import Bulk, BulkOptions
from ipm.usecases.catalog import EventCatalog
from ipm.usecases.delivery import DeliveryReport

log = logging.getLogger("ipm.cli")

Command = Callable[[argparse.Namespace], int]

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use."""
BROKEN_PIPE = 141
"""The exit status when the reader of stdout went away (128 + SIGPIPE)."""


class CannotRun(Exception):
    """Why a command refuses to run, said as one line; it exits 2."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, but never more than ``max_threads`` at once.

    When every thread is busy the server stops accepting until one is free,
    so a flood of slow clients queues in the kernel instead of growing the
    process without bound.
    """

    daemon_threads = True
    allow_reuse_address = True
    max_threads = 64
    # The standard library's backlog of 5 resets clients in a burst.
    request_queue_size = 256
    # The application whose error envelope refuses a request early.
    ipm_app: ipm.Application

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    # A client that sends nothing for this long is dropped (slow clients
    # would otherwise hold a thread for ever).
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry a query string; log the path only.
        line = self.requestline.split("?", 1)[0]
        log.debug("%s - %s", self.address_string(), line)

    def parse_request(self) -> bool:
        """Refuse a request whose body length is ambiguous, before reading it.

        The standard library's server takes the first Content-Length and
        ignores Transfer-Encoding; a proxy in front may frame the body
        differently, and the rest of the bytes would be read as the next
        request (request smuggling).
        """
        if not super().parse_request():
            return False

        problem = _ambiguous_framing(self.headers)
        if problem is None:
            return True

        self._refuse(problem)
        return False

    def _refuse(self, problem: str) -> None:
        error = InvalidRequest(
            f"the request's body length is ambiguous: {problem}",
            [Problem("/headers/content-length", problem)],
        )
        app = cast(_ThreadingServer, self.server).ipm_app
        call = f"{self.command} {self.path.split('?', 1)[0]}"
        response = app.api.refusal(call, error)
        # The body was not read: the connection cannot carry another request.
        self.close_connection = True
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(response.body)


def _ambiguous_framing(headers: Message) -> str | None:
    lengths = {value.strip() for value in headers.get_all("content-length", [])}
    if len(lengths) > 1:
        return "Content-Length headers that differ"
    if lengths and headers.get_all("transfer-encoding"):
        return "both Content-Length and Transfer-Encoding"

    return None


def make_http_server(app: ipm.Application, host: str, port: int) -> WSGIServer:
    """The server ``ipm serve`` runs (``port`` 0: any free port)."""
    server = make_server(
        host,
        port,
        app.wsgi_app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    server.ipm_app = app

    return server


def serve(args: argparse.Namespace) -> int:
    types = _event_types(args.event_types)
    app = ipm.open_sqlite(
        args.db,
        allow_networks=args.allow_network or (),
        synchronous=args.synchronous,
    )
    try:
        _register(app, types, args.event_types)
        server = make_http_server(app, args.host, args.port)
    except BaseException:
        app.close()
        raise

    def stop(signum: int, frame: Any) -> None:
        log.info("stopping on signal %s", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    log.info("ipm listening on http://%s:%s (database %s)", host, port, args.db)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        app.close()

    return 0


def keys_create(args: argparse.Namespace) -> int:
    with ipm.open_sqlite(args.db) as app:
        key = app.create_api_key(args.actor, args.org)
    sys.stdout.write(key + "\n")

    return 0


def keys_list(args: argparse.Namespace) -> int:
    with ipm.open_sqlite(_existing(args.db)) as app:
        for key in app.list_api_keys():
            sys.stdout.write(json.dumps(key, sort_keys=True) + "\n")

    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    # "ipm_<id>" as the help shows it, or a whole key pasted by mistake,
    # names its id; a secret is never echoed.
    parts = args.key_id.split("_")
    key_id = parts[1] if parts[0] == "ipm" and len(parts) >= 2 else args.key_id
    with ipm.open_sqlite(_existing(args.db)) as app:
        removed = app.revoke_api_key(key_id)
    if not removed:
        sys.stderr.write("ipm keys revoke: no key with that id\n")
        return 1

    sys.stderr.write(
        f"revoked {key_id}; a running server stops accepting it within 30 s\n"
    )
    return 0


def deliver(args: argparse.Namespace) -> int:
    """The webhook dispatcher loop; with --once, drain what is due and exit."""
    app = ipm.open_sqlite(_existing(args.db), allow_networks=args.allow_network or ())
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("stopping on signal %s after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("delivering webhooks from %s", args.db)
    total = DeliveryReport()
    try:
        while not stop.is_set():
            try:
                report = app.deliver_pending()
            except StorageBusy:
                if args.once:
                    raise
                # Another writer held the database too long: a server keeps
                # serving, so the dispatcher keeps going too.
                log.warning("database busy; trying again in %s s", args.interval)
                stop.wait(args.interval)
                continue
            total += report
            if args.once:
                break
            if report.attempted == 0:
                stop.wait(args.interval)
    finally:
        app.close()

    log.info(
        "%d attempt(s): %d delivered, %d to retry, %d failed for good",
        total.attempted,
        total.delivered,
        total.retrying,
        total.failed,
    )
    return 0


class _Input(NamedTuple):
    """An import's bytes, ready to upload from the current position."""

    handle: IO[bytes]
    size: int
    label: str | None


@contextlib.contextmanager
def _opened_input(name: str) -> Iterator[_Input]:
    """FILE for reading, ``-`` being standard input, with its size.

    A pipe, a FIFO or a device has no size until it ends: it is copied to
    an unnamed temporary file first (gone when closed, even if the process
    dies). The copy stops one byte past the largest upload ipm takes, so
    an endless device is refused as too large instead of filling the disk.
    """
    with contextlib.ExitStack() as stack:
        if name == "-":
            if sys.stdin is None:
                raise CannotRun("there is no standard input to read")
            handle, label = sys.stdin.buffer, None
        else:
            handle = stack.enter_context(open(name, "rb"))
            label = _label(Path(name).name)[:256] or None
        if not _is_regular(handle):
            handle = stack.enter_context(_spooled(handle))
        size = os.fstat(handle.fileno()).st_size - handle.tell()

        yield _Input(handle, size, label)


def _is_regular(handle: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    except (OSError, ValueError):
        # No file descriptor at all (a stream object standing in for stdin).
        return False


@contextlib.contextmanager
def _spooled(source: IO[bytes]) -> Iterator[IO[bytes]]:
    limit = BulkOptions().max_upload_bytes + 1
    with tempfile.TemporaryFile(prefix="ipm-import-") as spool:
        copied = 0
        while copied < limit and (chunk := source.read(min(1 << 20, limit - copied))):
            spool.write(chunk)
            copied += len(chunk)
        spool.seek(0)

        yield spool


def import_file(args: argparse.Namespace) -> int:
    """Create (or with --job go on with), upload, commit and run an import.

    0 when every line was fine, 1 when lines failed, 2 when the job failed
    or the command could not run, 130 when interrupted.
    """
    started = time.monotonic()
    _check_import_paths(args)
    types = _event_types(args.event_types)
    db = _existing(args.db) if args.job else args.db
    with contextlib.ExitStack() as stack:
        # A new job's file is opened (or copied) before the job exists: one
        # that cannot be read (a folder, no permission) leaves no job.
        source = None if args.job else stack.enter_context(_opened_input(args.file))
        app = stack.enter_context(ipm.open_sqlite(db))
        _register(app, types, args.event_types)
        run = _ImportRun(args, app, stack)
        try:
            job = run.start(source)
            job = run.run(job, started)
        except KeyboardInterrupt:
            return run.interrupted()
        except BaseException as error:
            run.give_up(error)
            raise

        return run.finish(job)


class _ImportRun:
    """One ``ipm import``: its job, and whether giving up must cancel it."""

    def __init__(
        self,
        args: argparse.Namespace,
        app: ipm.Application,
        stack: contextlib.ExitStack,
    ) -> None:
        self.args = args
        self.org: str = args.org
        self.bulk = app.bulk
        self.stack = stack
        self.audit = Audit(actor=args.actor, context_source="ipm import")
        self.progress = _Progress(sys.stderr, "import") if sys.stderr.isatty() else None
        self.job_id: str | None = None
        # True from the job's creation until its run starts: a failure in
        # between cancels it (nothing of it is worth keeping).
        self.cancel_on_failure = False
        self.seconds = 0.0

    def start(self, source: _Input | None) -> Job:
        """The job ready to run (or ended): created, or found with --job."""
        if source is not None:
            return self._new(source)

        return self._resumed()

    def _new(self, source: _Input) -> Job:
        args = self.args
        job = self.bulk.create_import(
            self.org,
            target=args.target,
            mode=args.mode or "apply",
            max_failed_lines=args.max_failed_lines,
            filename=source.label,
            audit=self.audit,
        )
        self.job_id, self.cancel_on_failure = job.job_id, True
        job = self._upload(job, source)
        job = self.bulk.commit(self.org, job.job_id, job.revision, audit=self.audit)
        self.cancel_on_failure = False

        return job

    def _resumed(self) -> Job:
        args = self.args
        job = self.bulk.get(self.org, args.job)
        if job.job_type != "import":
            raise CannotRun(f"{job.job_id} is an export job, not an import")

        self.job_id = job.job_id
        if job.status == "awaiting_upload":
            if args.file is None:
                raise CannotRun(f"{job.job_id} awaits its upload: give the FILE")
            job = self._upload(job, self.stack.enter_context(_opened_input(args.file)))
        elif args.file is not None:
            sys.stderr.write(
                f"ipm import: {job.job_id} is {job.status} and has its upload; "
                f"{args.file} is not read\n"
            )

        if job.status == "uploaded" or (
            job.status == "validated" and args.mode == "apply"
        ):
            return self.bulk.commit(
                self.org, job.job_id, job.revision, mode=args.mode, audit=self.audit
            )
        if job.status == "processing" and args.mode not in (None, job.mode):
            raise CannotRun(
                f"{job.job_id} is running in {job.mode} mode; "
                f"--mode {args.mode} cannot change that"
            )

        return job

    def _upload(self, job: Job, source: _Input) -> Job:
        chunks = _file_chunks(source.handle, self.progress)
        return self.bulk.upload(
            self.org, job.job_id, chunks, declared_size=source.size, audit=self.audit
        )

    def run(self, job: Job, started: float) -> Job:
        """Run a started job to its end; an ended or validated one is kept."""
        if job.status != "processing":
            return job

        job = self.bulk.run(
            self.org,
            job.job_id,
            max_lines=self.args.slice_lines,
            audit=self.audit,
            progress=self.progress.job if self.progress else None,
        )
        self.seconds = time.monotonic() - started

        return job

    def finish(self, job: Job) -> int:
        """The summary (and the report, when lines failed); the exit status."""
        self._end_progress()
        report, trouble = self._report(job)
        # With --report - stdout carries the report alone.
        say = sys.stderr if self.args.report == "-" else sys.stdout
        say.write(_import_summary(job, self.seconds, report) + "\n")
        if trouble is not None:
            sys.stderr.write(f"ipm import: {trouble}\n")
        if job.status == "failed":
            return 2

        return 1 if job.counters.failed else 0

    def _report(self, job: Job) -> tuple[Path | None, str | None]:
        """Where the report went, or why it could not be written."""
        if not job.counters.failed:
            return None, None

        path = _report_path(self.args) or Path(f"{job.job_id}.errors.ndjson")
        try:
            _write_output(str(path), self.bulk.report(self.org, job.job_id))
        except OSError as error:
            # The import is done and its report is stored: only this copy
            # is missing, so the command still ran (exit 1, not 2).
            return None, (
                f"the report could not be written to {path} ({error}); it stays "
                f"available through bulk/job/get's report_url for {job.job_id}"
            )

        return path, None

    def give_up(self, error: BaseException) -> None:
        """A job this run created and could not start is cancelled; a job
        that goes on waiting is named with the command that resumes it."""
        if self.job_id is None:
            return

        self._end_progress()
        if self.cancel_on_failure:
            self._cancel(_reason(error))
            return
        try:
            job = self.bulk.get(self.org, self.job_id)
        except Exception:
            # The error being raised says more than this one would.
            log.debug("could not read job %s", self.job_id, exc_info=True)
            return
        if not job.terminal:
            sys.stderr.write(f"ipm import: {self._resume_hint(job)}\n")

    def interrupted(self) -> int:
        """Say what became of the job after Ctrl-C; 130."""
        self._end_progress()
        if self.job_id is None:
            sys.stderr.write("ipm import: interrupted\n")
        elif self.cancel_on_failure:
            self._cancel("interrupted before the import started")
            sys.stderr.write(
                f"ipm import: interrupted; job {self.job_id} cancelled before "
                "any line was imported\n"
            )
        else:
            job = self.bulk.get(self.org, self.job_id)
            sys.stderr.write(f"ipm import: interrupted; {self._resume_hint(job)}\n")

        return INTERRUPTED

    def _resume_hint(self, job: Job) -> str:
        state = f"job {job.job_id} is {job.status}"
        if job.status == "processing":
            state += f" after line {job.cursor.lines:,}"
        if job.terminal:
            return state

        words = ["ipm", "import", "--job", job.job_id, "--org", self.org]
        words += ["--db", self.args.db]
        command = " ".join(shlex.quote(word) for word in words)
        if job.status == "awaiting_upload":
            command += " FILE"

        return f"{state}; go on with: {command}"

    def _cancel(self, reason: str) -> None:
        assert self.job_id is not None
        if _cancel(self.bulk, self.org, self.job_id, reason, self.audit):
            self.cancel_on_failure = False

    def _end_progress(self) -> None:
        if self.progress is not None:
            self.progress.done()
            self.progress = None


def _cancel(bulk: Bulk, org: str, job_id: str, reason: str, audit: Audit) -> Job | None:
    """The job cancelled, or None when even that failed (the log says why)."""
    try:
        job = bulk.cancel(org, job_id, reason, audit=audit)
    except Exception:
        log.exception("could not cancel job %s", job_id)
        return None

    log.debug("job %s ended (%s): %s", job_id, job.status, reason)
    return job


def _reason(error: BaseException) -> str:
    """Why a job is given up, as ``Bulk.cancel`` takes it (1 to 1,000 characters)."""
    text = error.message if isinstance(error, ipm.IpmError) else str(error)

    return (text.strip() or type(error).__name__)[:1000]


def export_file(args: argparse.Namespace) -> int:
    """Create and run an export, then write its file to ``-o`` (``-``: stdout)."""
    filters = {
        "service": args.service,
        "action_prefix": args.action_prefix,
        "kpi_code": args.kpi_code,
        "bucket": args.bucket,
        "from_utc": args.from_utc,
        "to_utc": args.to_utc,
    }
    # With -o - stdout carries the NDJSON alone; the summary goes to stderr.
    say = sys.stderr if args.output == "-" else sys.stdout
    _check_output("-o", args.output, _protected(args.db))
    audit = Audit(actor=args.actor, context_source="ipm export")
    progress = _Progress(sys.stderr, "export") if sys.stderr.isatty() else None
    with ipm.open_sqlite(_existing(args.db)) as app:
        job = app.bulk.create_export(
            args.org, target=args.target, filters=filters, audit=audit
        )
        try:
            job = app.bulk.run(
                args.org,
                job.job_id,
                max_lines=args.slice_lines,
                audit=audit,
                progress=progress.job if progress else None,
            )
            if job.status == "completed":
                _write_output(args.output, app.bulk.download(args.org, job.job_id))
        except KeyboardInterrupt:
            # An export is cheap to redo: it does not wait to be resumed.
            if progress:
                progress.done()
            ended = _cancel(app.bulk, args.org, job.job_id, "interrupted", audit)
            state = "cancelled" if ended and ended.status == "failed" else "kept"
            lost = (
                "standard output is incomplete"
                if args.output == "-"
                else f"nothing written to {args.output}"
            )
            sys.stderr.write(
                f"ipm export: interrupted; export {job.job_id} {state}, {lost}\n"
            )
            return INTERRUPTED
        except BaseException as error:
            _cancel(app.bulk, args.org, job.job_id, _reason(error), audit)
            raise
    if progress:
        progress.done()

    result = job.result
    if job.status != "completed" or result is None:
        say.write(f"{job.job_id} {job.status}: nothing written\n")
        return 2

    say.write(
        f"{job.job_id} completed: {result.records:,} {_records(job.target)}, "
        f"{_size(result.size)}, sha256 {result.sha256}; "
        f"written to {_where(args.output)}\n"
    )
    return 0


def _where(output: str) -> str:
    return "standard output" if output == "-" else output


def _records(target: str) -> str:
    return "snapshots" if target == "kpis" else "events"


class _Progress:
    """A one-line progress bar on a terminal: lines, bytes, rate."""

    def __init__(self, stream: TextIO, verb: str) -> None:
        self._stream = stream
        self._verb = verb
        self._started = time.monotonic()
        self._shown = 0.0
        self._width = 0

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started

    def bytes(self, done: int) -> None:
        self._show(f"{self._verb}: uploading {_size(done)}")

    def job(self, job: Job) -> None:
        lines = job.cursor.lines
        rate = lines / max(self.seconds, 1e-6)
        text = f"{self._verb}: {lines:,} lines"
        total = job.upload.size if job.upload and not job.upload.gzip else None
        if total:
            share = min(job.cursor.position / total, 1.0)
            bar = "#" * int(share * 20)
            text = f"{self._verb} [{bar:<20}] {share:4.0%} {lines:,} lines"
            text += f", {_size(job.cursor.position)} of {_size(total)}"
        if job.job_type == "import":
            text += f", {job.counters.failed:,} failed"
        self._show(f"{text}, {rate:,.0f} lines/s", force=job.terminal)

    def done(self) -> None:
        self._stream.write("\n")
        self._stream.flush()

    def _show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < 0.1:
            return
        self._shown = now
        padding = " " * max(self._width - len(text), 0)
        self._width = len(text)
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()


def _file_chunks(handle: IO[bytes], progress: _Progress | None) -> Iterator[bytes]:
    done = 0
    while chunk := handle.read(1 << 20):
        done += len(chunk)
        if progress is not None:
            progress.bytes(done)
        yield chunk


def _write_output(name: str, chunks: Iterable[bytes]) -> None:
    """Write ``name`` whole or not at all; ``-`` is standard output.

    A regular file (or a new one) is written beside itself and moved into
    place at the end; through a symbolic link, beside the link's target,
    which it replaces (the link stays). A FIFO or a device cannot be
    replaced, so it is written to directly.
    """
    if name == "-":
        _copy(chunks, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return

    path = Path(name)
    if path.exists() and not path.is_file():
        with open(path, "wb") as handle:
            _copy(chunks, handle)
        return

    _replace(path.resolve(), chunks)


def _replace(target: Path, chunks: Iterable[bytes]) -> None:
    # A fresh name (O_EXCL) so that no file of the user's is overwritten
    # on the way; 0o666 lets the umask decide a new file's mode.
    partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as handle:
            _copy(chunks, handle)
        if target.exists():
            os.chmod(partial, stat.S_IMODE(target.stat().st_mode))
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _copy(chunks: Iterable[bytes], handle: IO[bytes]) -> None:
    for chunk in chunks:
        handle.write(chunk)


def _import_summary(job: Job, seconds: float, report: Path | None) -> str:
    c = job.counters
    text = (
        f"{job.job_id} {job.status}: {c.lines_read:,} lines, {c.ok:,} ok "
        f"({c.created:,} created, {c.updated:,} updated, {c.unchanged:,} unchanged, "
        f"{c.duplicate:,} duplicate), {c.failed:,} failed, {c.blank:,} blank"
    )
    if seconds:
        rate = c.lines_read / max(seconds, 1e-6)
        text += f" in {seconds:.1f} s ({rate:,.0f} lines/s)"
    if job.error is not None:
        text += f"; {job.error.code}: {job.error.message}"
    if report is not None:
        text += f"; report: {report}"

    return text


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000

    return f"{size:.1f} GB"


def openapi(args: argparse.Namespace) -> int:
    with ipm.open_memory() as app:
        document = app.openapi()
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")

    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipm", description="ipm: the integration plane of a retail platform."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser(
        "serve",
        help="run the HTTP API on the standard library server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _db_option(p, "SQLite file, created if absent (ipm.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8080, help="port to listen on")
    _allow_network(p)
    _event_types_option(p)
    p.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="full: every commit survives a power cut (an fsync per commit)",
    )
    p.set_defaults(run=serve)

    keys = verbs.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_verb", required=True
    )
    p = keys.add_parser("create", help="create an API key and print it")
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.add_argument(
        "--org",
        action="append",
        required=True,
        type=_orgcode,
        help="org code (repeat)",
    )
    p.add_argument("--actor", required=True)
    p.set_defaults(run=keys_create)

    p = keys.add_parser("list", help="print each key's id, actor and orgs (JSON)")
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.set_defaults(run=keys_list)

    p = keys.add_parser("revoke", help="delete an API key by its id")
    p.add_argument("key_id", help="the id from `ipm keys list` (ipm_<id>_...)")
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.set_defaults(run=keys_revoke)

    p = verbs.add_parser("deliver", help="send due webhook deliveries (a loop)")
    _db_option(p)
    p.add_argument("--once", action="store_true", help="drain what is due, then exit")
    p.add_argument(
        "--interval", type=_seconds, default=1.0, help="seconds between idle polls"
    )
    _allow_network(p)
    p.set_defaults(run=deliver)

    _import_parser(verbs)
    _export_parser(verbs)

    p = verbs.add_parser("openapi", help="print the OpenAPI 3.1 document")
    p.set_defaults(run=openapi)

    return parser


def _import_parser(verbs: Any) -> None:
    p = verbs.add_parser("import", help="import an NDJSON file (events or kpis)")
    p.add_argument(
        "file",
        nargs="?",
        help="NDJSON file, plain or gzip; - for standard input "
        "(may be left out with --job)",
    )
    p.add_argument(
        "--job",
        metavar="JOB_ID",
        help="go on with this import job instead of creating one",
    )
    _bulk_options(p)
    p.add_argument(
        "--mode",
        choices=("apply", "validate"),
        help="apply (default) or validate; with --job, apply promotes a validated job",
    )
    p.add_argument(
        "--max-failed-lines", type=_at_least(0), help="fail the job past this"
    )
    p.add_argument(
        "--report",
        help="where the error report goes (FILE.errors.ndjson, else "
        "JOB_ID.errors.ndjson; - for standard output)",
    )
    _event_types_option(p)

    def check(args: argparse.Namespace) -> None:
        if args.file is None and args.job is None:
            p.error("FILE is required (it may be left out only with --job)")

    p.set_defaults(run=import_file, check=check)


def _export_parser(verbs: Any) -> None:
    p = verbs.add_parser("export", help="export events or kpis to an NDJSON file")
    _bulk_options(p)
    p.add_argument(
        "-o", "--output", required=True, help="the file to write (- for stdout)"
    )
    p.add_argument("--service", help="events: only this service's events")
    p.add_argument("--action-prefix", help="events: only actions starting with this")
    p.add_argument("--kpi-code", help="kpis: only this KPI")
    p.add_argument("--bucket", help="kpis: only this bucket (hourly, daily, ...)")
    p.add_argument(
        "--from",
        dest="from_utc",
        help="occurred at (events) or bucket starting at (kpis) or after (RFC 3339)",
    )
    p.add_argument(
        "--to",
        dest="to_utc",
        help="occurred (events) or bucket starting (kpis) before (RFC 3339)",
    )
    p.set_defaults(run=export_file)


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    _db_option(parser)
    parser.add_argument("--org", required=True, type=_orgcode, help="org code")
    parser.add_argument("--target", choices=("events", "kpis"), default="events")
    parser.add_argument("--actor", default="cli", help="who, for the audit trail")
    parser.add_argument(
        "--slice-lines",
        type=_at_least(1, MAX_SLICE_LINES),
        default=10_000,
        help=f"lines per slice at most (1 to {MAX_SLICE_LINES:,})",
    )


def _existing(db: str) -> str:
    """``db`` if the file is there: reading or sending from a database that
    does not exist yet is a mistyped path or folder, not a new deployment."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no database at {db} (give --db)")

    return db


def _protected(db: str, *inputs: str) -> list[tuple[Path, str]]:
    """What an output must never replace: the database, its journals, inputs."""
    kept = [(Path(db), "the database")]
    kept += [(Path(f"{db}-{end}"), "a file of the database") for end in _JOURNALS]
    kept += [(Path(name), "the input file") for name in inputs if name != "-"]

    return kept


_JOURNALS = ("wal", "shm", "journal")


def _check_output(option: str, name: str, protected: list[tuple[Path, str]]) -> None:
    """Refuse, before any work, an output that cannot or must not be written."""
    if name == "-":
        return

    path = Path(name)
    if not name or path.name in ("", ".", "..") or path.is_dir():
        raise IsADirectoryError(f"{name!r} is not a file name to write")
    resolved = path.resolve()
    for kept, what in protected:
        if _same_file(resolved, kept):
            raise CannotRun(f"{option} {name} is {what}: it is not overwritten")
    db = protected[0][0]
    if resolved.is_relative_to(Path(f"{db}.blobs").resolve()):
        raise CannotRun(f"{option} {name} is inside the database's blobs folder")

    if not resolved.parent.is_dir():
        raise FileNotFoundError(f"no folder {resolved.parent} to write {name} in")


def _same_file(resolved: Path, other: Path) -> bool:
    if resolved == other.resolve():
        return True
    # Another name for the same file (a hard link).
    with contextlib.suppress(OSError):
        return os.path.samefile(resolved, other)

    return False


def _check_import_paths(args: argparse.Namespace) -> None:
    """The report may go where asked, never over the input or the database."""
    protected = _protected(args.db, *([args.file] if args.file else []))
    if args.report:
        _check_output("--report", args.report, protected)
    default = _report_path(args)
    if default is not None and not args.report:
        _check_output("the report", str(default), protected)


def _report_path(args: argparse.Namespace) -> Path | None:
    """--report, else FILE.errors.ndjson beside a regular FILE, else None.

    A name under /dev or /proc (``/dev/stdin``, a process substitution) is
    a stream even when it leads to a regular file: nothing is written there.
    """
    if args.report:
        return Path(args.report)
    if args.file is None or args.file == "-":
        return None
    path = Path(args.file)
    if path.absolute().parts[1:2] in (("dev",), ("proc",)) or not path.is_file():
        return None

    return Path(f"{args.file}.errors.ndjson")


def _label(name: str) -> str:
    """A file name as text for the job: bytes that are not UTF-8 replaced."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _event_types_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-types",
        metavar="FILE",
        help="JSON list of the host's event types ({service, action, schema, "
        "description?, op?}): payloads are checked against their schemas",
    )


def _event_types(path: str | None) -> Any:
    """The --event-types file, read strictly and checked before anything opens."""
    if path is None:
        return None

    # ipm's strict parser (duplicate keys, NaN, lone surrogates, depth), which
    # takes an object: the list is wrapped in one and its pointers unwrapped.
    parsed = parse_record(b'{"types":' + Path(path).read_bytes() + b"\n}")
    if isinstance(parsed, LineError):
        pointer = parsed.pointer.removeprefix("/types")
        raise InvalidRequest(
            f"--event-types {path} is not strict JSON: {parsed.message}",
            [Problem(pointer, parsed.message)],
        )
    types = parsed["types"]
    # Registered into a scratch catalog first: a bad schema stops the
    # command before it opens (or creates) the database.
    EventCatalog().register_all(types)

    return types


def _register(app: ipm.Application, types: Any, path: str | None) -> None:
    """The process's catalog: it is not stored, so each command loads it."""
    if types is None:
        return
    entries = app.catalog.register_all(types)
    log.info("%d event type(s) from %s", len(entries), path)


def _db_option(
    parser: argparse.ArgumentParser, text: str = "SQLite file (ipm.sqlite)"
) -> None:
    # Every command works on ipm serve's default file unless told otherwise.
    parser.add_argument("--db", default="ipm.sqlite", help=text)


def _at_least(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``least`` to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{value} is more than {most}")

        return value

    return parse


_port = _at_least(0, 65535)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    # 0, a negative number or NaN would poll without pause; inf never again.
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")

    return value


def _orgcode(text: str) -> str:
    if not ORGCODE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an org code ({ORGCODE_PATTERN.pattern})"
        )

    return text


def _network(text: str) -> str:
    """An argparse type: CIDR text, read as the delivery guard will read it."""
    try:
        NetworkPolicy.from_strings([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

    return text


def _allow_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        type=_network,
        help="a network webhook endpoints may use although it is private",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Why a command could not run goes to stderr as plain lines, in the
    # style of argparse's own errors; the log keeps its own format.
    name = " ".join(["ipm", args.verb, getattr(args, "keys_verb", "")]).strip()
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # The reader left (`ipm keys list | head`): nothing to say to it.
        # Output still buffered would fail again at exit; drop it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    except ipm.IpmError as error:
        lines = [f"{name}: {error.message} ({error.code})"]
        lines += [f"  {p.pointer or '/'}: {p.message}" for p in error.details]
        sys.stderr.write("\n".join(lines) + "\n")
        return 2
    except (OSError, sqlite3.Error, CannotRun) as error:
        # A busy port, a missing file or folder, a file that is not a
        # database: the user needs the reason, not a traceback. 2 says the
        # command could not run (1 is "it ran, and lines failed").
        sys.stderr.write(f"{name}: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted\n")
        return INTERRUPTED

    return code
