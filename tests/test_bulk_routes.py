"""The /bulk routes and signed links through handle(), on both storages."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import ipm
from ipm import schemas
from ipm.adapters.blobs import MemoryBlobStore
from ipm.api.wsgi import StreamedBody, iter_body
from ipm.domain.jobs import Job
from ipm.testing import FixedClock
from ipm.usecases.bulk import BulkOptions
from tests.conftest import ORG, OTHER, Caller

ROUTE_SCHEMAS = {
    "/bulk/import/create": "BulkImportCreateResponse",
    "/bulk/import/commit": "BulkImportCommitResponse",
    "/bulk/import/continue": "BulkImportContinueResponse",
    "/bulk/export/create": "BulkExportCreateResponse",
    "/bulk/export/continue": "BulkExportContinueResponse",
    "/bulk/job/get": "BulkJobGetResponse",
    "/bulk/job/list": "BulkJobListResponse",
}


def event_line(n: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"sale-{n}",
            "service": "pos",
            "action": "sale.created",
            "occurred_at": "2026-03-01T10:00:00Z",
            "payload": {"sale_id": n},
        }
    ).encode()


def ok(call: Caller, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST, expect 200, and check the data against its response schema."""
    status, answer = call(path, body)
    assert status == 200, answer
    data: dict[str, Any] = answer["data"]
    assert schemas.validate(ROUTE_SCHEMAS[path], data) == []

    return data


def local(url: str) -> str:
    """The path and query of an absolute link."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def put(app: ipm.Application, url: str, data: bytes, **headers: str) -> Any:
    return app.handle("PUT", local(url), headers, data)


def fetch(app: ipm.Application, url: str) -> tuple[int, bytes]:
    response = app.handle("GET", local(url), {}, b"")
    return response.status, b"".join(iter_body(response.body))


def uploaded_job(call: Caller, data: bytes, **create: Any) -> dict[str, Any]:
    created = ok(call, "/bulk/import/create", create)
    response = put(call.app, created["upload_url"], data)
    assert response.status == 200, response.body
    job: dict[str, Any] = json.loads(response.body)["data"]["job"]

    return job


def test_a_whole_import_over_the_wire(call: Caller) -> None:
    """create, PUT, commit, continue to the end, get, report: every answer valid."""
    data = b"".join(event_line(n) + b"\n" for n in range(12)) + b"{bad}\n\n"

    created = ok(call, "/bulk/import/create", {"filename": "sales.ndjson"})
    assert created["job"]["status"] == "awaiting_upload"
    assert created["upload_url"].startswith("http://")
    job = uploaded_job(call, data)
    job = ok(
        call,
        "/bulk/import/commit",
        {"job_id": job["job_id"], "expected_revision": job["revision"]},
    )["job"]
    while job["status"] == "processing":
        body = {"job_id": job["job_id"], "max_lines": 5}
        job = ok(call, "/bulk/import/continue", body)["job"]
    got = ok(call, "/bulk/job/get", {"job_id": job["job_id"]})
    status, report = fetch(call.app, got["report_url"])
    _, results = fetch(call.app, got["results_url"])

    assert job["status"] == "completed_with_errors"
    assert job["counters"]["created"] == 12
    assert (job["counters"]["failed"], job["counters"]["blank"]) == (1, 1)
    assert got["download_url"] is None
    assert status == 200
    assert [json.loads(x)["line"] for x in report.splitlines()] == [13]
    assert len(results.splitlines()) == 14


def test_the_upload_link_is_absolute_and_signed(call: Caller) -> None:
    """The link uses the request's host and refuses any change to it."""
    created = ok(call, "/bulk/import/create", {})
    url = created["upload_url"]
    tampered = url.replace("sig=", "sig=A")
    other_job = url.replace(created["job"]["job_id"], "job_0000")

    assert urlsplit(url).netloc == "localhost"
    assert put(call.app, tampered, b"").status == 403
    assert put(call.app, other_job, b"").status == 403
    assert put(call.app, url.replace("org=", "org=X"), b"").status == 403


@pytest.mark.parametrize(
    ("host", "netloc"),
    [
        ("ipm_api:8080", "ipm_api:8080"),
        ("[::1]:9", "[::1]:9"),
        ("Shop.Example", "Shop.Example"),
        ("", "localhost"),
        ("shop.example.:443", "shop.example.:443"),
        ("10.0.0.7:8080", "10.0.0.7:8080"),
        ("a." * 126 + "b.", "a." * 126 + "b."),
    ],
)
def test_links_use_a_well_formed_host(call: Caller, host: str, netloc: str) -> None:
    """A plain host[:port] (underscores too, as container names have) is kept."""
    status, body = call("/bulk/import/create", {}, headers={"host": host})

    assert status == 200
    assert urlsplit(body["data"]["upload_url"]).netloc == netloc


@pytest.mark.parametrize(
    "host",
    [
        "a/b?c#d",
        "x@evil",
        "evil.example:99999",
        "a b",
        "h:0",
        "h:08080",
        "a..b",
        "-a.b",
        "a" * 64 + ".example",
        "b." * 130 + "example",
        "[:]",
        "[1.2.3.4]",
        "[::::::::::]",
    ],
)
def test_a_malformed_host_is_refused_not_echoed(call: Caller, host: str) -> None:
    """A Host that is no host[:port] is a 400, as HTTP/1.1 asks; nothing is made."""
    status, body = call("/bulk/import/create", {}, headers={"host": host})

    assert status == 400
    assert body["error"]["details"][0]["pointer"] == "/headers/host"
    assert ok(call, "/bulk/job/list", {})["items"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/stat"),
        ("GET", "/openapi.json"),
        ("GET", "/openapi.yaml"),
        ("GET", "/schemas/Envelope.json"),
        ("GET", "/bulk/download/job_x?expires=1&sig=x"),
    ],
)
def test_a_malformed_host_is_refused_on_every_route_alike(
    method: str, path: str
) -> None:
    """Regression: GET /stat refused a malformed Host while the documents
    answered 200 to it; HTTP/1.1 asks for a 400 on every route."""
    with ipm.open_memory() as app:
        answer = app.handle(method, path, {"host": "a..b"}, b"")

    assert answer.status == 400
    assert answer.json()["error"]["details"][0]["pointer"] == "/headers/host"


def test_an_expired_link_is_refused() -> None:
    """After its expiry the upload link is a 403 and the job still waits."""
    clock = FixedClock()
    with ipm.open_memory(clock=clock, bulk=BulkOptions(link_seconds=60)) as app:
        call = Caller(app, app.create_api_key("ops", [ORG]), ORG)
        created = ok(call, "/bulk/import/create", {})

        clock.advance(61)
        response = put(app, created["upload_url"], event_line(1))
        job = ok(call, "/bulk/job/get", {"job_id": created["job"]["job_id"]})["job"]

    assert response.status == 403
    assert job["status"] == "awaiting_upload"


def test_a_host_s_link_key_signs_the_links_and_never_reaches_the_file(
    tmp_path: Path,
) -> None:
    """With link_key= the links are signed with the host's key, which is not
    written into the database (where a copy of the file could sign links);
    opened with another key, the same links are refused (a rotation)."""
    db = tmp_path / "ipm.sqlite"
    key = bytes(range(32))
    with ipm.open_sqlite(db, link_key=key) as app:
        call = Caller(app, app.create_api_key("ops", [ORG]), ORG)
        created = ok(call, "/bulk/import/create", {})
    with ipm.open_sqlite(db, link_key=bytes(reversed(range(32)))) as app:
        rotated = put(app, created["upload_url"], event_line(1))
    with ipm.open_sqlite(db, link_key=key) as app:
        kept = put(app, created["upload_url"], event_line(1))
        settings = app.storage.unit_of_work(write=False)
        with settings as uow:
            stored = uow.settings.get("bulk_link_key")
    files = [p.read_bytes() for p in tmp_path.iterdir() if p.is_file()]

    assert rotated.status == 403
    assert kept.status == 200
    assert stored is None
    assert not any(key in data for data in files)


def test_a_job_whose_link_expired_gets_a_fresh_one_from_get() -> None:
    """bulk/job/get hands out a new upload_url while the job waits; it works."""
    clock = FixedClock()
    with ipm.open_memory(clock=clock, bulk=BulkOptions(link_seconds=60)) as app:
        call = Caller(app, app.create_api_key("ops", [ORG]), ORG)
        created = ok(call, "/bulk/import/create", {})
        job_id = created["job"]["job_id"]
        clock.advance(61)

        fresh = ok(call, "/bulk/job/get", {"job_id": job_id})["upload_url"]
        response = put(app, fresh, event_line(1))
        after = ok(call, "/bulk/job/get", {"job_id": job_id})

    assert fresh is not None and fresh != created["upload_url"]
    assert response.status == 200
    assert after["job"]["status"] == "uploaded"
    assert after["upload_url"] is None


def test_commit_needs_the_current_revision(call: Caller) -> None:
    """Without expected_revision a commit is 428; with a stale one, 409."""
    job = uploaded_job(call, event_line(1))

    missing = call("/bulk/import/commit", {"job_id": job["job_id"]})
    stale = call(
        "/bulk/import/commit", {"job_id": job["job_id"], "expected_revision": "1"}
    )

    assert missing[0] == 428
    assert missing[1]["error"]["code"] == "revision_required"
    assert stale[0] == 409
    assert stale[1]["error"]["code"] == "revision_mismatch"


def test_an_upload_over_the_limit_is_413() -> None:
    """A PUT larger than the configured limit answers 413 payload_too_large."""
    with ipm.open_memory(bulk=BulkOptions(max_upload_bytes=10)) as app:
        call = Caller(app, app.create_api_key("ops", [ORG]), ORG)
        created = ok(call, "/bulk/import/create", {})

        response = put(app, created["upload_url"], b"x" * 11)

    assert response.status == 413
    assert json.loads(response.body)["error"]["code"] == "payload_too_large"


def test_a_second_upload_is_an_invalid_transition(call: Caller) -> None:
    """Uploading twice to one job is refused with 409 invalid_transition."""
    created = ok(call, "/bulk/import/create", {})
    put(call.app, created["upload_url"], event_line(1))

    again = put(call.app, created["upload_url"], event_line(2))

    error = json.loads(again.body)["error"]
    assert again.status == 409
    assert error["code"] == "invalid_transition"
    # The refusal is about the job the request names; a PUT has no /status.
    assert [d["pointer"] for d in error["details"]] == ["/job_id"]


def test_an_upload_of_a_part_of_a_file_is_refused(call: Caller) -> None:
    """Regression: curl -C 3000 -T sends the file's tail with Content-Range;
    it was stored as the whole upload, and the import would have run on a
    file cut at a random place. A 400 that keeps the job waiting for the
    whole file, which then uploads."""
    created = ok(call, "/bulk/import/create", {})
    data = event_line(1) + b"\n" + event_line(2) + b"\n"

    part = put(
        call.app,
        created["upload_url"],
        data[10:],
        **{"content-range": f"bytes 10-{len(data) - 1}/{len(data)}"},
    )
    whole = put(call.app, created["upload_url"], data)

    assert part.status == 400
    error = json.loads(part.body)["error"]
    assert [d["pointer"] for d in error["details"]] == ["/headers/content-range"]
    assert whole.status == 200
    assert json.loads(whole.body)["data"]["job"]["upload"]["size"] == len(data)


def test_a_link_route_has_one_call_name_whatever_the_answer(call: Caller) -> None:
    """stats.call names the link route, not the job in its path, on any answer."""
    created = ok(call, "/bulk/import/create", {})
    url = created["upload_url"]

    answers = [
        put(call.app, url.replace("sig=", "sig=A"), b""),
        put(call.app, url, event_line(1)),
        put(call.app, url, event_line(2)),
        call.app.handle("GET", local(url.replace("/upload/", "/download/")), {}, b""),
    ]

    calls = [json.loads(answer.body)["stats"]["call"] for answer in answers]
    assert [answer.status for answer in answers] == [403, 200, 409, 403]
    assert calls == ["PUT /bulk/upload"] * 3 + ["GET /bulk/download"]


def test_jobs_of_another_org_are_not_found(
    app: ipm.Application, call: Caller, other_key: str
) -> None:
    """Another org's caller gets 404 for a job and cannot see it in lists."""
    job = ok(call, "/bulk/import/create", {})["job"]
    other = Caller(app, other_key, OTHER)

    status, answer = other("/bulk/job/get", {"job_id": job["job_id"]})
    _, listed = other("/bulk/job/list", {})

    assert (status, answer["error"]["code"]) == (404, "not_found")
    assert listed["data"]["items"] == []


def test_job_list_filters_and_pages(call: Caller) -> None:
    """Lists filter by status (active too) and type, newest first, in pages."""
    finished = uploaded_job(call, event_line(1))
    call.app.bulk.commit(ORG, finished["job_id"], finished["revision"])
    call.app.bulk.run(ORG, finished["job_id"])
    waiting = [ok(call, "/bulk/import/create", {})["job"]["job_id"] for _ in range(3)]
    export = ok(call, "/bulk/export/create", {})["job"]["job_id"]

    def ids(body: dict[str, Any]) -> list[str]:
        found: list[str] = []
        token = None
        while True:
            page = ok(call, "/bulk/job/list", {**body, "limit": 2, "next_token": token})
            found += [job["job_id"] for job in page["items"]]
            token = page["next_token"]
            if token is None:
                return found

    assert ids({}) == [export, *reversed(waiting), finished["job_id"]]
    assert ids({"status": "active"}) == [export, *reversed(waiting)]
    assert ids({"status": "completed"}) == [finished["job_id"]]
    assert ids({"job_type": "export"}) == [export]
    assert ids({"status": "active", "job_type": "import"}) == list(reversed(waiting))


def test_a_page_token_is_bound_to_its_filters(call: Caller) -> None:
    """Reusing a page token with other filters is invalid_token."""
    for _ in range(3):
        ok(call, "/bulk/import/create", {})
    page = ok(call, "/bulk/job/list", {"limit": 1})

    status, answer = call(
        "/bulk/job/list",
        {"limit": 1, "status": "active", "next_token": page["next_token"]},
    )

    assert (status, answer["error"]["code"]) == (400, "invalid_token")


def test_each_status_change_is_an_event(call: Caller) -> None:
    """ipm records created, every status change and the finish as its own events."""
    job = uploaded_job(call, event_line(1) + b"\n{x}\n")
    call.app.bulk.commit(ORG, job["job_id"], job["revision"])
    call.app.bulk.run(ORG, job["job_id"])

    own = [
        e
        for e in call.app.events(ORG, service="ipm")
        if e.new.logical_guid == job["job_id"]
    ]
    actions = [(e.new.action, e.new.payload.get("to")) for e in own]

    assert actions == [
        ("bulk.job.created", None),
        ("bulk.job.status_changed", "uploaded"),
        ("bulk.job.status_changed", "processing"),
        ("bulk.job.status_changed", "completed_with_errors"),
        ("bulk.job.finished", None),
    ]
    assert own[-1].new.payload["counters"]["failed"] == 1


def test_a_whole_export_over_the_wire(call: Caller) -> None:
    """An export is created, continued to its end and downloaded as NDJSON."""
    for n in range(7):
        call.app.publish(ORG, json.loads(event_line(n)))
    job = ok(call, "/bulk/export/create", {"filters": {"service": "pos"}})["job"]
    while job["status"] != "completed":
        body = {"job_id": job["job_id"], "max_lines": 3}
        job = ok(call, "/bulk/export/continue", body)["job"]
    got = ok(call, "/bulk/job/get", {"job_id": job["job_id"]})

    status, data = fetch(call.app, got["download_url"])

    assert status == 200
    assert [json.loads(x)["event_id"] for x in data.splitlines()] == [
        f"sale-{n}" for n in range(7)
    ]
    assert job["result"]["records"] == job["counters"]["records_written"] == 7
    assert got["report_url"] is None


def test_handle_answers_a_download_in_bytes_and_streams_it_when_asked(
    call: Caller,
) -> None:
    """Regression: handle() answered a download with an empty body (its
    bytes only reachable through iter_body), where its contract is bytes
    out. Whole by default; a StreamedBody with stream=True, as the HTTP
    adapters ask for it."""
    for n in range(3):
        call.app.publish(ORG, json.loads(event_line(n)))
    job = call.app.bulk.run(ORG, call.app.bulk.create_export(ORG).job_id)
    got = ok(call, "/bulk/job/get", {"job_id": job.job_id})
    link = local(got["download_url"])

    whole = call.app.handle("GET", link, {}, b"")
    streamed = call.app.handle("GET", link, {}, b"", stream=True)
    head = call.app.handle("HEAD", link, {}, b"")

    assert type(whole.body) is bytes
    assert [json.loads(x)["event_id"] for x in whole.body.splitlines()] == [
        "sale-0",
        "sale-1",
        "sale-2",
    ]
    assert whole.header("content-length") == str(len(whole.body))
    assert isinstance(streamed.body, StreamedBody)
    assert b"".join(iter_body(streamed.body)) == whole.body
    assert streamed.header("content-length") == str(len(whole.body))
    assert head.body == b"" and head.header("content-length") == str(len(whole.body))


class _ShortReads(MemoryBlobStore):
    """A store whose reads end early once told to (a dropped connection its
    client library ends quietly), or go on past the file's end (a copy
    replaced by a longer one)."""

    short = False
    long = False

    def read(self, key: str, offset: int = 0) -> Iterator[bytes]:
        chunks = super().read(key, offset)
        if self.long:
            return itertools.chain(chunks, [b"x" * 1500, b"y" * 10])
        return iter([next(chunks)]) if self.short else chunks


def _exported(app: ipm.Application) -> tuple[Job, str]:
    """A completed export of 50 events, and its download link."""
    for n in range(50):
        app.publish(ORG, json.loads(event_line(n)))
    job = app.bulk.run(ORG, app.bulk.create_export(ORG).job_id)
    key = app.create_api_key("ops@acme.example", [ORG])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
    body = json.dumps({"job_id": job.job_id}).encode()
    got = app.handle("POST", "/bulk/job/get", headers, body).json()["data"]

    return job, got["download_url"]


def test_a_download_cut_short_is_not_answered_whole() -> None:
    """Regression: read into bytes, a file the store ended early came back
    as a 200 whose Content-Length was the bytes read, so nothing said it
    was incomplete (over HTTP the declared length tells the client)."""
    blobs = _ShortReads(read_size=1024)
    with ipm.open_memory(blobs=blobs) as app:
        job, link = _exported(app)
        blobs.short = True

        cut = app.handle("GET", local(link), {}, b"")

    assert job.result is not None and job.result.size > 1024
    assert cut.status == 500
    assert cut.json()["error"]["code"] == "internal"


def _streamed(app: ipm.Application, link: str) -> bytes:
    """What the WSGI adapter sends for a GET of ``link``."""
    parts = urlsplit(link)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "ipm.test",
        "wsgi.url_scheme": "http",
    }
    answer = app.wsgi_app(environ, lambda s, h, e=None: None)
    sent = b"".join(answer)
    answer.close()  # type: ignore[attr-defined]

    return sent


def test_a_download_cut_short_while_streamed_is_said_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: served by an adapter, a file the store ended early went
    out short of its Content-Length with nothing in ipm's log (the client
    saw the connection end early; the operator saw nothing, or a server's
    own error)."""
    blobs = _ShortReads(read_size=1024)
    with ipm.open_memory(blobs=blobs) as app:
        job, link = _exported(app)
        blobs.short = True

        with caplog.at_level(logging.WARNING, logger="ipm"):
            sent = _streamed(app, link)

    assert job.result is not None and len(sent) < job.result.size
    said = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert said == [
        f"the file of /bulk/download/{job.job_id} read {len(sent)} bytes where "
        f"it declared {job.result.size}: the client got it cut short (is the "
        "blob store's copy damaged?)"
    ]


def test_a_download_longer_than_declared_is_cut_at_its_size_when_streamed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: a file that read longer than its Content-Length went out
    whole (bytes past the declared length break the connection's framing)
    and the log said it was cut short."""
    blobs = _ShortReads(read_size=1024)
    with ipm.open_memory(blobs=blobs) as app:
        job, link = _exported(app)
        whole = _streamed(app, link)
        blobs.long = True

        with caplog.at_level(logging.WARNING, logger="ipm"):
            sent = _streamed(app, link)
        said = [r.getMessage() for r in caplog.records if "declared" in r.getMessage()]
        answered = app.handle("GET", local(link), {}, b"")

    assert job.result is not None and len(whole) == job.result.size
    assert sent == whole
    assert said == [
        f"the file of /bulk/download/{job.job_id} read {job.result.size + 1500} "
        f"bytes or more where it declared {job.result.size}: the client got the "
        "declared bytes only (is the blob store's copy damaged?)"
    ]
    assert answered.status == 500


def test_routes_refuse_the_other_job_type(call: Caller) -> None:
    """Continuing an export on the import route (or back) is a 409."""
    export = ok(call, "/bulk/export/create", {})["job"]
    imported = ok(call, "/bulk/import/create", {})["job"]

    first = call("/bulk/import/continue", {"job_id": export["job_id"]})
    second = call("/bulk/export/continue", {"job_id": imported["job_id"]})

    assert first[0] == second[0] == 409


def test_kpi_exports_refuse_event_filters(call: Caller) -> None:
    """An export of target kpis is created, but an events filter is a 400."""
    good = call("/bulk/export/create", {"target": "kpis"})
    bad = call("/bulk/export/create", {"target": "kpis", "filters": {"service": "pos"}})

    assert good[0] == 200
    assert bad[0] == 400
    assert bad[1]["error"]["details"][0]["pointer"] == "/filters/service"


def test_imported_events_carry_the_continue_call_s_audit(call: Caller) -> None:
    """A line without an audit records who continued the job, and why."""
    job = uploaded_job(call, event_line(1) + b"\n")
    ok(
        call,
        "/bulk/import/commit",
        {"job_id": job["job_id"], "expected_revision": job["revision"]},
    )
    ok(
        call,
        "/bulk/import/continue",
        {"job_id": job["job_id"], "reason": "backfill March"},
    )

    status, listed = call("/cdc/list", {"service": "pos"})
    events = listed["data"]["items"]

    assert status == 200
    assert [e["audit"]["actor"] for e in events] == ["ops@acme.example"]
    assert events[0]["audit"]["reason"] == "backfill March"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        # Regression: one byte more than sent was a 413 "cannot stream an
        # upload that large"; the upload is only shorter than declared.
        ("{more}", "the upload has {size} bytes, not the {more} declared"),
        ("{less}", "the upload has more than the {less} bytes declared"),
        # Regression: malformed lengths were ignored and the upload taken.
        ("abc", "Content-Length must be one non-negative integer"),
        ("+{size}", "Content-Length must be one non-negative integer"),
        ("{size}, {size}", "Content-Length must be one non-negative integer"),
    ],
)
def test_an_upload_through_handle_reads_its_length_as_the_servers_do(
    call: Caller, declared: str, message: str
) -> None:
    """handle() reads a PUT's Content-Length as ipm serve and the ASGI
    adapter do: malformed is a 400, another length than sent a 400."""
    created = ok(call, "/bulk/import/create", {})
    data = event_line(1)
    sizes = {"size": len(data), "more": len(data) + 1, "less": len(data) - 1}

    response = put(
        call.app,
        created["upload_url"],
        data,
        **{"content-length": declared.format(**sizes)},
    )

    assert response.status == 400
    assert json.loads(response.body)["error"]["message"] == message.format(**sizes)
