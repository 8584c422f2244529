"""Test support for hosts and adapters: in-memory ports and contract suites.

Each capability's storage contract lives in its own module here; an
adapter (a host's own, or a future PostgreSQL one) proves itself by
subclassing every contract class and providing a ``storage`` fixture.
The in-memory ports, the clock, ``new_event`` and the network stand-ins
(the scripted transport and the receiver) import without pytest; the contract suites
are loaded on first use and need it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from ipm.adapters.blobs import MemoryBlobStore
from ipm.adapters.keyring import MemoryKeyring
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.notifier import MemoryNotifier
from ipm.testing.clock import FixedClock
from ipm.testing.events import new_event

if TYPE_CHECKING:
    from ipm.testing.jobs import BlobStoreContract, JobStorageContract
    from ipm.testing.keyring import KeyringContract
    from ipm.testing.kpis import KpiStorageContract
    from ipm.testing.network import (
        LocalReceiver,
        ScriptedTransport,
        answer,
        network_error,
    )
    from ipm.testing.notifier import NotifierContract
    from ipm.testing.storage import StorageContract
    from ipm.testing.transport import TransportContract
    from ipm.testing.webhooks import WebhookStorageContract

_LAZY = {
    "BlobStoreContract": "ipm.testing.jobs",
    "JobStorageContract": "ipm.testing.jobs",
    "KeyringContract": "ipm.testing.keyring",
    "KpiStorageContract": "ipm.testing.kpis",
    "NotifierContract": "ipm.testing.notifier",
    "StorageContract": "ipm.testing.storage",
    "TransportContract": "ipm.testing.transport",
    "LocalReceiver": "ipm.testing.network",
    "ScriptedTransport": "ipm.testing.network",
    "WebhookStorageContract": "ipm.testing.webhooks",
    "answer": "ipm.testing.network",
    "network_error": "ipm.testing.network",
}


def _has_test_extra() -> bool:
    """Whether the suites' own needs (the ``test`` extra) can be imported."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("pytest", "hypothesis")
        )
    except (ImportError, ValueError):
        return False


__all__ = [
    "FixedClock",
    "LocalReceiver",
    "MemoryBlobStore",
    "MemoryKeyring",
    "MemoryNotifier",
    "MemoryStorage",
    "ScriptedTransport",
    "answer",
    "network_error",
    "new_event",
]
if _has_test_extra():
    # The contract suites need pytest (and hypothesis): without them,
    # "import *" takes the rest.
    __all__ += [
        "BlobStoreContract",
        "JobStorageContract",
        "KeyringContract",
        "KpiStorageContract",
        "NotifierContract",
        "StorageContract",
        "TransportContract",
        "WebhookStorageContract",
    ]


_CONTRACTS = (
    "ipm.testing.jobs",
    "ipm.testing.keyring",
    "ipm.testing.kpis",
    "ipm.testing.notifier",
    "ipm.testing.storage",
    "ipm.testing.transport",
    "ipm.testing.webhooks",
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ipm.testing' has no attribute {name!r}")
    if module in _CONTRACTS:
        _rewrite_asserts()

    return getattr(importlib.import_module(module), name)


def _rewrite_asserts() -> None:
    """Have pytest explain a failed assert of a contract suite (values and
    all), as it does in the host's own test modules: it rewrites only
    modules it is told of before they are imported. Called when this
    package is imported (before any of its modules, however a host
    imports them) and again before a suite is loaded lazily."""
    pytest = sys.modules.get("pytest")
    if pytest is None:
        return
    fresh = [module for module in _CONTRACTS if module not in sys.modules]
    if fresh:
        pytest.register_assert_rewrite(*fresh)


_rewrite_asserts()


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
