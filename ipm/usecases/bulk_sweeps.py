"""Housekeeping of bulk jobs: idle jobs ended, old export files deleted.

A sweep reads every org's jobs a page at a time, each page in a short read
transaction, and acts on one job at a time in a write transaction of its
own that first reads the job again: a client that came back meanwhile
wins, and the write lock is never held for a whole sweep. A ``stop`` set
while it runs ends it after the job in hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from ipm.domain.events import AuditLike
from ipm.domain.jobs import Failure, Job
from ipm.ports import BlobStore, Clock, Storage, UnitOfWork
from ipm.usecases.bulk_export import file_key
from ipm.usecases.bulk_files import JobFiles
from ipm.usecases.bulk_options import (
    EXPORT_IDLE_STATUSES,
    IDLE_STATUSES,
    BulkOptions,
    duration_text,
    waits_on_client,
)

log = logging.getLogger(__name__)

PAGE = 1000
"""Jobs read per read transaction of a sweep."""

_COMPLETED = frozenset({"completed"})

Changed = Callable[[UnitOfWork, Job, Job, AuditLike | None], None]
"""Records the events of one job's status change, in the same transaction."""


class Sweeps:
    """The two sweeps behind ``Bulk.expire_idle`` and ``Bulk.discard_old_files``."""

    def __init__(
        self,
        *,
        storage: Storage,
        clock: Clock,
        blobs: BlobStore,
        files: JobFiles,
        options: BulkOptions,
        changed: Changed,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.blobs = blobs
        self.files = files
        self.options = options
        self._changed = changed

    def expire_idle(self, audit: AuditLike | None, stop: threading.Event | None) -> int:
        idle = self.options.idle_seconds
        if idle is None:
            return 0

        cutoff = self.clock() - timedelta(seconds=idle)
        ended = 0
        for job in self._sweep(IDLE_STATUSES | EXPORT_IDLE_STATUSES, stop):
            if (
                waits_on_client(job.job_type, job.status)
                and job.updated_at <= cutoff
                and self._expire(job, cutoff, audit)
            ):
                ended += 1

        if ended:
            log.info("%d idle job%s expired", ended, "" if ended == 1 else "s")
        return ended

    def discard_old_files(self, stop: threading.Event | None) -> int:
        keep = self.options.file_seconds
        if keep is None:
            return 0

        cutoff = self.clock() - timedelta(seconds=keep)
        discarded = 0
        for job in self._sweep(_COMPLETED, stop):
            if (
                job.job_type == "export"
                and job.updated_at <= cutoff
                and self.blobs.exists(file_key(job.job_id))
            ):
                self.files.delete_export_files(job)
                discarded += 1

        if discarded:
            log.info(
                "%d export file%s older than %s discarded",
                discarded,
                "" if discarded == 1 else "s",
                duration_text(keep),
            )
        return discarded

    def _sweep(
        self, statuses: frozenset[str], stop: threading.Event | None
    ) -> Iterator[Job]:
        """Every org's jobs in ``statuses``; none after ``stop`` is set."""
        after: str | None = None
        while True:
            with self.storage.unit_of_work(write=False) as uow:
                page = uow.jobs.waiting(statuses, after, PAGE)
            for job in page:
                if stop is not None and stop.is_set():
                    return
                yield job
            if len(page) < PAGE:
                return
            after = page[-1].job_id

    def _expire(self, job: Job, cutoff: datetime, audit: AuditLike | None) -> bool:
        """Fail one idle job, unless its client came back meanwhile."""
        with self.storage.unit_of_work() as uow:
            current = uow.jobs.get(job.orgcode, job.job_id)
            if (
                current is None
                or not waits_on_client(current.job_type, current.status)
                or current.updated_at > cutoff
            ):
                return False
            export = current.job_type == "export"
            kept = "what it wrote is" if export else "its upload is"
            failure = Failure(
                "expired",
                f"the job waited {current.status} for longer than "
                f"{duration_text(self.options.idle_seconds)}; {kept} deleted",
            )
            failed = current.move_to("failed", self.clock(), error=failure)
            uow.jobs.save(failed)
            self._changed(uow, current, failed, audit)
            uow.commit()

        if failed.job_type == "export":
            self.files.delete_export_files(failed)
        else:
            self.files.forget_upload(failed)
        return True
