"""The KPI storage contract, run against every adapter ipm ships."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ipm.adapters.memory import MemoryStorage
from ipm.adapters.sqlite import open_storage
from ipm.ports import Storage
from ipm.testing import KpiStorageContract


class TestMemoryKpis(KpiStorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        store = MemoryStorage()
        yield store
        store.close()


class TestSQLiteKpis(KpiStorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        store = open_storage(tmp_path / "ipm.sqlite")
        yield store
        store.close()
