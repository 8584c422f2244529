"""The webhook storage contract, run against every adapter ipm ships."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipm
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
from ipm.adapters.sqlite import webhooks as sqlite_webhooks
from ipm.adapters.sqlite.webhooks import QueuingCache
from ipm.domain.lifecycle import WEBHOOK
from ipm.domain.webhooks import SubscriptionFilter, Webhook
from ipm.ports import Storage
from ipm.testing import WebhookStorageContract
from ipm.testing.storage import T0
from ipm.testing.webhooks import make_webhook
from ipm.usecases.webhooks import CreateWebhook

ORG_CODE = "ACME"
FILTERS = (SubscriptionFilter("pos"),)
_EVENT = {"service": "pos", "action": "sale.created"}


class TestMemoryWebhookStorage(WebhookStorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = MemoryStorage()
        yield store
        store.close()


class TestSQLiteWebhookStorage(WebhookStorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        store = open_storage(tmp_path / "ipm.sqlite")
        yield store
        store.close()


# -- SQLite: queuing webhooks kept decoded between transactions ---------------


def _queuing(storage: Storage, org: str = "ACME") -> list[Webhook]:
    with storage.unit_of_work(write=False) as uow:
        return uow.webhooks.queuing(org)


def _add(storage: Storage, *webhooks: Webhook) -> None:
    with storage.unit_of_work() as uow:
        for webhook in webhooks:
            uow.webhooks.add(webhook)
        uow.commit()


def test_unchanged_webhooks_are_not_decoded_again(tmp_path: Path) -> None:
    """Regression: every transaction that recorded an event decoded all of
    the org's webhooks again; with 50 of them a publish took seven times as
    long. They are kept while no webhook changes."""
    storage = open_storage(tmp_path / "ipm.sqlite")
    _add(storage, make_webhook(1))

    first, again = _queuing(storage), _queuing(storage)
    _add(storage, make_webhook(2))
    grown = _queuing(storage)
    storage.close()

    assert again is first
    assert [w.webhook_id for w in grown] == ["wh_0001", "wh_0002"]


def test_a_webhook_write_patches_the_kept_list_instead_of_reading_the_org(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a transaction that wrote a webhook decoded every webhook
    of the org to queue the event recording the change (a create in an
    org of 3,000 took 60 ms). The write patches the kept list instead."""
    storage = open_storage(tmp_path / "ipm.sqlite")
    _add(storage, *(make_webhook(n) for n in range(1, 41)))
    _queuing(storage)
    decoded: list[object] = []
    real = sqlite_webhooks._webhook
    monkeypatch.setattr(
        sqlite_webhooks, "_webhook", lambda row: decoded.append(row) or real(row)
    )

    with storage.unit_of_work() as uow:
        uow.webhooks.add(make_webhook(41))
        uow.webhooks.save(make_webhook(3).move_to("paused", T0))
        inside = uow.webhooks.queuing("ACME")
        uow.commit()
    after = _queuing(storage)
    storage.close()

    assert decoded == []
    assert after is inside
    assert [w.webhook_id for w in after] == [f"wh_{n:04d}" for n in range(1, 42)]
    assert after[2].status == "paused"


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "pause", "resume", "disable", "read"]),
            st.integers(1, 6),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_kept_webhooks_always_equal_a_fresh_read(
    steps: list[tuple[str, int, bool]],
) -> None:
    """Whatever mix of creates and moves, committed or rolled back, the
    webhooks queuing() hands out are those a fresh read of the file finds,
    in creation order."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ipm.sqlite"
        storage = open_storage(path)
        made: dict[int, Webhook] = {}
        for op, n, commit in steps:
            with storage.unit_of_work() as uow:
                current = made.get(n)
                if op == "add" and current is None:
                    changed = make_webhook(n)
                    uow.webhooks.add(changed)
                elif op == "read" or current is None:
                    uow.webhooks.queuing("ACME")
                    continue
                else:
                    target = {"pause": "paused", "resume": "active"}.get(op, "disabled")
                    if target not in WEBHOOK.allowed(current.status):
                        continue
                    changed = current.move_to(target, T0)
                    uow.webhooks.save(changed)
                uow.webhooks.queuing("ACME")
                if commit:
                    uow.commit()
                    made[n] = changed
            kept = _queuing(storage)
            conn = sqlite3.connect(path)
            try:
                rows = conn.execute(
                    "SELECT webhook_id, status FROM webhooks WHERE orgcode = 'ACME' "
                    "AND status != 'disabled' ORDER BY rowid"
                ).fetchall()
            finally:
                conn.close()
            assert [(w.webhook_id, w.status) for w in kept] == rows
        storage.close()


def test_another_process_s_webhook_changes_are_seen(tmp_path: Path) -> None:
    """Two storages on one file stand for two processes: a change committed
    by one is seen by the other's next transaction."""
    path = tmp_path / "ipm.sqlite"
    mine, theirs = open_storage(path), open_storage(path)
    first = make_webhook(1)
    _add(mine, first)
    before = _queuing(mine)

    _add(theirs, make_webhook(2))
    with theirs.unit_of_work() as uow:
        uow.webhooks.save(first.move_to("disabled", T0))
        uow.commit()
    after = _queuing(mine)
    mine.close()
    theirs.close()

    assert [w.webhook_id for w in before] == ["wh_0001"]
    assert [w.webhook_id for w in after] == ["wh_0002"]


def test_a_change_rolled_back_is_never_kept_for_others(tmp_path: Path) -> None:
    """What a transaction read after its own (uncommitted) webhook change is
    not shared: rolled back, then matched by another commit's generation, it
    would have been handed out as that commit's webhooks."""
    path = tmp_path / "ipm.sqlite"
    mine, theirs = open_storage(path), open_storage(path)
    with mine.unit_of_work() as uow:
        uow.webhooks.add(make_webhook(7))
        inside = uow.webhooks.queuing("ACME")  # no commit: rolled back
    _add(theirs, make_webhook(2))  # the same generation, committed
    after = _queuing(mine)
    mine.close()
    theirs.close()

    assert [w.webhook_id for w in inside] == ["wh_0007"]
    assert [w.webhook_id for w in after] == ["wh_0002"]


def test_a_copy_restored_into_the_file_is_not_mistaken_for_what_was_kept(
    tmp_path: Path,
) -> None:
    """Regression: generations were counted, so after a copy was restored
    into the running file (same inode; the docs say to stop ipm first) the
    next change came back to a number already kept, with other webhooks
    behind it, and a disabled webhook still got deliveries. Generations
    are drawn at random now."""
    live, copy = tmp_path / "ipm.sqlite", tmp_path / "copy.sqlite"
    storage = open_storage(live)
    first = make_webhook(1)
    _add(storage, first)
    _queuing(storage)
    with sqlite3.connect(live) as source, sqlite3.connect(copy) as kept:
        source.backup(kept)
    _add(storage, make_webhook(2))
    _queuing(storage)  # both kept
    with sqlite3.connect(copy) as kept, sqlite3.connect(live) as target:
        kept.backup(target)  # back to the first webhook alone
    with storage.unit_of_work() as uow:
        uow.webhooks.save(first.move_to("disabled", T0))
        uow.commit()

    after = _queuing(storage)
    storage.close()

    assert after == []


def test_an_outbox_publish_fills_the_kept_webhooks_too(tmp_path: Path) -> None:
    """A host publishing only on its own connection decoded every webhook
    on every publish: its units of work read the kept webhooks but never
    filled them."""
    path = tmp_path / "ipm.sqlite"
    app = ipm.open_sqlite(path)
    app.webhooks.create(ORG_CODE, CreateWebhook("https://hooks.example/a", FILTERS))
    host = sqlite3.connect(path)
    decoded: list[int] = []
    decode = sqlite_webhooks._webhook

    def counted(row: Any) -> Webhook:
        decoded.append(1)
        return decode(row)

    sqlite_webhooks._webhook = counted  # type: ignore[assignment]
    try:
        for n in range(3):
            host.execute("BEGIN")
            app.publish(ORG_CODE, _EVENT | {"payload": {"n": n}}, connection=host)
            host.commit()
    finally:
        sqlite_webhooks._webhook = decode  # type: ignore[assignment]
        host.close()
        app.close()

    assert len(decoded) <= 1


def test_the_kept_webhooks_are_bounded_by_count_as_well_as_by_org() -> None:
    cache = QueuingCache(size=10, webhooks=5)
    three = [make_webhook(n) for n in range(3)]

    cache.put("A", 1, three)
    cache.put("B", 1, three)  # six held: A, used longest ago, goes
    cache.put("C", 1, [make_webhook(n) for n in range(9)])  # alone, still kept

    assert cache.get("A", 1) is None
    assert cache.get("B", 1) is None
    assert cache.get("C", 1) is not None
