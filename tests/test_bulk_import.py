"""Imports: every reader case at every read size, duplicates, validate runs."""

from __future__ import annotations

import codecs
import contextlib
import gc
import gzip
import hashlib
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipm
from ipm import schemas
from ipm.adapters.blobs import MemoryBlobStore
from ipm.domain.errors import (
    EventIdConflict,
    InvalidRequest,
    InvalidTransition,
    PayloadTooLarge,
)
from ipm.domain.events import NO_AUDIT, Audit, EventFilter
from ipm.domain.jobs import ReportLine
from ipm.domain.webhooks import Routes, SubscriptionFilter
from ipm.testing.jobs import actions_of, import_bytes, report_of
from ipm.usecases import bulk as bulk_module
from ipm.usecases.bulk import BulkOptions
from ipm.usecases.bulk_import import EventLines
from ipm.usecases.bulk_upload import gunzip
from ipm.usecases.cdc import MAX_PAYLOAD_BYTES
from ipm.usecases.event_lane import EventLane
from ipm.usecases.webhooks import CreateWebhook
from tests.conftest import OTHER, open_app

ORG = "ACME01"
READ_SIZES = (1, 2, 3, 4095, 4096, 65536)


def line(n: int, **changes: Any) -> bytes:
    """One good event line, numbered ``n``."""
    event: dict[str, Any] = {
        "event_id": f"sale-{n}",
        "service": "pos",
        "action": "sale.created",
        "occurred_at": "2026-03-01T10:00:00Z",
        "logical_guid": f"sale-{n}",
        "payload": {"sale_id": n, "total_minor": 1250, "store": "Lyon-Part-Dieu"},
    }
    event.update(changes)

    return json.dumps(event, ensure_ascii=False).encode()


def host_events(app: ipm.Application) -> list[Any]:
    """The org's events that are not ipm's own, in sequence order."""
    return [e for e in app.events(ORG, limit=100_000) if e.new.service != "ipm"]


@pytest.fixture
def small_app() -> Iterator[ipm.Application]:
    with ipm.open_memory(bulk=BulkOptions(max_line_bytes=2000)) as app:
        yield app


# -- the reader cases, each with its exact outcome ----------------------------

NESTED = b'{"a":' * 65 + b"1" + b"}" * 65
DEEP = line(2)[:-1] + b',"channel_code":"x"' + b"}"
# Each case: the bytes of the file, the expected counters (ok, failed,
# blank, lines_read) and the expected report as (line, code, pointer).
CASES: dict[
    str, tuple[bytes, tuple[int, int, int, int], list[tuple[int, str, str]]]
] = {
    "crlf": (line(1) + b"\r\n" + line(2) + b"\r\n", (2, 0, 0, 2), []),
    "bom_at_start": (codecs.BOM_UTF8 + line(1) + b"\n", (1, 0, 0, 1), []),
    # Regression: a file of a BOM alone failed as upload_changed (its data
    # "ended at byte 0, not 3"), though it holds no line, as an empty one.
    "bom_only": (codecs.BOM_UTF8, (0, 0, 0, 0), []),
    "empty": (b"", (0, 0, 0, 0), []),
    "bom_later": (
        line(1) + b"\n" + codecs.BOM_UTF8 + line(2) + b"\n",
        (1, 1, 0, 2),
        [(2, "invalid_json", "")],
    ),
    "blank_lines": (
        b"\n" + line(1) + b"\n  \n\r\n\t\n" + line(2) + b"\n\n",
        (2, 0, 5, 7),
        [],
    ),
    "no_final_newline": (line(1) + b"\n" + line(2), (2, 0, 0, 2), []),
    "over_long": (
        line(1) + b"\n" + b'{"x":"' + b"y" * 5000 + b'"}\n' + line(2) + b"\n",
        (2, 1, 0, 3),
        [(2, "line_too_long", "")],
    ),
    "nan": (
        line(1, payload={"total": 1}).replace(b'"total": 1', b'"total": NaN') + b"\n",
        (0, 1, 0, 1),
        [(1, "non_finite_number", "/payload/total")],
    ),
    "infinity": (
        line(1).replace(b'"total_minor": 1250', b'"total_minor": -Infinity') + b"\n",
        (0, 1, 0, 1),
        [(1, "non_finite_number", "/payload/total_minor")],
    ),
    "duplicate_key": (
        line(1).replace(b'"store"', b'"sale_id": 9, "store"') + b"\n",
        (0, 1, 0, 1),
        [(1, "duplicate_key", "/payload/sale_id")],
    ),
    "lone_surrogate": (
        line(1, channel_code="x").replace(b'"x"', b'"\\ud800"') + b"\n",
        (0, 1, 0, 1),
        [(1, "lone_surrogate", "/channel_code")],
    ),
    "trailing_data": (line(1) + b" {}\n", (0, 1, 0, 1), [(1, "trailing_data", "")]),
    "array": (b"[1, 2]\n" + line(1) + b"\n", (1, 1, 0, 2), [(1, "not_an_object", "")]),
    "string": (b'"sale"\n', (0, 1, 0, 1), [(1, "not_an_object", "")]),
    "too_deep": (
        line(1).replace(b'"payload": {', b'"payload": {"n": ' + NESTED + b", ") + b"\n",
        (0, 1, 0, 1),
        [(1, "too_deep", "")],
    ),
    "invalid_utf8": (
        line(1).replace(b"Lyon", b"Ly\xc3on") + b"\n" + line(2) + b"\n",
        (1, 1, 0, 2),
        [(1, "invalid_utf8", "")],
    ),
    "multibyte_utf8": (
        line(1).replace(b"Lyon", "Lyön ☕ 𝄞".encode()) + b"\n",
        (1, 0, 0, 1),
        [],
    ),
    "invalid_json": (
        b"{oops}\n" + line(1) + b"\n",
        (1, 1, 0, 2),
        [(1, "invalid_json", "")],
    ),
    "no_occurred_at": (
        line(1).replace(b'"occurred_at": "2026-03-01T10:00:00Z", ', b"") + b"\n",
        (0, 1, 0, 1),
        [(1, "schema_violation", "/occurred_at")],
    ),
    "unknown_field": (
        line(1, colour="red") + b"\n",
        (0, 1, 0, 1),
        [(1, "schema_violation", "/colour")],
    ),
}


@pytest.mark.parametrize("read_size", READ_SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_case_has_its_exact_outcome(case: str, read_size: int) -> None:
    """Each real-world NDJSON case gives the same counters and report line."""
    data, (ok, failed, blank, lines_read), expected = CASES[case]
    blobs = MemoryBlobStore(read_size=read_size)

    with ipm.open_memory(blobs=blobs, bulk=BulkOptions(max_line_bytes=2000)) as app:
        job = import_bytes(app, ORG, data)
        report = report_of(app, ORG, job.job_id)

    counters = job.counters
    assert (counters.ok, counters.failed, counters.blank) == (ok, failed, blank)
    assert counters.lines_read == lines_read
    assert counters.adds_up()
    assert [(r["line"], r["code"], r["pointer"]) for r in report] == expected
    assert job.status == ("completed_with_errors" if failed else "completed")


def test_report_lines_carry_offset_message_and_excerpt(
    small_app: ipm.Application,
) -> None:
    """A report line says where the line starts, why it failed and what it held."""
    data = line(1) + b"\n" + b"{oops}\n"

    job = import_bytes(small_app, ORG, data)
    (report,) = report_of(small_app, ORG, job.job_id)

    assert report["offset"] == len(line(1)) + 1
    assert report["excerpt"] == "{oops}"
    assert report["message"]


def test_big_integers_and_number_like_strings_are_kept_exactly(
    small_app: ipm.Application,
) -> None:
    """A 2**70 integer and "007" reach the stored payload unchanged."""
    data = line(1, payload={"n": 2**70, "code": "007", "ratio": 0.1}) + b"\n"

    import_bytes(small_app, ORG, data)
    (event,) = host_events(small_app)

    assert event.new.payload == {"n": 2**70, "code": "007", "ratio": 0.1}


def test_a_bom_is_noted_on_the_job(small_app: ipm.Application) -> None:
    """A file that starts with a UTF-8 BOM says so on its upload record."""
    job = import_bytes(small_app, ORG, codecs.BOM_UTF8 + line(1) + b"\n")

    assert job.upload is not None and job.upload.bom


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_files_are_refused_whole(
    small_app: ipm.Application, codec: str
) -> None:
    """A UTF-16/32 upload is a 400 before any line; the job still waits."""
    job = small_app.bulk.create_import(ORG)
    data = (line(1).decode() + "\n").encode(codec)

    with pytest.raises(InvalidRequest) as caught:
        small_app.bulk.upload(ORG, job.job_id, iter([data]))

    assert "UTF-8" in caught.value.message
    assert small_app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


# -- duplicates, conflicts, re-imports -------------------------------------------


def test_importing_the_same_file_twice_adds_nothing(small_app: ipm.Application) -> None:
    """The second import of a file creates nothing and counts every duplicate."""
    data = b"".join(line(n) + b"\n" for n in range(50))
    data += line(0, event_id=None, logical_guid="no-id") + b"\n"

    first = import_bytes(small_app, ORG, data)
    second = import_bytes(small_app, ORG, data)

    assert first.counters.created == 51
    assert second.counters.created == 0
    assert second.counters.duplicate == 51
    assert second.status == "completed"
    assert len(host_events(small_app)) == 51


def test_lines_without_id_that_say_the_same_are_one_event(
    small_app: ipm.Application,
) -> None:
    """The derived id follows the content: another offset or key order is the same."""
    utc = line(0, event_id=None, occurred_at="2026-03-01T10:00:00Z")
    paris = line(0, event_id=None, occurred_at="2026-03-01T11:00:00+01:00")
    reordered = json.dumps(dict(reversed(json.loads(utc).items()))).encode()

    job = import_bytes(small_app, ORG, b"\n".join([utc, paris, reordered]) + b"\n")

    assert (job.counters.created, job.counters.duplicate) == (1, 2)
    (event,) = host_events(small_app)
    assert event.new.event_id == f"evt_{event.content_hash[:32]}"


@pytest.mark.parametrize("time", ["2026-03-01T10:00:00Z", "2026-03-01T11:00:00+01:00"])
def test_the_same_file_by_another_importer_adds_nothing(
    small_app: ipm.Application, time: str
) -> None:
    """Who imports an id-less line does not change its id (fast and slow path)."""
    data = line(0, event_id=None, occurred_at=time) + b"\n"

    def run_as(actor: str) -> Any:
        job = small_app.bulk.create_import(ORG)
        job = small_app.bulk.upload(ORG, job.job_id, data)
        job = small_app.bulk.commit(ORG, job.job_id, job.revision)
        return small_app.bulk.run(ORG, job.job_id, audit=Audit(actor=actor))

    run_as("first@acme.example")
    again = run_as("second@acme.example")

    assert (again.counters.created, again.counters.duplicate) == (0, 1)
    assert len(host_events(small_app)) == 1


def test_a_refused_line_is_reported_with_every_fault_it_has(
    small_app: ipm.Application,
) -> None:
    """The report says all of a line's faults, in words a person can act on."""
    data = b"\n".join(
        [
            b'{"service": "pos"}',
            line(1, service="ipm"),
            line(2, service="Bad!", occurred_at="yesterday"),
        ]
    )

    job = import_bytes(small_app, ORG, data + b"\n")

    undated, reserved, malformed = report_of(small_app, ORG, job.job_id)
    assert undated["pointer"] == "/action"  # the first fault by pointer
    assert "occurred_at is required" in undated["message"]
    assert "action: required" in undated["message"]
    assert "reserved for ipm's own events" in reserved["message"]
    assert reserved["pointer"] == "/service"
    assert "service must match" in malformed["message"]
    assert "occurred_at must be an RFC 3339 timestamp" in malformed["message"]


def test_an_import_cannot_write_ipm_s_notifications(small_app: ipm.Application) -> None:
    """Lines under the inbox service, or with an alert notification's id,
    fail (each otherwise well formed, so the fast lane sees them first)."""
    data = b"\n".join(
        [
            line(1, service="inbox", action="kpi.alert.notified"),
            line(2, event_id="ntf_alr_0123"),
            line(3),
        ]
    )

    job = import_bytes(small_app, ORG, data + b"\n")

    inbox, taken = report_of(small_app, ORG, job.job_id)
    assert (inbox["line"], inbox["pointer"]) == (1, "/service")
    assert "reserved for ipm's own events" in inbox["message"]
    assert (taken["line"], taken["pointer"]) == (2, "/event_id")
    assert "reserved for ipm's alert notifications" in taken["message"]
    assert (job.counters.failed, job.counters.created) == (2, 1)


def test_a_reused_event_id_with_other_content_is_a_line_error(
    small_app: ipm.Application,
) -> None:
    """Same event_id, other payload: event_id_conflict, the rest goes on."""
    small_app.publish(ORG, json.loads(line(1)))
    data = line(1, payload={"sale_id": 99}) + b"\n" + line(2) + b"\n"

    job = import_bytes(small_app, ORG, data)

    assert [
        (r["line"], r["code"], r["pointer"])
        for r in report_of(small_app, ORG, job.job_id)
    ] == [(1, "event_id_conflict", "/event_id")]
    assert job.counters.created == 1
    assert job.status == "completed_with_errors"


def test_lines_are_checked_against_the_catalog(small_app: ipm.Application) -> None:
    """A payload that breaks its registered schema is reported with its pointer."""
    small_app.register_event_type(
        "pos",
        "sale.created",
        {
            "type": "object",
            "properties": {"total_minor": {"type": "integer", "minimum": 0}},
            "required": ["total_minor"],
        },
    )
    data = line(1) + b"\n" + line(2, payload={"total_minor": -5}) + b"\n"

    job = import_bytes(small_app, ORG, data)
    (report,) = report_of(small_app, ORG, job.job_id)

    assert (report["line"], report["code"]) == (2, "schema_violation")
    assert report["pointer"] == "/payload/total_minor"
    assert job.counters.created == 1


def test_exported_events_import_again(small_app: ipm.Application) -> None:
    """An export's lines (with sequence, orgcode, recorded_at) import as events."""
    for n in range(3):
        small_app.publish(ORG, json.loads(line(n)))
    export = small_app.bulk.create_export(ORG, filters={"service": "pos"})
    export = small_app.bulk.run(ORG, export.job_id)
    data = b"".join(small_app.bulk.download(ORG, export.job_id))

    with ipm.open_memory() as other:
        job = import_bytes(other, ORG, data)
        copied = [e.new for e in other.events(ORG) if e.new.service == "pos"]

    assert job.counters.created == 3
    assert copied == [e.new for e in host_events(small_app)]


def test_max_failed_lines_fails_the_job_early(small_app: ipm.Application) -> None:
    """Past max_failed_lines the job fails, says why, and stops reading."""
    data = b"".join(b"{bad}\n" if n % 2 else line(n) + b"\n" for n in range(200))

    job = import_bytes(small_app, ORG, data, max_failed_lines=3, max_lines=50)

    assert job.status == "failed"
    assert job.error is not None and job.error.code == "too_many_failed_lines"
    assert job.counters.failed == 4
    assert job.counters.lines_read == 8


def test_a_whole_float_bound_is_kept_as_an_integer(
    small_app: ipm.Application,
) -> None:
    """max_failed_lines=1.0 is the integer 1 on the job and in its messages."""
    job = small_app.bulk.create_import(ORG, max_failed_lines=1.0)

    assert job.max_failed_lines == 1
    assert type(job.max_failed_lines) is int
    assert job.to_wire()["max_failed_lines"] == 1


@pytest.mark.parametrize("slice_lines", [1, 4, 10_000])
def test_a_reused_event_id_crossing_the_bound_stops_the_job_at_its_line(
    small_app: ipm.Application, slice_lines: int
) -> None:
    """A line refused only when written stops the job there, whatever the slice.

    Regression: an event_id_conflict is found when the slice is written, so
    the lines after it in the same slice were stored before the bound was
    checked, and what a failed job had written depended on the slice size.
    """
    small_app.publish(ORG, json.loads(line(1)))
    data = (
        line(1, payload={"changed": True})
        + b"\n"
        + b"".join(line(n) + b"\n" for n in range(2, 7))
    )

    job = import_bytes(small_app, ORG, data, max_failed_lines=0, max_lines=slice_lines)

    assert job.status == "failed"
    assert job.error is not None and job.error.code == "too_many_failed_lines"
    assert (job.counters.lines_read, job.counters.failed) == (1, 1)
    assert job.counters.created == 0
    assert [e.new.event_id for e in host_events(small_app)] == ["sale-1"]
    (reported,) = report_of(small_app, ORG, job.job_id)
    assert reported["code"] == "event_id_conflict"


def test_a_bound_crossed_on_a_slice_s_last_line_needs_no_second_run(
    small_app: ipm.Application,
) -> None:
    """Good lines before the crossing line are kept; the job stops at it."""
    small_app.publish(ORG, json.loads(line(3)))
    data = b"".join(
        (line(3, payload={}) if n == 3 else line(n)) + b"\n" for n in range(1, 7)
    )

    job = import_bytes(small_app, ORG, data, max_failed_lines=0)

    assert (job.status, job.counters.lines_read, job.counters.created) == (
        "failed",
        3,
        2,
    )


@pytest.mark.parametrize("bound", [-1, 2.5, True])
def test_a_max_failed_lines_below_zero_is_refused(
    small_app: ipm.Application, bound: Any
) -> None:
    """The library refuses the bounds the HTTP schema refuses, before any job."""
    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.create_import(ORG, max_failed_lines=bound)

    assert refused.value.details[0].pointer == "/max_failed_lines"
    assert small_app.bulk.find(ORG) == []


@pytest.mark.parametrize("max_lines", [0, -5, 1_000_001])
def test_a_slice_size_out_of_range_is_refused(
    small_app: ipm.Application, max_lines: int
) -> None:
    """continue with max_lines below one or above a million is a 400."""
    job = small_app.bulk.create_import(ORG)
    small_app.bulk.upload(ORG, job.job_id, iter([line(1) + b"\n"]))
    job = small_app.bulk.commit(
        ORG, job.job_id, small_app.bulk.get(ORG, job.job_id).revision
    )

    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.continue_import(ORG, job.job_id, max_lines=max_lines)

    assert refused.value.details[0].pointer == "/max_lines"
    assert small_app.bulk.get(ORG, job.job_id).counters.lines_read == 0


# -- validate-only runs ---------------------------------------------------------


def test_validate_writes_nothing_and_promotion_runs_for_real(
    small_app: ipm.Application,
) -> None:
    """A validate run predicts, writes no event; promoted, it does the same for real."""
    small_app.publish(ORG, json.loads(line(1)))
    data = line(1) + b"\n" + line(2) + b"\n" + line(2) + b"\n{x}\n\n"

    job = import_bytes(small_app, ORG, data, mode="validate")
    predicted = actions_of(small_app, ORG, job.job_id)
    before = len(host_events(small_app))
    promoted = small_app.bulk.commit(ORG, job.job_id, job.revision, mode="apply")
    done = small_app.bulk.run(ORG, promoted.job_id)

    assert job.status == "validated"
    assert before == 1
    assert predicted == ["duplicate", "created", "duplicate", "failed", "blank"]
    assert actions_of(small_app, ORG, job.job_id) == predicted
    assert done.validation == job.counters
    assert done.counters.created == 1
    assert len(host_events(small_app)) == 2


def test_a_job_on_the_wire_always_says_what_its_validate_run_found(
    small_app: ipm.Application,
) -> None:
    """Every job's wire form has ``validation``: null, or on a promoted job
    the counters of its validate run; the served Job schema describes it
    (it once appeared on promoted jobs only, in no schema)."""
    data = line(1) + b"\n{x}\n"
    plain = import_bytes(small_app, ORG, data)
    checked = import_bytes(small_app, ORG, data, mode="validate")
    promoted = small_app.bulk.commit(ORG, checked.job_id, checked.revision)
    done = small_app.bulk.run(ORG, promoted.job_id)
    schema = schemas.get("Job")

    assert plain.to_wire()["validation"] is None
    assert done.to_wire()["validation"] == checked.counters.to_wire()
    assert "validation" in schema["properties"]
    assert schemas.validate("Job", done.to_wire()) == []


GOOD = st.integers(0, 6).map(lambda n: line(n))
CHANGED = st.integers(0, 6).map(lambda n: line(n, payload={"sale_id": -n}))
NO_ID = st.integers(0, 3).map(lambda n: line(n, event_id=None))
BAD = st.sampled_from([b"{x}", b"[1]", b"", b"  ", line(1, op="z"), b'{"a":NaN}'])
LINES = st.lists(GOOD | CHANGED | NO_ID | BAD, max_size=25)


@given(
    existing=st.lists(GOOD | CHANGED, max_size=4), lines=LINES, size=st.integers(1, 7)
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_validate_verdicts_equal_the_real_run(
    existing: list[bytes], lines: list[bytes], size: int
) -> None:
    """Every line's validate-only verdict equals what the real run then does."""
    data = b"".join(item + b"\n" for item in lines)

    with ipm.open_memory() as app:
        for raw in existing:
            with contextlib.suppress(EventIdConflict):
                app.cdc.publish(ORG, json.loads(raw))
        checked = import_bytes(app, ORG, data, mode="validate", max_lines=size)
        predicted = actions_of(app, ORG, checked.job_id)
        promoted = app.bulk.commit(ORG, checked.job_id, checked.revision)
        done = app.bulk.run(ORG, promoted.job_id, max_lines=size)
        actual = actions_of(app, ORG, checked.job_id)

    assert actual == predicted
    assert done.validation == checked.counters
    assert attrs.evolve(done.counters, records_written=0) == checked.counters


# -- uploads --------------------------------------------------------------------


def test_gzip_upload_imports_like_plain(small_app: ipm.Application) -> None:
    """A gzip upload (two members even) gives the same outcome as the plain file."""
    data = b"".join(line(n) + b"\n" for n in range(30)) + b"{x}\n"
    packed = gzip.compress(data[:500]) + gzip.compress(data[500:])

    job = import_bytes(small_app, ORG, packed)

    assert job.upload is not None and job.upload.gzip
    assert job.upload.size == len(packed)
    assert (job.counters.created, job.counters.failed) == (30, 1)


def test_truncated_gzip_is_refused(small_app: ipm.Application) -> None:
    """A gzip stream cut short is a 400, and the job still waits for an upload."""
    job = small_app.bulk.create_import(ORG)
    packed = gzip.compress(line(1) * 50)[:-20]

    with pytest.raises(InvalidRequest):
        small_app.bulk.upload(ORG, job.job_id, iter([packed]))

    assert small_app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


@pytest.mark.parametrize("split", [None, 3, 1])
def test_zero_padding_after_gzip_is_ignored_and_other_bytes_named(
    small_app: ipm.Application, split: int | None
) -> None:
    """Zero bytes after the last member are padding (gzip ignores them);
    other bytes there are refused, saying so (the message said the stream
    was not whole, though it was). Over any chunking of the upload."""

    def chunks(data: bytes) -> list[bytes]:
        if split is None:
            return [data]
        return [data[at : at + split] for at in range(0, len(data), split)]

    packed = gzip.compress(line(1) + b"\n")
    padded = small_app.bulk.create_import(ORG)
    small_app.bulk.upload(ORG, padded.job_id, iter(chunks(packed + b"\0" * 512)))
    garbled = small_app.bulk.create_import(ORG)

    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.upload(ORG, garbled.job_id, iter(chunks(packed + b"junk")))

    assert small_app.bulk.get(ORG, padded.job_id).status == "uploaded"
    assert refused.value.message == (
        "the upload's gzip stream is followed by bytes that are not gzip"
    )


@pytest.mark.parametrize("split", [None, 65536])
@pytest.mark.parametrize("tail", ["member", "padding", "junk"])
def test_what_follows_a_large_gzip_member_is_read_once(
    split: int | None, tail: str
) -> None:
    """Regression: when a member unpacking to more than one step (1 MiB)
    ended, the bytes after it stayed in zlib's unconsumed_tail too, and the
    upload looped for ever on the ended member (a core at 100%, no answer):
    `cat a.gz b.gz`, zero padding or junk after any file over a mebibyte."""
    first = b'{"a":1}\n' * 200_000
    after = {
        "member": gzip.compress(b'{"b":2}\n'),
        "padding": b"\0" * 8,
        "junk": b"xyz",
    }[tail]
    body = gzip.compress(first) + after
    chunks = (
        [body]
        if split is None
        else [body[at : at + split] for at in range(0, len(body), split)]
    )
    pieces = gunzip(iter(chunks))

    if tail == "junk":
        with pytest.raises(InvalidRequest, match="followed by bytes"):
            list(itertools.islice(pieces, 10_000))
        return
    unpacked = b"".join(itertools.islice(pieces, 10_000))
    assert next(pieces, None) is None
    assert unpacked == first + (b'{"b":2}\n' if tail == "member" else b"")


def test_a_utf16_file_inside_gzip_is_refused_before_it_is_unpacked() -> None:
    """The encoding is sniffed on the first unpacked bytes; nothing is unpacked."""

    class Recording(MemoryBlobStore):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[str] = []

        def write(self, key: str, chunks: Any) -> tuple[int, str]:
            self.written.append(key)
            return super().write(key, chunks)

    blobs = Recording()
    packed = gzip.compress(codecs.BOM_UTF16_LE + "{}\n".encode("utf-16-le") * 10_000)
    with ipm.open_memory(blobs=blobs) as app:
        job = app.bulk.create_import(ORG)

        with pytest.raises(ipm.IpmError) as refused:
            app.bulk.upload(ORG, job.job_id, packed)

    assert "UTF-16" in refused.value.message
    assert not any(key.endswith(".ndjson") for key in blobs.written)
    assert list(blobs._blobs) == []


def test_upload_over_the_limit_is_413_and_stores_nothing() -> None:
    """Declared or sent, more than max_upload_bytes is refused; the job waits."""
    blobs = MemoryBlobStore()
    with ipm.open_memory(blobs=blobs, bulk=BulkOptions(max_upload_bytes=100)) as app:
        job = app.bulk.create_import(ORG)

        with pytest.raises(PayloadTooLarge):
            app.bulk.upload(ORG, job.job_id, iter([b"x" * 50] * 3))
        with pytest.raises(PayloadTooLarge):
            app.bulk.upload(ORG, job.job_id, iter([b"x"]), declared_size=101)
        packed = gzip.compress(b"\n" * 1000)
        with pytest.raises(PayloadTooLarge) as unpacked:
            app.bulk.upload(ORG, job.job_id, iter([packed]))

        assert unpacked.value.message == "unpacked, the upload is larger than 100 bytes"
        assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"
        assert not any(blobs.exists(k) for k in list(blobs._blobs))


def test_upload_sha256_and_size_are_recorded(small_app: ipm.Application) -> None:
    """The job records the size and SHA-256 of the bytes as uploaded."""
    data = line(1) + b"\n"

    job = import_bytes(small_app, ORG, data)

    assert job.upload is not None
    assert (job.upload.size, job.upload.sha256) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


def test_an_ended_import_lets_go_of_its_upload() -> None:
    """Once an import has ended, its uploaded bytes are deleted; the digest stays."""
    blobs = MemoryBlobStore()
    with ipm.open_memory(blobs=blobs) as app:
        job = import_bytes(app, ORG, gzip.compress(line(1) + b"\n"))

    assert job.upload is not None and job.upload.sha256
    assert list(blobs._blobs) == []


def test_continue_before_commit_is_refused(small_app: ipm.Application) -> None:
    """An uploaded job that was not committed cannot be continued."""
    job = small_app.bulk.create_import(ORG)
    small_app.bulk.upload(ORG, job.job_id, iter([line(1)]))

    with pytest.raises(InvalidTransition) as refused:
        small_app.bulk.continue_import(ORG, job.job_id)
    fresh = small_app.bulk.create_import(ORG)
    with pytest.raises(InvalidTransition) as unsent:
        small_app.bulk.continue_import(ORG, fresh.job_id)

    # As every illegal move is named: the state, the move, the moves allowed.
    assert refused.value.message == (
        "bulk_import_job: cannot continue from 'uploaded' (commit it first); "
        "allowed from 'uploaded': processing, failed"
    )
    # Before its upload, the step to take is the upload, not the commit.
    assert unsent.value.message == (
        "bulk_import_job: cannot continue from 'awaiting_upload' (upload its "
        "file first); allowed from 'awaiting_upload': uploaded, failed"
    )


# -- exactly once ------------------------------------------------------------------


def test_a_slice_that_dies_before_commit_leaves_nothing(
    small_app: ipm.Application,
) -> None:
    """A failure in a slice's transaction undoes the slice; continue redoes it."""
    data = b"".join(line(n) + b"\n" for n in range(30)) + b"{x}\n"
    job = small_app.bulk.create_import(ORG)
    job = small_app.bulk.upload(ORG, job.job_id, iter([data]))
    job = small_app.bulk.commit(ORG, job.job_id, job.revision)
    calls = {"n": 0}

    def crash_on_the_fifteenth(uow: Any, event: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("worker killed")

    small_app.recorder.sinks.append(crash_on_the_fifteenth)
    with pytest.raises(RuntimeError):
        small_app.bulk.continue_import(ORG, job.job_id, max_lines=20)
    unchanged = small_app.bulk.get(ORG, job.job_id)
    done = small_app.bulk.run(ORG, job.job_id, max_lines=20)

    assert unchanged.cursor == job.cursor
    assert unchanged.counters == job.counters
    assert done.counters.created == 30
    assert [r["line"] for r in report_of(small_app, ORG, job.job_id)] == [31]
    assert len(host_events(small_app)) == 30


def test_concurrent_workers_apply_each_line_once(tmp_path: Path) -> None:
    """Four threads continuing one job apply every line exactly once."""
    data = b"".join(line(n) + b"\n" for n in range(2000))
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        job = app.bulk.create_import(ORG)
        job = app.bulk.upload(ORG, job.job_id, iter([data]))
        job = app.bulk.commit(ORG, job.job_id, job.revision)

        def worker() -> None:
            app.bulk.run(ORG, job.job_id, max_lines=97)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = app.bulk.get(ORG, job.job_id)
        events = app.cdc.list(ORG, EventFilter(service="pos"), 10_000)

    assert done.status == "completed"
    assert done.counters.lines_read == done.counters.created == 2000
    assert sorted(e.new.event_id for e in events) == sorted(
        f"sale-{n}" for n in range(2000)
    )


# -- the kpis target -----------------------------------------------------------


def kpi(day: int, value: Any, **changes: Any) -> bytes:
    snapshot = {
        "kpi_code": "NET_SALES",
        "bucket": "daily",
        "bucket_start": f"2026-03-{day:02d}T00:00:00Z",
        "bucket_end": f"2026-03-{day + 1:02d}T00:00:00Z",
        "value": value,
    }
    snapshot.update(changes)

    return json.dumps(snapshot).encode() + b"\n"


def test_kpi_lines_create_update_or_leave_snapshots(small_app: ipm.Application) -> None:
    """Each KPI line is created, updated or unchanged; misaligned ones fail."""
    data = (
        kpi(1, 10)
        + kpi(2, 20)
        + kpi(1, 10.0)
        + kpi(2, 25)
        + kpi(3, 1, bucket_start="2026-03-03T01:00:00Z")
        + kpi(4, 1, colour="red")
    )

    job = import_bytes(small_app, ORG, data, target="kpis")
    report = report_of(small_app, ORG, job.job_id)

    assert actions_of(small_app, ORG, job.job_id) == [
        "created",
        "created",
        "unchanged",
        "updated",
        "failed",
        "failed",
    ]
    assert [(r["line"], r["pointer"]) for r in report] == [
        (5, "/bucket_start"),
        (6, "/colour"),
    ]
    assert job.counters.records_written == 3


def test_kpi_validate_verdicts_equal_the_real_run(small_app: ipm.Application) -> None:
    """A validate-only KPI run predicts each line as the real run then does it."""
    first = import_bytes(small_app, ORG, kpi(1, 5), target="kpis")
    data = kpi(1, 5) + kpi(1, 6) + kpi(2, None) + kpi(2, None) + kpi(1, 5)

    checked = import_bytes(
        small_app, ORG, data, target="kpis", mode="validate", max_lines=2
    )
    predicted = actions_of(small_app, ORG, checked.job_id)
    promoted = small_app.bulk.commit(ORG, checked.job_id, checked.revision)
    small_app.bulk.run(ORG, promoted.job_id, max_lines=2)

    assert first.counters.created == 1
    assert predicted == ["unchanged", "updated", "created", "unchanged", "updated"]
    assert actions_of(small_app, ORG, checked.job_id) == predicted


# -- a host calling the library directly gets the wire's checks -------------------


@pytest.mark.parametrize("mode", ["Validate", "validate ", 1, True])
def test_a_misspelt_mode_never_promotes_a_validated_job(
    small_app: ipm.Application, mode: Any
) -> None:
    """commit() refuses a mode the wire refuses; the validated job stays as it was."""
    job = import_bytes(small_app, ORG, line(1) + b"\n", mode="validate")
    assert job.status == "validated"

    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.commit(ORG, job.job_id, job.revision, mode=mode)

    assert refused.value.details[0].pointer == "/mode"
    assert small_app.bulk.get(ORG, job.job_id) == job
    assert host_events(small_app) == []


@pytest.mark.parametrize(
    ("arguments", "pointer"),
    [
        ({"mode": None}, "/mode"),
        ({"target": ["events"]}, "/target"),
        ({"filename": 5}, "/filename"),
        ({"filename": "x" * 257}, "/filename"),
        ({"max_failed_lines": 2**64}, "/max_failed_lines"),
    ],
)
def test_create_import_checks_its_arguments_as_the_wire_does(
    small_app: ipm.Application, arguments: dict[str, Any], pointer: str
) -> None:
    """Each argument meets the request schema of /bulk/import/create."""
    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.create_import(ORG, **arguments)

    assert refused.value.details[0].pointer == pointer
    assert small_app.bulk.find(ORG) == []


@pytest.mark.parametrize("orgcode", ["a b/c", "", "x" * 65])
def test_a_malformed_org_is_refused_before_any_job(
    small_app: ipm.Application, orgcode: str
) -> None:
    """No job is ever stored under an org code no request could name."""
    with pytest.raises(InvalidRequest):
        small_app.bulk.create_import(orgcode)
    with pytest.raises(InvalidRequest):
        small_app.bulk.create_export(orgcode)


@pytest.mark.parametrize(
    ("filters", "pointer"),
    [
        ({"from_utc": "yesterday"}, "/filters/from_utc"),
        ({"to_utc": "2026-01-01T00:00:00"}, "/filters/to_utc"),
        ({"from_utc": 5}, "/filters/from_utc"),
        ({"action_prefix": {}}, "/filters/action_prefix"),
        ({"service": "Bad Name"}, "/filters/service"),
        ([1], "/filters"),
    ],
)
def test_export_filters_are_checked_when_the_job_is_made(
    small_app: ipm.Application, filters: Any, pointer: str
) -> None:
    """A filter no export could apply is refused at create, never a stuck job."""
    with pytest.raises(InvalidRequest) as refused:
        small_app.bulk.create_export(ORG, filters=filters)

    assert refused.value.details[0].pointer == pointer
    assert small_app.bulk.find(ORG) == []


def test_export_filters_take_aware_datetimes(small_app: ipm.Application) -> None:
    """A host may give the window as datetimes; they are stored as wire text."""
    small_app.publish(ORG, json.loads(line(1)))
    start = datetime(2026, 1, 1, tzinfo=UTC)

    job = small_app.bulk.create_export(ORG, filters={"from_utc": start})
    done = small_app.bulk.run(ORG, job.job_id)

    assert job.filters == {"from_utc": "2026-01-01T00:00:00Z"}
    assert done.status == "completed"
    with pytest.raises(InvalidRequest):
        small_app.bulk.create_export(ORG, filters={"from_utc": datetime(2026, 1, 1)})


@pytest.mark.parametrize(
    "arguments",
    [{"status": "bogus"}, {"job_type": "imports"}, {"limit": 0}, {"limit": 10**30}],
)
def test_find_refuses_what_the_list_route_refuses(
    small_app: ipm.Application, arguments: dict[str, Any]
) -> None:
    """An unknown status or type is an error, not an empty list."""
    with pytest.raises(InvalidRequest):
        small_app.bulk.find(ORG, **arguments)


@pytest.mark.parametrize(
    "filters", [{"from_utc": "not a time"}, {"action_prefix": "Sale."}]
)
def test_a_stored_filter_that_cannot_be_read_fails_the_export(
    small_app: ipm.Application, filters: dict[str, str]
) -> None:
    """An export whose stored filters break fails with a reason; it is not
    stuck, nor completed empty (a prefix stored before prefixes were
    checked, which could start no action name)."""
    job = small_app.bulk.create_export(ORG)
    broken = attrs.evolve(job, filters=filters)
    with small_app.storage.unit_of_work() as uow:
        uow.jobs.save(broken)
        uow.commit()

    ended = small_app.bulk.continue_export(ORG, job.job_id)

    assert ended.status == "failed"
    assert ended.error is not None and ended.error.code == "invalid_filters"


def test_an_upload_may_be_bytes_given_whole(small_app: ipm.Application) -> None:
    """upload(org, job, b"...") stores those bytes, not a refusal of ints."""
    job = small_app.bulk.create_import(ORG)

    uploaded = small_app.bulk.upload(ORG, job.job_id, line(1) + b"\n")

    assert uploaded.status == "uploaded"


@pytest.mark.parametrize(
    ("chunks", "declared"), [(None, None), (["text"], None), ([b"x"], "1")]
)
def test_an_upload_that_is_not_bytes_is_refused_whole(
    small_app: ipm.Application, chunks: Any, declared: Any
) -> None:
    """Text chunks or a size that is no count are refused; the job keeps waiting."""
    job = small_app.bulk.create_import(ORG)

    with pytest.raises(InvalidRequest):
        small_app.bulk.upload(ORG, job.job_id, chunks, declared_size=declared)

    assert small_app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


def test_an_upload_longer_than_declared_is_refused_as_it_arrives(
    small_app: ipm.Application,
) -> None:
    """Regression: a body longer than its declared size was read on to the
    upload limit and answered 413; it stops at the first byte too many."""
    job = small_app.bulk.create_import(ORG)
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        for n in range(1000):
            read.append(n)
            yield line(n) + b"\n"

    with pytest.raises(InvalidRequest, match="more than the 10 bytes declared"):
        small_app.bulk.upload(ORG, job.job_id, chunks(), declared_size=10)

    assert read == [0]
    assert small_app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


def test_failed_lines_leave_no_cycles_for_the_collector(
    small_app: ipm.Application,
) -> None:
    """A refused line keeps no traceback alive: the slice is freed by refcounts.

    A kept exception once tied its frames, and through them the whole
    slice, into a cycle: every slice ended in a long collector pause.
    """
    bad = [
        line(0, occurred_at=None),
        line(0, occurred_at="2026-03-01T10:00:00"),
        line(0, service="Bad Name"),
        line(0, payload=[]),
        line(0, audit={"actor": ""}),
    ]
    data = b"".join(
        (bad[n // 50 % 5] if n % 50 == 0 else line(n)) + b"\n" for n in range(1000)
    )
    job = small_app.bulk.create_import(ORG)
    job = small_app.bulk.upload(ORG, job.job_id, data)
    job = small_app.bulk.commit(ORG, job.job_id, job.revision)
    gc.collect()

    gc.disable()
    try:
        done = small_app.bulk.continue_import(ORG, job.job_id, max_lines=1000)
        cyclic = gc.collect()
    finally:
        gc.enable()

    assert done.counters.failed == 20, done.counters
    assert cyclic < 100, cyclic


# -- who imported: the slice's audit ------------------------------------------

IMPORTER = Audit(actor="ops@acme", context_source="nightly load", reason="backfill")


def run_as(
    app: ipm.Application, data: bytes, audit: Audit | None, **create: Any
) -> Any:
    job = app.bulk.create_import(ORG, **create)
    job = app.bulk.upload(ORG, job.job_id, iter([data]))
    job = app.bulk.commit(ORG, job.job_id, job.revision)

    return app.bulk.run(ORG, job.job_id, audit=audit)


@pytest.mark.parametrize("lane", [True, False])
def test_a_line_without_an_audit_records_the_importer(
    lane: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines naming no audit carry the importer's; a line's own audit is kept."""
    if not lane:
        monkeypatch.setattr(EventLane, "admit", lambda self, record, audit=None: None)
    own = {"actor": "till-7", "context_source": None, "reason": None}
    nobody = {"actor": None, "context_source": None, "reason": None, "source_refs": []}
    data = b"\n".join(
        [
            line(1),
            line(2, audit=None),
            line(3, audit={}),
            line(4, audit=own),
            line(5, audit=nobody),
        ]
    )

    with ipm.open_memory() as app:
        run_as(app, data, IMPORTER)
        audits = [e.new.audit for e in host_events(app)]

    assert audits[:3] == [IMPORTER] * 3
    assert audits[3].actor == "till-7"
    assert audits[4] == NO_AUDIT


@pytest.mark.parametrize("audit", [False, "", [], 0])
def test_a_malformed_line_audit_is_refused_whoever_imports(audit: Any) -> None:
    """Only an absent, null or {} audit takes the importer's; others are checked."""
    with ipm.open_memory() as app:
        job = run_as(app, line(1, audit=audit) + b"\n", IMPORTER)
        report = report_of(app, ORG, job.job_id)

    assert job.counters.failed == 1
    assert [r["pointer"] for r in report] == ["/audit"]


def test_without_an_importer_lines_keep_no_audit() -> None:
    """A host running a job without an audit stores the lines as written."""
    with ipm.open_memory() as app:
        run_as(app, line(1) + b"\n", None)

        assert [e.new.audit for e in host_events(app)] == [NO_AUDIT]


def test_an_imported_kpi_change_records_the_importer(tmp_path: Path) -> None:
    """Each kpi.recorded event of a KPI import carries the importer's audit."""
    snapshot = {
        "kpi_code": "NET_SALES",
        "scope": "org",
        "bucket": "hourly",
        "bucket_start": "2026-03-01T10:00:00Z",
        "bucket_end": "2026-03-01T11:00:00Z",
        "value": 12,
    }
    data = json.dumps(snapshot).encode() + b"\n"

    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        job = run_as(app, data, IMPORTER, target="kpis")
        recorded = [
            e for e in app.events(ORG, service="ipm") if e.new.action == "kpi.recorded"
        ]

    assert job.counters.created == 1
    assert [e.new.audit for e in recorded] == [IMPORTER]


def test_a_malformed_importer_audit_is_refused_before_any_line() -> None:
    """An audit the wire could not carry is refused; the job does not move."""
    with ipm.open_memory() as app:
        job = app.bulk.create_import(ORG)
        job = app.bulk.upload(ORG, job.job_id, iter([line(1)]))
        job = app.bulk.commit(ORG, job.job_id, job.revision)

        with pytest.raises(InvalidRequest):
            app.bulk.continue_import(ORG, job.job_id, audit=Audit(actor=""))

        assert app.bulk.get(ORG, job.job_id).cursor == job.cursor


def test_a_line_ipm_fails_to_check_is_reported_and_the_job_goes_on(
    small_app: ipm.Application,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fault of ipm's own on one line (an exception its checks did not
    foresee) fails that line as internal_error; the job ends, never stuck."""
    real = EventLines.check

    def check(self: EventLines, record: dict[str, Any], audit: Audit) -> Any:
        if record.get("event_id") == "sale-2":
            raise ValueError("a fault in ipm")
        return real(self, record, audit)

    monkeypatch.setattr(EventLines, "check", check)
    data = line(1) + b"\n" + line(2) + b"\n" + line(3) + b"\n"

    job = import_bytes(small_app, ORG, data)

    assert job.status == "completed_with_errors"
    assert (job.counters.created, job.counters.failed) == (2, 1)
    (report,) = report_of(small_app, ORG, job.job_id)
    assert (report["line"], report["code"]) == (2, "internal_error")
    assert "could not check line 2" in caplog.text


def test_a_report_line_holding_a_lone_surrogate_can_be_stored() -> None:
    """Its text is made storable (U+FFFD), so the slice writing it never fails."""
    entry = ReportLine(1, 0, "invalid_json", "bad \ud800", "/\udc80", "x\ud800")

    assert (entry.message, entry.pointer, entry.excerpt) == (
        "bad \ufffd",
        "/\ufffd",
        "x\ufffd",
    )


def test_lines_ipm_fails_to_check_still_meet_the_slice_s_limits(
    small_app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """internal_error lines count as failures and against the slice's budget:
    max_failed_lines=0 stops the job at the first, and a slice of two lines
    reads two."""

    def check(self: EventLines, record: dict[str, Any], audit: Audit) -> Any:
        raise ValueError("a fault in ipm")

    monkeypatch.setattr(EventLines, "check", check)
    data = b"".join(line(n) + b"\n" for n in range(1, 7))

    bounded = import_bytes(small_app, ORG, data, max_failed_lines=0)
    job = small_app.bulk.create_import(ORG)
    job = small_app.bulk.upload(ORG, job.job_id, iter([data]))
    job = small_app.bulk.commit(ORG, job.job_id, job.revision)
    sliced = small_app.bulk.continue_job(ORG, job.job_id, max_lines=2)

    assert bounded.status == "failed"
    assert bounded.counters.lines_read == 1
    assert sliced.counters.lines_read == 2


def test_a_line_with_two_faults_says_each_once() -> None:
    """The report message lists a KPI line's two faults once each, whatever
    order the checks found them in."""
    with ipm.open_memory() as app:
        snapshot = {
            "kpi_code": "sales",
            "scope": "store-1",
            "bucket": "hour",
            "bucket_start": "2026-01-01T00:00:00Z",
            "bucket_end": "2026-01-01T01:00:00Z",
            "value": 1,
        }
        data = json.dumps(snapshot).encode() + b"\n"

        job = import_bytes(app, ORG, data, target="kpis")
        (report,) = report_of(app, ORG, job.job_id)

    assert report["message"].count("bucket must") == 1
    assert report["message"].count("kpi_code must") == 1


def test_a_slice_leaves_most_of_its_seconds_for_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading stops at READ_SHARE of slice_seconds, so reading and writing
    together take about slice_seconds. Regression: reading alone took the
    whole budget, and a 1 s continue of a large max_lines took 2.6 s."""
    from ipm.usecases import bulk_import

    ticks = iter(range(10**9))
    # Each look at the clock is a tenth of a second later; the clock is
    # looked at once per _CHECK_CLOCK_EVERY lines (and once to start).
    monkeypatch.setattr(bulk_import.time, "monotonic", lambda: next(ticks) / 10)
    every = bulk_import._CHECK_CLOCK_EVERY
    data = b"".join(line(n) + b"\n" for n in range(1, 20 * every))
    with ipm.open_memory(bulk=BulkOptions(slice_seconds=1.0)) as app:
        job = app.bulk.create_import(ORG)
        job = app.bulk.upload(ORG, job.job_id, iter([data]))
        job = app.bulk.commit(ORG, job.job_id, job.revision)
        sliced = app.bulk.continue_job(ORG, job.job_id, max_lines=10**6)

    assert bulk_import.READ_SHARE == 0.4
    assert sliced.counters.lines_read == 4 * every


def _counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time a slice reads its lines."""
    reads: list[int] = []
    read_slice = bulk_module.read_slice

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return read_slice(*args, **kwargs)

    monkeypatch.setattr(bulk_module, "read_slice", counted)

    return reads


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_slice_queues_at_most_its_share_of_webhook_deliveries(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a slice queued one delivery per line and matching
    webhook in one write transaction; with 130 webhooks, 6,000 lines held
    the write lock for 48 s and other writers got 503. A slice that would
    queue more than SLICE_DELIVERIES is read again, shorter; webhooks on
    another service do not shorten it; nothing is lost or queued twice."""
    monkeypatch.setattr(bulk_module, "SLICE_DELIVERIES", 100)
    app = open_app(storage, tmp_path)
    pos = SubscriptionFilter("pos")
    for _ in range(10):
        app.webhooks.create(ORG, CreateWebhook("https://hooks.example/p", (pos,)))
    app.webhooks.create(
        ORG, CreateWebhook("https://hooks.example/o", (SubscriptionFilter("orders"),))
    )
    job = app.bulk.create_import(ORG)
    app.bulk.upload(ORG, job.job_id, b"".join(line(n) + b"\n" for n in range(95)))
    job = app.bulk.commit(ORG, job.job_id, app.bulk.get(ORG, job.job_id).revision)

    reads = _counted_reads(monkeypatch)
    first = app.bulk.continue_import(ORG, job.job_id)
    first_reads = len(reads)
    done = app.bulk.run(ORG, job.job_id)
    on_pos = next(
        w for w in app.webhooks.list(ORG) if w.event_filters[0].service == "pos"
    )
    queued = app.webhooks.deliveries(ORG, on_pos.webhook_id)
    app.close()

    assert first.cursor.lines == 10  # 100 deliveries for 10 webhooks on pos
    # Read once whole, then once up to the line that fits (regression: it
    # shrank a little per read, and one call re-read a slice 1,129 times).
    assert first_reads == 2
    assert done.counters.created == 95
    assert done.cursor.slices >= 10
    assert len({d.event_sequence for d in queued}) == len(queued) == 95


def test_webhooks_whose_action_filters_match_no_line_do_not_shorten_a_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the webhooks that match a line's service and action count: 50
    webhooks on pos refunds leave an import of sales in whole slices."""
    monkeypatch.setattr(bulk_module, "SLICE_DELIVERIES", 100)
    app = open_app("sqlite", tmp_path)
    refunds = SubscriptionFilter("pos", action="refund.done")
    for _ in range(50):
        app.webhooks.create(ORG, CreateWebhook("https://hooks.example/r", (refunds,)))
    job = app.bulk.create_import(ORG)
    app.bulk.upload(ORG, job.job_id, b"".join(line(n) + b"\n" for n in range(300)))
    job = app.bulk.commit(ORG, job.job_id, app.bulk.get(ORG, job.job_id).revision)

    first = app.bulk.continue_import(ORG, job.job_id)
    app.close()

    assert first.cursor.lines == 300


def test_a_slice_whose_matching_lines_come_first_is_read_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the slice was shortened in proportion to its deliveries,
    so with the matching lines at its front it shrank a little per read
    (one call re-read a slice 1,129 times, 30 s). It is cut at the line
    that keeps the deliveries within bounds, and read again once."""
    monkeypatch.setattr(bulk_module, "SLICE_DELIVERIES", 100)
    app = open_app("sqlite", tmp_path)
    pos = SubscriptionFilter("pos")
    for _ in range(10):
        app.webhooks.create(ORG, CreateWebhook("https://hooks.example/p", (pos,)))
    data = [line(n) for n in range(11)]
    data += [line(n, service="orders") for n in range(11, 400)]
    job = app.bulk.create_import(ORG)
    app.bulk.upload(ORG, job.job_id, b"".join(d + b"\n" for d in data))
    job = app.bulk.commit(ORG, job.job_id, app.bulk.get(ORG, job.job_id).revision)
    reads = _counted_reads(monkeypatch)

    first = app.bulk.continue_import(ORG, job.job_id)
    app.close()

    assert (first.cursor.lines, len(reads)) == (10, 2)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_slice_looks_at_each_webhook_filter_once_not_once_per_line(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: every line was checked against every filter of every
    webhook, inside the write transaction, even when none matched: 1,000
    webhooks with 32 filters each held the lock 34 s for a slice of 10,000
    lines that queued nothing, and other writers got 503. The filters are
    indexed once a slice (and once more to bound its deliveries)."""
    app = open_app(storage, tmp_path)
    filters = tuple(SubscriptionFilter("pos", action=f"never.{n}") for n in range(3))
    filters += (SubscriptionFilter("pos", action_prefix="sale."),)
    for _ in range(20):
        app.webhooks.create(ORG, CreateWebhook("https://hooks.example/p", filters))
    job = app.bulk.create_import(ORG)
    app.bulk.upload(ORG, job.job_id, b"".join(line(n) + b"\n" for n in range(300)))
    job = app.bulk.commit(ORG, job.job_id, app.bulk.get(ORG, job.job_id).revision)
    looked_at: list[int] = []
    add = Routes._add

    def counted(self: Routes, position: int, rule: SubscriptionFilter) -> None:
        looked_at.append(position)
        add(self, position, rule)

    monkeypatch.setattr(Routes, "_add", counted)
    monkeypatch.setattr(SubscriptionFilter, "names", None)  # no filter-by-filter

    done = app.bulk.continue_import(ORG, job.job_id)
    hook = app.webhooks.list(ORG)[0]
    queued = app.webhooks.deliveries(ORG, hook.webhook_id)
    app.close()

    assert done.cursor.lines == 300
    assert len(looked_at) <= 2 * 20 * len(filters)
    assert len(queued) == 300  # every sale still reaches every webhook


def test_an_import_line_s_payload_has_publish_s_cap_and_its_export_imports_again(
    app: ipm.Application,
) -> None:
    """Regression: an import line of a mebibyte was stored whole, and its
    export line, with the sequence, orgcode, recorded_at and audit an export
    adds, was too long to import again. A payload past MAX_PAYLOAD_BYTES is
    refused at its pointer, as publish() refuses it; one at the cap goes out
    in an export and comes back."""
    filler = "y" * (MAX_PAYLOAD_BYTES - len(b'{"x":""}'))
    at_cap = json.loads(line(1, payload={"x": filler}))
    past = json.loads(line(2, payload={"x": filler + "y"}))
    data = (json.dumps(past) + "\n" + json.dumps(at_cap) + "\n").encode()

    job = import_bytes(app, ORG, data)
    export = app.bulk.create_export(ORG, filters={"service": "pos"})
    export = app.bulk.run(ORG, export.job_id)
    again = import_bytes(app, OTHER, b"".join(app.bulk.download(ORG, export.job_id)))

    report = report_of(app, ORG, job.job_id)
    assert (job.counters.created, job.counters.failed) == (1, 1)
    assert [(r["line"], r["pointer"]) for r in report] == [(1, "/payload")]
    assert (again.status, again.counters.created) == ("completed", 1)


def test_a_short_line_whose_payload_grows_past_the_cap_as_stored_is_refused(
    app: ipm.Application,
) -> None:
    """Regression: a line of 140 KB holding 1e15 thirty thousand times was
    stored as 1000000000000000.0 each, a payload of 570 KB, past the cap
    publish() keeps, and its export line could grow past what an import
    takes. The payload is measured as it will be stored."""
    numbers = "[" + ",".join(["1e15"] * 30_000) + "]"
    raw = line(1).replace(
        b'"payload": {', b'"payload": {"a": ' + numbers.encode() + b", "
    )
    assert len(raw) < MAX_PAYLOAD_BYTES

    job = import_bytes(app, ORG, raw + b"\n")

    report = report_of(app, ORG, job.job_id)
    assert job.counters.failed == 1
    assert [(r["pointer"], r["code"]) for r in report] == [
        ("/payload", "schema_violation")
    ]


def test_a_long_line_is_refused_for_its_first_fault_as_publish_refuses_it(
    app: ipm.Application,
) -> None:
    """A long line with a malformed envelope and a big payload is told about
    its envelope, as publish() tells it; the size is judged once the event is
    otherwise right."""
    big = json.loads(line(1, payload={"x": "y" * (MAX_PAYLOAD_BYTES + 10)}))
    del big["service"]

    job = import_bytes(app, ORG, json.dumps(big).encode() + b"\n")

    report = report_of(app, ORG, job.job_id)
    assert [r["pointer"] for r in report] == ["/service"]
