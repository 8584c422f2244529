"""``ipm import``: create (or go on with), upload, commit and run an import.

Theory of operation. A command that cannot run exits 2 and leaves nothing
behind: paths are checked before any work, and a job this run created but
could not start is cancelled with the reason. Once an import runs, its
job is worth keeping: an interrupted run says how to go on with it
(``ipm import --job``) and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import NamedTuple

import ipm
from ipm.adapters.sqlite.core import anchored
from ipm.cli._common import (
    DEFAULT_ACTOR,
    INTERRUPTED,
    CannotRun,
    existing_db,
    lines_text,
    read_event_types,
    register_event_types,
    shell_word,
    shown,
    slices_of,
    work_done,
)
from ipm.cli._files import (
    Input,
    Progress,
    check_output,
    file_chunks,
    opened_input,
    protected_paths,
    say_aside,
    standard_output_name,
    write_output,
)
from ipm.cli._jobs import cancel_job, give_up_reason
from ipm.domain.errors import InvalidRequest
from ipm.domain.events import Audit
from ipm.domain.jobs import Job

log = logging.getLogger(__name__)


def import_file(args: argparse.Namespace) -> int:
    """Create (or with --job go on with), upload, commit and run an import.

    0 when every line was fine, 1 when lines failed, 2 when the job failed
    or the command could not run, 130 when interrupted (143 on SIGTERM).
    """
    started = time.monotonic()
    _check_import_paths(args)
    types = read_event_types(args.event_types)
    db = existing_db(args.db) if args.job else args.db
    with contextlib.ExitStack() as stack:
        # A new job's file is opened (or copied) before the job exists: one
        # that cannot be read (a folder, no permission) leaves no job.
        source = None if args.job else stack.enter_context(opened_input(args.file))
        app = stack.enter_context(ipm.open_sqlite(db, bulk=slices_of(args)))
        register_event_types(app, types, args.event_types)
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
        self.progress = Progress(sys.stderr, "import") if sys.stderr.isatty() else None
        self.job_id: str | None = None
        # True from the job's creation until its run starts: a failure in
        # between cancels it (nothing of it is worth keeping).
        self.cancel_on_failure = False
        # This run's part of the job, for its rate; None when nothing ran.
        self.ran: _Ran | None = None

    def start(self, source: Input | None) -> Job:
        """The job ready to run (or ended): created, or found with --job."""
        if source is not None:
            return self._new(source)

        return self._resumed()

    def _new(self, source: Input) -> Job:
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
        # Said now, not only at the end: a run killed outright (SIGKILL, a
        # lost machine) leaves the job processing, and this line is then
        # the only place that names it.
        self._note(
            f"ipm import: job {job.job_id} started; if this run is cut short, "
            f"go on with: {self._command(job)}"
        )

        return job

    def _note(self, line: str) -> None:
        say_aside(self.progress, line)

    def _resumed(self) -> Job:
        args = self.args
        job = self.bulk.get(self.org, args.job)
        if job.job_type != "import":
            raise CannotRun(f"{job.job_id} is an export job, not an import")

        # Refused before the job is this run's: the one line says it all,
        # with the command that works.
        if job.status == "awaiting_upload" and args.file is None:
            raise CannotRun(
                f"{job.job_id} awaits its upload: give the FILE "
                f"({self._command(job)} FILE)"
            )
        if job.status == "processing" and args.mode not in (None, job.mode):
            raise CannotRun(
                f"{job.job_id} is running in {job.mode} mode; --mode {args.mode} "
                f"cannot change that (go on with: {self._command(job)})"
            )

        self.job_id = job.job_id
        if job.status == "awaiting_upload":
            job = self._upload(job, self.stack.enter_context(opened_input(args.file)))
        elif args.file is not None:
            sys.stderr.write(f"ipm import: {_not_read(job, args.file)}\n")

        if job.status == "uploaded" or (
            job.status == "validated" and args.mode == "apply"
        ):
            return self.bulk.commit(
                self.org, job.job_id, job.revision, mode=args.mode, audit=self.audit
            )

        return job

    def _upload(self, job: Job, source: Input) -> Job:
        chunks = file_chunks(source.handle, self.progress)
        try:
            return self.bulk.upload(
                self.org,
                job.job_id,
                chunks,
                declared_size=source.size,
                audit=self.audit,
            )
        except InvalidRequest as error:
            if source.size is None or not any(
                p.pointer == "/headers/content-length" for p in error.details
            ):
                raise
            # Said in the user's words: they sent no header, the file changed.
            raise CannotRun(
                f"{shown(self.args.file)} changed while it was read (it had "
                f"{source.size:,} bytes when the import started); import it "
                "again once nothing writes to it"
            ) from None

    def run(self, job: Job, started: float) -> Job:
        """Run a started job to its end; an ended or validated one is kept."""
        if job.status != "processing":
            return job

        before = job.counters.lines_read
        if self.progress is not None:
            self.progress.count_from(job.cursor.lines)
        job = self.bulk.run(
            self.org,
            job.job_id,
            max_lines=self.args.slice_lines,
            audit=self.audit,
            progress=self.progress.job if self.progress else None,
        )
        self.ran = _Ran(before, time.monotonic() - started)

        return job

    def finish(self, job: Job) -> int:
        """The summary (and the report, when lines failed); the exit status."""
        self._end_progress()
        report, trouble = self._report(job)
        # With --report - stdout carries the report alone.
        say = sys.stderr if self.args.report == "-" else sys.stdout
        say.write(_import_summary(job, self.ran, report) + "\n")
        if job.status == "validated":
            apply = self._command(job, "--mode", "apply")
            say.write(f"nothing was written; to apply it: {apply}\n")
        if trouble is not None:
            sys.stderr.write(f"ipm import: {trouble}\n")
        work_done()
        if job.status == "failed":
            return 2

        return 1 if job.counters.failed else 0

    def _report(self, job: Job) -> tuple[Path | None, str | None]:
        """Where the report went, or why it could not be written."""
        if not job.counters.failed:
            return None, None

        path = _report_path(self.args) or Path(f"{job.job_id}.errors.ndjson")
        try:
            write_output(str(path), self.bulk.report(self.org, job.job_id))
        except OSError as error:
            # The import is done and its report is stored: only this copy
            # is missing, so the command still ran (exit 1, not 2).
            return None, (
                f"the report could not be written to {shown(path)} ({error}); it stays "
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
            if self._cancel(give_up_reason(error)):
                # The job stays, ended: the refusal below may say that
                # nothing of its request was kept, which is about the upload.
                sys.stderr.write(
                    f"ipm import: job {self.job_id} cancelled before any line "
                    "was imported\n"
                )
            else:
                # The database refused the cancel too (busy, say): the job
                # waits, so say which it is and how to go on with it.
                sys.stderr.write(
                    f"ipm import: job {self.job_id} could not be cancelled and "
                    f"waits for its upload; go on with: {self._command_for_id()}"
                    " FILE\n"
                )
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

        command = self._command(job)
        if job.status == "awaiting_upload":
            command += " FILE"

        return f"{state}; go on with: {command}"

    def _command(self, job: Job, *options: str) -> str:
        return self._command_words(job.job_id, *options)

    def _command_words(self, job_id: str, *options: str) -> str:
        """The ``ipm import --job`` that goes on with the job as this run would.

        The event types are named again: the catalog is not stored, and a
        run without them would not check the payloads.
        """
        args = self.args
        words = ["ipm", "import", "--job", job_id, *options]
        # Paths made absolute: the command may be run from another folder
        # (a supervisor's, after the machine came back).
        words += ["--org", self.org, "--db", anchored(args.db)]
        if args.event_types:
            words += ["--event-types", anchored(args.event_types)]
        if args.actor != DEFAULT_ACTOR:
            # Joined with "=": a name that starts with "-" would otherwise
            # be read as an option of its own, and the command refused.
            words += [f"--actor={args.actor}"]
        # Where this run writes the report (beside FILE, or JOB_ID.errors.
        # ndjson here by default), since the command has no FILE and may
        # run in another folder.
        if args.report == "-":
            words += ["--report", "-"]
        else:
            report = _report_path(args) or Path(f"{job_id}.errors.ndjson")
            words += ["--report", anchored(str(report))]

        return " ".join(shell_word(word) for word in words)

    def _cancel(self, reason: str) -> bool:
        assert self.job_id is not None
        if cancel_job(self.bulk, self.org, self.job_id, reason, self.audit):
            self.cancel_on_failure = False
            return True

        return False

    def _command_for_id(self) -> str:
        assert self.job_id is not None
        return self._command_words(self.job_id)

    def _end_progress(self) -> None:
        if self.progress is not None:
            self.progress.done()
            self.progress = None


def _not_read(job: Job, file: str) -> str:
    """Why --job's FILE is not read: the job has its upload, or has ended
    (and its upload is deleted)."""
    if job.terminal:
        return f"{job.job_id} has ended ({job.status}); {file} is not read"

    return f"{job.job_id} is {job.status} and has its upload; {file} is not read"


class _Ran(NamedTuple):
    """What one ``ipm import`` run did to its job: where it began, how long."""

    lines_before: int
    seconds: float


def _import_summary(job: Job, ran: _Ran | None, report: Path | None) -> str:
    text = f"{job.job_id} {job.status}: {_counts(job)}{_pace(job, ran)}"
    if job.error is not None:
        text += f"; {job.error.code}: {job.error.message}"
    if report is not None:
        text += f"; report: {shown(report)}"

    return text


def _counts(job: Job) -> str:
    c = job.counters
    # A validate run writes nothing: its counts are what apply would do.
    if job.mode == "validate":
        split = (
            f"would create {c.created:,}, update {c.updated:,}, "
            f"leave {c.unchanged:,} unchanged, skip {c.duplicate:,} duplicate"
        )
    else:
        split = (
            f"{c.created:,} created, {c.updated:,} updated, "
            f"{c.unchanged:,} unchanged, {c.duplicate:,} duplicates skipped"
        )

    return (
        f"{lines_text(c.lines_read)}, {c.ok:,} ok ({split}), "
        f"{c.failed:,} failed, {c.blank:,} blank"
    )


def _pace(job: Job, ran: _Ran | None) -> str:
    """This run's time and rate: the lines it read, not the whole job's."""
    if ran is None:
        return ""

    lines = job.counters.lines_read - ran.lines_before
    # Two decimals under a second: "in 0.0 s (313 lines/s)" read as a
    # division by nothing. The rate is of the time shown, so the two agree
    # ("1 line in 0.05 s (22 lines/s)" did not).
    shown = f"{ran.seconds:.{2 if ran.seconds < 1 else 1}f}"
    text = f" in {shown} s"
    if ran.lines_before:
        # A resumed job: earlier runs read the first lines.
        text = f"; this run: {lines_text(lines)}{text}"
    if lines > 0 and float(shown) > 0:
        text += f" ({lines / float(shown):,.0f} lines/s)"

    return text


def _check_import_paths(args: argparse.Namespace) -> None:
    """The report may go where asked, never over the input or the database."""
    protected = protected_paths(args.db, *([args.file] if args.file else []))
    if args.report:
        args.report = standard_output_name("--report", args.report)
        check_output("--report", args.report, protected)
    default = _report_path(args)
    if default is not None and not args.report:
        check_output("the report", str(default), protected, asked=False)


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
