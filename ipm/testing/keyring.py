"""The keyring contract: what a host's key service must do for ipm.

A :class:`~ipm.ports.Keyring` seals and opens webhook secrets at rest.
Subclass :class:`KeyringContract` and provide a ``keyring`` fixture::

    class TestVaultKeyring(KeyringContract):
        @pytest.fixture
        def keyring(self):
            return VaultKeyring(...)

ipm runs it against its memory and file keyrings.
"""

from __future__ import annotations

import pytest

from ipm.ports import Keyring
from ipm.usecases.webhooks import SecretBox, SecretUnavailable

__all__ = ["KeyringContract"]


class KeyringContract:
    """Behaviour every keyring must show."""

    @pytest.fixture
    def keyring(self) -> Keyring:
        raise NotImplementedError("provide a keyring fixture")

    def test_the_current_key_is_an_id_and_32_bytes(self, keyring: Keyring) -> None:
        """AES-256: a shorter key would quietly weaken every sealed secret.
        The id travels in each sealed secret, as at most 255 ASCII bytes."""
        key_id, key = keyring.current()

        assert isinstance(key_id, str) and key_id.isascii()
        assert 1 <= len(key_id) <= 255
        assert isinstance(key, bytes) and len(key) == 32

    def test_the_current_key_is_found_by_its_id(self, keyring: Keyring) -> None:
        key_id, key = keyring.current()

        assert keyring.get(key_id) == key
        assert keyring.current() == (key_id, key)

    def test_an_unknown_id_is_none(self, keyring: Keyring) -> None:
        """None, not an exception and not another key: a secret sealed under
        a lost key must say so, never open under a wrong one."""
        assert keyring.get("no-such-key-id") is None

    def test_a_sealed_secret_opens_and_only_in_its_context(
        self, keyring: Keyring
    ) -> None:
        box = SecretBox(keyring)
        sealed = box.seal("whsec_c2VjcmV0IGJ5dGVzIGZvciB0aGUgdGVzdA==", "ctx/a")

        assert box.open(sealed, "ctx/a") == "whsec_c2VjcmV0IGJ5dGVzIGZvciB0aGUgdGVzdA=="
        with pytest.raises(SecretUnavailable):
            box.open(sealed, "ctx/b")
