"""Options of open_sqlite/open_memory: checked when the application opens."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.adapters.keyring import MemoryKeyring
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.notifier import MemoryNotifier
from ipm.testing import MemoryBlobStore
from ipm.usecases.bulk import BulkOptions
from tests.conftest import open_app


def _at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"bulk": {"slice_lines": 10}}, TypeError),
        ({"retry_policy": {"max_attempts": 3}}, TypeError),
        ({"keyring": object()}, TypeError),
        ({"blobs": object()}, TypeError),
        ({"notifier": object()}, TypeError),
        ({"webhook_transport": object()}, TypeError),
        ({"clock": "now"}, TypeError),
        ({"ids": 7}, TypeError),
        # Times signing (Unix seconds >= 0) or date arithmetic cannot take.
        ({"clock": lambda: _at(1969, 12, 31)}, ValueError),
        ({"clock": lambda: _at(9999, 12, 31)}, ValueError),
        ({"authenticator": object()}, TypeError),
        ({"allow_networks": "127.0.0.1/32"}, TypeError),
        ({"allow_networks": None}, TypeError),
        ({"database_path": 123}, TypeError),
        ({"max_body_bytes": 0}, ValueError),
        ({"allow_network": ["127.0.0.1/32"]}, TypeError),
        # Classes where instances belong: the methods are there, unbound.
        ({"keyring": MemoryKeyring}, TypeError),
        ({"blobs": MemoryBlobStore}, TypeError),
        ({"notifier": MemoryNotifier}, TypeError),
        # Ids that are not text, or could not travel in a link or a key.
        ({"ids": lambda prefix: 5}, TypeError),
        ({"ids": lambda prefix: ""}, TypeError),
        ({"ids": lambda prefix: f"{prefix}/../x"}, TypeError),
        ({"ids": lambda prefix: ".."}, TypeError),
        ({"ids": lambda prefix: "x" * 129}, TypeError),
    ],
)
def test_a_wrong_option_is_refused_when_the_application_opens(
    tmp_path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    """Each mistake is named at open, and open_sqlite leaves no file behind."""
    threads = threading.active_count()
    path = tmp_path / "ipm.sqlite"

    with pytest.raises(error):
        ipm.open_memory(**options)
    with pytest.raises(error):
        ipm.open_sqlite(path, **options)

    assert not path.exists()
    assert threading.active_count() == threads


def test_good_ports_and_options_are_taken() -> None:
    """Objects that have what ipm calls are accepted as they are."""
    blobs = MemoryBlobStore()

    with ipm.open_memory(
        bulk=BulkOptions(slice_lines=5), blobs=blobs, allow_networks=["10.0.0.0/8"]
    ) as app:
        assert app.bulk.blobs is blobs


class _StaticAuthenticator:
    """A class used as a namespace: its method needs no instance."""

    @staticmethod
    def authenticate(headers: Any) -> None:
        return None


class _Id(str):
    pass


def test_ports_that_work_as_given_are_taken() -> None:
    """A class of static methods, and ids that are a str subclass, long
    ids up to the schemas' 128 characters."""
    count = iter(range(1, 1_000_000))

    with ipm.open_memory(authenticator=_StaticAuthenticator) as app:
        assert app.handle("POST", "/cdc/list", {}, b"{}").status == 401
    with ipm.open_memory(ids=lambda prefix: _Id(f"{prefix}_{next(count)}")) as app:
        assert app.bulk.create_import("ACME").job_id.startswith("job_")
    with ipm.open_memory(ids=lambda prefix: f"{prefix}_{next(count):0>120}") as app:
        assert len(app.bulk.create_import("ACME").job_id) == 124


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_opening_makes_one_id_to_check_the_generator(kind: str, tmp_path: Path) -> None:
    """As library.md says: a host's deterministic ids start at their second
    (open_sqlite made two, checking before the file and again)."""
    made: list[str] = []

    def ids(prefix: str) -> str:
        made.append(f"{prefix}_{len(made) + 1}")
        return made[-1]

    with open_app(kind, tmp_path, ids=ids):
        pass

    with open_app(kind, tmp_path, ids=ids):
        pass  # the same generator again: sampled again

    # One sample an open, then what opening takes for itself (a dispatcher's
    # name).
    samples = [made_id for made_id in made if made_id.startswith("evt")]
    assert len(samples) == 2 and samples[0] == "evt_1"


def test_a_host_ids_generator_is_taken_when_it_gives_text() -> None:
    """Ids of any shape that travel safely, not only ipm's own."""
    count = iter(range(1, 1_000_000))

    with ipm.open_memory(ids=lambda prefix: f"{prefix}-{next(count):09d}") as app:
        job = app.bulk.create_import("ACME")

    assert job.job_id.startswith("job-")


def test_an_in_memory_sqlite_database_leaves_no_blob_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_sqlite(":memory:") keeps uploads in memory, not in ./:memory:.blobs."""
    monkeypatch.chdir(tmp_path)

    with ipm.open_sqlite(":memory:") as app:
        job = app.bulk.create_import("ACME01")
        app.bulk.upload("ACME01", job.job_id, iter([b"{}\n"]))

    assert os.listdir(tmp_path) == []


def test_a_host_built_sqlite_application_keeps_blobs_beside_the_file(
    tmp_path: Path,
) -> None:
    """Application(storage=...) on SQLite stores uploads beside the database."""
    from ipm.adapters.sqlite import open_storage

    path = tmp_path / "ipm.sqlite"
    with ipm.Application(storage=open_storage(path)) as app:
        job = app.bulk.create_import("ACME01")
        app.bulk.upload("ACME01", job.job_id, iter([b"{}\n"]))

    assert (tmp_path / "ipm.sqlite.blobs").is_dir()


@pytest.mark.parametrize(("given", "level"), [({}, 1), ({"synchronous": "full"}, 2)])
def test_synchronous_sets_how_durable_a_commit_is(
    tmp_path: Path, given: dict[str, str], level: int
) -> None:
    """normal (the default) or full: SQLite's own setting on every connection."""
    app = ipm.open_sqlite(tmp_path / "ipm.sqlite", **given)
    with app, app.storage.unit_of_work(write=False) as uow:
        found = uow.connection.execute("PRAGMA synchronous").fetchone()[0]

    assert found == level


def test_an_unknown_synchronous_level_is_refused_before_the_file(
    tmp_path: Path,
) -> None:
    """Only normal and full are offered (off would lose commits)."""
    with pytest.raises(ValueError, match="synchronous"):
        ipm.open_sqlite(tmp_path / "ipm.sqlite", synchronous="off")

    assert not (tmp_path / "ipm.sqlite").exists()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"token_key": b"short"}, ValueError),
        ({"token_key": "a string key of enough length"}, TypeError),
        ({"link_key": b"short"}, ValueError),
        ({"link_key": "a string key of enough length"}, TypeError),
        ({"build_id": 5}, TypeError),
        ({"build_id": "ipm-\ud800"}, ValueError),
        ({"notify_attempts": 0}, ValueError),
        ({"notify_attempts": "3"}, TypeError),
        ({"delivery_workers": 0}, ValueError),
        ({"delivery_timeout": -1}, ValueError),
        ({"allow_networks": ["nope"]}, ValueError),
        ({"allow_networks": [None]}, TypeError),
        ({"clock": lambda: "2026-01-01"}, TypeError),
        ({"busy_timeout": float("nan")}, ValueError),
        ({"busy_timeout": -1}, ValueError),
    ],
)
def test_settings_out_of_range_are_refused_before_the_file(
    tmp_path: Path, options: dict[str, Any], error: type[Exception]
) -> None:
    """Keys, ids, counts, networks, clocks and timeouts are checked at open."""
    threads = threading.active_count()
    path = tmp_path / "ipm.sqlite"

    with pytest.raises(error):
        ipm.open_sqlite(path, **options)

    assert not path.exists()
    assert threading.active_count() == threads


@pytest.mark.parametrize(
    "fields",
    [
        {"link_seconds": -5},
        {"link_seconds": float("nan")},
        {"slice_lines": 0},
        {"slice_seconds": 0},
        {"max_upload_bytes": 0},
        {"max_line_bytes": True},
        {"slice_bytes": 0},
        {"max_slice_lines": 0},
        # Slices past the bound a server keeps need the bound raised too.
        {"slice_lines": 30_000},
    ],
)
def test_bulk_options_are_checked_when_built(fields: dict[str, Any]) -> None:
    """A link expiring on arrival or a slice of no lines is refused at once."""
    with pytest.raises((TypeError, ValueError)):
        BulkOptions(**fields)


class _CountingTransport:
    """A host transport class whose instances answer 204 and count."""

    built = 0

    def __init__(self) -> None:
        type(self).built += 1
        self.sent: list[Any] = []

    def send(self, request: Any) -> Any:
        from ipm.testing import answer

        self.sent.append(request)
        return answer(204)


@contextlib.contextmanager
def _one_event_to_send(
    tmp_path: Path, transport: Any
) -> Iterator[tuple[ipm.Application, Any]]:
    """An application on ``transport`` with one webhook (on 127.0.0.1) and
    one event queued for it."""
    from ipm.domain.webhooks import SubscriptionFilter
    from ipm.usecases.webhooks import CreateWebhook

    with ipm.open_sqlite(
        tmp_path / "x.sqlite",
        allow_networks=["127.0.0.1/32"],
        webhook_transport=transport,
    ) as app:
        webhook = app.webhooks.create(
            "ACME",
            CreateWebhook("http://127.0.0.1:9/hook", (SubscriptionFilter("pos"),)),
        ).webhook
        app.publish("ACME", {"service": "pos", "action": "sale.created"})
        yield app, webhook


def test_a_transport_class_is_built_as_its_factory(tmp_path: Path) -> None:
    """A class is a zero-argument callable: it was used as the transport
    itself (send unbound), every delivery failed and close() raised."""
    with _one_event_to_send(tmp_path, _CountingTransport) as (app, _):
        report = app.deliver_pending()

    assert report.delivered == 1
    assert _CountingTransport.built == 1


class _CloseFails:
    def send(self, request: Any) -> Any:
        raise AssertionError("not sent in this test")

    def close(self) -> None:
        raise RuntimeError("the host's transport failed to close")


def test_a_transport_failing_to_close_still_closes_the_store(tmp_path: Path) -> None:
    app = ipm.open_sqlite(tmp_path / "x.sqlite", webhook_transport=_CloseFails())
    app.deliver_pending()  # nothing due; the transport is in use

    with pytest.raises(RuntimeError, match="failed to close"):
        app.close()
    with pytest.raises(ipm.IpmError):
        app.publish("ACME", {"service": "pos", "action": "sale.created"})
    app.close()  # the transport is not asked again


class _NeedsPolicy:
    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def send(self, request: Any) -> Any:
        raise AssertionError("never built")


def test_a_transport_class_that_needs_arguments_is_refused_at_open() -> None:
    """It failed at the first send instead, as a failed attempt of every
    delivery, until the webhooks were disabled."""
    with pytest.raises(TypeError, match="needs some: pass an instance"):
        ipm.open_memory(webhook_transport=_NeedsPolicy)
    with pytest.raises(TypeError, match="needs some"):
        ipm.open_memory(webhook_transport=lambda policy: _NeedsPolicy(policy))

    ipm.open_memory(webhook_transport=lambda: _NeedsPolicy(None)).close()
    ipm.open_memory(webhook_transport=_NeedsPolicy(None)).close()


class _NoSend:
    pass


def test_a_transport_class_without_send_is_refused_at_open() -> None:
    with pytest.raises(TypeError, match="_NoSend has no send"):
        ipm.open_memory(webhook_transport=_NoSend)
    with pytest.raises(TypeError, match="int has no send"):
        ipm.open_memory(webhook_transport=int)


def test_a_transport_factory_that_fails_spends_no_attempt(tmp_path: Path) -> None:
    """Regression: a factory that raised, or made something without send,
    cost every delivery an attempt (on the way to disabling its webhook).
    Nothing left the machine: the delivery waits untried, and is sent once
    the factory works."""
    made: list[Any] = [None, OSError(24, "Too many open files")]

    def factory() -> Any:
        outcome = made.pop(0) if made else _CountingTransport()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with _one_event_to_send(tmp_path, factory) as (app, webhook):
        first = app.deliver_pending()
        second = app.deliver_pending()
        (waiting,) = app.webhooks.deliveries("ACME", webhook.webhook_id)
        third = app.deliver_pending()
        (sent,) = app.webhooks.deliveries("ACME", webhook.webhook_id)

    assert (first.attempted, second.attempted) == (0, 0)
    assert (waiting.status, waiting.attempts) == ("pending", 0)
    assert third.delivered == 1
    assert (sent.status, sent.attempts) == ("delivered", 1)


def test_a_failing_transport_factory_is_logged_without_its_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a failing send is: the factory's message (here a token) may hold
    what no log line should; its type is named instead."""
    import logging

    token = "-".join(["s3cr3t", "t0ken"])  # not in the source the frames show

    def factory() -> Any:
        raise RuntimeError(f"cannot reach the proxy with {token}")

    with (
        _one_event_to_send(tmp_path, factory) as (app, _),
        caplog.at_level(logging.DEBUG, logger="ipm"),
    ):
        report = app.deliver_pending()

    assert (report.attempted, report.untried_here) == (0, 1)
    assert token not in caplog.text
    assert "the webhook transport could not be built: RuntimeError" in caplog.text


def test_a_factory_making_no_transport_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ipm's own message for a factory whose product has no send says what
    was made: logged whole (a host's exception is logged by type only)."""
    import logging

    class NoSend:
        pass

    def factory() -> Any:
        return NoSend()

    with (
        _one_event_to_send(tmp_path, factory) as (app, _),
        caplog.at_level(logging.INFO, logger="ipm"),
    ):
        report = app.deliver_pending()

    assert report.untried_here == 1
    assert "webhook_transport made a 'NoSend', which has no send(request)" in (
        caplog.text
    )


class _HostStorage:
    """A host's own storage (here over memory): ipm cannot tell it persists."""

    def __init__(self) -> None:
        self._inner = MemoryStorage()

    def unit_of_work(self, *, write: bool = True) -> Any:
        return self._inner.unit_of_work(write=write)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize(
    ("given", "warned"),
    [
        ({}, "given no keyring or blobs"),
        ({"keyring": MemoryKeyring()}, "given no blobs"),
        ({"keyring": MemoryKeyring(), "blobs": MemoryBlobStore()}, None),
    ],
)
def test_a_host_storage_with_memory_keyring_or_blobs_is_warned_of(
    given: dict[str, Any], warned: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A storage of the host's own got a memory keyring and blob store
    silently: after a restart no webhook secret opened and export files
    were gone."""
    with caplog.at_level(logging.WARNING, logger="ipm.app"):
        ipm.Application(storage=_HostStorage(), **given).close()

    said = [r.getMessage() for r in caplog.records if r.name == "ipm.app"]
    assert [warned in line for line in said] == ([True] if warned else [])


def test_the_shipped_factories_warn_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ipm.app"):
        ipm.open_memory().close()
        ipm.open_sqlite(tmp_path / "ipm.sqlite").close()

    assert [r for r in caplog.records if r.name == "ipm.app"] == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_allow_networks_may_be_any_iterable(kind: str, tmp_path: Path) -> None:
    """Regression: a generator given as allow_networks was used up by the
    check at open and kept empty, so the host's networks were refused."""
    networks = (cidr for cidr in ["127.0.0.1/32", "10.0.0.0/8"])
    app = (
        ipm.open_memory(allow_networks=networks)
        if kind == "memory"
        else ipm.open_sqlite(tmp_path / "ipm.sqlite", allow_networks=networks)
    )
    with app:
        assert app.allow_networks == ("127.0.0.1/32", "10.0.0.0/8")
