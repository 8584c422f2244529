"""The webhook storage contract, run against every adapter ipm ships."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
from ipm.domain.webhooks import Webhook
from ipm.ports import Storage
from ipm.testing import WebhookStorageContract
from ipm.testing.storage import T0
from ipm.testing.webhooks import make_webhook


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
