"""What ``ipm import`` and ``ipm export`` share about the jobs they drive."""

from __future__ import annotations

import logging

import ipm
from ipm.domain.events import Audit
from ipm.domain.jobs import Job
from ipm.usecases.bulk import Bulk

log = logging.getLogger(__name__)


def cancel_job(
    bulk: Bulk, org: str, job_id: str, reason: str, audit: Audit
) -> Job | None:
    """The job cancelled, or None when even that failed (the log says why)."""
    try:
        job = bulk.cancel(org, job_id, reason, audit=audit)
    except Exception as error:
        # Said without a traceback: the caller tells the user what is left.
        log.warning("could not cancel job %s: %s", job_id, error)
        log.debug("why job %s could not be cancelled", job_id, exc_info=True)
        return None

    log.debug("job %s ended (%s): %s", job_id, job.status, reason)
    return job


def give_up_reason(error: BaseException) -> str:
    """Why a job is given up, as ``Bulk.cancel`` takes it (1 to 1,000 characters)."""
    text = error.message if isinstance(error, ipm.IpmError) else str(error)

    return (text.strip() or type(error).__name__)[:1000]
