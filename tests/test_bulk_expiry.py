"""Idle import jobs expire: an abandoned upload does not stay on disk for ever."""

from __future__ import annotations

import errno
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import pytest

import ipm
from ipm.testing import FixedClock, MemoryBlobStore
from ipm.testing.storage import T0
from ipm.usecases.bulk import BulkOptions
from ipm.usecases.bulk_options import duration_text
from tests.conftest import DAY, ORG, OTHER, event_lines, timed_app


@pytest.fixture(params=["memory", "sqlite"])
def timed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ipm.Application, FixedClock]]:
    yield from timed_app(request.param, tmp_path, idle_seconds=2 * DAY)


def test_each_kind_of_waiting_import_expires_with_its_upload(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """awaiting_upload, uploaded and validated jobs idle past idle_seconds
    end failed with code expired, and their upload is deleted."""
    app, clock = timed
    waiting = app.bulk.create_import(ORG)
    uploaded = app.bulk.upload(
        OTHER, app.bulk.create_import(OTHER).job_id, event_lines(3)
    )
    validated = app.bulk.create_import(ORG, mode="validate")
    validated = app.bulk.upload(ORG, validated.job_id, event_lines(2))
    validated = app.bulk.commit(ORG, validated.job_id, validated.revision)
    validated = app.bulk.run(ORG, validated.job_id)
    assert validated.status == "validated"
    keys = [uploaded.data_key, validated.data_key]
    assert all(key is not None and app.bulk.blobs.exists(key) for key in keys)

    clock.advance(2 * DAY)
    expired = app.bulk.expire_idle()

    assert expired == 3
    for org, job in ((ORG, waiting), (OTHER, uploaded), (ORG, validated)):
        ended = app.bulk.get(org, job.job_id)
        assert ended.status == "failed"
        assert ended.error is not None and ended.error.code == "expired"
        assert "2 days" in ended.error.message
    assert not any(app.bulk.blobs.exists(key) for key in keys if key is not None)
    assert app.bulk.find(ORG, status="active") == []
    assert app.bulk.expire_idle() == 0


def test_a_job_touched_within_the_window_is_kept(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """The idle time counts from the job's last change, not its creation."""
    app, clock = timed
    job = app.bulk.create_import(ORG)
    clock.advance(1.5 * DAY)
    job = app.bulk.upload(ORG, job.job_id, event_lines(1))
    clock.advance(1.5 * DAY)

    assert app.bulk.expire_idle() == 0
    assert app.bulk.get(ORG, job.job_id).status == "uploaded"
    job = app.bulk.commit(ORG, job.job_id, job.revision)
    assert app.bulk.run(ORG, job.job_id).status == "completed"


def test_processing_and_ended_jobs_are_left_alone(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """An import processing is resumable: its driver, not a sweep, ends it."""
    app, clock = timed
    running = app.bulk.create_import(ORG)
    running = app.bulk.upload(ORG, running.job_id, event_lines(5))
    running = app.bulk.commit(ORG, running.job_id, running.revision)
    running = app.bulk.continue_import(ORG, running.job_id, max_lines=2)
    done = app.bulk.create_import(ORG)
    done = app.bulk.upload(ORG, done.job_id, event_lines(1))
    done = app.bulk.run(ORG, app.bulk.commit(ORG, done.job_id, done.revision).job_id)
    export = app.bulk.run(ORG, app.bulk.create_export(ORG).job_id)
    clock.advance(30 * DAY)

    assert app.bulk.expire_idle() == 0
    assert app.bulk.get(ORG, running.job_id).status == "processing"
    assert app.bulk.get(ORG, done.job_id) == done
    assert app.bulk.get(ORG, export.job_id) == export
    assert app.bulk.run(ORG, running.job_id).counters.created == 5


def test_an_export_left_unfinished_expires_with_its_parts(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """Regression: an export nobody continued (pending, or processing with
    parts written) stayed active, its parts on disk, for ever: any key
    could fill the disk by starting exports and walking away."""
    app, clock = timed
    for n in range(6):
        app.publish(ORG, {"service": "pos", "action": "sale", "event_id": f"e{n}"})
    pending = app.bulk.create_export(ORG)
    started = app.bulk.create_export(ORG)
    started = app.bulk.continue_export(ORG, started.job_id, max_lines=2)
    started = app.bulk.continue_export(ORG, started.job_id, max_lines=2)
    parts = app.bulk.blobs.keys(f"jobs/{started.job_id}/")
    assert started.status == "processing" and len(list(parts)) == 2
    clock.advance(1.5 * DAY)
    recent = app.bulk.continue_export(ORG, started.job_id, max_lines=1)
    clock.advance(0.5 * DAY)

    assert app.bulk.expire_idle() == 1
    ended = app.bulk.get(ORG, pending.job_id)
    assert ended.status == "failed" and ended.error is not None
    assert ended.error.code == "expired"
    assert "waited pending for longer than 2 days" in ended.error.message
    assert app.bulk.get(ORG, started.job_id) == recent

    clock.advance(2 * DAY)
    assert app.bulk.expire_idle() == 1
    assert app.bulk.get(ORG, started.job_id).status == "failed"
    assert list(app.bulk.blobs.keys(f"jobs/{started.job_id}/")) == []
    assert app.bulk.find(ORG, status="active") == []


def test_expiry_is_a_change_integrators_can_follow(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """It records bulk.job.finished, as every other end of a job does."""
    app, clock = timed
    job = app.bulk.create_import(ORG)
    clock.advance(3 * DAY)

    app.bulk.expire_idle()

    last = app.events(ORG, service="ipm")[-1].new
    assert (last.action, last.logical_guid) == ("bulk.job.finished", job.job_id)
    assert last.payload["status"] == "failed"


def test_a_late_commit_of_an_expired_job_is_refused(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """The client that comes back after the window gets a clear refusal."""
    app, clock = timed
    job = app.bulk.create_import(ORG)
    job = app.bulk.upload(ORG, job.job_id, event_lines(1))
    clock.advance(2 * DAY + 1)
    app.bulk.expire_idle()

    with pytest.raises(ipm.IpmError) as refused:
        app.bulk.commit(ORG, job.job_id, job.revision)  # the revision it held
    with pytest.raises(ipm.IpmError) as again:
        app.bulk.upload(ORG, job.job_id, event_lines(1))

    for error in (refused.value, again.value):
        assert error.code == "invalid_transition"
        assert "the job failed, expired: the job waited uploaded" in error.message


def test_a_sweep_told_to_stop_ends_after_the_job_in_hand(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """ipm serve stopping does not wait for thousands of jobs."""
    app, clock = timed
    jobs = [app.bulk.create_import(ORG) for _ in range(3)]
    clock.advance(3 * DAY)
    stop = threading.Event()
    sweeps = app.bulk._sweeps
    expire = sweeps._expire
    ended: list[str] = []

    def then_stop(job: Any, cutoff: Any, audit: Any) -> bool:
        ended.append(job.job_id)
        stop.set()
        return expire(job, cutoff, audit)

    sweeps._expire = then_stop  # type: ignore[method-assign]

    assert app.bulk.expire_idle(stop=stop) == 1
    statuses = [app.bulk.get(ORG, job.job_id).status for job in jobs]
    assert sorted(statuses) == ["awaiting_upload", "awaiting_upload", "failed"]
    assert app.bulk.expire_idle(stop=stop) == 0


def test_an_upload_link_expires_with_its_job_at_the_latest(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """A link handed out near the end of the window does not outlive it."""
    app, clock = timed
    job = app.bulk.create_import(ORG)
    early = app.bulk.link("upload", job, "http://127.0.0.1:8080")
    clock.advance(2 * DAY - 600)

    late = app.bulk.link("upload", job, "http://127.0.0.1:8080")
    report = app.bulk.link("report", job, "http://127.0.0.1:8080")

    assert early.expires_at == T0 + timedelta(hours=1)
    assert late.expires_at == job.updated_at + timedelta(days=2)
    assert report.expires_at == clock() + timedelta(hours=1)


def test_durations_are_written_for_people() -> None:
    assert duration_text(7 * DAY) == "7 days"
    assert duration_text(3600) == "1 hour"
    assert duration_text(90 * 60) == "90 minutes"
    assert duration_text(1) == "1 second"
    assert duration_text(1.5) == "1.5 seconds"
    with pytest.raises(ValueError, match="at most 31622400 s"):
        BulkOptions(idle_seconds=367 * DAY)


def test_idle_seconds_none_keeps_waiting_jobs(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    options = BulkOptions(idle_seconds=None)
    with ipm.open_memory(clock=clock, bulk=options) as app:
        job = app.bulk.create_import(ORG)
        clock.advance(400 * DAY)

        assert app.bulk.expire_idle() == 0
        assert app.bulk.get(ORG, job.job_id).status == "awaiting_upload"


@pytest.mark.parametrize("bad", [0, -1, 367 * DAY, float("nan"), "7", True])
def test_idle_seconds_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="idle_seconds"):
        BulkOptions(idle_seconds=bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_ipm_serve_expires_idle_jobs_when_it_starts(tmp_path: Path) -> None:
    """An import abandoned before a restart is swept by the next ipm serve."""
    db = tmp_path / "ipm.sqlite"
    with ipm.open_sqlite(db, clock=lambda: T0) as app:
        job = app.bulk.create_import(ORG)
        job = app.bulk.upload(ORG, job.job_id, event_lines(2))
        upload = job.data_key
        assert upload is not None and app.bulk.blobs.exists(upload)

    server = subprocess.Popen(
        [sys.executable, "-m", "ipm", "serve", "--db", str(db), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with ipm.open_sqlite(db) as app:
                status = app.bulk.get(ORG, job.job_id).status
                gone = not app.bulk.blobs.exists(upload)
            if status == "failed" and gone:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0


def test_expiry_window_is_measured_from_the_last_change(
    timed: tuple[ipm.Application, FixedClock],
) -> None:
    """Exactly idle_seconds after the last change the job expires, not before."""
    app, clock = timed
    job = app.bulk.create_import(ORG)
    clock.advance(2 * DAY - 1)
    assert app.bulk.expire_idle() == 0
    clock.advance(1)
    assert app.bulk.expire_idle() == 1
    ended = app.bulk.get(ORG, job.job_id)
    assert ended.updated_at == T0 + timedelta(seconds=2 * DAY)


class _PresigningBlobs(MemoryBlobStore):
    """An object store that hands out its own upload links."""

    def presign(self, key: str, method: str, expires_at: Any) -> str:
        return f"https://objects.example/{key}?method={method}"


@pytest.mark.parametrize("end", ["expire", "cancel"])
def test_an_upload_taken_under_a_presigned_link_goes_with_its_job(end: str) -> None:
    """Bytes the host's store took under its own link, never committed, are
    deleted when the job ends, as ipm's own upload would be."""
    clock = FixedClock(T0)
    blobs = _PresigningBlobs()
    options = BulkOptions(idle_seconds=DAY)
    with ipm.open_memory(clock=clock, blobs=blobs, bulk=options) as app:
        job = app.bulk.create_import(ORG)
        key = f"jobs/{job.job_id}/upload"
        blobs.write(key, iter([event_lines(2)]))
        clock.advance(2 * DAY)

        if end == "expire":
            assert app.bulk.expire_idle() == 1
        else:
            app.bulk.cancel(ORG, job.job_id, "given up")

        assert app.bulk.get(ORG, job.job_id).status == "failed"
        assert not blobs.exists(key)


class _DownStore(MemoryBlobStore):
    """An object store whose presigning service is down, or answers what no
    client could follow."""

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer

    def presign(self, key: str, method: str, expires_at: Any) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (OSError(errno.EIO, "presigning service unreachable"), 503),
        (TimeoutError("timed out"), 503),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), 503),
        (socket.gaierror(socket.EAI_AGAIN, "name lookup failed"), 503),
        (OSError(errno.EHOSTUNREACH, "no route to host"), 503),
        (URLError(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), 503),
        (ssl.SSLError("handshake failed"), 503),
        (URLError("unknown url type: s3"), 500),
        (HTTPError("https://store.example/", 503, "Slow Down", Message(), None), 503),
        (HTTPError("https://store.example/", 403, "Forbidden", Message(), None), 500),
        (HTTPError("https://store.example/", 429, "Slow Down", Message(), None), 503),
        (HTTPError("file:///store", None, "no code", Message(), None), 500),  # type: ignore[arg-type]
        (RuntimeError("presigning service refused"), 500),
        (123, 500),
        ("", 500),
        ("javascript:alert(1)", 500),
        ("https://objects.example/up\r\nX-Evil: 1", 500),
        ("/relative/path", 500),
        ("http://:80/up", 500),
        ("https://objects.example:99999/up", 500),
        ("http://[::1/up", 500),
        ("http://objects.example:0/up", 500),
        ("http://objects.ex%00ample/up", 500),
        ("http://good.example\\@evil.example/up", 500),
    ],
    ids=[
        "os-error",
        "timeout",
        "refused",
        "name-lookup",
        "host-unreachable",
        "urllib-refused",
        "tls",
        "urllib-own-error",
        "store-503",
        "store-403",
        "store-429",
        "store-no-code",
        "error",
        "int",
        "empty",
        "javascript",
        "crlf",
        "relative",
        "no-host",
        "bad-port",
        "open-bracket",
        "port-0",
        "escaped-host",
        "backslash",
    ],
)
def test_an_import_whose_upload_link_cannot_be_made_is_not_kept(
    answer: object, status: int
) -> None:
    """Regression: a presigning store that failed, or answered something
    no client could use, left an import awaiting_upload whose id no client
    had been told, in the active list until the idle sweep (a bad answer
    was even handed out as the upload_url). The link is made first: nothing
    is stored when it cannot be."""
    with ipm.open_memory(blobs=_DownStore(answer)) as app:
        key = app.create_api_key("ops@acme.example", [ORG])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

        created = app.handle("POST", "/bulk/import/create", headers, b"{}")
        jobs = app.handle("POST", "/bulk/job/list", headers, b"{}")
        events = app.handle("POST", "/cdc/list", headers, b"{}")

    assert created.status == status, created.body
    assert jobs.json()["data"]["items"] == []
    assert events.json()["data"]["items"] == []


def test_a_presigned_link_is_handed_out_as_the_store_made_it() -> None:
    """A store's own absolute link is the import's upload_url, unchanged."""
    with ipm.open_memory(blobs=_PresigningBlobs()) as app:
        key = app.create_api_key("ops@acme.example", [ORG])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

        created = app.handle("POST", "/bulk/import/create", headers, b"{}")

    url = created.json()["data"]["upload_url"]
    assert url.startswith("https://objects.example/jobs/") and url.endswith("PUT")
