"""The blobs of bulk jobs: joining an export's parts, and letting go of
what an ended job no longer needs.

Deleting never fails the caller: it runs after the job's end was
committed, so a blob the store cannot delete (or list) is logged and left
for the store's own rules, and the caller still hears the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ipm.domain.jobs import Cursor, Job, Result
from ipm.ports import BlobStore, ListingBlobStore
from ipm.usecases.bulk_export import file_key, part_key, part_prefix
from ipm.usecases.bulk_links import presigned_upload_key

log = logging.getLogger(__name__)


class PartsChanged(Exception):
    """An export's parts no longer hold what its slices wrote."""


class JobFiles:
    """What :class:`~ipm.usecases.bulk.Bulk` keeps in its blob store."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def assemble(self, job_id: str, end: Cursor) -> Result:
        """Join an export's committed parts, in order, into its file.

        Each record is one line, so the file must hold as many as the
        slices wrote: a part cut or changed behind ipm's back raises
        :class:`PartsChanged` (and leaves no file) rather than completing
        the export with a count its file does not hold.
        """
        lines = 0

        def parts() -> Iterator[bytes]:
            nonlocal lines
            for number in range(end.slices):
                for chunk in self.blobs.read(part_key(job_id, number)):
                    lines += chunk.count(b"\n")
                    yield chunk

        size, sha256 = self.blobs.write(file_key(job_id), parts())
        if lines != end.lines:
            self.delete(file_key(job_id))
            raise PartsChanged(
                f"the parts hold {lines:,} lines where {end.lines:,} were written"
            )

        return Result(size, sha256, end.lines)

    def delete_parts(self, job_id: str, slices: int) -> None:
        """Parts first to last, so the last one tells whether any is left."""
        self.delete(*(part_key(job_id, n) for n in range(slices)))

    def drop_leftover_parts(self, job: Job) -> None:
        """Delete the parts of a completed export that a worker killed after
        completing it left behind. A caller whose continue got no answer
        asks again, and that call tidies up."""
        slices = job.cursor.slices
        if slices and self.blobs.exists(part_key(job.job_id, slices - 1)):
            log.info("export %s: deleting parts left by a finished run", job.job_id)
            self.delete_parts(job.job_id, slices)

    def delete_export_files(self, job: Job) -> None:
        """An export's file and every part (a join cut short may leave some,
        and a slice whose commit failed one past the cursor)."""
        parts = {part_key(job.job_id, n) for n in range(job.cursor.slices)}
        parts.update(self.listed(part_prefix(job.job_id)))
        self.delete(file_key(job.job_id), *sorted(parts))

    def forget_upload(self, job: Job) -> None:
        """An ended import no longer needs its upload: its digest stays.

        One that never got as far as ``uploaded`` may still have bytes a
        presigning blob store took under its own link.
        """
        if job.data_key is not None:
            self.delete(job.data_key, job.data_key.removesuffix(".ndjson"))
        elif job.job_type == "import":
            self.delete(presigned_upload_key(job.job_id))
        if job.job_type == "import":
            # What uploads killed between storing their bytes and recording
            # them left (a gzip upload stopped while it was unpacked): no
            # job field names those keys, so they are found by their place.
            self.delete(*self.listed(presigned_upload_key(job.job_id)))

    def listed(self, prefix: str) -> list[str]:
        """The blob keys under ``prefix``, when the store can list them
        (a listing that fails is logged, and lists nothing)."""
        if not isinstance(self.blobs, ListingBlobStore):
            return []
        try:
            keys = list(self.blobs.keys(prefix))
        except Exception:
            log.warning("could not list blobs under %s", prefix, exc_info=True)
            return []

        return [key for key in keys if isinstance(key, str) and key.startswith(prefix)]

    def delete(self, *keys: str) -> None:
        for key in keys:
            try:
                self.blobs.delete(key)
            except OSError:
                log.warning("could not delete blob %s", key)
