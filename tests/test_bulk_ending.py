"""Ending bulk work: cancel a job its driver gives up on, discard an export file."""

from __future__ import annotations

import json
from typing import Any

import pytest

import ipm
from ipm.domain.errors import InvalidRequest, InvalidTransition, NotFound
from ipm.domain.events import Audit
from ipm.testing import MemoryBlobStore
from ipm.usecases.bulk import BulkOptions
from tests.conftest import ORG

AUDIT = Audit(actor="ops@acme.example", context_source="test")


def _lines(count: int) -> bytes:
    events = [
        {
            "event_id": f"e-{n}",
            "service": "pos",
            "action": "sale.created",
            "occurred_at": "2026-03-01T10:00:00Z",
        }
        for n in range(count)
    ]
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def test_a_job_awaiting_its_upload_is_cancelled(app: ipm.Application) -> None:
    """It ends failed with code cancelled and the reason, out of the active list."""
    job = app.bulk.create_import(ORG)

    cancelled = app.bulk.cancel(ORG, job.job_id, "the file was UTF-16", audit=AUDIT)

    assert cancelled.status == "failed"
    assert cancelled.error is not None
    assert (cancelled.error.code, cancelled.error.message) == (
        "cancelled",
        "the file was UTF-16",
    )
    assert app.bulk.find(ORG, status="active") == []


def test_cancelling_records_a_change_with_its_audit(app: ipm.Application) -> None:
    """The move to failed is a CDC event carrying the caller's audit."""
    job = app.bulk.create_import(ORG)

    app.bulk.cancel(ORG, job.job_id, "given up", audit=AUDIT)

    (last,) = app.events(ORG, service="ipm")[-1:]
    payload: dict[str, Any] = last.new.payload
    assert last.new.logical_guid == job.job_id
    assert (last.new.action, payload["status"]) == ("bulk.job.finished", "failed")
    assert last.new.audit.actor == "ops@acme.example"


def test_a_cancelled_run_keeps_what_its_slices_committed(app: ipm.Application) -> None:
    """Lines already applied stay, the upload goes, and no slice runs after."""
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, _lines(10))
    job = app.bulk.commit(ORG, job.job_id, job.revision)
    app.bulk.continue_import(ORG, job.job_id, max_lines=4)

    cancelled = app.bulk.cancel(ORG, job.job_id, "stopped by its operator")

    assert cancelled.counters.created == 4
    assert len(app.events(ORG, service="pos")) == 4
    assert cancelled.data_key is None or not app.bulk.blobs.exists(cancelled.data_key)
    assert app.bulk.continue_import(ORG, job.job_id).counters == cancelled.counters


def test_a_cancelled_export_leaves_no_parts(app: ipm.Application) -> None:
    """An export cancelled midway deletes the parts it had written."""
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 5)
    job = app.bulk.create_export(ORG)
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=2)
    assert job.status == "processing"

    cancelled = app.bulk.cancel(ORG, job.job_id, "not needed")

    assert cancelled.status == "failed"
    assert not app.bulk.blobs.exists(f"jobs/{job.job_id}/part-000000")


def test_an_ended_job_is_returned_as_it_is(app: ipm.Application) -> None:
    """Cancelling a completed job changes nothing."""
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, _lines(2))
    job = app.bulk.commit(ORG, job.job_id, job.revision)
    done = app.bulk.run(ORG, job.job_id)

    again = app.bulk.cancel(ORG, job.job_id, "too late")

    assert again == done


@pytest.mark.parametrize("reason", ["", "   ", None, 5, "x" * 1001, "a\ud800"])
def test_a_reason_is_required_text(app: ipm.Application, reason: Any) -> None:
    """No reason, blank, not text or too long is an InvalidRequest at /reason."""
    job = app.bulk.create_import(ORG)

    with pytest.raises(InvalidRequest) as error:
        app.bulk.cancel(ORG, job.job_id, reason)

    assert [p.pointer for p in error.value.details] == ["/reason"]
    assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


def test_another_orgs_job_is_not_found(app: ipm.Application) -> None:
    """A job of another org cannot be cancelled, nor told apart from none."""
    job = app.bulk.create_import(ORG)

    with pytest.raises(NotFound):
        app.bulk.cancel("OTHER01", job.job_id, "not mine")


def test_a_discarded_export_file_is_gone_and_offered_no_more(
    app: ipm.Application,
) -> None:
    """discard_file deletes the file: download is a 404, job/get has no link."""
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 3)
    job = app.bulk.run(ORG, app.bulk.create_export(ORG).job_id)
    key = app.create_api_key("ops", [ORG])
    get = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
    body = json.dumps({"job_id": job.job_id}).encode()
    offered = json.loads(app.handle("POST", "/bulk/job/get", get, body).body)

    app.bulk.discard_file(ORG, job.job_id)

    after = json.loads(app.handle("POST", "/bulk/job/get", get, body).body)
    link = offered["data"]["download_url"].split("//", 1)[1].split("/", 1)[1]
    download = app.handle("GET", "/" + link, {}, b"")
    assert offered["data"]["download_url"] is not None
    assert after["data"]["download_url"] is None
    assert after["data"]["job"]["status"] == "completed"
    assert download.status == 404
    with pytest.raises(NotFound):
        b"".join(app.bulk.download(ORG, job.job_id))


def test_cancelling_an_export_whose_join_was_cut_short_leaves_no_file(
    app: ipm.Application,
) -> None:
    """The joined file an interrupted export left goes with its parts."""
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 5)
    job = app.bulk.create_export(ORG)
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=2)
    joined = f"jobs/{job.job_id}/export.ndjson"
    app.bulk.blobs.write(joined, [b"half a join\n"])  # as a join killed midway

    app.bulk.cancel(ORG, job.job_id, "given up")

    assert not app.bulk.blobs.exists(joined)
    assert not app.bulk.blobs.exists(f"jobs/{job.job_id}/part-000000")


@pytest.mark.parametrize("seconds", [31 * 86_400 + 1, 1e300, 10**400])
def test_a_link_that_would_outlive_a_month_is_refused_when_built(seconds: Any) -> None:
    """link_seconds is bounded, so a link's expiry is always a date."""
    with pytest.raises(ValueError, match="link_seconds"):
        BulkOptions(link_seconds=seconds)


def test_an_export_cancelled_while_its_parts_are_joined_keeps_no_file(
    app: ipm.Application,
) -> None:
    """The file a join writes after a cancel is deleted with the parts."""
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 5)
    job = app.bulk.create_export(ORG)
    blobs = app.bulk.blobs
    write = blobs.write
    joined = f"jobs/{job.job_id}/export.ndjson"

    def write_after_a_cancel(key: str, chunks: Any) -> tuple[int, str]:
        if key == joined:
            app.bulk.cancel(ORG, job.job_id, "stopped during the join")
        return write(key, chunks)

    blobs.write = write_after_a_cancel  # type: ignore[method-assign]

    ended = app.bulk.run(ORG, job.job_id, max_lines=2)

    assert ended.status == "failed"
    assert not blobs.exists(joined)
    assert not blobs.exists(f"jobs/{job.job_id}/part-000000")


def _killed_upload(app: ipm.Application, job_id: str) -> list[str]:
    """What an upload stopped while its gzip was unpacked leaves: its bytes
    and part of the unpacked file, under keys no job field names."""
    raw = f"jobs/{job_id}/upload_01KILLEDMIDWAY"
    app.bulk.blobs.write(raw, [b"\x1f\x8b packed bytes"])
    app.bulk.blobs.write(f"{raw}.ndjson", [b'{"half": "unpacked"}\n'])
    return [raw, f"{raw}.ndjson"]


def test_what_a_killed_upload_left_goes_when_its_job_is_cancelled(
    app: ipm.Application,
) -> None:
    job = app.bulk.create_import(ORG)
    left = _killed_upload(app, job.job_id)

    app.bulk.cancel(ORG, job.job_id, "given up")

    assert [key for key in left if app.bulk.blobs.exists(key)] == []


def test_what_a_killed_upload_left_goes_when_its_job_completes(
    app: ipm.Application,
) -> None:
    """The upload that was taken afterwards ran; every upload byte goes at
    the end, the report stays."""
    job = app.bulk.create_import(ORG)
    left = _killed_upload(app, job.job_id)
    job = app.bulk.upload(ORG, job.job_id, _lines(3) + b"not json\n")
    job = app.bulk.commit(ORG, job.job_id, job.revision)

    done = app.bulk.continue_import(ORG, job.job_id)

    assert done.status == "completed_with_errors"
    assert [key for key in left if app.bulk.blobs.exists(key)] == []
    assert done.data_key is not None and not app.bulk.blobs.exists(done.data_key)
    assert b"".join(app.bulk.report(ORG, job.job_id)).count(b"\n") == 1


def test_a_job_cancelled_while_its_upload_is_stored_refuses_it_cleanly(
    app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel deletes every upload blob of the job, the one being
    inspected included: the upload hears invalid_transition, not a 500."""
    from ipm.usecases import bulk as bulk_module

    job = app.bulk.create_import(ORG)
    inspect = bulk_module.inspect_upload

    def cancelled_midway(blobs: Any, raw_key: str, limit: int, size: int) -> Any:
        app.bulk.cancel(ORG, job.job_id, "given up")
        return inspect(blobs, raw_key, limit, size)

    monkeypatch.setattr(bulk_module, "inspect_upload", cancelled_midway)

    with pytest.raises(InvalidTransition, match="cancelled"):
        app.bulk.upload(ORG, job.job_id, _lines(3))
    assert app.bulk.get(ORG, job.job_id).status == "failed"


def test_a_part_whose_slice_never_committed_goes_when_the_export_is_cancelled(
    app: ipm.Application,
) -> None:
    """A slice's part written, its commit refused (a full disk): the part is
    one past the cursor, where counting parts by the cursor never looked."""
    app.publish_many(ORG, [{"service": "pos", "action": "sale.created"}] * 5)
    job = app.bulk.create_export(ORG)
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=2)
    orphan = f"jobs/{job.job_id}/part-{job.cursor.slices:06d}"
    app.bulk.blobs.write(orphan, [b"a slice never committed\n"])

    app.bulk.cancel(ORG, job.job_id, "given up")

    assert not app.bulk.blobs.exists(orphan)


class _ListingFails(MemoryBlobStore):
    def keys(self) -> list[str]:  # type: ignore[override]  # a host's mistake
        return []


def test_a_host_store_that_cannot_list_does_not_fail_a_committed_end() -> None:
    with ipm.open_memory(blobs=_ListingFails()) as app:
        job = app.bulk.create_import(ORG)

        cancelled = app.bulk.cancel(ORG, job.job_id, "given up")

    assert cancelled.status == "failed"
