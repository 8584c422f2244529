"""The keyring contract, run against the keyrings ipm ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipm.adapters.keyring import FileKeyring, MemoryKeyring
from ipm.ports import Keyring
from ipm.testing import KeyringContract


class TestMemoryKeyring(KeyringContract):
    @pytest.fixture
    def keyring(self) -> Keyring:
        return MemoryKeyring()


class TestFileKeyring(KeyringContract):
    @pytest.fixture
    def keyring(self, tmp_path: Path) -> Keyring:
        return FileKeyring(tmp_path / "ipm.sqlite.key")


class _ShortKeys:
    def current(self) -> tuple[str, bytes]:
        return "k1", bytes(16)

    def get(self, key_id: str) -> bytes | None:
        return bytes(16) if key_id == "k1" else None


def test_the_contract_catches_a_keyring_of_aes_128_keys() -> None:
    with pytest.raises(AssertionError):
        KeyringContract().test_the_current_key_is_an_id_and_32_bytes(_ShortKeys())
