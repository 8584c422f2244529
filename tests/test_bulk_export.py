"""Exports: consistent snapshots, filters, strict NDJSON, same bytes on re-runs."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import ipm
import ipm.usecases.bulk as bulk_usecase
from ipm.domain.errors import Conflict, InvalidRequest
from ipm.domain.events import EventFilter
from ipm.usecases import bulk_export
from ipm.usecases.bulk_export import part_key

ORG = "ACME01"


def sale(n: int, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"sale-{n}",
        "service": "pos",
        "action": "sale.created",
        "occurred_at": f"2026-03-01T10:00:{n % 60:02d}Z",
        "payload": {"sale_id": n, "big": 2**70, "note": "café"},
    }
    event.update(changes)

    return event


def export(app: ipm.Application, **create: Any) -> tuple[Any, bytes]:
    job = app.bulk.create_export(ORG, **create)
    job = app.bulk.run(ORG, job.job_id, max_lines=4)

    return job, b"".join(app.bulk.download(ORG, job.job_id))


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    if request.param == "memory":
        application = ipm.open_memory()
    else:
        application = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    yield application
    application.close()


def test_the_file_is_strict_ndjson_with_its_digest(app: ipm.Application) -> None:
    """Newline-terminated UTF-8 JSON objects, no BOM; size and SHA-256 match."""
    app.publish_many(ORG, [sale(n) for n in range(10)])

    job, data = export(app)

    assert job.status == "completed"
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.endswith(b"\n") and data.count(b"\n") == 10
    records = [json.loads(line, parse_constant=_refuse) for line in data.splitlines()]
    assert [r["event_id"] for r in records] == [f"sale-{n}" for n in range(10)]
    assert records[0]["payload"] == {"sale_id": 0, "big": 2**70, "note": "café"}
    assert job.result is not None
    assert job.result.size == len(data)
    assert job.result.sha256 == hashlib.sha256(data).hexdigest()
    assert job.result.records == 10


def _refuse(name: str) -> Any:
    raise ValueError(name)


def test_filters_select_service_action_and_window(app: ipm.Application) -> None:
    """service, action_prefix and [from_utc, to_utc) narrow what is exported."""
    app.publish_many(
        ORG,
        [
            sale(1),
            sale(2, action="sale.voided"),
            sale(3, service="orders", action="order.placed"),
            sale(4, occurred_at="2026-03-02T00:00:00Z"),
            sale(5, occurred_at="2026-02-28T23:59:59.500000Z"),
        ],
    )

    def ids(filters: dict[str, Any]) -> list[str]:
        _, data = export(app, filters=filters)
        return [json.loads(line)["event_id"] for line in data.splitlines()]

    assert ids({"service": "pos"}) == ["sale-1", "sale-2", "sale-4", "sale-5"]
    assert ids({"action_prefix": "sale.v"}) == ["sale-2"]
    window = {"from_utc": "2026-03-01T00:00:00Z", "to_utc": "2026-03-02T00:00:00Z"}
    assert ids({**window, "service": "pos"}) == ["sale-1", "sale-2"]


def test_a_sparse_prefix_is_exported_through_bounded_reads(
    app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export reads a bounded number of events at a time (so a prefix
    few events have cannot hold a read for the whole org) and still
    writes every match once, in order."""
    monkeypatch.setattr(bulk_export, "_EXAMINED", 4)
    voided = {3, 11, 12, 25}
    app.publish_many(
        ORG,
        [
            sale(n, action="sale.voided" if n in voided else "sale.x")
            for n in range(1, 31)
        ],
    )

    _, data = export(app, filters={"action_prefix": "sale.v"})

    assert [json.loads(line)["event_id"] for line in data.splitlines()] == [
        f"sale-{n}" for n in sorted(voided)
    ]


def test_a_window_finer_than_microseconds_is_exact(app: ipm.Application) -> None:
    """Bounds with digits past the sixth keep [from, to) exact.

    Regression: the digits were dropped, so a from_utc a tenth of a
    microsecond after an event still took it, and a to_utc as far past
    another one left it out.
    """
    app.publish_many(
        ORG,
        [
            sale(1, occurred_at="2026-03-01T10:00:00Z"),
            sale(2, occurred_at="2026-03-01T10:00:01Z"),
        ],
    )
    window = {
        "from_utc": "2026-03-01T10:00:00.0000001Z",
        "to_utc": "2026-03-01T10:00:01.0000001Z",
    }

    job, data = export(app, filters={**window, "service": "pos"})

    assert [json.loads(line)["event_id"] for line in data.splitlines()] == ["sale-2"]
    # Kept as the export reads them: rounded up, in ipm's own spelling.
    assert job.filters == {
        "from_utc": "2026-03-01T10:00:00.000001Z",
        "to_utc": "2026-03-01T10:00:01.000001Z",
        "service": "pos",
    }


def test_the_window_is_kept_in_one_spelling(app: ipm.Application) -> None:
    """Regression: export filters were stored as sent, so a job, its list
    entries and its CDC event echoed offsets, a lower-case z, or a fraction
    as long as the request could carry."""
    window = {
        "from_utc": "2026-03-01t05:30:00.000000000" + "0" * 10_000 + "+05:30",
        "to_utc": "2026-03-02T00:00:00.5z",
    }

    job = app.bulk.create_export(ORG, filters=window)

    expected = {
        "from_utc": "2026-03-01T00:00:00Z",
        "to_utc": "2026-03-02T00:00:00.500000Z",
    }
    assert job.filters == expected
    (created,) = [
        e
        for e in app.cdc.list(ORG, EventFilter(service="ipm"), 50)
        if e.new.logical_guid == job.job_id
    ]
    assert created.new.payload["filters"] == expected


@pytest.mark.parametrize(
    "window",
    [
        {"from_utc": "2026-03-02T00:00:00.0000001Z", "to_utc": "2026-03-02T00:00:00Z"},
    ],
)
def test_a_window_that_rounds_empty_is_refused(
    app: ipm.Application, window: dict[str, str]
) -> None:
    """A bound rounded up past the other is a 400."""
    with pytest.raises(InvalidRequest):
        app.bulk.create_export(ORG, filters=window)


def test_a_bound_past_the_last_instant_means_no_end(app: ipm.Application) -> None:
    """9999-12-31T23:59:59.9999999Z, a common "no end", is the last instant
    there is (it was a 400 here, and a KPI query or replay took it)."""
    app.publish(ORG, sale(1))

    job, data = export(app, filters={"to_utc": "9999-12-31T23:59:59.9999999Z"})

    assert job.status == "completed"
    assert len(data.splitlines()) == 1


def test_a_start_past_the_last_instant_is_refused(app: ipm.Application) -> None:
    """Clamped as a start, such a bound took in a record stamped at the last
    instant, which is before it; a start past every instant is a 400."""
    app.publish(ORG, sale(1, occurred_at="9999-12-31T23:59:59.999999Z"))

    with pytest.raises(InvalidRequest) as refused:
        app.bulk.create_export(
            ORG, filters={"from_utc": "9999-12-31T23:59:59.9999999Z"}
        )

    assert refused.value.details[0].pointer == "/filters/from_utc"


class _Killed(BaseException):
    """The worker dying: nothing after it runs."""


def test_parts_left_by_a_worker_killed_after_completing_go_next_call(
    app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A continue on the completed export deletes the parts it left behind.

    Regression: the parts outlived the export for good (74 MB for a 50 MB
    export in the probe); only discard_file, with no HTTP route, removed
    them.
    """
    app.publish_many(ORG, [sale(n) for n in range(10)])
    job = app.bulk.create_export(ORG)
    files = app.bulk.files

    def killed(*keys: str) -> None:
        raise _Killed

    monkeypatch.setattr(files, "delete", killed)
    with pytest.raises(_Killed):
        app.bulk.run(ORG, job.job_id, max_lines=4)
    monkeypatch.undo()
    done = app.bulk.get(ORG, job.job_id)
    parts = [part_key(job.job_id, n) for n in range(done.cursor.slices)]
    left = [key for key in parts if app.bulk.blobs.exists(key)]

    again = app.bulk.continue_export(ORG, job.job_id)

    assert done.status == again.status == "completed"
    assert left == parts and len(parts) > 1
    assert not any(app.bulk.blobs.exists(key) for key in parts)
    assert b"".join(app.bulk.download(ORG, job.job_id)).count(b"\n") == 10


def test_an_empty_export_completes_with_an_empty_file(app: ipm.Application) -> None:
    """No matching event: a completed job and a zero-byte file."""
    job, data = export(app, filters={"service": "nothing"})

    assert data == b""
    assert job.result is not None and job.result.records == 0


def test_an_empty_window_is_refused(app: ipm.Application) -> None:
    """A window whose end is not after its start is a 400."""
    window = {"from_utc": "2026-03-02T00:00:00Z", "to_utc": "2026-03-02T00:00:00Z"}

    with pytest.raises(InvalidRequest):
        app.bulk.create_export(ORG, filters=window)


def test_events_after_the_high_water_mark_are_left_out(app: ipm.Application) -> None:
    """Events published after create are not in the export."""
    app.publish_many(ORG, [sale(n) for n in range(5)])
    job = app.bulk.create_export(ORG, filters={"service": "pos"})
    app.publish_many(ORG, [sale(n) for n in range(5, 9)])

    job = app.bulk.run(ORG, job.job_id, max_lines=2)
    data = b"".join(app.bulk.download(ORG, job.job_id))

    assert data.count(b"\n") == 5


def _unclosed_files(action: Callable[[], object]) -> list[str]:
    """The files that ``action`` left for the collector to close."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        action()
        gc.collect()

    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_download_closed_unread_closes_its_file(tmp_path: Path) -> None:
    """Regression: the file was opened by download() but closed only from
    the first chunk on, so a host (or a WSGI server, as PEP 3333 allows)
    closing the iterator unread left it open until collected."""
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        app.publish(ORG, sale(1))
        job, _ = export(app)

        left = _unclosed_files(lambda: app.bulk.download(ORG, job.job_id).close())
        read = _unclosed_files(lambda: list(app.bulk.download(ORG, job.job_id)))

    assert (left, read) == ([], [])


def test_head_on_a_download_link_closes_the_file(tmp_path: Path) -> None:
    """Regression: HEAD opened the export file for its stream and dropped
    the stream unread and unclosed."""
    with ipm.open_sqlite(tmp_path / "ipm.sqlite") as app:
        key = app.create_api_key("ops", [ORG])
        app.publish(ORG, sale(1))
        job, whole = export(app)
        headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}
        body = json.dumps({"job_id": job.job_id}).encode()
        found = app.handle("POST", "/bulk/job/get", headers, body).json()
        link = urlsplit(found["data"]["download_url"])
        answers: list[ipm.Response] = []

        def head() -> None:
            answers.append(app.handle("HEAD", f"{link.path}?{link.query}", {}, None))

        left = _unclosed_files(head)

    assert left == []
    assert answers[0].status == 200
    assert answers[0].header("content-length") == str(len(whole))


def test_download_before_the_end_is_refused(app: ipm.Application) -> None:
    """The file of an unfinished export cannot be downloaded."""
    app.publish_many(ORG, [sale(n) for n in range(5)])
    job = app.bulk.create_export(ORG)
    app.bulk.continue_export(ORG, job.job_id, max_lines=2)

    with pytest.raises(Conflict):
        app.bulk.download(ORG, job.job_id)


def test_a_slice_run_again_after_a_crash_writes_the_same_bytes(
    app: ipm.Application,
) -> None:
    """A slice killed before its commit is redone into identical bytes."""
    app.publish_many(ORG, [sale(n) for n in range(9)])
    job = app.bulk.create_export(ORG, filters={"service": "pos"})
    job = app.bulk.continue_export(ORG, job.job_id, max_lines=4)
    crashes = {"left": 1}

    def crash_once(uow: Any, event: Any) -> None:
        if event.new.action == "bulk.job.status_changed" and crashes["left"]:
            crashes["left"] -= 1
            raise RuntimeError("killed before commit")

    app.recorder.sinks.append(crash_once)
    with pytest.raises(RuntimeError):
        app.bulk.continue_export(ORG, job.job_id, max_lines=10)
    first_try = b"".join(app.bulk.blobs.read(part_key(job.job_id, 1)))
    after = app.bulk.continue_export(ORG, job.job_id, max_lines=10)
    _, clean = export(app, filters={"service": "pos"})

    assert after.status == "completed"
    assert first_try == clean[len(b"".join(clean.splitlines(True)[:4])) :]
    assert b"".join(app.bulk.download(ORG, job.job_id)) == clean


WRITER = textwrap.dedent(
    """
    import sys
    import ipm

    with ipm.open_sqlite(sys.argv[1]) as app:
        for n in range(100_000):
            app.publish("ACME01", {
                "event_id": f"live-{n}",
                "service": "pos",
                "action": "sale.created",
                "payload": {"n": n},
            })
            print(n, flush=True)
    """
)


@pytest.mark.slow
def test_an_export_during_publishing_holds_exactly_the_snapshot(
    tmp_path: Path,
) -> None:
    """While another process publishes, the export holds the events up to its mark."""
    db = tmp_path / "shared.sqlite"
    with ipm.open_sqlite(db) as app:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        try:
            _wait_for(writer.stdout, 300)
            job = app.bulk.create_export(ORG)
            job = app.bulk.run(ORG, job.job_id, max_lines=50)
            _wait_for(writer.stdout, int(job.high_water_mark or 0) + 100)
        finally:
            writer.kill()
            writer.wait(timeout=30)
        data = b"".join(app.bulk.download(ORG, job.job_id))
        mark = job.high_water_mark or 0
        expected = app.cdc.list(ORG, EventFilter(until_sequence=mark), 100_000)
        later = app.cdc.list(ORG, EventFilter(after_sequence=mark), 100_000)

    exported = [json.loads(line)["sequence"] for line in data.splitlines()]
    assert exported == [event.sequence for event in expected]
    assert len(exported) >= 300
    assert len([e for e in later if e.new.service == "pos"]) >= 50


def _wait_for(output: Any, count: int) -> None:
    """Read the writer's progress until it has published ``count`` events."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = output.readline()
        if not line or int(line) >= count:
            return


def test_workers_racing_to_finish_one_export_all_get_the_job(tmp_path: Path) -> None:
    """Eight threads running one export end with it completed, none with an error."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    app.publish_many(ORG, [sale(n) for n in range(1, 301)])
    job = app.bulk.create_export(ORG)
    outcomes: list[Any] = []

    def work() -> None:
        try:
            outcomes.append(app.bulk.run(ORG, job.job_id, max_lines=100))
        except Exception as error:
            outcomes.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = b"".join(app.bulk.download(ORG, job.job_id)).splitlines()
    app.close()

    assert [type(o).__name__ for o in outcomes] == ["Job"] * 8
    assert {o.status for o in outcomes} == {"completed"}
    assert len(lines) == 300


def test_a_worker_that_lost_its_slice_leaves_the_winner_s_part(
    app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slower worker with a longer slice never replaces the committed part."""
    app.publish_many(ORG, [sale(n) for n in range(20)])
    job = app.bulk.create_export(ORG)
    read = bulk_usecase.read_export_slice
    raced: list[Any] = []

    def read_then_lose(*args: Any) -> Any:
        piece = read(*args)
        if not raced:
            # Another worker takes the same slice, shorter, and commits first.
            raced.append(None)
            raced[0] = app.bulk.continue_export(ORG, job.job_id, max_lines=3)
        return piece

    monkeypatch.setattr(bulk_usecase, "read_export_slice", read_then_lose)
    loser = app.bulk.continue_export(ORG, job.job_id, max_lines=5)
    monkeypatch.undo()
    done = app.bulk.run(ORG, job.job_id, max_lines=4)
    lines = b"".join(app.bulk.download(ORG, job.job_id)).splitlines()

    assert loser.cursor == raced[0].cursor
    assert loser.cursor.lines == 3
    assert [json.loads(x)["event_id"] for x in lines] == [
        f"sale-{n}" for n in range(20)
    ]
    assert done.result is not None and done.result.records == 20


def test_an_export_killed_while_joining_its_parts_finishes_later(
    app: ipm.Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every part committed but no file yet: the next continue completes it."""
    app.publish_many(ORG, [sale(n) for n in range(6)])
    job = app.bulk.create_export(ORG)

    def killed(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(app.bulk.files, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        app.bulk.run(ORG, job.job_id, max_lines=10)
    monkeypatch.undo()
    stuck = app.bulk.get(ORG, job.job_id)
    done = app.bulk.run(ORG, job.job_id, max_lines=10)
    lines = b"".join(app.bulk.download(ORG, job.job_id)).splitlines()

    assert (stuck.status, stuck.cursor.lines) == ("processing", 6)
    assert done.status == "completed"
    assert [json.loads(x)["event_id"] for x in lines] == [f"sale-{n}" for n in range(6)]


def test_workers_at_the_end_join_the_parts_instead_of_adding_empty_ones(
    tmp_path: Path,
) -> None:
    """Once a part reaches the mark, later calls only join: no run of empty parts."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite")
    app.publish_many(ORG, [sale(n) for n in range(600)])
    job = app.bulk.create_export(ORG)

    def work() -> None:
        app.bulk.run(ORG, job.job_id, max_lines=100)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = app.bulk.get(ORG, job.job_id)
    lines = b"".join(app.bulk.download(ORG, job.job_id)).splitlines()
    app.close()

    assert done.status == "completed"
    assert done.cursor.slices <= 600 // 100 + 1
    assert done.cursor.position == done.high_water_mark
    assert [json.loads(x)["event_id"] for x in lines] == [
        f"sale-{n}" for n in range(600)
    ]
