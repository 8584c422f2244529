"""The ``ipm`` command line: serve, keys, deliver, import, export, openapi.

Each verb is a small function over the library's public surface; the CLI
is a user of ipm like any host.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, BinaryIO, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import ipm
from ipm.domain.errors import InvalidRequest, Problem, StorageBusy
from ipm.domain.events import ORGCODE_PATTERN, Audit
from ipm.domain.jobs import Job
from ipm.domain.ndjson import LineError, parse_record
from ipm.usecases.catalog import EventCatalog
from ipm.usecases.delivery import DeliveryReport

log = logging.getLogger("ipm.cli")

Command = Callable[[argparse.Namespace], int]


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


def serve(args: argparse.Namespace) -> int:
    types = _event_types(args.event_types)
    app = ipm.open_sqlite(
        args.db,
        allow_networks=args.allow_network or (),
        synchronous=args.synchronous,
    )
    try:
        _register(app, types, args.event_types)
    except BaseException:
        app.close()
        raise
    server = make_server(
        args.host,
        args.port,
        app.wsgi_app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )

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
    # A whole key pasted by mistake names its id; its secret is never echoed.
    parts = args.key_id.split("_")
    key_id = parts[1] if parts[0] == "ipm" and len(parts) > 2 else args.key_id
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


def import_file(args: argparse.Namespace) -> int:
    """Create, upload, commit and run an import; 1 when lines failed."""
    started = time.monotonic()
    path = Path(args.file)
    if args.report:
        _writable_file(args.report)
    audit = Audit(actor=args.actor, context_source="ipm import")
    progress = _Progress(sys.stderr, "import") if sys.stderr.isatty() else None
    # The file is opened before the job exists: one that cannot be read (a
    # folder, no permission) leaves no job waiting for an upload forever.
    types = _event_types(args.event_types)
    with open(path, "rb") as handle, ipm.open_sqlite(args.db) as app:
        _register(app, types, args.event_types)
        size = os.fstat(handle.fileno()).st_size
        bulk = app.bulk
        job = bulk.create_import(
            args.org,
            target=args.target,
            mode=args.mode,
            max_failed_lines=args.max_failed_lines,
            filename=_label(path.name)[:256],
            audit=audit,
        )
        chunks = _file_chunks(handle, progress)
        job = bulk.upload(args.org, job.job_id, chunks, declared_size=size)
        job = bulk.commit(args.org, job.job_id, job.revision, audit=audit)
        job = bulk.run(
            args.org,
            job.job_id,
            max_lines=args.slice_lines,
            audit=audit,
            progress=progress.job if progress else None,
        )
        report = None
        if job.counters.failed:
            report = Path(args.report or f"{path}.errors.ndjson")
            _write(report, bulk.report(args.org, job.job_id))
    if progress:
        progress.done()

    seconds = time.monotonic() - started
    sys.stdout.write(_import_summary(job, seconds, report) + "\n")
    if job.status == "failed":
        return 2

    return 1 if job.counters.failed else 0


def export_file(args: argparse.Namespace) -> int:
    """Create and run an export, then write its file to ``-o``."""
    filters = {
        "service": args.service,
        "action_prefix": args.action_prefix,
        "kpi_code": args.kpi_code,
        "bucket": args.bucket,
        "from_utc": args.from_utc,
        "to_utc": args.to_utc,
    }
    audit = Audit(actor=args.actor, context_source="ipm export")
    progress = _Progress(sys.stderr, "export") if sys.stderr.isatty() else None
    _writable_file(args.output)
    with ipm.open_sqlite(_existing(args.db)) as app:
        job = app.bulk.create_export(
            args.org, target=args.target, filters=filters, audit=audit
        )
        job = app.bulk.run(
            args.org,
            job.job_id,
            max_lines=args.slice_lines,
            audit=audit,
            progress=progress.job if progress else None,
        )
        if job.status == "completed":
            _write(Path(args.output), app.bulk.download(args.org, job.job_id))
    if progress:
        progress.done()

    result = job.result
    if job.status != "completed" or result is None:
        sys.stdout.write(f"{job.job_id} {job.status}: nothing written\n")
        return 2

    sys.stdout.write(
        f"{job.job_id} completed: {result.records:,} {_records(job.target)}, "
        f"{_size(result.size)}, sha256 {result.sha256}; written to {args.output}\n"
    )
    return 0


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


def _file_chunks(handle: BinaryIO, progress: _Progress | None) -> Iterator[bytes]:
    done = 0
    while chunk := handle.read(1 << 20):
        done += len(chunk)
        if progress is not None:
            progress.bytes(done)
        yield chunk


def _write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write a file whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    partial.replace(path)


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
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
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
        "--interval", type=float, default=1.0, help="seconds between idle polls"
    )
    _allow_network(p)
    p.set_defaults(run=deliver)

    p = verbs.add_parser("import", help="import an NDJSON file (events or kpis)")
    p.add_argument("file", help="NDJSON file, plain or gzip")
    _bulk_options(p)
    p.add_argument("--mode", choices=("apply", "validate"), default="apply")
    p.add_argument(
        "--max-failed-lines", type=_at_least(0), help="fail the job past this"
    )
    p.add_argument("--report", help="where the error report goes (FILE.errors.ndjson)")
    _event_types_option(p)
    p.set_defaults(run=import_file)

    p = verbs.add_parser("export", help="export events or kpis to an NDJSON file")
    _bulk_options(p)
    p.add_argument("-o", "--output", required=True, help="the file to write")
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

    p = verbs.add_parser("openapi", help="print the OpenAPI 3.1 document")
    p.set_defaults(run=openapi)

    return parser


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    _db_option(parser)
    parser.add_argument("--org", required=True, type=_orgcode, help="org code")
    parser.add_argument("--target", choices=("events", "kpis"), default="events")
    parser.add_argument("--actor", default="cli", help="who, for the audit trail")
    parser.add_argument(
        "--slice-lines",
        type=_at_least(1),
        default=10_000,
        help="lines per slice at most",
    )


def _existing(db: str) -> str:
    """``db`` if the file is there: reading or sending from a database that
    does not exist yet is a mistyped path or folder, not a new deployment."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no database at {db} (give --db)")

    return db


def _writable_file(name: str) -> None:
    """Refuse an output path that cannot become a file, before any work."""
    path = Path(name)
    if not name or path.name in ("", ".", "..") or path.is_dir():
        raise IsADirectoryError(f"{name!r} is not a file name to write")
    if not path.resolve().parent.is_dir():
        raise FileNotFoundError(f"no folder {path.resolve().parent} to write {name} in")


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


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")

        return value

    return parse


def _orgcode(text: str) -> str:
    if not ORGCODE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an org code ({ORGCODE_PATTERN.pattern})"
        )

    return text


def _allow_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="a network webhook endpoints may use although it is private",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except ipm.IpmError as error:
        lines = [f"{name}: {error.message} ({error.code})"]
        lines += [f"  {p.pointer or '/'}: {p.message}" for p in error.details]
        sys.stderr.write("\n".join(lines) + "\n")
        return 2
    except (OSError, sqlite3.Error) as error:
        # A busy port, a missing file or folder, a file that is not a
        # database: the user needs the reason, not a traceback. 2 says the
        # command could not run (1 is "it ran, and lines failed").
        sys.stderr.write(f"{name}: {error}\n")
        return 2

    return code
