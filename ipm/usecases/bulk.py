"""Bulk jobs: the use-cases behind the ``/bulk`` routes and the CLI verbs.

Theory of operation. An import is created ``awaiting_upload`` with a
signed upload link; the bytes go to the :class:`~ipm.ports.BlobStore`
(their size and SHA-256 recorded, a gzip upload unpacked once into a
second blob, a UTF-16/32 file refused there and then). ``commit`` starts
the job; every ``continue`` runs one bounded slice
(:mod:`ipm.usecases.bulk_import`) and commits it in one transaction with
the job's cursor, so a killed worker leaves a job that the next
``continue`` — from any process — resumes. No daemon is needed:
:meth:`Bulk.run` is the helper that drives a job to its end.

An export is created ``pending`` with its high-water mark fixed; each
``continue`` writes one part (:mod:`ipm.usecases.bulk_export`) and the last
one assembles the file. Every status change is recorded as ipm's own
event in the same transaction (``bulk.job.status_changed``, and
``bulk.job.finished`` at the end), so integrators may subscribe instead
of polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import attrs

from ipm.domain.errors import (
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    NotImplementedYet,
    Problem,
    check_revision,
)
from ipm.domain.events import NO_AUDIT, Audit, AuditLike, check_orgcode
from ipm.domain.jobs import (
    ACTIVE,
    Counters,
    Failure,
    Job,
    LinkPurpose,
    Mode,
    Target,
    Upload,
    statuses_for,
    wire_filters,
)
from ipm.domain.jsoncodec import dumps, is_unicode
from ipm.domain.lifecycle import IMPORT_JOB
from ipm.domain.ndjson import (
    UnsupportedEncoding,
)
from ipm.ports import (
    BLOB_MISSING,
    BlobStore,
    Clock,
    Ids,
    Storage,
    UnitOfWork,
)
from ipm.schemas import check_arguments
from ipm.usecases.bulk_export import (
    check_filters,
    file_key,
    part_key,
    read_export_slice,
)
from ipm.usecases.bulk_files import JobFiles, PartsChanged
from ipm.usecases.bulk_import import (
    SLICE_DELIVERIES,
    EventLines,
    KpiLines,
    LineTarget,
    SliceLimits,
    action_lines,
    collection_paused,
    lines_within_deliveries,
    read_slice,
    settle,
)
from ipm.usecases.bulk_links import (
    Link,
    PresigningBlobStore,
    linked_org,
    make_link,
    presigned_upload_key,
)
from ipm.usecases.bulk_options import (
    BulkOptions,
    check_bound,
)
from ipm.usecases.bulk_sweeps import PAGE, Sweeps
from ipm.usecases.bulk_upload import (
    Inspected,
    inspect_upload,
    limited,
    measure,
    too_large,
)
from ipm.usecases.cdc import Recorder, checked_audit
from ipm.usecases.kpis import Kpis

log = logging.getLogger(__name__)


Progress = Callable[[Job], None]


class Bulk:
    def __init__(
        self,
        *,
        storage: Storage,
        recorder: Recorder,
        clock: Clock,
        ids: Ids,
        blobs: BlobStore,
        link_key: bytes | Callable[[], bytes],
        options: BulkOptions | None = None,
        kpis: Callable[[], Kpis | None] = lambda: None,
    ) -> None:
        self.storage = storage
        self.recorder = recorder
        self.clock = clock
        self.ids = ids
        self.blobs = blobs
        self.files = JobFiles(blobs)
        self.options = options or BulkOptions()
        # A callable is asked once, when a link is first made or checked: a
        # process that makes none (a CLI command) leaves the key unmade.
        self._link_key_source = link_key
        self._link_key_made: bytes | None = None
        self._kpis = kpis
        self._targets: dict[str, LineTarget] = {
            "events": EventLines(recorder, ids, clock),
        }
        self._sweeps = Sweeps(
            storage=storage,
            clock=clock,
            blobs=blobs,
            files=self.files,
            options=self.options,
            changed=self._changed,
        )

    # -- imports ---------------------------------------------------------------

    def create_import(
        self,
        orgcode: str,
        *,
        target: Target = "events",
        mode: Mode = "apply",
        max_failed_lines: int | None = None,
        filename: str | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """A new import, ``awaiting_upload``."""
        job = self._new_import(orgcode, target, mode, max_failed_lines, filename)

        return self._create(job, audit)

    def create_upload(
        self,
        orgcode: str,
        base_url: str,
        *,
        target: Target = "events",
        mode: Mode = "apply",
        max_failed_lines: int | None = None,
        filename: str | None = None,
        audit: AuditLike | None = None,
    ) -> tuple[Job, Link]:
        """A new import and the link its bytes are to be put to.

        The link is made before the job is stored: if it cannot be (a
        presigning store that fails), nothing is kept, not a job waiting
        for an upload whose id no client was told.
        """
        job = self._new_import(orgcode, target, mode, max_failed_lines, filename)
        link = self.link("upload", job, base_url)

        return self._create(job, audit), link

    def _new_import(
        self,
        orgcode: str,
        target: Target,
        mode: Mode,
        max_failed_lines: int | None,
        filename: str | None,
    ) -> Job:
        check_orgcode(orgcode)
        check_arguments(
            "BulkImportCreate",
            always={"target": target, "mode": mode},
            max_failed_lines=max_failed_lines,
            filename=filename,
        )
        self._target(target)
        if max_failed_lines is not None:
            # JSON Schema calls 3.0 an integer: keep the job's bound an int.
            max_failed_lines = int(max_failed_lines)
        return Job.new_import(
            self.ids("job"),
            orgcode,
            self.clock(),
            target=target,
            mode=mode,
            max_failed_lines=max_failed_lines,
            filename=filename,
        )

    def upload(
        self,
        orgcode: str,
        job_id: str,
        chunks: Iterable[bytes] | bytes,
        *,
        declared_size: int | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """Store the bytes of an import (chunks, or bytes whole); ``uploaded``.

        More than ``max_upload_bytes`` (declared or actually sent, packed or
        unpacked) is a 413 and stores nothing; a UTF-16/32 file is refused
        whole; either way the job keeps waiting for a good upload.
        """
        job = self.get(orgcode, job_id)
        job.check_move("uploaded")
        check_bound("declared_size", declared_size, 0, None)
        limit = self.options.max_upload_bytes
        if declared_size is not None and declared_size > limit:
            raise too_large(limit)

        raw_key = f"jobs/{job_id}/{self.ids('upload')}"
        body = limited(chunks, limit, declared=declared_size)
        size, sha256 = self.blobs.write(raw_key, body)
        try:
            if declared_size is not None and size != declared_size:
                # An adapter that let a short body through must not store
                # a cut file as the upload.
                raise InvalidRequest(
                    f"the upload has {size} bytes, not the {declared_size} declared",
                    [Problem("/headers/content-length", "differs from the body")],
                )
            try:
                found = inspect_upload(
                    self.blobs, raw_key, self.options.max_upload_bytes, size
                )
            except BLOB_MISSING:
                # The job ended (cancelled, expired) while its bytes were
                # stored, and its end deleted them: refused as a late upload.
                self.get(orgcode, job_id).check_move("uploaded")
                raise
            return self._uploaded(job, size, sha256, found, audit)
        except BaseException:
            self.files.delete(raw_key, f"{raw_key}.ndjson")
            raise

    def commit(
        self,
        orgcode: str,
        job_id: str,
        expected_revision: str | None,
        *,
        mode: Mode | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """Start an uploaded job, or promote a validated one (to ``apply``)."""
        check_arguments(
            "BulkImportCommit",
            job_id=job_id,
            expected_revision=expected_revision,
            mode=mode,
        )
        job = self._of_type(self.get(orgcode, job_id), "import")
        if job.terminal and expected_revision is not None:
            # No revision could start it: say that, not that one is stale.
            job.check_move("processing")
        check_revision(job.revision, expected_revision, "job")
        if job.status == "awaiting_upload":
            job = self._adopt_presigned_upload(job, audit)

        with self.storage.unit_of_work() as uow:
            current = self._load(uow, orgcode, job_id)
            check_revision(current.revision, job.revision, "job")
            started = current.started(self.clock(), mode)
            if current.status == "validated":
                uow.jobs.clear_run(job_id)
            uow.jobs.save(started)
            self._changed(uow, current, started, audit)
            uow.commit()

        return started

    def continue_import(
        self,
        orgcode: str,
        job_id: str,
        *,
        max_lines: int | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """Process the next slice of a started import; its job afterwards."""
        check_arguments("BulkImportContinue", job_id=job_id, max_lines=max_lines)
        # The slice's lines that name no audit record this one: check it first.
        audit = NO_AUDIT if audit is None else checked_audit(audit)
        job = self._of_type(self.get(orgcode, job_id), "import")
        if job.status in ("awaiting_upload", "uploaded"):
            # Named as the lifecycle names an illegal move: the state, the
            # move and the moves allowed from it.
            allowed = ", ".join(IMPORT_JOB.allowed(job.status))
            waiting = job.status == "awaiting_upload"
            first = "upload its file" if waiting else "commit it"
            raise InvalidTransition(
                f"{IMPORT_JOB.name}: cannot continue from {job.status!r} ({first} "
                f"first); allowed from {job.status!r}: {allowed}",
                [Problem("/job_id", f"status is {job.status}")],
            )
        if job.status != "processing":
            return job

        target = self._target(job.target)
        with collection_paused():
            return self._slice(job, target, max_lines, audit)

    def _slice(
        self,
        job: Job,
        target: LineTarget,
        max_lines: int | None,
        audit: Audit,
    ) -> Job:
        orgcode, job_id = job.orgcode, job.job_id
        limits = self._limits(max_lines)
        while True:
            try:
                chunks = self._data(job)
                read = read_slice(job, chunks, target, limits, audit)
            except UnsupportedEncoding as error:
                failure = Failure("unsupported_encoding", error.message)
                return self._fail(job, failure, audit)
            except BLOB_MISSING:
                failure = Failure("upload_missing", "the uploaded file is gone")
                return self._fail(job, failure, audit)
            changed = job.data_changed(read.data_end) if read.exhausted else None
            if changed is not None:
                return self._fail(job, changed, audit)
            if job.mode != "validate" and read.end.lines - read.start.lines > 1:
                # Read again up to the line that keeps the slice's webhook
                # deliveries within bounds (once: those lines fit then).
                with self.storage.unit_of_work(write=False) as uow:
                    webhooks = uow.webhooks.queuing(orgcode)
                cut = lines_within_deliveries(webhooks, read, SLICE_DELIVERIES)
                if cut is not None:
                    limits = attrs.evolve(limits, lines=cut)
                    continue

            with self.storage.unit_of_work() as uow:
                current = self._load(uow, orgcode, job_id)
                if current.cursor != job.cursor or current.status != "processing":
                    return current
                outcome = settle(uow, current, read, target)
                cut = current.lines_to_the_bound(outcome.actions)
                if cut is not None and cut < limits.lines:
                    # A line refused only when written (a reused event id)
                    # crossed max_failed_lines with lines after it settled:
                    # nothing is committed, and the slice runs again up to
                    # that line, so the job stops where the bound was crossed.
                    limits = attrs.evolve(limits, lines=cut)
                    continue
                uow.jobs.add_report(job_id, outcome.report)
                if outcome.actions:
                    uow.jobs.add_actions(job_id, read.start.lines + 1, outcome.actions)
                advanced = current.advance(read.end, outcome.counters, self.clock())
                ended = self._end_of_slice(advanced, read.exhausted)
                uow.jobs.save(ended)
                self._changed(uow, advanced, ended, audit)
                uow.commit()
            break

        log.debug("job %s: slice to line %d", job_id, ended.cursor.lines)
        if ended.terminal:
            self.files.forget_upload(ended)
        return ended

    # -- exports ---------------------------------------------------------------

    def create_export(
        self,
        orgcode: str,
        *,
        target: Target = "events",
        filters: dict[str, Any] | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """A new export, ``pending``, whose snapshot ends at the last event now.

        A ``kpis`` export is the snapshots as of that same mark (see
        :mod:`ipm.usecases.bulk_export`).
        """
        check_orgcode(orgcode)
        filters = wire_filters(filters)
        check_arguments(
            "BulkExportCreate", always={"target": target, "filters": filters}
        )
        checked = check_filters(target, filters)

        with self.storage.unit_of_work() as uow:
            job = Job.new_export(
                self.ids("job"),
                orgcode,
                self.clock(),
                target=target,
                filters=checked,
                high_water_mark=uow.events.last_sequence(),
            )
            self._add(uow, job, audit)
            uow.commit()

        return job

    def continue_export(
        self,
        orgcode: str,
        job_id: str,
        *,
        max_lines: int | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        """Write the next part of an export; the last one finishes the file."""
        check_arguments("BulkExportContinue", job_id=job_id, max_lines=max_lines)
        job = self._of_type(self.get(orgcode, job_id), "export")
        if job.terminal:
            if job.status == "completed":
                self.files.drop_leftover_parts(job)
            return job
        if job.status == "pending":
            job = self._move(job, "processing", audit)
        mark = job.high_water_mark
        if mark is not None and job.cursor.slices and job.cursor.position >= mark:
            # Every part is committed (its last one reached the mark); only
            # the join is left, maybe after a worker died before it.
            return self._finish_export(job, audit)

        limits = self._limits(max_lines)
        try:
            with self.storage.unit_of_work(write=False) as uow:
                piece = read_export_slice(
                    uow, job, limits.lines, limits.seconds, limits.bytes
                )
        except InvalidRequest as error:
            # Filters stored before they were checked as they are now: the
            # job can never finish, so it fails instead of staying stuck.
            failure = Failure("invalid_filters", error.message)
            return self._fail(job, failure, audit)

        with self.storage.unit_of_work() as uow:
            current = self._load(uow, orgcode, job_id)
            if current.cursor != job.cursor or current.status != "processing":
                return current
            # Written under the write lock, after the cursor check: a worker
            # that lost the race for this slice (whose part may be longer or
            # shorter) returns above and never replaces the committed part.
            self.blobs.write(part_key(job_id, job.cursor.slices), iter([piece.data()]))
            delta = Counters(records_written=len(piece.lines))
            advanced = current.advance(piece.end, delta, self.clock())
            uow.jobs.save(advanced)
            uow.commit()

        if not piece.exhausted:
            return advanced
        return self._finish_export(advanced, audit)

    def _finish_export(self, job: Job, audit: AuditLike | None) -> Job:
        """Join the committed parts into the file, then complete the job.

        The join runs outside the write lock (a big export takes seconds).
        Killed before completing, the job stays ``processing`` with every
        part committed and its cursor at the mark: the next ``continue``
        joins them. Two finishers join the same parts into the same bytes,
        and nothing moves the cursor meanwhile, so one of them completes.
        """
        try:
            result = self.files.assemble(job.job_id, job.cursor)
        except PartsChanged as changed:
            current = self.get(job.orgcode, job.job_id)
            if current.cursor != job.cursor or current.status != "processing":
                return current
            failure = Failure(
                "parts_changed",
                f"{changed}: a part of the export file was changed behind "
                "ipm's back; create the export again",
            )
            failed = self._fail(current, failure, audit)
            self.files.delete_export_files(failed)
            return failed
        except BLOB_MISSING:
            # Another worker finished this export first and let go of its
            # parts (its file has the same bytes): answer the job as it is.
            current = self.get(job.orgcode, job.job_id)
            if current.cursor != job.cursor or current.status != "processing":
                return current
            # Still this job's to finish, and a part is gone: deleted behind
            # ipm's back. No continue could ever join the file.
            failure = Failure(
                "parts_missing",
                "a part of the export file was deleted before the parts were "
                "joined; create the export again",
            )
            failed = self._fail(current, failure, audit)
            self.files.delete_export_files(failed)
            return failed

        with self.storage.unit_of_work() as uow:
            current = self._load(uow, job.orgcode, job.job_id)
            stale = current.cursor != job.cursor or current.status != "processing"
            if not stale:
                ended = current.move_to("completed", self.clock(), result=result)
                uow.jobs.save(ended)
                self._changed(uow, current, ended, audit)
                uow.commit()
        if stale:
            if current.status == "failed":
                # Cancelled while this join ran: the file it just wrote (and
                # the parts) would otherwise outlive the job.
                self.files.delete_export_files(current)
            return current

        self.files.delete_parts(job.job_id, ended.cursor.slices)
        return ended

    # -- either ----------------------------------------------------------------

    def continue_job(
        self,
        orgcode: str,
        job_id: str,
        *,
        max_lines: int | None = None,
        audit: AuditLike | None = None,
    ) -> Job:
        job = self.get(orgcode, job_id)
        step = (
            self.continue_import if job.job_type == "import" else self.continue_export
        )

        return step(orgcode, job_id, max_lines=max_lines, audit=audit)

    def run(
        self,
        orgcode: str,
        job_id: str,
        *,
        max_lines: int | None = None,
        audit: AuditLike | None = None,
        progress: Progress | None = None,
    ) -> Job:
        """Continue a started job until it stops: finished, validated or failed."""
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")  # before a slice runs
        while True:
            job = self.continue_job(orgcode, job_id, max_lines=max_lines, audit=audit)
            if progress is not None:
                progress(job)
            if job.status not in ("processing", "pending"):
                return job

    def cancel(
        self,
        orgcode: str,
        job_id: str,
        reason: str,
        *,
        audit: AuditLike | None = None,
    ) -> Job:
        """End a job that will not be finished: ``failed``, code ``cancelled``.

        For the host or tool that drives a job and gives up on it (an upload
        it could not make, a run it was told to stop): the job leaves the
        active list and its upload is deleted, instead of waiting forever.
        What a slice already committed stays. An ended job is returned as
        it is.
        """
        if (
            type(reason) is not str
            or not reason.strip()
            or len(reason) > 1000
            or not is_unicode(reason)
        ):
            raise InvalidRequest(
                "reason must be text of 1 to 1,000 characters",
                [Problem("/reason", "text of 1 to 1,000 characters")],
            )

        job = self._fail(self.get(orgcode, job_id), Failure("cancelled", reason), audit)
        if job.job_type == "export" and job.status == "failed":
            self.files.delete_export_files(job)

        return job

    def expire_idle(
        self,
        *,
        audit: AuditLike | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """End the jobs that waited on their client too long; how many.

        An import still ``awaiting_upload``, ``uploaded`` but never
        committed, or ``validated`` but never promoted, or an export still
        ``pending`` or ``processing``, unchanged for
        ``BulkOptions.idle_seconds``, becomes ``failed`` with
        ``error.code`` ``expired``, and its upload or unfinished parts are
        deleted: an abandoned job would otherwise keep its bytes on disk
        for ever. Imports ``processing`` are left alone (they are
        resumable, and ``continue`` is their client's to call). Every org
        is swept; ``ipm serve`` calls this when it starts and then hourly,
        a host that embeds ipm calls it on its own schedule. Once ``stop``
        is set, the sweep ends after the job in hand (a process stopping
        need not wait for all of them, nor cut one short between its end
        and its upload's deletion).
        """
        return self._sweeps.expire_idle(audit, stop)

    def discard_old_files(self, *, stop: threading.Event | None = None) -> int:
        """Delete the files of exports completed ``BulkOptions.file_seconds``
        ago or more; how many.

        The jobs stay, with their counts and SHA-256; ``bulk/job/get`` then
        offers no ``download_url``, and a link handed out before expired
        with the file (links are capped at its time).
        Without it a deployment that exports over HTTP, where nothing tells
        ipm that a file was fetched, fills its disk. ``ipm serve`` sweeps
        when it starts and then hourly; a host that embeds ipm calls this
        on its own schedule. ``stop`` ends the sweep after the job in hand.
        """
        return self._sweeps.discard_old_files(stop)

    def get(self, orgcode: str, job_id: str) -> Job:
        check_orgcode(orgcode)
        check_arguments("BulkJobGet", job_id=job_id)
        with self.storage.unit_of_work(write=False) as uow:
            return self._load(uow, orgcode, job_id)

    def find(
        self,
        orgcode: str,
        *,
        status: str | None = None,
        job_type: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """The org's jobs, newest first; ``status`` may be ``"active"``."""
        check_orgcode(orgcode)
        check_arguments("BulkJobList", status=status, job_type=job_type)
        if before is not None:
            check_arguments("BulkJobGet", job_id=before)
        check_bound("limit", limit, 1, MAX_LIST_LIMIT)
        statuses = statuses_for(status, job_type)
        with self.storage.unit_of_work(write=False) as uow:
            return uow.jobs.find(
                orgcode,
                statuses=statuses,
                job_type=job_type,
                before=before,
                limit=limit,
            )

    def report(self, orgcode: str, job_id: str) -> Iterator[bytes]:
        """The error report as NDJSON lines, in line order."""
        self.get(orgcode, job_id)

        return self._pages(
            lambda uow, after: [
                (line.line, dumps(line.to_wire()) + b"\n")
                for line in uow.jobs.report(job_id, after, PAGE)
            ]
        )

    def results(self, orgcode: str, job_id: str) -> Iterator[bytes]:
        """What happened to every line, as NDJSON ``{"line", "action"}``."""
        self.get(orgcode, job_id)

        def page(uow: UnitOfWork, after: int) -> list[tuple[int, bytes]]:
            runs = uow.jobs.actions(job_id, after, 16)
            return [(first, action_lines(first, actions)) for first, actions in runs]

        return self._pages(page, size=16)

    def download(self, orgcode: str, job_id: str, offset: int = 0) -> Iterator[bytes]:
        """The finished file of an export from byte ``offset`` (NotFound once
        it was discarded)."""
        job = self._of_type(self.get(orgcode, job_id), "export")
        if job.status != "completed":
            raise Conflict(f"the export is {job.status}, not completed")
        if self._past_keeping(job):
            # Due for the sweep: gone already, as far as anyone can tell.
            raise NotFound("export file (discarded)")

        try:
            return self.blobs.read(file_key(job_id), offset)
        except BLOB_MISSING:
            raise NotFound("export file (discarded)") from None

    def has_file(self, job: Job) -> bool:
        """Whether a completed export's file can still be downloaded."""
        return (
            job.status == "completed"
            and not self._past_keeping(job)
            and self.blobs.exists(file_key(job.job_id))
        )

    def _past_keeping(self, job: Job) -> bool:
        """Whether an export's file has been kept ``file_seconds`` already."""
        keep = self.options.file_seconds
        return (
            keep is not None
            and job.updated_at + timedelta(seconds=keep) <= self.clock()
        )

    def discard_file(self, orgcode: str, job_id: str) -> Job:
        """Delete a completed export's file; the job and its digest stay.

        ipm keeps an export's file until it is discarded, here or by
        :meth:`discard_old_files` once ``BulkOptions.file_seconds`` have
        passed, so a download link can be handed out again and again
        meanwhile. A caller that has its copy (``ipm export`` once it wrote
        ``-o``) or a host's clean-up discards it; a later download is a 404
        and ``bulk/job/get`` offers no link.
        """
        job = self._of_type(self.get(orgcode, job_id), "export")
        if job.status != "completed":
            raise Conflict(f"the export is {job.status}, not completed")

        self.files.delete_export_files(job)
        log.debug("export %s: file discarded", job_id)
        return job

    # -- links -------------------------------------------------------------------

    def link(self, purpose: LinkPurpose, job: Job, base_url: str) -> Link:
        """An absolute, signed link to the job's upload, file or report."""
        return make_link(
            purpose,
            job,
            base_url,
            key=self._link_key(),
            options=self.options,
            now=self.clock(),
            blobs=self.blobs,
        )

    def open_link(
        self, purpose: LinkPurpose, job_id: str, params: dict[str, str]
    ) -> Job:
        """The job a signed link points at; Forbidden when it is not genuine."""
        orgcode = linked_org(
            purpose, job_id, params, key=self._link_key(), now=self.clock()
        )
        return self.get(orgcode, job_id)

    # -- helpers -----------------------------------------------------------------

    def _link_key(self) -> bytes:
        if self._link_key_made is None:
            source = self._link_key_source
            self._link_key_made = source if isinstance(source, bytes) else source()

        return self._link_key_made

    def _target(self, target: str) -> LineTarget:
        found = self._targets.get(target)
        if found is None and target == "kpis":
            # The KPI service may be built after this one: ask for it late.
            kpis = self._kpis()
            if kpis is not None:
                found = self._targets[target] = KpiLines(kpis)
        if found is None:
            raise NotImplementedYet(f"importing {target} is not available here")

        return found

    def _data(self, job: Job) -> Iterator[bytes]:
        if job.data_key is None:
            raise KeyError(job.job_id)

        return self.blobs.read(job.data_key, job.cursor.position)

    def _limits(self, max_lines: int | None) -> SliceLimits:
        options = self.options
        return SliceLimits(
            lines=min(max_lines or options.slice_lines, options.max_slice_lines),
            seconds=options.slice_seconds,
            max_line_bytes=options.max_line_bytes,
            bytes=options.slice_bytes,
        )

    def _create(self, job: Job, audit: AuditLike | None) -> Job:
        with self.storage.unit_of_work() as uow:
            self._add(uow, job, audit)
            uow.commit()

        return job

    def _add(self, uow: UnitOfWork, job: Job, audit: AuditLike | None) -> None:
        uow.jobs.add(job)
        self.recorder.record_own(
            uow,
            job.orgcode,
            "bulk.job.created",
            job.to_wire(),
            op="c",
            logical_guid=job.job_id,
            audit=audit,
        )

    def _load(self, uow: UnitOfWork, orgcode: str, job_id: str) -> Job:
        job = uow.jobs.get(orgcode, job_id)
        if job is None:
            raise NotFound("job")

        return job

    def _of_type(self, job: Job, job_type: str) -> Job:
        if job.job_type != job_type:
            raise Conflict(
                f"{job.job_id} is an {job.job_type} job, not an {job_type} job",
                [Problem("/job_id", f"is an {job.job_type} job")],
            )

        return job

    def _move(self, job: Job, status: str, audit: AuditLike | None) -> Job:
        with self.storage.unit_of_work() as uow:
            current = self._load(uow, job.orgcode, job.job_id)
            if current.status != job.status:
                return current
            moved = current.move_to(status, self.clock())
            uow.jobs.save(moved)
            self._changed(uow, current, moved, audit)
            uow.commit()

        return moved

    def _fail(self, job: Job, failure: Failure, audit: AuditLike | None) -> Job:
        with self.storage.unit_of_work() as uow:
            current = self._load(uow, job.orgcode, job.job_id)
            if current.terminal:
                return current
            failed = current.move_to("failed", self.clock(), error=failure)
            uow.jobs.save(failed)
            self._changed(uow, current, failed, audit)
            uow.commit()

        log.info("job %s failed: %s", job.job_id, failure.code)
        self.files.forget_upload(failed)
        return failed

    def _end_of_slice(self, job: Job, exhausted: bool) -> Job:
        if job.too_many_failures():
            failure = Failure(
                "too_many_failed_lines",
                f"{job.counters.failed} line{'' if job.counters.failed == 1 else 's'} "
                "failed, more than max_failed_lines "
                f"({job.max_failed_lines}); the report lists them",
            )
            return job.move_to("failed", self.clock(), error=failure)
        if exhausted:
            return job.move_to(job.finished_status(), self.clock())

        return job

    def _changed(
        self, uow: UnitOfWork, before: Job, after: Job, audit: AuditLike | None
    ) -> None:
        """Record ipm's own events for a status change, if there was one."""
        if before.status == after.status:
            return

        self.recorder.record_own(
            uow,
            after.orgcode,
            "bulk.job.status_changed",
            {"job_id": after.job_id, "from": before.status, "to": after.status},
            logical_guid=after.job_id,
            audit=audit,
        )
        if after.terminal or after.status == "validated":
            self.recorder.record_own(
                uow,
                after.orgcode,
                "bulk.job.finished",
                {
                    "job_id": after.job_id,
                    "status": after.status,
                    "counters": after.counters.to_wire(),
                    "job_type": after.job_type,
                    "target": after.target,
                },
                logical_guid=after.job_id,
                audit=audit,
            )

    def _uploaded(
        self,
        job: Job,
        size: int,
        sha256: str,
        found: Inspected,
        audit: AuditLike | None,
    ) -> Job:
        upload = Upload(size, sha256, found.bom, found.gzip)
        with self.storage.unit_of_work() as uow:
            current = self._load(uow, job.orgcode, job.job_id)
            uploaded = current.uploaded(
                upload, found.data_key, self.clock(), found.data_size
            )
            uow.jobs.save(uploaded)
            self._changed(uow, current, uploaded, audit)
            uow.commit()

        return uploaded

    def _adopt_presigned_upload(self, job: Job, audit: AuditLike | None) -> Job:
        """An upload the host's object store received under its own link."""
        key = presigned_upload_key(job.job_id)
        if not self.blobs.exists(key):
            job.check_move("processing")

        size, sha256 = measure(self.blobs.read(key))
        found = inspect_upload(self.blobs, key, self.options.max_upload_bytes, size)

        return self._uploaded(job, size, sha256, found, audit)

    def _pages(
        self,
        fetch: Callable[[UnitOfWork, int], list[tuple[int, bytes]]],
        size: int = PAGE,
    ) -> Iterator[bytes]:
        after = 0
        while True:
            with self.storage.unit_of_work(write=False) as uow:
                page = fetch(uow, after)
            for _, data in page:
                yield data
            if len(page) < size:
                return
            after = page[-1][0]


MAX_LIST_LIMIT = 10_000
"""The most jobs one direct ``find`` call returns."""


__all__ = ["ACTIVE", "Bulk", "BulkOptions", "Link", "PresigningBlobStore"]
