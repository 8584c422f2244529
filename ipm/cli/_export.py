"""``ipm export``: run an export and hand its file over to ``-o``.

An export is cheap to redo, so an interrupted one is cancelled; a finished
one hands its file over: once ``-o`` is written whole, ipm's copy is
discarded (until then it is the only copy, so a failed write keeps it).
One whose process was killed stays ``processing``, its committed parts
kept; ``--job`` goes on with it from the last part.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import ipm
from ipm.adapters.sqlite.core import anchored
from ipm.cli._common import (
    INTERRUPTED,
    CannotRun,
    existing_db,
    os_error_text,
    shell_word,
    shown,
    slices_of,
    work_done,
)
from ipm.cli._files import (
    Progress,
    check_output,
    protected_paths,
    say_aside,
    size_text,
    standard_output_name,
    write_output,
)
from ipm.cli._jobs import cancel_job, give_up_reason
from ipm.domain.errors import NotFound
from ipm.domain.events import Audit
from ipm.domain.jobs import Job
from ipm.usecases.bulk import Bulk

log = logging.getLogger(__name__)


def export_file(args: argparse.Namespace) -> int:
    """Create and run an export, write its file to ``-o`` (``-``: stdout),
    then discard ipm's copy.

    0 when the file was written, 2 when the export failed or ``-o`` could
    not be written (the export's file is then kept), 130 when interrupted
    (143 on SIGTERM).
    """
    args.output = standard_output_name("-o", args.output)
    check_output("-o", args.output, protected_paths(args.db))
    audit = Audit(actor=args.actor, context_source="ipm export")
    with ipm.open_sqlite(existing_db(args.db), bulk=slices_of(args)) as app:
        run = _ExportRun(args, app.bulk, audit)
        job = run.run()
        if job is None:
            return INTERRUPTED
        if job.status != "completed" or job.result is None:
            why = f" ({job.error.message})" if job.error is not None else ""
            sys.stderr.write(
                f"ipm export: {job.job_id} {job.status}{why}: nothing written\n"
            )
            return 2

        if run.handed_over(job):
            return run.written_before(job)

        return run.hand_over(job)


class _ExportRun:
    """One ``ipm export``: its job, run to its end, and its file handed over."""

    def __init__(self, args: argparse.Namespace, bulk: Bulk, audit: Audit) -> None:
        self.args = args
        self.org: str = args.org
        self.bulk = bulk
        self.audit = audit
        # With -o - stdout carries the NDJSON alone; the summary goes to stderr.
        self.say = sys.stderr if args.output == "-" else sys.stdout
        self.progress = Progress(sys.stderr, "export") if sys.stderr.isatty() else None

    def run(self) -> Job | None:
        """The export run to its end; None when interrupted (it is cancelled)."""
        args = self.args
        job = self._created() if args.job is None else self._resumed()
        if job.terminal:
            return job
        try:
            job = self.bulk.run(
                self.org,
                job.job_id,
                max_lines=args.slice_lines,
                audit=self.audit,
                progress=self.progress.job if self.progress else None,
            )
        except KeyboardInterrupt:
            self._end_progress()
            # An export is cheap to redo: it does not wait to be resumed.
            ended = cancel_job(
                self.bulk, self.org, job.job_id, "interrupted", self.audit
            )
            state = "cancelled" if ended and ended.status == "failed" else "kept"
            sys.stderr.write(
                f"ipm export: interrupted; export {job.job_id} {state}, "
                f"{self._lost()}\n"
            )
            return None
        except BaseException as error:
            cancel_job(
                self.bulk, self.org, job.job_id, give_up_reason(error), self.audit
            )
            raise
        self._end_progress()

        return job

    def _created(self) -> Job:
        args = self.args
        filters = {
            "service": args.service,
            "action_prefix": args.action_prefix,
            "kpi_code": args.kpi_code,
            "bucket": args.bucket,
            "from_utc": args.from_utc,
            "to_utc": args.to_utc,
        }

        job = self.bulk.create_export(
            self.org, target=args.target or "events", filters=filters, audit=self.audit
        )
        # As ipm import says it: a run killed outright (SIGKILL) leaves the
        # job, and this line is then the only place that names it.
        say_aside(
            self.progress,
            f"ipm export: job {job.job_id} started; if this run is killed, go on "
            f"with: {self._command(job)}",
        )

        return job

    def _resumed(self) -> Job:
        """The --job export, to run from its last part or to hand over."""
        job = self.bulk.get(self.org, self.args.job)
        if job.job_type != "export":
            raise CannotRun(f"{job.job_id} is an import job, not an export")

        return job

    def handed_over(self, job: Job) -> bool:
        """Whether ``job`` finished and its file went out already (the run
        that wrote it was killed before it said so, say)."""
        return job.status == "completed" and not self.bulk.has_file(job)

    def written_before(self, job: Job) -> int:
        """0 when -o already holds the handed-over file whole (the earlier
        run wrote it there), else 2 with what became of the file."""
        result = job.result
        assert result is not None
        output = self.args.output
        if output != "-" and _holds(Path(output), result.size, result.sha256):
            self.say.write(
                f"{job.job_id} completed: {_records(job.target, result.records)}, "
                f"{size_text(result.size)}, sha256 {result.sha256}; "
                f"{_where(output)} holds it already (written by the run that "
                "finished it)\n"
            )
            return 0

        sys.stderr.write(
            f"ipm export: export {job.job_id} was handed over already: its file "
            f"({_records(job.target, result.records)}, {size_text(result.size)}, "
            f"sha256 {result.sha256}) went to the -o of the run that finished it, "
            f"and ipm's copy is discarded; {_where(output)} does not hold it. "
            "Run ipm export again for a new snapshot\n"
        )
        return 2

    def hand_over(self, job: Job) -> int:
        """Write the file to -o, then discard ipm's copy of it.

        Until -o is written whole the copy is the only one: a write that
        fails keeps it (the job stays completed) and says where it is.
        """
        args = self.args
        command = self._command(job)
        kept = (
            f"export {job.job_id} stays completed and its file is kept: it can "
            "be downloaded through bulk/job/get, or written out (and ipm's copy "
            f"freed) with {command}"
        )
        try:
            chunks = self.bulk.download(self.org, job.job_id)
        except NotFound:
            # Another run (an ipm export --job racing this one) handed the
            # same export over first and discarded ipm's copy.
            sys.stderr.write(
                f"ipm export: export {job.job_id} was handed over by another "
                f"run meanwhile; {self._lost()}\n"
            )
            return 2
        try:
            write_output(args.output, chunks)
        except KeyboardInterrupt:
            sys.stderr.write(f"ipm export: interrupted; {self._lost()}; {kept}\n")
            return INTERRUPTED
        except BrokenPipeError:
            # The reader left: the exit status says so, stderr what stays.
            sys.stderr.write(f"ipm export: {kept}\n")
            raise
        except OSError as error:
            sys.stderr.write(
                f"ipm export: {_where(args.output)} could not be written "
                f"({os_error_text(error)}); {kept}\n"
            )
            return 2

        self._discard(job)
        result = job.result
        assert result is not None
        self.say.write(
            f"{job.job_id} completed: {_records(job.target, result.records)}, "
            f"{size_text(result.size)}, sha256 {result.sha256}; "
            f"written to {_where(args.output)}\n"
        )
        work_done()
        return 0

    def _command(self, job: Job) -> str:
        """The command that goes on with ``job``: whole, with the database
        made absolute, to run as printed from any folder (FILE is for the
        user to name)."""
        words = ["ipm", "export", "--job", job.job_id, "--org", self.org]
        words += ["--db", anchored(self.args.db)]

        return " ".join(shell_word(word) for word in words) + " -o FILE"

    def _discard(self, job: Job) -> None:
        try:
            self.bulk.discard_file(self.org, job.job_id)
        except Exception as error:
            # -o is written: the command did its work; only ipm's copy stays.
            log.debug("could not discard export %s", job.job_id, exc_info=True)
            sys.stderr.write(
                f"ipm export: ipm's copy of export {job.job_id} could not be "
                f"deleted ({error}); it stays in the database's blobs\n"
            )

    def _lost(self) -> str:
        output = self.args.output
        if output == "-":
            return "standard output is incomplete"
        if Path(output).exists() and not Path(output).is_file():
            # A FIFO or a device is written to directly (write_output):
            # its reader may have had part of it.
            return f"what was written to {shown(output)} is incomplete"

        return f"nothing written to {shown(output)}"

    def _end_progress(self) -> None:
        if self.progress is not None:
            self.progress.done()
            self.progress = None


def _where(output: str) -> str:
    return "standard output" if output == "-" else shown(output)


def _holds(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` is a regular file of exactly these bytes."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return False

    return digest == sha256


def _records(target: str, count: int) -> str:
    """``1 event``, ``12,000 snapshots``."""
    noun = "snapshot" if target == "kpis" else "event"

    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"
