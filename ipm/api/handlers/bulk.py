"""Handlers of the ``/bulk`` routes and of the signed file links.

The JSON routes turn checked bodies into calls on :class:`ipm.usecases.bulk.
Bulk`. The links (``PUT /bulk/upload/<job>``, ``GET /bulk/download/<job>``,
``GET /bulk/report/<job>``, ``GET /bulk/results/<job>``) are raw routes:
they carry no API key, only the signature ``create`` or ``get`` handed out,
which binds the link to one job, one org, one purpose and an expiry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ipm.api.call import Call
from ipm.api.core import Sized
from ipm.api.envelope import Response, envelope, json_response
from ipm.api.ranges import content_range, requested_range
from ipm.api.wsgi import StreamedBody, content_length, iter_body
from ipm.domain.errors import InvalidRequest, Problem, RangeNotSatisfiable
from ipm.domain.events import Audit
from ipm.domain.jobs import Job, LinkPurpose
from ipm.domain.timeutil import format_utc
from ipm.ports import close_chunks

if TYPE_CHECKING:
    from ipm.api.core import Api
    from ipm.app import Application

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
_LINK_AUDIT = Audit(context_source="signed_link")


def import_create(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job, link = call.app.bulk.create_upload(
        call.orgcode,
        call.base_url,
        target=body.get("target", "events"),
        mode=body.get("mode", "apply"),
        max_failed_lines=body.get("max_failed_lines"),
        filename=body.get("filename"),
        audit=call.audit,
    )

    return {
        "job": job.to_wire(),
        "upload_url": link.url,
        "expires_at": format_utc(link.expires_at),
    }


def import_commit(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job = call.app.bulk.commit(
        call.orgcode,
        body["job_id"],
        body.get("expected_revision"),
        mode=body.get("mode"),
        audit=call.audit,
    )

    return {"job": job.to_wire()}


def import_continue(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job = call.app.bulk.continue_import(
        call.orgcode, body["job_id"], max_lines=body.get("max_lines"), audit=call.audit
    )

    return {"job": job.to_wire()}


def export_create(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job = call.app.bulk.create_export(
        call.orgcode,
        target=body.get("target", "events"),
        filters=body.get("filters"),
        audit=call.audit,
    )

    return {"job": job.to_wire()}


def export_continue(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job = call.app.bulk.continue_export(
        call.orgcode, body["job_id"], max_lines=body.get("max_lines"), audit=call.audit
    )

    return {"job": job.to_wire()}


def job_get(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    job = call.app.bulk.get(call.orgcode, body["job_id"])

    return {"job": job.to_wire(), **links_of(call, job)}


def links_of(call: Call, job: Job) -> dict[str, str | None]:
    """The links a job has to offer in its current state."""

    def link(purpose: LinkPurpose, offered: bool) -> str | None:
        return call.app.bulk.link(purpose, job, call.base_url).url if offered else None

    started = job.job_type == "import" and job.status not in (
        "awaiting_upload",
        "uploaded",
    )
    exported = job.job_type == "export" and call.app.bulk.has_file(job)

    return {
        # A fresh link while the job waits: one that expired unused does
        # not leave the job stuck.
        "upload_url": link("upload", job.status == "awaiting_upload"),
        "download_url": link("download", exported),
        "report_url": link("report", started),
        "results_url": link("results", started),
    }


def job_list(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    status, job_type = body.get("status"), body.get("job_type")

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[Job]:
        before = None if after is None else str(after[0])
        return call.app.bulk.find(
            call.orgcode, status=status, job_type=job_type, before=before, limit=n
        )

    filters = {"status": status, "job_type": job_type}
    page, token = call.page(body, filters, fetch, lambda job: [job.job_id])

    return {"items": [job.to_wire() for job in page], "next_token": token}


# -- signed links ---------------------------------------------------------------


def upload(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    job_id = path.removeprefix("/bulk/upload/")
    job = app.bulk.open_link("upload", job_id, _link_params(query))
    if "content-range" in headers:
        # A part of a file (curl -C sends one): taken as the whole, the
        # import would run on a file cut at a random place (RFC 9110, 14.5).
        raise InvalidRequest(
            "an upload is the whole file: send it again from its first byte",
            [Problem("/headers/content-range", "partial uploads are not taken")],
        )
    # Read as the adapters read it: a malformed length is a 400, and a
    # body of another length than declared is refused by the upload (a
    # 400 that says both lengths; it was a 413 when shorter).
    declared = content_length(headers.get("content-length"))

    uploaded = app.bulk.upload(
        job.orgcode,
        job_id,
        iter_body(body),
        declared_size=declared,
        audit=_LINK_AUDIT,
    )
    data = {"job": uploaded.to_wire()}

    answer = envelope("PUT /bulk/upload", app.build_id, app.clock(), data=data)

    return json_response(200, answer)


def download(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    job_id = path.removeprefix("/bulk/download/")
    job = app.bulk.open_link("download", job_id, _link_params(query))
    size = job.result.size if job.result else 0
    # The file's SHA-256 names its bytes: a strong ETag, which a client
    # resuming a broken download sends back in If-Range.
    etag = f'"{job.result.sha256}"' if job.result else '""'
    name = f"{job_id}.ndjson"
    refusal = None
    try:
        wanted = requested_range(
            headers.get("range"), headers.get("if-range"), etag, size
        )
    except RangeNotSatisfiable as error:
        wanted, refusal = None, error
    # Opened first: a file discarded (404) or not there yet (409) says so
    # rather than that the range is wrong.
    chunks = app.bulk.download(job.orgcode, job_id, wanted[0] if wanted else 0)
    if refusal is not None:
        close_chunks(chunks)
        raise refusal
    ranges = (("accept-ranges", "bytes"), ("etag", etag))
    if wanted is None:
        whole = _file(chunks, NDJSON, name, size)
        return Response(200, (*whole.headers, *ranges), whole.body)

    first, last = wanted
    length = last - first + 1
    part = _file(Sized(chunks, length, path, part=True), NDJSON, name, length)
    extra = (*ranges, ("content-range", content_range(first, last, size)))

    return Response(206, (*part.headers, *extra), part.body)


def report(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    job_id = path.removeprefix("/bulk/report/")
    job = app.bulk.open_link("report", job_id, _link_params(query))

    return _file(
        app.bulk.report(job.orgcode, job_id), NDJSON, f"{job_id}.errors.ndjson"
    )


def results(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    job_id = path.removeprefix("/bulk/results/")
    job = app.bulk.open_link("results", job_id, _link_params(query))

    return _file(
        app.bulk.results(job.orgcode, job_id), NDJSON, f"{job_id}.results.ndjson"
    )


def _link_params(query: str) -> dict[str, str]:
    """A signed link's query; none at all when a parameter comes twice.

    Which of two ``sig`` (or ``expires``) values was signed cannot be told,
    and taking the last would let a link carry a second set of values.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)

    return params if len(params) == len(pairs) else {}


def _file(chunks: Any, kind: str, name: str, size: int | None = None) -> Response:
    headers = [
        ("content-type", kind),
        ("content-disposition", f'attachment; filename="{name}"'),
    ]
    if size is not None:
        headers.append(("content-length", str(size)))

    return Response(200, tuple(headers), StreamedBody(chunks, size))


def attach(api: Api) -> None:
    api.attach("POST /bulk/import/create", import_create)
    api.attach("POST /bulk/import/commit", import_commit)
    api.attach("POST /bulk/import/continue", import_continue)
    api.attach("POST /bulk/export/create", export_create)
    api.attach("POST /bulk/export/continue", export_continue)
    api.attach("POST /bulk/job/get", job_get)
    api.attach("POST /bulk/job/list", job_list)
    api.attach_raw("PUT", "/bulk/upload/", upload)
    api.attach_raw("GET", "/bulk/download/", download)
    api.attach_raw("GET", "/bulk/report/", report)
    api.attach_raw("GET", "/bulk/results/", results)
