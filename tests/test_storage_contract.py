"""The storage contract, run against every adapter ipm ships."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
from ipm.ports import Storage
from ipm.testing import (
    JobStorageContract,
    KpiStorageContract,
    StorageContract,
    WebhookStorageContract,
)


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = MemoryStorage()
        yield store
        store.close()


class TestSQLiteStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        store = open_storage(tmp_path / "ipm.sqlite")
        yield store
        store.close()


def test_the_storage_suites_can_share_one_class() -> None:
    """A test named alike in two suites would be silently dropped from a
    class that subclasses both (the shape the docs show): names are unique
    across them."""
    suites = (
        StorageContract,
        WebhookStorageContract,
        JobStorageContract,
        KpiStorageContract,
    )
    names = [name for suite in suites for name in vars(suite) if name[:5] == "test_"]

    assert len(names) == len(set(names))
