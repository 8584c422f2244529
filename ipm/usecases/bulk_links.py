"""Signed links to a job's upload, file, report and results.

A link is absolute, carries its expiry and an HMAC over what it opens,
and never outlives what it leads to: an upload link ends with the job's
idle time, a download link with the export file's. A blob store that
presigns (an object store) hands out its own upload and download links
instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol, TypeGuard
from urllib.parse import quote, urlsplit

import attrs

from ipm.domain.errors import Forbidden, type_name
from ipm.domain.jobs import Job, LinkPurpose, check_link, link_signature
from ipm.ports import BlobStore
from ipm.usecases.bulk_export import file_key
from ipm.usecases.bulk_options import IDLE_STATUSES, BulkOptions

_EXPIRES_DIGITS = 20
"""Digits a link's ``expires`` may have: far more than Unix seconds need."""


class PresigningBlobStore(Protocol):
    """A blob store that hands out its own links (an object store, say).

    When the application's blob store has this method and it returns a URL,
    that URL replaces ipm's own upload or download link. An upload made
    that way is found by ``commit`` under the key it was given.
    """

    def presign(self, key: str, method: str, expires_at: datetime) -> str | None: ...


@attrs.frozen
class Link:
    url: str
    expires_at: datetime


def presigned_upload_key(job_id: str) -> str:
    """Where a presigning store takes an upload under its own link."""
    return f"jobs/{job_id}/upload"


def make_link(
    purpose: LinkPurpose,
    job: Job,
    base_url: str,
    *,
    key: bytes,
    options: BulkOptions,
    now: datetime,
    blobs: BlobStore,
) -> Link:
    """An absolute, signed link to the job's upload, file or report.

    An upload link expires with the job at the latest: a job idle past
    ``idle_seconds`` is ended by the next sweep, and a link that outlived
    it would promise an upload that can no longer be taken. A download
    link ends with the file (``file_seconds``).
    """
    expires_at = now + timedelta(seconds=options.link_seconds)
    idle = options.idle_seconds
    if purpose == "upload" and idle is not None and job.status in IDLE_STATUSES:
        expires_at = min(expires_at, job.updated_at + timedelta(seconds=idle))
    keep = options.file_seconds
    if purpose == "download" and keep is not None:
        expires_at = min(expires_at, job.updated_at + timedelta(seconds=keep))
    presigned = _presigned(blobs, purpose, job, expires_at)
    if presigned is not None:
        return Link(presigned, expires_at)

    expires = int(expires_at.timestamp())
    signature = link_signature(key, purpose, job.orgcode, job.job_id, expires)
    query = f"org={quote(job.orgcode)}&expires={expires}&sig={signature}"
    url = f"{base_url.rstrip('/')}/bulk/{purpose}/{job.job_id}?{query}"

    return Link(url, expires_at)


def linked_org(
    purpose: LinkPurpose,
    job_id: str,
    params: dict[str, str],
    *,
    key: bytes,
    now: datetime,
) -> str:
    """The org of a genuine, unexpired link to ``job_id``; Forbidden else."""
    orgcode = params.get("org", "")
    # Only the digits the link was made with: int() would also take
    # " 17", "+17", "017" and "1_7", other texts for the same value.
    # A real expiry has 10 or 11 digits; int() refuses past 4,300.
    text = params.get("expires", "")
    canonical = (
        len(text) <= _EXPIRES_DIGITS
        and text.isascii()
        and text.isdigit()
        and text == str(int(text))
    )
    expires = int(text) if canonical else 0
    genuine = check_link(
        key, purpose, orgcode, job_id, expires, params.get("sig", ""), now
    )
    if not genuine:
        raise Forbidden("the link is not valid or has expired")

    return orgcode


def _presigned(
    blobs: BlobStore, purpose: LinkPurpose, job: Job, expires_at: datetime
) -> str | None:
    presign = getattr(blobs, "presign", None)
    if presign is None or purpose not in ("upload", "download"):
        return None

    if purpose == "upload":
        key, method = presigned_upload_key(job.job_id), "PUT"
    else:
        key, method = file_key(job.job_id), "GET"
    url: object = presign(key, method, expires_at)
    if url is None:
        return None
    if not _absolute_http(url):
        # The host's store is wrong: a client handed this could not use it
        # (or worse, a javascript: or header-splitting one). Said plainly.
        shown = repr(url)[:80] if isinstance(url, str) else type_name(url)
        raise TypeError(
            "the blob store's presign() must return an absolute http(s) URL "
            f"or None, not {shown}"
        )

    return url


def _absolute_http(url: object) -> TypeGuard[str]:
    """Whether ``url`` is text a client can follow: http(s), with a host
    (and a port, if any, that exists), and no space or control character.

    A backslash is refused too: browsers read it as a slash, so
    ``http://good\\@evil.example/`` names one host to them and another to
    this check; so is an escape in the host, which clients decode apart."""
    if type(url) is not str or not url.isprintable() or " " in url or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bracket left open, a port out of range
        return False
    host = parts.hostname

    return (
        parts.scheme in ("http", "https")
        and bool(host)
        and "%" not in (host or "")
        and port != 0
    )
